"""Run a replay plan: each segment in its own copy of the run's version, K at a time.

A segment's records go to a staging directory and are moved under the run
(`runs/<key>/replays/<id>`) only when the process succeeded, so a failed segment leaves
nothing behind and ingest never sees half a replay. The user's working tree is never touched,
and neither is their repository's list of worktrees: the copy is a repository of its own, in a
temporary folder (gitrepo.materialise).

Segments run in the session's warm worker pool (replay_pool.py: a zygote per worker that has
imported the scripts' heavy modules forks a child per segment), or, with FLOR_REPLAY_POOL=0,
on a platform without fork, or if the pool cannot start, as one new interpreter each
(replay_task.py: output into bounded logs, the per-task time limit).

Stopping: a task over its time limit is killed and reported as failed, and the others go on.
KeyboardInterrupt in run_replay (Ctrl-C; SIGTERM as `florsql replay` maps it), or the
`cancel` event set by another thread, kills every running task's process group, cancels the
tasks not started, waits for their threads to remove their trees and staging folders (well
within 2 s), then raises ReplayInterrupted: the tasks that finished keep their records. A
replay killed outright leaves its folders behind; the next one removes them
(replay_leftovers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .catalog_session import CatalogSession
from .replay_leftovers import TMP_PREFIX, claim, remove_leftovers, unclaim
from .replay_plan import ReplayPlan, RunPlan, Segment
from .replay_pool import (
    ALSO_WARM,
    PoolError,
    ReplayPool,
    Zygote,
    local_names,
    pool_enabled,
    preload_modules,
    torch_installed,
)
from .replay_task import (
    Exit,
    Launch,
    resolve_task_timeout,
    run_pooled,
    run_process,
    task_limit,
    timeout_message,
)

TRACEBACK_LINES = 8
MEMO_UNSAFE_EXIT = 3  # flor's replay process: memoization turned out unsafe
INTERRUPTED = "interrupted"


@dataclass
class TaskResult:
    run: RunPlan
    segment: Segment
    ok: bool
    seconds: float
    error: str | None = None
    memoized: bool = False  # the inner loops were skipped (and the run-time check held)
    pooled: bool = False  # ran in a forked child of a warm worker, not a new interpreter
    stopped: str | None = None  # "timeout" or "interrupted": flor killed it


class ReplayInterrupted(KeyboardInterrupt):
    """A replay stopped by Ctrl-C, SIGTERM or its cancel event: every running task was killed
    and its folders removed; the tasks that had finished keep their records."""

    def __init__(self, stopped: int, kept: int, results: list[TaskResult]) -> None:
        super().__init__(f"replay interrupted: {stopped} task(s) stopped, "
                         f"{kept} finished and kept")
        self.stopped, self.kept, self.results = stopped, kept, results


@dataclass
class _Replay:
    """What every task of one replay shares."""

    session: CatalogSession
    pool: ReplayPool | None
    modules: list[str]
    workers: int
    threads: int
    timeout: float | None  # resolve_task_timeout's setting
    cancel: threading.Event


def run_replay(session: CatalogSession, plan: ReplayPlan,
               progress: Callable[[TaskResult, int, int], None] | None = None,
               task_timeout: float | None = None,
               cancel: threading.Event | None = None) -> list[TaskResult]:
    """Execute every task of `plan`; failures are reported, the other tasks go on.

    `task_timeout`: seconds each task may run (0: no limit; None: FLOR_REPLAY_TASK_TIMEOUT,
    else from its estimate, see replay_task.py). Setting `cancel` from another thread stops
    the replay as Ctrl-C does: ReplayInterrupted once every task is stopped."""
    tasks = sorted(plan.tasks, key=lambda t: -t[1].seconds)  # longest first, as estimated
    replay = _prepare(session, plan, tasks, task_timeout, cancel)
    if tasks:
        remove_leftovers(session.project.home)
    executor = ThreadPoolExecutor(max_workers=replay.workers, thread_name_prefix="flor-replay")
    futures: list[Future] = []
    try:
        for slot, (run, seg) in enumerate(tasks):
            futures.append(executor.submit(_run_task, replay, run, seg, slot % replay.workers))
        results = _collect(futures, progress, replay.cancel)
    except BaseException as e:
        _stop(replay, executor, futures)
        if isinstance(e, KeyboardInterrupt):
            raise _interrupted(futures) from None
        raise
    executor.shutdown()
    session.refresh()
    return results


def _prepare(session: CatalogSession, plan: ReplayPlan, tasks: list,
             task_timeout: float | None, cancel: threading.Event | None) -> _Replay:
    workers = max(1, plan.workers)
    pool = session.replay_pool if tasks and pool_enabled() else None
    modules = [] if pool is None else (
        plan.modules or replay_modules(session.project.root, [r for r, _ in tasks]))
    return _Replay(session, pool, modules, workers, max(1, (os.cpu_count() or 1) // workers),
                   resolve_task_timeout(task_timeout), cancel or threading.Event())


def _collect(futures: list[Future], progress: Callable | None,
             cancel: threading.Event) -> list[TaskResult]:
    """Results as tasks finish; KeyboardInterrupt when `cancel` is set by another thread."""
    results: list[TaskResult] = []
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
        for future in done:
            results.append(future.result())
            if progress:
                progress(results[-1], len(results), len(futures))
        if pending and cancel.is_set():
            raise KeyboardInterrupt
    return results


def _stop(replay: _Replay, executor: ThreadPoolExecutor, futures: list[Future]) -> None:
    """Kill every running task, drop those not started, and wait until each thread has
    cleaned up after its task (a second Ctrl-C does not cut that short)."""
    replay.cancel.set()
    if replay.pool is not None:
        replay.pool.abort_imports()
    for future in futures:
        future.cancel()
    while True:
        try:
            executor.shutdown(wait=True, cancel_futures=True)
            return
        except KeyboardInterrupt:
            continue


def _interrupted(futures: list[Future]) -> ReplayInterrupted:
    results = [f.result() for f in futures
               if f.done() and not f.cancelled() and f.exception() is None]
    stopped = sum(f.cancelled() for f in futures) + sum(r.stopped == INTERRUPTED
                                                        for r in results)
    return ReplayInterrupted(stopped, sum(r.ok for r in results), results)


def replay_modules(root: Path, runs: Iterable[RunPlan]) -> list[str]:
    """What the pool's workers import ahead: the patched scripts' heavy imports."""
    runs = list(runs)
    entries = _entries_at(root, {(r.vid, str(Path(r.filename).parent)) for r in runs})
    modules: list[str] = []
    seen: set[tuple[str, str]] = set()
    for run in runs:
        if (run.vid, run.filename) in seen:
            continue
        seen.add((run.vid, run.filename))
        local = local_names(entries.get((run.vid, str(Path(run.filename).parent)), []))
        modules.extend(preload_modules(run.patched or "", local))
    return list(dict.fromkeys(modules))


def warm_pool(session: CatalogSession, workers: int | None = None) -> threading.Thread:
    """Start warming the session's replay workers in a background thread (join() it to wait);
    a thread that does nothing when the pool is off."""
    if not pool_enabled():
        thread = threading.Thread(target=lambda: None, name="flor-replay-warm", daemon=True)
        thread.start()
        return thread
    workers = max(1, workers or os.cpu_count() or 1)
    modules = warm_modules(session)  # the catalog is read here, not in the thread
    threads = max(1, (os.cpu_count() or 1) // workers)
    return session.replay_pool.warm_async(workers, modules, threads)


def warm_modules(session: CatalogSession) -> list[str]:
    """What to import ahead before any plan: torch if installed, and the heavy imports of the
    working-tree version of every script the project's runs ran."""
    modules = ["torch", *ALSO_WARM["torch"]] if torch_installed() else []
    root = session.project.root
    rows = session.con.execute("SELECT DISTINCT filename FROM runs").fetchall()
    for (filename,) in rows:
        path = root / (filename or "")
        if not filename or not path.is_file():
            continue
        try:
            source = path.read_text()
            local = local_names(os.listdir(path.parent))
        except OSError:
            continue
        modules.extend(preload_modules(source, local))
    return list(dict.fromkeys(modules))


_ENTRIES: dict[tuple[Path, str, str], list[str]] = {}  # a commit's tree never changes


def _entries_at(root: Path, keys: set[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """(vid, folder) -> the names of the files and folders in `folder` of commit `vid`, read
    through one open repository; a key whose folder is missing is left out."""
    from flor import gitrepo

    missing = [k for k in keys if (root, *k) not in _ENTRIES]
    if missing:
        for (vid, folder), names in gitrepo.folder_entries(root, sorted(missing)).items():
            _ENTRIES[(root, vid, folder)] = names
    return {k: _ENTRIES[(root, *k)] for k in keys if (root, *k) in _ENTRIES}


def _run_task(replay: _Replay, run: RunPlan, seg: Segment, slot: int) -> TaskResult:
    started = time.monotonic()
    zygote = None if replay.cancel.is_set() else _acquire(replay)
    if replay.cancel.is_set():
        if zygote is not None:
            replay.pool.release(zygote)
        return TaskResult(run, seg, False, 0.0, "stopped: the replay was interrupted",
                          stopped=INTERRUPTED)
    try:
        return _attempt(replay, run, seg, slot, zygote, started)
    finally:
        if zygote is not None:
            replay.pool.release(zygote)


def _acquire(replay: _Replay) -> Zygote | None:
    """A warm worker for one task; None: start one interpreter for it instead."""
    if replay.pool is None:
        return None
    try:
        return replay.pool.acquire(replay.workers, replay.modules, replay.threads,
                                   replay.cancel)
    except PoolError as e:
        if not replay.cancel.is_set():
            warnings.warn(f"replay workers unavailable, starting a process per task: {e}",
                          RuntimeWarning, stacklevel=2)
        return None


def _attempt(replay: _Replay, run: RunPlan, seg: Segment, slot: int, zygote: Zygote | None,
             started: float) -> TaskResult:
    """Materialise the version, run the task (again in full if memoization proved unsafe),
    and keep its records only if it succeeded."""
    replay_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = replay.session.project.home / "replays-staging" / replay_id
    pooled = zygote is not None
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        claim(Path(tmp))
        tree = Path(tmp) / "tree"
        try:
            _materialise(replay.session.project.root, run.vid, tree)
            (tree / run.filename).write_text(run.patched or "")
            done = _launch(replay, run, seg, slot, zygote, tree, staging, replay_id, run.memoize)
            memoized = run.memoize and done.rc == 0 and not done.stopped
            if run.memoize and done.rc == MEMO_UNSAFE_EXIT and not done.stopped:
                done = _launch(replay, run, seg, slot, zygote, tree, staging, replay_id, False)
        except (OSError, RuntimeError) as e:  # PoolError included: the worker died
            shutil.rmtree(staging, ignore_errors=True)
            return _failed(replay, run, seg, started, f"version {run.vid[:10]}: {e}", pooled)
    if done.stopped or done.rc != 0:
        shutil.rmtree(staging, ignore_errors=True)
        return _failed(replay, run, seg, started, _why(replay, run, seg, done), pooled,
                       INTERRUPTED if done.stopped == "cancelled" else done.stopped)
    final = Path(run.run_dir) / "replays" / replay_id
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    unclaim(final)
    return TaskResult(run, seg, True, time.monotonic() - started, memoized=memoized,
                      pooled=pooled)


def _launch(replay: _Replay, run: RunPlan, seg: Segment, slot: int, zygote: Zygote | None,
            tree: Path, staging: Path, replay_id: str, memoize: bool) -> Exit:
    """One process of the task, from a fresh staging folder."""
    if replay.cancel.is_set():  # stopped while its tree was being made
        return Exit(-9, "cancelled", "", None)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    claim(staging)
    env = _task_env(run, seg, replay_id, staging, replay.threads, memoize,
                    zygote.slot if zygote is not None else slot,
                    None if zygote is not None else os.getpid())
    estimate = seg.seconds if memoize else seg.unmemoized
    launch = Launch([run.filename, *run.argv[1:]], tree, env, staging, replay.threads,
                    task_limit(replay.timeout, estimate))
    if zygote is not None:
        return run_pooled(zygote, launch, replay.cancel)
    return run_process(launch, replay.cancel)


def _why(replay: _Replay, run: RunPlan, seg: Segment, done: Exit) -> str:
    version = f"version {run.vid[:10]}"
    if done.stopped == "timeout":
        return f"{version} {timeout_message(done.limit, replay.timeout, seg.unmemoized)}"
    if done.stopped:
        return f"{version} stopped: the replay was interrupted"
    tail = "\n".join(done.stderr.strip().splitlines()[-TRACEBACK_LINES:])
    return f"{version} exited {done.rc}: {tail}"


def _failed(replay: _Replay, run: RunPlan, seg: Segment, started: float, error: str,
            pooled: bool, stopped: str | None = None) -> TaskResult:
    if stopped is None and replay.cancel.is_set():
        stopped = INTERRUPTED  # it failed because the replay was being stopped
    return TaskResult(run, seg, False, time.monotonic() - started, error, pooled=pooled,
                      stopped=stopped)


def _task_env(run: RunPlan, seg: Segment, replay_id: str, staging: Path, threads: int,
              memoize: bool, slot: int, parent: int | None) -> dict[str, str]:
    """The task's environment; `parent`: the pid a process of its own must die with."""
    spec = {"run_dir": run.run_dir, "replay_id": replay_id, "loop": run.loop,
            "start": seg.start, "stop": seg.stop, "names": run.names, "out_dir": str(staging),
            "memoize": memoize, "parent": parent}
    env = {**os.environ, "FLOR_REPLAY": json.dumps(spec), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "FLOR_PROJECT_ROOT": str(run.project_root)}
    gpus = os.environ.get("FLOR_REPLAY_GPUS")
    if gpus:  # one GPU per worker slot, round robin
        ids = gpus.split(",")
        env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    return env


def _materialise(root: Path, vid: str, tree: Path) -> None:
    """Version `vid` in the new folder `tree`, which the temporary folder's end removes."""
    from flor import gitrepo

    gitrepo.materialise(root, vid, tree)
