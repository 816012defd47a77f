"""The replay service: one per open catalog; it owns the executor, the project's replay lock and
the plan -> run -> ingest sequence. Retroactive SQL, `florsql replay` and `flor.replay` all go
through it, so they take the same lock and plan the same way.

    service = ReplayService(session)                  # default_executor() unless one is given
    plan = service.plan_names(["val_acc"], "lr > 0.01", workers=4)
    report = service.run(plan, progress=bar)          # under the lock; ingests at the end
    answer = service.answer(prepared, sql, params, policy)   # what a SQL statement needs

KeyboardInterrupt during `run` (Ctrl-C; SIGTERM as `florsql replay` maps it), or the `cancel`
event set by another thread, stops every task (the executor kills running ones and cleans up)
and raises ReplayInterrupted: the tasks that finished keep their records. A replay killed
outright leaves its folders behind; the next one removes them (leftovers.py).
"""

from __future__ import annotations

import fcntl
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flor import protocol

from ..errors import ReplayBudgetError
from ..query.analyze import Analysis
from ..query.rewrite import Rewrite
from ..query.session import CatalogSession
from .executor import Executor, default_executor
from .leftovers import remove_leftovers
from .model import INTERRUPTED, ReplayInterrupted, ReplayPlan, ReplayReport, ReplayTask, TaskResult
from .plan import plan_replay
from .policy import ReplayPolicy, declined_warnings
from .preload import warm_modules
from .process import resolve_task_timeout
from .retro import plan_retroactive

Progress = Callable[[TaskResult, int, int], None]


@dataclass(frozen=True)
class QueryAnswer:
    """What to run for a statement once its replay is done, and the lines to warn with."""

    rewrite: Rewrite
    warnings: tuple[str, ...]


class ReplayService:
    def __init__(self, session: CatalogSession, executor: Executor | None = None) -> None:
        self.session = session
        self._executor = executor
        # Called once when the lock is held by another replay of the project, before waiting
        # for it (a surface says so, so that a wait never looks like a hang).
        self.on_wait: Callable[[], None] | None = None
        self._lock = project_lock(session.project.home)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = default_executor()
        return self._executor

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The project's replay lock: one replay at a time across threads and processes
        (re-entrant within a thread)."""
        with self._lock.hold(self.on_wait):
            yield

    def plan_names(self, names: Sequence[str], where: str | None = None,
                   workers: int | None = None, iterations: set[int] | None = None) -> ReplayPlan:
        """The replay that recovers `names` for the finished runs matching `where`."""
        return plan_replay(self.session, list(names), where, _workers(workers), iterations,
                           self.executor)

    def plan_query(self, analysis: Analysis, workers: int | None = None) -> ReplayPlan:
        """The replay an analysed query needs before it can be answered."""
        return plan_retroactive(self.session, analysis, _workers(workers), self.executor)

    def replay_names(self, names: Sequence[str], where: str | None = None,
                     workers: int | None = None, iterations: set[int] | None = None, *,
                     on_plan: Callable[[ReplayPlan], Progress | None] | None = None,
                     dry_run: bool = False, task_timeout: float | None = None,
                     cancel: threading.Event | None = None) -> ReplayReport:
        """Plan and run under the lock, so no other replay slips in between; `on_plan` sees the
        plan first (to show it) and returns the progress callback. A dry run takes no lock."""
        if dry_run:
            plan = self.plan_names(names, where, workers, iterations)
            if on_plan:
                on_plan(plan)
            return ReplayReport(plan, ())
        with self.lock():
            plan = self.plan_names(names, where, workers, iterations)
            progress = on_plan(plan) if on_plan else None
            return self.run(plan, progress=progress, task_timeout=task_timeout, cancel=cancel)

    def run(self, plan: ReplayPlan, *, progress: Progress | None = None,
            task_timeout: float | None = None,
            cancel: threading.Event | None = None) -> ReplayReport:
        """Run every task of `plan` (failures are reported, the others go on), then ingest.

        `task_timeout`: seconds each task may run (0: no limit; None: FLOR_REPLAY_TASK_TIMEOUT,
        else from its estimate, see process.py)."""
        tasks = self.tasks(plan, resolve_task_timeout(task_timeout))
        if not tasks:
            return ReplayReport(plan, ())
        cancel = cancel or threading.Event()
        with self.lock():
            remove_leftovers(self.session.project.home)
            submission = self.executor.submit(tasks, plan.workers, cancel)
            results: list[TaskResult] = []
            try:
                for result in submission.results():
                    results.append(result)
                    if progress:
                        progress(result, len(results), len(tasks))
            except BaseException as e:
                ended = submission.stop()
                if isinstance(e, KeyboardInterrupt):
                    raise _interrupted(ended) from None
                raise
            self.session.refresh()
        return ReplayReport(plan, tuple(results))

    def tasks(self, plan: ReplayPlan, timeout: float | None = None) -> list[ReplayTask]:
        """The plan's segments as tasks, longest first (as estimated); `timeout` as
        resolve_task_timeout gives it."""
        root, home = self.session.project.root, self.session.project.home
        threads = max(1, (os.cpu_count() or 1) // max(1, plan.workers))
        limit = None if timeout is None else (0.0 if math.isinf(timeout) else timeout)
        ordered = sorted(plan.tasks, key=lambda t: -t.segment.seconds)
        return [ReplayTask(
            task_id=_new_task_id(), project_root=str(root), home=str(home), runid=run.runid,
            tstamp=run.tstamp, vid=run.vid, filename=run.filename, argv=run.argv,
            source=run.patched or "", run_dir=run.run_dir, loop=run.loop, start=seg.start,
            stop=seg.stop, names=run.names, memoize=run.memoize, estimate=seg.seconds,
            full_estimate=seg.unmemoized, timeout=limit, threads=threads,
            preload=plan.modules) for run, seg in ordered]

    def answer(self, prepared: Rewrite, sql: str, params: object,
               policy: ReplayPolicy) -> QueryAnswer:
        """Replay what `prepared` lacks as `policy` says; the query to run and warning lines.
        ReplayBudgetError when the estimate is over `policy.max_seconds`."""
        analysis = prepared.analysis
        if not analysis.replayable:
            return QueryAnswer(prepared, ())
        session = self.session
        key = ("retro-plan", sql, repr(params), policy.workers, session.scripts_state())
        if policy.mode == "off":
            plan = session.derived(key, lambda: self.plan_query(analysis, policy.workers))
            return QueryAnswer(prepared, tuple(declined_warnings(plan, "replay is off",
                                                                 policy.hints)))
        with self.lock():
            session.refresh()  # another query may have replayed while this one waited
            # kept until the catalog changes: asking again costs nothing when nothing is missing
            plan = session.derived(key, lambda: self.plan_query(analysis, policy.workers))
            lines = self._run_by_policy(plan, policy)
        # Prepared again: the names have data now, here or from the query that held the lock.
        return QueryAnswer(session.prepare(sql, params), tuple(lines))

    def _run_by_policy(self, plan: ReplayPlan, policy: ReplayPolicy) -> list[str]:
        if not plan.tasks:
            return plan.warnings()
        if policy.max_seconds is not None and plan.estimated_seconds > policy.max_seconds:
            raise ReplayBudgetError(plan.estimated_seconds, policy.max_seconds, len(plan.tasks))
        if policy.mode == "ask" and not (policy.confirm and policy.confirm(plan)):
            reason = ("the replay was declined" if policy.confirm
                      else "replay='ask' needs a confirm callback")
            return declined_warnings(plan, reason, policy.hints)
        policy.cancel.clear()  # an interrupt of an earlier statement does not stop this one
        report = self.run(plan, progress=policy.progress, task_timeout=policy.task_timeout,
                          cancel=policy.cancel)
        return report.warnings()

    def warm(self, workers: int | None = None) -> threading.Thread:
        """Get the executor ready for the project's scripts in a background thread (join() it
        to wait): warm workers import what the scripts import while a plan is being made."""
        modules = warm_modules(self.session) if self.executor.preloads else []
        return self.executor.warm(_workers(workers), modules)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()


def _workers(workers: int | None) -> int:
    return max(1, workers or os.cpu_count() or 1)


def _new_task_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _interrupted(ended: list[TaskResult]) -> ReplayInterrupted:
    stopped = sum(r.stopped == INTERRUPTED for r in ended)
    return ReplayInterrupted(stopped, sum(r.ok for r in ended), ended)


class _ProjectLock:
    """A file lock (flock) across processes, re-entrant within a thread: threads of one process
    queue on the RLock, processes on the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._handle = None

    @contextmanager
    def hold(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        with self._rlock:
            if self._depth == 0:
                handle = open(self.path, "a+")
                try:
                    _flock(handle, on_wait)
                except BaseException:
                    handle.close()
                    raise
                self._handle = handle
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._handle is not None:
                    fcntl.flock(self._handle, fcntl.LOCK_UN)
                    self._handle.close()
                    self._handle = None


def _flock(handle: object, on_wait: Callable[[], None] | None) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait()
        fcntl.flock(handle, fcntl.LOCK_EX)


_LOCKS: dict[str, _ProjectLock] = {}
_LOCKS_GUARD = threading.Lock()


def project_lock(home: Path) -> _ProjectLock:
    """The replay lock of the project whose flor home is `home` (one object per process)."""
    path = home / protocol.REPLAY_LOCK_FILE
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), _ProjectLock(path))
