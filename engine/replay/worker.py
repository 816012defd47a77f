"""Run one ReplayTask on this machine: its version in a temporary tree, one process (two when a
memoized replay proves unsafe and runs again in full), and its records moved into the run only
if it succeeded.

    result = perform_task(task, launcher, cancel, slot=0, parent=os.getpid())

The records go to `<home>/replays-staging/<task id>` and are moved to
`<run_dir>/replays/<task id>` when the process exits 0, so a failed task leaves nothing behind
and ingest never sees half a replay. The user's working tree and their repository's list of
worktrees are never touched: the tree is a repository of its own in a temporary folder
(gitrepo.materialise). Every executor runs tasks through here; only `launcher` (a warm
worker's fork, or a new interpreter) differs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flor import protocol

from .leftovers import TMP_PREFIX, claim, unclaim
from .model import INTERRUPTED, ReplayTask, TaskResult
from .process import Exit, Launch, task_limit, timeout_message

TRACEBACK_LINES = 8
Launcher = Callable[[Launch, threading.Event], Exit]
Materialise = Callable[[Path, str, Path], None]


def perform_task(task: ReplayTask, launcher: Launcher, cancel: threading.Event, *,
                 slot: int = 0, parent: int | None = None, pooled: bool = False,
                 materialise: Materialise | None = None) -> TaskResult:
    """Run `task` with `launcher`; `parent`: the pid a process of its own must die with;
    `materialise(project_root, vid, tree)` writes the version's tree (default: from the
    project's repository; an executor whose hosts cannot read it brings the code another way)."""
    started = time.monotonic()
    if cancel.is_set():
        return _failed(task, started, "stopped: the replay was interrupted", pooled, INTERRUPTED)
    staging = Path(task.home) / protocol.REPLAYS_STAGING_DIR / task.task_id
    run = _Attempt(task, launcher, cancel, slot, parent, staging)
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        claim(Path(tmp))
        tree = Path(tmp) / "tree"
        try:
            (materialise or _materialise)(Path(task.project_root), task.vid, tree)
            (tree / task.filename).write_text(task.source)
            done = run.launch(tree, task.memoize)
            memoized = task.memoize and done.rc == 0 and not done.stopped
            if task.memoize and done.rc == protocol.EXIT_MEMO_UNSAFE and not done.stopped:
                done = run.launch(tree, False)
        except (OSError, RuntimeError) as e:  # a warm worker that died is a RuntimeError
            shutil.rmtree(staging, ignore_errors=True)
            return _failed(task, started, f"version {task.vid[:10]}: {e}", pooled,
                           INTERRUPTED if cancel.is_set() else None)
    if done.stopped or done.rc != 0:
        shutil.rmtree(staging, ignore_errors=True)
        stopped = INTERRUPTED if done.stopped == "cancelled" or cancel.is_set() else done.stopped
        return _failed(task, started, _why(task, done), pooled, stopped)
    final = Path(task.run_dir) / protocol.REPLAYS_DIR / task.task_id
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    unclaim(final)
    return TaskResult(task, True, time.monotonic() - started, memoized=memoized, pooled=pooled)


class _Attempt:
    """One process of the task at a time, each from a fresh staging folder."""

    def __init__(self, task: ReplayTask, launcher: Launcher, cancel: threading.Event,
                 slot: int, parent: int | None, staging: Path) -> None:
        self.task, self.launcher, self.cancel = task, launcher, cancel
        self.slot, self.parent, self.staging = slot, parent, staging

    def launch(self, tree: Path, memoize: bool) -> Exit:
        if self.cancel.is_set():  # stopped while its tree was being made
            return Exit(-9, "cancelled", "", None)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        claim(self.staging)
        task = self.task
        estimate = task.estimate if memoize else task.full_estimate
        setting = None if task.timeout is None else (task.timeout or float("inf"))
        launch = Launch([task.filename, *task.argv], tree, task_env(task, self.staging, memoize,
                                                                    self.slot, self.parent),
                        self.staging, task.threads, task_limit(setting, estimate))
        return self.launcher(launch, self.cancel)


def task_env(task: ReplayTask, staging: Path, memoize: bool, slot: int,
             parent: int | None) -> dict[str, str]:
    """The environment of a task's process: the protocol's spec and the thread limits."""
    spec = protocol.ReplaySpec(
        run_dir=Path(task.run_dir), replay_id=task.task_id, loop=task.loop, start=task.start,
        stop=task.stop, names=frozenset(task.names), staging_dir=staging, memoize=memoize,
        parent=parent)
    env = {**os.environ, protocol.REPLAY_ENV: spec.to_json(),
           "OMP_NUM_THREADS": str(task.threads), "MKL_NUM_THREADS": str(task.threads),
           protocol.PROJECT_ROOT_ENV: task.project_root}
    gpus = os.environ.get("FLOR_REPLAY_GPUS")
    if gpus:  # one GPU per worker slot, round robin
        ids = gpus.split(",")
        env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    return env


def _why(task: ReplayTask, done: Exit) -> str:
    version = f"version {task.vid[:10]}"
    if done.stopped == "timeout":
        setting = None if task.timeout is None else (task.timeout or float("inf"))
        return f"{version} {timeout_message(done.limit, setting, task.full_estimate)}"
    if done.stopped:
        return f"{version} stopped: the replay was interrupted"
    tail = "\n".join(done.stderr.strip().splitlines()[-TRACEBACK_LINES:])
    if done.rc == protocol.EXIT_BAD_TASK:
        return f"{version}: the replay worker refused the task: {tail}"
    return f"{version} exited {done.rc}: {tail}"


def _failed(task: ReplayTask, started: float, error: str, pooled: bool,
            stopped: str | None = None) -> TaskResult:
    return TaskResult(task, False, time.monotonic() - started, error, pooled=pooled,
                      stopped=stopped)


def _materialise(root: Path, vid: str, tree: Path) -> None:
    """Version `vid` in the new folder `tree`, which the temporary folder's end removes."""
    from flor import gitrepo

    gitrepo.materialise(root, vid, tree)
