"""Replay tasks on a Ray cluster (or a local Ray instance): one Ray task per ReplayTask.

    executor = RayExecutor()                        # RAY_ADDRESS: that cluster; else a local one
    submission = executor.submit(tasks, workers=8, cancel=event)
    call = executor.submit_call(fn, (x,), project_root=root, vid=vid)   # fn(tree, x) remotely
    call.wait(5.0); call.result()

The code travels with the task: each version a submission needs is archived once here
(code_archive.archive_vid, from the project's repository), put in Ray's object store, and
extracted on the node into the task's temporary tree. A node therefore needs the florsql
package and the flor home (records, checkpoints) on storage it shares with this host, never
the project's git repository. Each task runs through worker.perform_task on its Ray worker,
which applies the task's time limit there and moves the records into the run on success.

Ray starts lazily, at the first submit (plans only ask `startup` and `slots`), and is shut down
by close() only if this executor started it: a caller's own `ray.init` is used as is. Stopping
force-cancels the Ray tasks, which kills their Ray workers; each task's process dies with its
worker (Ray kills a dead worker's children, and flor's PR_SET_PDEATHSIG binds the process to
its worker too, `parent` below, for a Ray that does not), and the stopped tasks' staging
folders are removed from here (the flor home is shared). A killed worker's temporary tree
stays on its node until the next replay task there removes it (leftovers.remove_leftovers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flor import protocol

from ..errors import EngineError
from .code_archive import archive_vid, extract_tree
from .estimate import IMPORT_SECONDS, WORKTREE_SECONDS
from .executor import RESULT_TICK, Executor, Submission
from .leftovers import TMP_PREFIX, claim, remove_leftovers
from .model import INTERRUPTED, ReplayTask, Startup, TaskResult, one_line
from .process import run_process
from .worker import perform_task

if TYPE_CHECKING:
    from types import ModuleType

    from ray import ObjectRef

RAY_MISSING = "the ray executor needs Ray: pip install 'florsql[ray]'"
GPUS_ENV = "FLOR_REPLAY_GPUS"
DISPATCH_SECONDS = 0.05  # Ray's scheduling of a task and the transfer of its version's archive
LOST_WORKER_RETRIES = 3  # Ray reruns a task whose worker or node died; never one that failed
STAGING_SETTLE = 0.5  # seconds between the two removals of a stopped task's staging folder
STOP_WAIT = 30.0  # seconds stop() waits for force-cancelled tasks to end before giving up
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its error messages for terminals


def import_ray() -> ModuleType:
    """The ray module, or EngineError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise EngineError(RAY_MISSING) from None
    return ray


class RayExecutor(Executor):
    """Each task a Ray task on one CPU (and `gpus` GPUs, or one when FLOR_REPLAY_GPUS is set)."""

    name = "ray"

    def __init__(self, gpus: float = 0) -> None:
        self.gpus = gpus
        self._started = False  # ray.init was ours: close() shuts it down
        self._guard = threading.Lock()
        self._archives: dict[tuple[str, str], ObjectRef] = {}  # submit_call's, per executor

    @property
    def task_gpus(self) -> float:
        """The GPUs each task asks Ray for."""
        return self.gpus if self.gpus > 0 else (1.0 if os.environ.get(GPUS_ENV) else 0.0)

    @property
    def slots(self) -> int:
        ray = sys.modules.get("ray")  # never imports or starts Ray: plans stay cheap
        if ray is None or not ray.is_initialized():
            return os.cpu_count() or 1
        resources = ray.cluster_resources()
        if self.task_gpus > 0:
            return max(1, int(resources.get("GPU", 0) // self.task_gpus))
        return max(1, int(resources.get("CPU", 0)))

    def parallelism(self, workers: int) -> int:
        """At most the cluster's slots run at once, however many workers are asked for."""
        return max(1, min(workers, self.slots))

    def startup(self, setup_seconds: float, modules: Sequence[str]) -> Startup:
        return Startup(IMPORT_SECONDS + setup_seconds + WORKTREE_SECONDS + DISPATCH_SECONDS)

    def connect(self) -> ModuleType:
        """Ray, connected: to RAY_ADDRESS's cluster, else a local instance started here."""
        ray = import_ray()
        with self._guard:
            if not ray.is_initialized():
                self._archives.clear()  # refs of an earlier Ray session are void
                address = os.environ.get("RAY_ADDRESS")
                local = {} if address else {"include_dashboard": False}
                ray.init(address=address or None, logging_level=logging.WARNING,
                         log_to_driver=False, **local)
                self._started = True
            return ray

    def submit(self, tasks: Sequence[ReplayTask], workers: int,
               cancel: threading.Event) -> Submission:
        return _RaySubmission(self, self.connect(), list(tasks), max(1, workers), cancel)

    def submit_call(self, fn: Callable[..., Any], args: tuple, *, project_root: Path, vid: str,
                    num_gpus: float = 0, max_retries: int = LOST_WORKER_RETRIES) -> RayCall:
        """Run `fn(tree, *args)` on a Ray worker, `tree` being version `vid` of the project at
        `project_root`, extracted into a temporary folder removed afterwards. `fn` and its
        result must be picklable, `fn` by reference (a module the nodes can import) or by
        value (cloudpickle.register_pickle_by_value). Archiving raises gitrepo.GitError here
        when the repository lacks `vid`."""
        ray = self.connect()
        key = (str(Path(project_root).resolve()), vid)
        with self._guard:
            if key not in self._archives:
                self._archives[key] = ray.put(archive_vid(Path(project_root), vid))
            archive = self._archives[key]
        remote = _remote(ray, _call_in_tree).options(
            num_cpus=1, num_gpus=num_gpus, max_retries=max_retries, retry_exceptions=False)
        return RayCall(ray, remote.remote(fn, args, archive, vid))

    def close(self) -> None:
        with self._guard:
            self._archives.clear()
            if self._started:
                self._started = False
                ray = sys.modules.get("ray")
                if ray is not None and ray.is_initialized():
                    ray.shutdown()


class RayCallError(RuntimeError):
    """A remote call that ended without a result: cancelled, or its worker or node lost."""


class RayCall:
    """A call started by RayExecutor.submit_call."""

    def __init__(self, ray: ModuleType, ref: ObjectRef) -> None:
        self._ray, self.ref = ray, ref

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the call has ended, waiting up to `timeout` seconds (None: until it has)."""
        ready, _ = self._ray.wait([self.ref], num_returns=1, timeout=timeout)
        return bool(ready)

    def result(self) -> Any:
        """fn's result, waiting for it. The remote exception is raised again as itself (its
        type and message, the remote traceback as a note) where Ray could bring it back, else
        as RayCallError with its message."""
        errors = self._ray.exceptions
        try:
            return self._ray.get(self.ref)
        except errors.RayTaskError as e:
            cause = e.cause
            if isinstance(cause, Exception) and not isinstance(cause, errors.RayError):
                cause.add_note(_ANSI.sub("", str(e)))  # where, and the remote traceback
                raise cause from None
            raise RayCallError(one_line(str(e))) from None
        except errors.TaskCancelledError:
            raise RayCallError("the call was cancelled") from None
        except errors.RayError as e:
            raise RayCallError(one_line(str(e))) from None

    def cancel(self) -> None:
        """Stop the call, killing the Ray worker that runs it; a finished call keeps its
        result."""
        self._ray.cancel(self.ref, force=True)


class _RaySubmission(Submission):
    """At most `workers` Ray tasks in flight; the others wait here, not in Ray's queue, so
    that `workers` means what it means for the local executors."""

    def __init__(self, executor: RayExecutor, ray: ModuleType, tasks: list[ReplayTask],
                 workers: int, cancel: threading.Event) -> None:
        self.executor, self.ray, self.tasks = executor, ray, tasks
        self.workers, self.cancel = workers, cancel
        self.queue: deque[int] = deque(range(len(tasks)))
        self.running: dict[ObjectRef, tuple[int, float]] = {}  # ref -> (task index, started)
        self.ended: dict[int, TaskResult] = {}
        self.unyielded: deque[TaskResult] = deque()  # ended without a Ray task (no archive)
        self.archives: dict[tuple[str, str], ObjectRef | str] = {}  # or why there is none
        self._dispatch()

    def results(self) -> Iterator[TaskResult]:
        while self.unyielded or self.running or self.queue:
            while self.unyielded:
                yield self.unyielded.popleft()
            if self.cancel.is_set() and (self.running or self.queue):
                raise KeyboardInterrupt
            if self.running:
                ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=RESULT_TICK)
                for ref in ready:
                    yield self._collect(ref)
            self._dispatch()
        self.archives.clear()

    def stop(self) -> list[TaskResult]:
        self.cancel.set()
        cancelled = dict(self.running)
        for ref in cancelled:
            with contextlib.suppress(Exception):  # finished or unreachable: stop goes on
                self.ray.cancel(ref, force=True)
        self._drain(time.monotonic() + STOP_WAIT)
        for index, started in cancelled.values():
            # Killed, or ended (failing: its process was killed) between the cancel and its
            # worker's end: stopped, unless it had finished and kept its records.
            if index not in self.ended or not self.ended[index].ok:
                self.ended[index] = _stopped(self.tasks[index], started)
        for index in self.queue:
            self.ended[index] = _stopped(self.tasks[index], time.monotonic())
        self.queue.clear()
        _remove_staging([r.task for r in self.ended.values() if r.stopped == INTERRUPTED])
        self.archives.clear()
        return [self.ended[k] for k in sorted(self.ended)]

    def _drain(self, deadline: float) -> None:
        """Collect the running tasks as they end, until the deadline (a node gone or out of
        reach never answers); a second Ctrl-C does not cut this short."""
        while self.running and time.monotonic() < deadline:
            try:
                ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running),
                                         timeout=RESULT_TICK)
                for ref in ready:
                    self._collect(ref)
            except KeyboardInterrupt:
                continue
        self.running.clear()

    def _dispatch(self) -> None:
        """Start queued tasks while fewer than `workers` run."""
        while self.queue and len(self.running) < self.workers and not self.cancel.is_set():
            index = self.queue.popleft()
            task = self.tasks[index]
            archive = self._archive(task)
            if isinstance(archive, str):
                self.ended[index] = TaskResult(task, False, 0.0, archive)
                self.unyielded.append(self.ended[index])
                continue
            remote = _remote(self.ray, _replay_task).options(
                num_cpus=1, num_gpus=self.executor.task_gpus, max_retries=LOST_WORKER_RETRIES,
                retry_exceptions=False)
            ref = remote.remote(task.to_json(), archive, index % self.workers)
            self.running[ref] = (index, time.monotonic())

    def _archive(self, task: ReplayTask) -> ObjectRef | str:
        """The object-store copy of the task's version, made once per submission; else why
        not (a version the repository lacks fails its tasks, as a local replay does)."""
        key = (task.project_root, task.vid)
        if key not in self.archives:
            try:
                self.archives[key] = self.ray.put(archive_vid(Path(task.project_root), task.vid))
            except (OSError, RuntimeError) as e:  # gitrepo.GitError is a RuntimeError
                self.archives[key] = f"version {task.vid[:10]}: {e}"
        return self.archives[key]

    def _collect(self, ref: ObjectRef) -> TaskResult:
        """The result of an ended Ray task (one that raised or was lost: a failed result)."""
        index, started = self.running.pop(ref)
        task = self.tasks[index]
        errors = self.ray.exceptions
        try:
            result = self.ray.get(ref)
        except (errors.TaskCancelledError, errors.WorkerCrashedError) as e:
            result = (_stopped(task, started) if self.cancel.is_set()
                      else _lost(task, started, e))
        except errors.RayError as e:
            result = _lost(task, started, e)
        self.ended[index] = result
        return result


def _stopped(task: ReplayTask, started: float) -> TaskResult:
    return TaskResult(task, False, time.monotonic() - started,
                      "stopped: the replay was interrupted", stopped=INTERRUPTED)


def _lost(task: ReplayTask, started: float, error: Exception) -> TaskResult:
    """A task whose Ray task raised, or whose worker died beyond its retries."""
    _remove_staging([task])
    return TaskResult(task, False, time.monotonic() - started,
                      f"version {task.vid[:10]}: the Ray task failed: {one_line(str(error))}")


def _remove_staging(tasks: Sequence[ReplayTask]) -> None:
    """Remove the tasks' staging folders, and again a moment later: Ray reports a task
    cancelled within milliseconds, sometimes before its worker and process have died, and
    either may still create the folder (no later replay on another host would remove it)."""
    folders = [Path(t.home) / protocol.REPLAYS_STAGING_DIR / t.task_id for t in tasks]
    for again in (False, True):
        if again and folders:
            time.sleep(STAGING_SETTLE)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


_REMOTES: dict[Callable[..., Any], Any] = {}


def _remote(ray: ModuleType, fn: Callable[..., Any]) -> Any:
    """`fn` as a Ray remote function, made once per process."""
    if fn not in _REMOTES:
        _REMOTES[fn] = ray.remote(fn)
    return _REMOTES[fn]


# --- on the Ray worker ----------------------------------------------------------------------


def _replay_task(task_json: str, archive: bytes, slot: int) -> TaskResult:
    """One ReplayTask on this Ray worker, its tree extracted from `archive`."""
    task = ReplayTask.from_json(task_json)
    # Ray chose this task's GPU (CUDA_VISIBLE_DEVICES): FLOR_REPLAY_GPUS's round robin over
    # the ids of this host (worker.task_env) must not override it.
    os.environ.pop(GPUS_ENV, None)
    remove_leftovers(Path(task.home))  # trees of this host's killed workers (stopped tasks)
    return perform_task(task, run_process, threading.Event(), slot=slot, parent=os.getpid(),
                        materialise=lambda _root, vid, tree: extract_tree(archive, vid, tree))


def _call_in_tree(fn: Callable[..., Any], args: tuple, archive: bytes, vid: str) -> Any:
    """`fn(tree, *args)` with version `vid` extracted into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        claim(Path(tmp))  # removed by a later replay if this worker is killed
        tree = Path(tmp) / "tree"
        extract_tree(archive, vid, tree)
        return fn(tree, *args)
