"""Run a replay plan: each segment in its own git worktree at the run's vid, K at a time.

A segment's records go to a staging directory and are moved under the run
(`runs/<key>/replays/<id>`) only when the process succeeded, so a failed segment leaves
nothing behind and ingest never sees half a replay. The user's working tree is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .catalog_session import CatalogSession
from .replay_plan import ReplayPlan, RunPlan, Segment

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


def run_replay(session: CatalogSession, plan: ReplayPlan,
               progress: Callable[[TaskResult, int, int], None] | None = None) -> list[TaskResult]:
    """Execute every task of `plan`; failures are reported, the other tasks go on."""
    tasks = plan.tasks
    threads = max(1, (os.cpu_count() or 1) // max(1, plan.workers))
    results = []
    with ThreadPoolExecutor(max_workers=max(1, plan.workers)) as pool:
        futures = [pool.submit(_run_task, session, run, seg, slot % max(1, plan.workers),
                               threads) for slot, (run, seg) in enumerate(tasks)]
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results.append(result)
            if progress:
                progress(result, done, len(tasks))
    session.refresh()
    return results


def _run_task(session: CatalogSession, run: RunPlan, seg: Segment, slot: int,
              threads: int) -> TaskResult:
    started = time.monotonic()
    replay_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    staging = session.project.home / "replays-staging" / replay_id
    with tempfile.TemporaryDirectory(prefix="flor-replay-") as tmp:
        worktree = Path(tmp) / "tree"
        try:
            _add_worktree(session.project.root, worktree, run.vid)
            (worktree / run.filename).write_text(run.patched or "")
            proc = _launch(worktree, run, seg, replay_id, staging, slot, threads, run.memoize)
            memoized = run.memoize and proc.returncode == 0
            if run.memoize and proc.returncode == MEMO_UNSAFE_EXIT:  # replay it in full
                shutil.rmtree(staging, ignore_errors=True)
                proc = _launch(worktree, run, seg, replay_id, staging, slot, threads, False)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            return TaskResult(run, seg, False, time.monotonic() - started,
                              f"version {run.vid[:10]}: {e}")
        finally:
            _remove_worktree(session.project.root, worktree)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-TRACEBACK_LINES:])
        return TaskResult(run, seg, False, time.monotonic() - started,
                          f"version {run.vid[:10]} exited {proc.returncode}: {tail}")
    final = Path(run.run_dir) / "replays" / replay_id
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    return TaskResult(run, seg, True, time.monotonic() - started, memoized=memoized)


def _launch(worktree: Path, run: RunPlan, seg: Segment, replay_id: str, staging: Path,
            slot: int, threads: int, memoize: bool) -> subprocess.CompletedProcess:
    spec = {"run_dir": run.run_dir, "replay_id": replay_id, "loop": run.loop,
            "start": seg.start, "stop": seg.stop, "names": run.names, "out_dir": str(staging),
            "memoize": memoize}
    env = {**os.environ, "FLOR_REPLAY": json.dumps(spec), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "FLOR_PROJECT_ROOT": str(run.project_root)}
    gpus = os.environ.get("FLOR_REPLAY_GPUS")
    if gpus:  # one GPU per worker slot, round robin
        ids = gpus.split(",")
        env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    argv = [sys.executable, run.filename, *run.argv[1:]]
    return subprocess.run(argv, cwd=worktree, env=env, capture_output=True, text=True)


def _add_worktree(root: Path, path: Path, vid: str) -> None:
    proc = subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), vid],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git worktree add failed for {vid[:10]}: {proc.stderr.strip()}")


def _remove_worktree(root: Path, path: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=root,
                   capture_output=True, text=True)
    subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True, text=True)
