"""Where replay tasks run: the Executor interface and the two local executors.

    executor = default_executor()            # warm fork pool, or a process per task
    submission = executor.submit(tasks, workers=4, cancel=event)
    for result in submission.results():      # as tasks finish
        ...
    submission.stop()                        # on Ctrl-C: kill running, drop queued, clean up

An executor takes plain ReplayTask objects and returns TaskResult objects; it says what a
segment costs to start on it (`startup`), which the estimate uses. A new executor (a job queue,
a cluster) implements `submit` and `startup`, and runs each task through
`worker.perform_task` wherever the task lands. The service (service.py) owns the executor,
the lock and the plan -> run -> ingest sequence, so it never needs to know which one it has.
"""

from __future__ import annotations

import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from .estimate import (
    FORK_SECONDS,
    IMPORT_SECONDS,
    LAZY_IMPORT_SECONDS,
    SETUP_FLOOR,
    WORKTREE_SECONDS,
)
from .model import INTERRUPTED, ReplayTask, Startup, TaskResult
from .pool import PoolError, ReplayPool, Zygote, pool_enabled
from .preload import LAZY_MODULES
from .process import run_pooled, run_process
from .worker import perform_task

RESULT_TICK = 0.1  # seconds between looks at the cancel event while waiting for results


class Submission(ABC):
    """Tasks handed to an executor: their results as they come, and a way to stop them."""

    @abstractmethod
    def results(self) -> Iterator[TaskResult]:
        """Each task's result as it finishes; KeyboardInterrupt once `cancel` is set."""

    @abstractmethod
    def stop(self) -> list[TaskResult]:
        """Kill the running tasks, drop those not started, wait until each has cleaned up
        (a second Ctrl-C does not cut that short); a result for every task."""


class Executor(ABC):
    """Runs replay tasks. `name` and `slots` go into plans and their estimates."""

    name = "executor"
    preloads = False  # imports the scripts' modules ahead: plans then list them (preload.py)

    @property
    def slots(self) -> int:
        """How many tasks it runs at once at most."""
        return os.cpu_count() or 1

    def parallelism(self, workers: int) -> int:
        """How many of `workers` tasks run at once, for the estimate: all of them here (the
        local executors start as many as asked); a queue or a cluster is bound by its slots."""
        return workers

    @abstractmethod
    def startup(self, setup_seconds: float, modules: Sequence[str]) -> Startup:
        """What a segment pays outside its loop here, given the run's set-up time and the
        modules its script imports."""

    @abstractmethod
    def submit(self, tasks: Sequence[ReplayTask], workers: int,
               cancel: threading.Event) -> Submission:
        """Start `tasks`, at most `workers` at a time, longest first as given."""

    def warm(self, workers: int, modules: Sequence[str]) -> threading.Thread:
        """Get ready to run tasks importing `modules` (a background thread; join() waits)."""
        thread = threading.Thread(target=lambda: None, name="flor-replay-warm", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:  # noqa: B027 - optional: most executors hold nothing
        """Release what it holds (worker processes); it can still be used after."""


@dataclass(frozen=True)
class Batch:
    """What the tasks of one submission share."""

    workers: int
    modules: tuple[str, ...]
    threads: int
    cancel: threading.Event


class LocalExecutor(Executor):
    """Tasks on this machine, `workers` at a time, each in a thread that watches its process."""

    @abstractmethod
    def run_one(self, task: ReplayTask, slot: int, batch: Batch) -> TaskResult:
        """Run one task to its end (or its stop by `batch.cancel`)."""

    def on_stop(self) -> None:
        """Called when a submission is being stopped, before waiting for its threads."""

    def submit(self, tasks: Sequence[ReplayTask], workers: int,
               cancel: threading.Event) -> Submission:
        workers = max(1, workers)
        modules = tuple(dict.fromkeys(m for t in tasks for m in t.preload))
        threads = max(1, (os.cpu_count() or 1) // workers)
        return _LocalSubmission(self, list(tasks), Batch(workers, modules, threads, cancel))


class _LocalSubmission(Submission):
    def __init__(self, executor: LocalExecutor, tasks: list[ReplayTask], batch: Batch) -> None:
        self.executor, self.tasks, self.batch = executor, tasks, batch
        self.threads = ThreadPoolExecutor(max_workers=batch.workers,
                                          thread_name_prefix="flor-replay")
        self.futures: list[Future] = [
            self.threads.submit(executor.run_one, task, k % batch.workers, batch)
            for k, task in enumerate(tasks)]

    def results(self) -> Iterator[TaskResult]:
        pending = set(self.futures)
        while pending:
            done, pending = wait(pending, timeout=RESULT_TICK, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
            if pending and self.batch.cancel.is_set():
                raise KeyboardInterrupt
        self.threads.shutdown()

    def stop(self) -> list[TaskResult]:
        self.batch.cancel.set()
        self.executor.on_stop()
        for future in self.futures:
            future.cancel()
        while True:
            try:
                self.threads.shutdown(wait=True, cancel_futures=True)
                break
            except KeyboardInterrupt:
                continue
        out = []
        for task, future in zip(self.tasks, self.futures, strict=True):
            if future.cancelled():
                out.append(TaskResult(task, False, 0.0, "stopped: the replay was interrupted",
                                      stopped=INTERRUPTED))
            elif future.exception() is None:
                out.append(future.result())
        return out


class SubprocessExecutor(LocalExecutor):
    """A new interpreter per task (FLOR_REPLAY_POOL=0, or no fork on this platform)."""

    name = "process per task"

    def startup(self, setup_seconds: float, modules: Sequence[str]) -> Startup:
        return Startup(IMPORT_SECONDS + setup_seconds + WORKTREE_SECONDS)

    def run_one(self, task: ReplayTask, slot: int, batch: Batch) -> TaskResult:
        return perform_task(task, run_process, batch.cancel, slot=slot, parent=os.getpid())


class WarmPoolExecutor(LocalExecutor):
    """Warm workers (pool.py) that have imported the scripts' heavy modules fork a child per
    task; a task starts a new interpreter instead when no worker can start."""

    name = "warm pool"
    preloads = True

    def __init__(self) -> None:
        self._pool: ReplayPool | None = None
        self._guard = threading.Lock()

    @property
    def pool(self) -> ReplayPool:
        """The worker processes, started on first use and again after close()."""
        with self._guard:
            if self._pool is None or self._pool.closed:
                self._pool = ReplayPool()
            return self._pool

    def warm_count(self, modules: Iterable[str]) -> int:
        """Workers already warm with `modules`; looking starts none."""
        pool = self._pool
        return pool.warm_count(modules) if pool is not None and not pool.closed else 0

    def startup(self, setup_seconds: float, modules: Sequence[str]) -> Startup:
        # forward runs paid the lazy imports inside their set-up; a worker pays them once, ahead
        lazy = LAZY_IMPORT_SECONDS * sum(1 for m in modules if m in LAZY_MODULES)
        return Startup(per_segment=FORK_SECONDS + max(SETUP_FLOOR, setup_seconds - lazy),
                       per_worker=IMPORT_SECONDS + lazy, warm_workers=self.warm_count(modules),
                       pooled=True)

    def warm(self, workers: int, modules: Sequence[str]) -> threading.Thread:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
        return self.pool.warm_async(max(1, workers), list(modules), threads)

    def run_one(self, task: ReplayTask, slot: int, batch: Batch) -> TaskResult:
        zygote = None if batch.cancel.is_set() else self._acquire(batch)
        if zygote is None:
            return perform_task(task, run_process, batch.cancel, slot=slot, parent=os.getpid())
        try:
            return perform_task(task, lambda launch, cancel: run_pooled(zygote, launch, cancel),
                                batch.cancel, slot=zygote.slot, pooled=True)
        finally:
            self.pool.release(zygote)

    def _acquire(self, batch: Batch) -> Zygote | None:
        """A warm worker for one task; None: start one interpreter for it instead."""
        try:
            return self.pool.acquire(batch.workers, batch.modules, batch.threads, batch.cancel)
        except PoolError as e:
            if not batch.cancel.is_set():
                warnings.warn(f"replay workers unavailable, starting a process per task: {e}",
                              RuntimeWarning, stacklevel=2)
            return None

    def on_stop(self) -> None:
        if self._pool is not None:
            self._pool.abort_imports()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def default_executor() -> Executor:
    """The warm pool where it works (fork, FLOR_REPLAY_POOL not 0), else a process per task."""
    return WarmPoolExecutor() if pool_enabled() else SubprocessExecutor()
