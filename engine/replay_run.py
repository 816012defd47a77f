"""Run a replay plan: each segment in its own copy of the run's version, K at a time.

A segment's records go to a staging directory and are moved under the run
(`runs/<key>/replays/<id>`) only when the process succeeded, so a failed segment leaves
nothing behind and ingest never sees half a replay. The user's working tree is never touched,
and neither is their repository's list of worktrees: the copy is a repository of its own, in a
temporary folder (gitrepo.materialise).

Segments run in the session's warm worker pool (replay_pool.py: a zygote per worker that has
imported the scripts' heavy modules forks a child per segment), or, with FLOR_REPLAY_POOL=0,
on a platform without fork, or if the pool cannot start, as one new interpreter each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .catalog_session import CatalogSession
from .replay_plan import ReplayPlan, RunPlan, Segment
from .replay_pool import (
    ALSO_WARM,
    PoolError,
    ReplayPool,
    Task,
    local_names,
    pool_enabled,
    preload_modules,
    torch_installed,
)

TRACEBACK_LINES = 8
MEMO_UNSAFE_EXIT = 3  # flor's replay process: memoization turned out unsafe


@dataclass
class TaskResult:
    run: RunPlan
    segment: Segment
    ok: bool
    seconds: float
    error: str | None = None
    memoized: bool = False  # the inner loops were skipped (and the run-time check held)
    pooled: bool = False  # ran in a forked child of a warm worker, not a new interpreter


@dataclass
class _Outcome:
    returncode: int
    stderr: str


def run_replay(session: CatalogSession, plan: ReplayPlan,
               progress: Callable[[TaskResult, int, int], None] | None = None) -> list[TaskResult]:
    """Execute every task of `plan`; failures are reported, the other tasks go on."""
    tasks = sorted(plan.tasks, key=lambda t: -t[1].seconds)  # longest first, as estimated
    workers = max(1, plan.workers)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = session.replay_pool if tasks and pool_enabled() else None
    modules = [] if pool is None else (
        plan.modules or replay_modules(session.project.root, [r for r, _ in tasks]))
    results = []
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = [executor.submit(_run_task, session, run, seg, slot % workers, threads,
                                   pool, modules, workers)
                   for slot, (run, seg) in enumerate(tasks)]
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results.append(result)
            if progress:
                progress(result, done, len(tasks))
    session.refresh()
    return results


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


def _run_task(session: CatalogSession, run: RunPlan, seg: Segment, slot: int, threads: int,
              pool: ReplayPool | None, modules: list[str], workers: int) -> TaskResult:
    started = time.monotonic()
    replay_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = session.project.home / "replays-staging" / replay_id
    zygote = None
    if pool is not None:
        try:
            zygote = pool.acquire(workers, modules, threads)
        except PoolError as e:  # start one interpreter for this task instead
            warnings.warn(f"replay workers unavailable, starting a process per task: {e}",
                          RuntimeWarning, stacklevel=2)
    try:
        with tempfile.TemporaryDirectory(prefix="flor-replay-") as tmp:
            tree = Path(tmp) / "tree"

            def launch(memoize: bool) -> _Outcome:
                env = _task_env(run, seg, replay_id, staging, threads, memoize,
                                zygote.slot if zygote is not None else slot)
                if zygote is None:
                    argv = [sys.executable, run.filename, *run.argv[1:]]
                    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True,
                                          text=True)
                    return _Outcome(proc.returncode, proc.stderr)
                out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
                rc = zygote.run(Task(cwd=str(tree), argv=[run.filename, *run.argv[1:]],
                                     env=env, stdout=str(out), stderr=str(err),
                                     threads=threads))
                return _Outcome(rc, _read_tail(err))

            try:
                _materialise(session.project.root, run.vid, tree)
                (tree / run.filename).write_text(run.patched or "")
                outcome = launch(run.memoize)
                memoized = run.memoize and outcome.returncode == 0
                if run.memoize and outcome.returncode == MEMO_UNSAFE_EXIT:  # replay it in full
                    shutil.rmtree(staging, ignore_errors=True)
                    outcome = launch(False)
            except (OSError, RuntimeError) as e:  # PoolError included: the worker died
                shutil.rmtree(staging, ignore_errors=True)
                return TaskResult(run, seg, False, time.monotonic() - started,
                                  f"version {run.vid[:10]}: {e}", pooled=zygote is not None)
    finally:
        if zygote is not None:
            pool.release(zygote)
    if outcome.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join(outcome.stderr.strip().splitlines()[-TRACEBACK_LINES:])
        return TaskResult(run, seg, False, time.monotonic() - started,
                          f"version {run.vid[:10]} exited {outcome.returncode}: {tail}",
                          pooled=zygote is not None)
    final = Path(run.run_dir) / "replays" / replay_id
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    return TaskResult(run, seg, True, time.monotonic() - started, memoized=memoized,
                      pooled=zygote is not None)


def _task_env(run: RunPlan, seg: Segment, replay_id: str, staging: Path, threads: int,
              memoize: bool, slot: int) -> dict[str, str]:
    spec = {"run_dir": run.run_dir, "replay_id": replay_id, "loop": run.loop,
            "start": seg.start, "stop": seg.stop, "names": run.names, "out_dir": str(staging),
            "memoize": memoize}
    env = {**os.environ, "FLOR_REPLAY": json.dumps(spec), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "FLOR_PROJECT_ROOT": str(run.project_root)}
    gpus = os.environ.get("FLOR_REPLAY_GPUS")
    if gpus:  # one GPU per worker slot, round robin
        ids = gpus.split(",")
        env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    return env


def _read_tail(path: Path, limit: int = 20000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _materialise(root: Path, vid: str, tree: Path) -> None:
    """Version `vid` in the new folder `tree`, which the temporary folder's end removes."""
    from flor import gitrepo

    gitrepo.materialise(root, vid, tree)
