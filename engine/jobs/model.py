"""The records of the job queue: a queued job, one attempt at it, a live server.

    Job        one row of `jobs`: a batch job (a training run with its args at a vid) or a
               replay task handed to the queue by a replay (FLOR_EXECUTOR=queue)
    Attempt    one try at a job by one worker; a killed try stays visible as `killed`
    ServerRow  a running `florsql serve`: who it is, its slots, when it last said it lives

A job's status moves queued -> running -> finished | failed | timeout | cancelled, and back to
queued when the worker or server running it died (its attempt says `killed`) or a server
stopped it on its way out (its attempt says `interrupted`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BATCH, REPLAY = "batch", "replay"
REPLAY_PRIORITY = 0  # replay tasks of an interactive query go ahead of batch jobs
BATCH_PRIORITY = 10

QUEUED, RUNNING, FINISHED, FAILED = "queued", "running", "finished", "failed"
TIMEOUT, CANCELLED = "timeout", "cancelled"
KILLED, INTERRUPTED = "killed", "interrupted"  # attempt statuses: the job goes back to queued
ENDED = (FINISHED, FAILED, TIMEOUT, CANCELLED)
MAX_KILLED = 3  # a job whose worker is killed this often fails (the OOM killer, say)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str  # BATCH or REPLAY
    batch: str  # the batch name: the runid of its runs (`--flor NAME`)
    script: str  # relative to the project root
    args: dict[str, Any]  # flor.arg values (batch); empty for replay tasks
    vid: str  # the code it runs: a snapshot taken when it was queued
    status: str
    attempts: int
    failures: int
    killed: int
    time_limit: float | None  # seconds; None: no limit
    payload: str | None  # a replay task, as JSON
    cancel: bool

    def argv(self) -> list[str]:
        """The script's arguments: `--flor NAME --kwargs k=v ...` (see instrument/args.py)."""
        out = ["--flor", self.batch]
        if self.args:
            out += ["--kwargs", *(f"{k}={format_value(v)}" for k, v in self.args.items())]
        return out

    def flags(self) -> str:
        """FlorDB's line for a job: `--hidden 100 --lr 0.0001`."""
        return " ".join(f"--{k} {format_value(v)}" for k, v in self.args.items())


@dataclass(frozen=True)
class Attempt:
    job_id: int
    n: int
    server: str
    worker: str
    log_dir: str


@dataclass(frozen=True)
class ServerRow:
    id: str
    host: str
    pid: int
    slots: int
    executor: str
    heartbeat: float


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the worker that ran it saw it."""

    status: str  # FINISHED, FAILED, TIMEOUT, CANCELLED, KILLED or INTERRUPTED
    exit_code: int | None
    error: str | None = None
    result: str | None = None  # a replay task's TaskResult, as JSON


def format_value(value: Any) -> str:
    """A job arg as the command line gets it: 0.0001, 100, True, text."""
    return value if isinstance(value, str) else str(value)
