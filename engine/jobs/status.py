"""What the queue holds, as rows for `florsql jobs`, the shell's `.jobs` and the SQL `jobs`
table (engine/catalog/mirror.py loads `queue_tables` into every connection).

    columns, rows = job_listing(queue, batch=None)
    line = progress_line(queue)            # "6 jobs: 2 running, 3 queued, 1 finished"
    text = job_log(queue, job_id)          # its last attempt's output and error
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from flor import protocol

from ..errors import IngestWarning
from .model import ENDED, FINISHED, QUEUED, RUNNING
from .store import QUEUE_FILE, JobQueue

LISTING = ("id", "batch", "status", "attempts", "worker", "args", "tstamp", "seconds", "error")
STATUS_ORDER = (RUNNING, QUEUED, FINISHED)


def job_listing(queue: JobQueue, batch: str | None = None,
                limit: int = 200) -> tuple[list[str], list[tuple]]:
    """The jobs, newest batch last, as a table: one row per job."""
    where, params = ("WHERE batch = ?", [batch]) if batch else ("", [])
    rows = queue.read(f"SELECT * FROM (SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?) "
                      "ORDER BY id", [*params, limit])
    now = dt.datetime.now().timestamp()
    out = []
    for r in rows:
        args = " ".join(f"{k}={v}" for k, v in json.loads(r["args"]).items())
        end = r["ended_at"] or (now if r["status"] == RUNNING else None)
        secs = round(end - r["started_at"], 1) if end and r["started_at"] else None
        error = (r["error"] or "").strip().splitlines()
        out.append((r["id"], r["batch"] if r["kind"] == "batch" else f"replay:{r['batch']}",
                    r["status"], r["attempts"], r["worker"], args, r["tstamp"], secs,
                    error[0][:80] if error else None))
    return list(LISTING), out


def progress_line(queue: JobQueue, batch: str | None = None) -> str:
    where, params = ("WHERE batch = ?", [batch]) if batch else ("", [])
    counts = Counter(r["status"] for r in queue.read(f"SELECT status FROM jobs {where}", params))
    total = sum(counts.values())
    ordered = sorted(counts, key=lambda s: (STATUS_ORDER + ENDED).index(s)
                     if s in STATUS_ORDER + ENDED else 99)
    parts = ", ".join(f"{counts[s]} {s}" for s in ordered)
    servers = queue.live_servers()
    slots = sum(s.slots for s in servers)
    serving = (f"{len(servers)} server(s), {slots} worker(s)" if servers
               else "no server running (start one: florsql serve)")
    return f"{total} job(s): {parts or 'none'}; {serving}"


def all_ended(queue: JobQueue, batch: str | None = None) -> bool:
    where, params = ("AND batch = ?", [batch]) if batch else ("", [])
    marks = ",".join("?" * len(ENDED))
    left = queue.read(f"SELECT count(*) AS n FROM jobs WHERE status NOT IN ({marks}) {where}",
                      [*ENDED, *params])
    return left[0]["n"] == 0


def job_log(queue: JobQueue, job_id: int, attempt: int | None = None) -> str:
    """A job's output: the stdout and stderr of its attempt (the last by default), then how
    it ended. KeyError when there is no such job or attempt."""
    jobs = queue.read("SELECT * FROM jobs WHERE id = ?", [job_id])
    if not jobs:
        raise KeyError(f"no job {job_id} in {queue.path}; `florsql jobs` lists them")
    job = jobs[0]
    n = attempt or job["attempts"]
    rows = queue.read("SELECT * FROM attempts WHERE job_id = ? AND n = ?", [job_id, n])
    if not rows:
        return f"job {job_id}: {job['status']}, not started yet\n"
    a = rows[0]
    folder = Path(a["log_dir"])
    parts = [f"job {job_id} attempt {n} of {job['attempts']}: {a['status']} on "
             f"{a['host']}/{a['worker']}" + (f", run {a['tstamp']}" if a["tstamp"] else "")]
    for name in (protocol.STDOUT_LOG, protocol.STDERR_LOG):
        text = _read(folder / name)
        parts.append(f"--- {name} ({folder / name})" + ("\n" + text.rstrip() if text else
                                                        " (empty)"))
    if a["error"]:
        parts.append(f"--- error\n{a['error'].rstrip()}")
    return "\n".join(parts) + "\n"


def queue_tables(queue: JobQueue) -> dict[str, list[dict[str, Any]]]:
    """The `jobs` and `job_attempts` tables as the catalog shows them."""
    jobs = [_job_row(r) for r in queue.read("SELECT * FROM jobs ORDER BY id")]
    attempts = [_attempt_row(r) for r in queue.read(
        "SELECT * FROM attempts ORDER BY job_id, n")]
    return {"jobs": jobs, "job_attempts": attempts}


def _job_row(r: Any) -> dict[str, Any]:
    return {"id": r["id"], "kind": r["kind"], "batch": r["batch"], "script": r["script"],
            "args": r["args"], "vid": r["vid"], "status": r["status"],
            "done": int(r["status"] == FINISHED), "attempts": r["attempts"],
            "worker": r["worker"], "host": r["host"], "pid": r["pid"],
            "queued": _time(r["queued_at"]), "started": _time(r["started_at"]),
            "ended": _time(r["ended_at"]), "exit_code": r["exit_code"],
            "tstamp": _tstamp(r["tstamp"]), "error": r["error"], "path": r["path"]}


def _attempt_row(r: Any) -> dict[str, Any]:
    return {"job_id": r["job_id"], "attempt": r["n"], "status": r["status"],
            "worker": r["worker"], "host": r["host"], "pid": r["pid"],
            "started": _time(r["started_at"]), "ended": _time(r["ended_at"]),
            "exit_code": r["exit_code"], "tstamp": _tstamp(r["tstamp"]), "error": r["error"]}


def _time(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def _tstamp(text: str | None) -> dt.datetime | None:
    return None if not text else dt.datetime.fromisoformat(text)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class QueueTables:
    """The SQL `jobs` and `job_attempts` tables of a project (CatalogSession.add_side_tables).
    A project without a queue has both, empty; a reader never creates the queue file."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / QUEUE_FILE

    def stamp(self) -> object:
        out = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(f"{self.path}{suffix}")
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        if not self.path.exists():
            return {"jobs": [], "job_attempts": []}
        try:
            return queue_tables(JobQueue(self.path))
        except sqlite3.Error as exc:
            warnings.warn(f"cannot read the job queue {self.path} ({exc}); the jobs table is "
                          "empty until it can be read", IngestWarning, stacklevel=2)
            return {"jobs": [], "job_attempts": []}
