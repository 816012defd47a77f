"""Run one batch job: its script at its vid, recorded as a run of the project.

    outcome = perform_job(JobRun(job, attempt, project_root, home), cancel, gpu="0")

The rules, which docs and README state for users:
- the code is the job's vid (the snapshot `flor.batch` took), checked out into a temporary
  folder that is a repository of its own (gitrepo.materialise): the user's working tree, index
  and worktree list are never touched, and edits made after queueing do not leak in;
- the run is recorded as a run of the project: its projid is the project directory's name, it
  goes to the project's flor home (FLOR_HOME when set), and its vid is the job's (FLOR_JOB,
  read by instrument/run.py);
- the process starts in the tree's top folder, and every top-most path that git ignores in the
  project (a `data/` folder, a downloaded dataset, `outputs/`) is linked into the tree at the
  same place, so `open("data/train.csv")` reads the project's file, and a file it writes there
  lands in the project, as if it ran in the project directory. `.flor` and `.git` are not
  linked (the records go through FLOR_HOME, and the tree has its own `.git`);
- the arguments are `--flor BATCH --kwargs k=v ...`; stdout and stderr go to the attempt's
  folder (`<home>/jobs/<id>/<attempt>/`), keeping the last LOG_CAP bytes of each;
- CUDA_VISIBLE_DEVICES is the worker's GPU, or empty for a CPU worker (on Ray: the GPU Ray
  gave the task).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flor import protocol

from ..replay.leftovers import TMP_PREFIX, claim
from ..replay.process import Exit, Launch, run_process
from .model import (
    CANCELLED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    KILLED,
    TIMEOUT,
    Attempt,
    Job,
    Outcome,
)

TRACEBACK_LINES = 12
NEVER_LINKED = {".git", protocol.HOME_DIRNAME}
Materialise = Callable[[Path, str, Path], None]


@dataclass(frozen=True)
class JobRun:
    """A claimed job and where it runs."""

    job: Job
    attempt: Attempt
    project_root: Path
    home: Path


class StopReason:
    """Why a worker stops a running job: set before the cancel event is set."""

    def __init__(self) -> None:
        self.reason: str | None = None  # CANCELLED (the user) or INTERRUPTED (server stopping)


def perform_job(run: JobRun, cancel: threading.Event, stop: StopReason, *,
                gpu: str | None = None, parent: int | None = None,
                materialise: Materialise | None = None,
                linked_root: Path | None = None) -> Outcome:
    """Run the job's script in a fresh tree of its vid until it ends, is stopped or times out.
    `linked_root`: the project whose ignored paths are linked in (None on a node without it)."""
    logs = Path(run.attempt.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        claim(Path(tmp))
        tree = Path(tmp) / "tree"
        try:
            (materialise or _materialise)(run.project_root, run.job.vid, tree)
            if linked_root is not None:
                link_ignored(linked_root, tree, run.home)
        except (OSError, RuntimeError) as exc:  # gitrepo.GitError is a RuntimeError
            return Outcome(FAILED, None, f"version {run.job.vid[:10]}: {exc}")
        if not (tree / run.job.script).is_file():
            return Outcome(FAILED, None, f"{run.job.script} is not a file of version "
                                         f"{run.job.vid[:10]}")
        done = run_process(_launch(run, tree, logs, gpu, parent), cancel)
    return outcome_of(done, stop, logs)


def run_job_in_tree(tree: Path, run: JobRun, gpu: str | None) -> Outcome:
    """The job in a tree another executor made (a Ray worker): no cancel from here, the
    executor kills the whole worker."""
    logs = Path(run.attempt.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    if (run.project_root / ".git").exists():  # a node that sees the project: its data too
        link_ignored(run.project_root, tree, run.home)
    done = run_process(_launch(run, tree, logs, gpu, os.getpid()), threading.Event())
    return outcome_of(done, StopReason(), logs)


def _launch(run: JobRun, tree: Path, logs: Path, gpu: str | None, parent: int | None) -> Launch:
    spec = protocol.JobSpec(project_root=run.project_root, vid=run.job.vid, job_id=run.job.id,
                            attempt=run.attempt.n, report=logs / protocol.JOB_REPORT_FILE,
                            parent=parent)
    env = {**os.environ, protocol.JOB_ENV: spec.to_json(), protocol.HOME_ENV: str(run.home),
           protocol.PROJECT_ROOT_ENV: str(run.project_root)}  # as a replay task gets it
    if gpu is not None:  # "" hides every GPU from a CPU worker; None keeps Ray's choice
        env["CUDA_VISIBLE_DEVICES"] = gpu
    env.pop(protocol.REPLAY_ENV, None)
    limit = run.job.time_limit if run.job.time_limit and run.job.time_limit > 0 else None
    return Launch([run.job.script, *run.job.argv()], tree, env, logs, 1, limit)


def outcome_of(done: Exit, stop: StopReason, logs: Path) -> Outcome:
    """The attempt's status from its process's end and from why the worker stopped it."""
    if done.stopped == "timeout":
        return Outcome(TIMEOUT, done.rc, f"stopped after its time limit of {done.limit:g} s")
    if done.stopped:
        reason = stop.reason or INTERRUPTED
        return Outcome(reason, done.rc, "cancelled" if reason == CANCELLED
                       else "stopped by its server; queued again")
    if done.rc == 0:
        return Outcome(FINISHED, 0)
    if done.rc < 0:  # a signal nobody here sent: kill -9, the OOM killer
        return Outcome(KILLED, done.rc, f"its process was killed by signal {-done.rc}; "
                                        "queued again")
    tail = "\n".join(done.stderr.strip().splitlines()[-TRACEBACK_LINES:])
    return Outcome(FAILED, done.rc, f"exited {done.rc}: {tail}" if tail else
                   f"exited {done.rc}; see {logs / protocol.STDOUT_LOG}")


def read_report(attempt: Attempt) -> dict | None:
    """The run's tstamp and pid, once the job's run has started."""
    try:
        doc = json.loads((Path(attempt.log_dir) / protocol.JOB_REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def link_ignored(project_root: Path, tree: Path, home: Path) -> list[str]:
    """Link each top-most path git ignores in the project into `tree` at the same place."""
    from flor import gitrepo

    listing = gitrepo.run(project_root, "ls-files", "-z", "--others", "--ignored",
                          "--exclude-standard", "--directory")
    linked = []
    for rel in filter(None, listing.split("\0")):
        rel = rel.rstrip("/")
        source, target = project_root / rel, tree / rel
        if rel.split("/")[0] in NEVER_LINKED or _inside(source, home) or os.path.lexists(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source, target, target_is_directory=source.is_dir())
        linked.append(rel)
    return linked


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _materialise(root: Path, vid: str, tree: Path) -> None:
    from flor import gitrepo

    gitrepo.materialise(root, vid, tree)
