"""The project's job queue: one SQLite file, `<flor home>/jobs.sqlite`.

    queue = JobQueue.open(home)
    ids = queue.enqueue([NewJob(...), ...])          # one transaction: all or none
    claim = queue.claim(server_id, worker="w0")     # atomically: no job runs twice
    queue.end(claim, Outcome(FINISHED, 0))           # or requeue on killed / interrupted
    queue.reap(server_id)                            # requeue jobs of servers that died

Why SQLite: a claim must be atomic across processes and servers, and the queue must survive
a crash of whoever wrote it. `BEGIN IMMEDIATE` takes SQLite's write lock before the row is
read, so two workers can never both see a job as queued; WAL keeps readers (the catalog's
`jobs` table, `florsql jobs --watch`) from waiting on writers. The catalog's own storage
(columnar segments) suits append-only records, not rows that change state every second.
SQLite needs POSIX locks that work, so the queue lives on a local disk or a file system whose
locks are sound; a Ray cluster is driven from one server, so it never shares the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog.status import pid_alive
from ..errors import EngineError
from .model import (
    CANCELLED,
    ENDED,
    FAILED,
    INTERRUPTED,
    KILLED,
    MAX_KILLED,
    QUEUED,
    RUNNING,
    TIMEOUT,
    Attempt,
    Job,
    Outcome,
    ServerRow,
)

QUEUE_FILE = "jobs.sqlite"
LOGS_DIR = "jobs"  # <home>/jobs/<id>/<attempt>/stdout.log, stderr.log
LEASE_SECONDS = 20.0  # a server silent this long is dead (another host cannot check its pid)
BUSY_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, batch TEXT NOT NULL,
    script TEXT NOT NULL, args TEXT NOT NULL, vid TEXT NOT NULL, priority INTEGER NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, killed INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0, time_limit REAL, payload TEXT, result TEXT,
    cancel INTEGER NOT NULL DEFAULT 0, queued_at REAL NOT NULL, started_at REAL,
    ended_at REAL, server TEXT, worker TEXT, host TEXT, pid INTEGER, exit_code INTEGER,
    tstamp TEXT, error TEXT, path TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_next ON jobs (status, priority, id);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL, n INTEGER NOT NULL, server TEXT NOT NULL, worker TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER, started_at REAL NOT NULL, ended_at REAL,
    status TEXT NOT NULL, exit_code INTEGER, tstamp TEXT, error TEXT, log_dir TEXT NOT NULL,
    PRIMARY KEY (job_id, n));
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL,
    heartbeat REAL NOT NULL, slots INTEGER NOT NULL, executor TEXT NOT NULL);
"""


class QueueError(EngineError):
    """The queue file cannot be opened or written."""


@dataclass(frozen=True)
class NewJob:
    kind: str
    batch: str
    script: str
    args: dict[str, Any]
    vid: str
    priority: int
    path: str  # the project directory the job behaves as if it ran in
    time_limit: float | None = None
    retries: int = 0
    payload: str | None = None


class JobQueue:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.logs = path.parent / LOGS_DIR

    @classmethod
    def open(cls, home: Path, create: bool = True) -> JobQueue:
        """The queue of the project whose flor home is `home` (made on first use)."""
        path = Path(home) / QUEUE_FILE
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _create_whole(path)
            except (OSError, sqlite3.Error) as exc:
                raise QueueError(f"cannot open the job queue {path} ({exc}); make the flor "
                                 "home writable or set FLOR_HOME") from None
        return cls(path)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its first statement."""
        con = _connect(self.path)
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        con = _connect(self.path)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    # --- queueing and claiming -----------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> list[int]:
        now = time.time()
        with self._write() as con:
            return [con.execute(
                "INSERT INTO jobs (kind, batch, script, args, vid, priority, status, retries, "
                "time_limit, payload, queued_at, path) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (j.kind, j.batch, j.script, json.dumps(j.args), j.vid, j.priority, QUEUED,
                 j.retries, j.time_limit, j.payload, now, j.path)).lastrowid for j in jobs]

    def claim(self, server: str, worker: str, pid: int | None = None) -> tuple[Job, Attempt] | None:
        """The next queued job (replay tasks first, then by id), now running for `worker`."""
        with self._write() as con:
            row = con.execute("SELECT * FROM jobs WHERE status = ? AND cancel = 0 "
                              "ORDER BY priority, id LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            n = row["attempts"] + 1
            log_dir = str(self.logs / str(row["id"]) / str(n))
            now, host = time.time(), socket.gethostname()
            con.execute("UPDATE jobs SET status = ?, attempts = ?, started_at = ?, ended_at = "
                        "NULL, server = ?, worker = ?, host = ?, pid = ?, exit_code = NULL, "
                        "tstamp = NULL, error = NULL WHERE id = ?",
                        (RUNNING, n, now, server, worker, host, pid, row["id"]))
            con.execute("INSERT INTO attempts (job_id, n, server, worker, host, pid, started_at, "
                        "status, log_dir) VALUES (?,?,?,?,?,?,?,?,?)",
                        (row["id"], n, server, worker, host, pid, now, RUNNING, log_dir))
        job = _job(row, status=RUNNING, attempts=n)
        return job, Attempt(job.id, n, server, worker, log_dir)

    def started(self, attempt: Attempt, *, pid: int | None = None,
                tstamp: str | None = None) -> None:
        """What a running attempt learnt: its process, and its run's tstamp once it starts."""
        with self._write() as con:
            for column, value in (("pid", pid), ("tstamp", tstamp)):
                if value is None:
                    continue
                con.execute(f"UPDATE attempts SET {column} = ? WHERE job_id = ? AND n = ?",
                            (value, attempt.job_id, attempt.n))
                con.execute(f"UPDATE jobs SET {column} = ? WHERE id = ? AND attempts = ?",
                            (value, attempt.job_id, attempt.n))

    def end(self, attempt: Attempt, outcome: Outcome, retries: int = 0) -> str:
        """Record how `attempt` ended; returns the job's new status (queued when it goes
        again: its worker was killed, its server stopped it, or it may retry a failure:
        `retries` failures, or the job's own count if higher)."""
        now = time.time()
        with self._write() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (attempt.job_id,)).fetchone()
            if row is None or row["attempts"] != attempt.n or row["status"] != RUNNING:
                return row["status"] if row is not None else CANCELLED  # reaped meanwhile
            con.execute("UPDATE attempts SET status = ?, ended_at = ?, exit_code = ?, error = ? "
                        "WHERE job_id = ? AND n = ?", (outcome.status, now, outcome.exit_code,
                                                       outcome.error, attempt.job_id, attempt.n))
            status, counts = _next_status(row, outcome, retries)
            con.execute("UPDATE jobs SET status = ?, ended_at = ?, exit_code = ?, error = ?, "
                        "result = ?, failures = ?, killed = ? WHERE id = ?",
                        (status, None if status == QUEUED else now, outcome.exit_code,
                         outcome.error, outcome.result, *counts, attempt.job_id))
        return status

    def cancel(self, ids: Sequence[int] = (), batch: str | None = None) -> tuple[int, int]:
        """Cancel jobs by id or batch name: queued ones at once, running ones by their server
        (which kills them within a second). Returns (cancelled now, running to stop)."""
        where, params = _selector(ids, batch)
        with self._write() as con:
            now = con.execute(f"UPDATE jobs SET status = ?, cancel = 1, ended_at = ? "
                              f"WHERE status = ? AND ({where})",
                              (CANCELLED, time.time(), QUEUED, *params)).rowcount
            later = con.execute(f"UPDATE jobs SET cancel = 1 WHERE status = ? AND ({where})",
                                (RUNNING, *params)).rowcount
        return now, later

    def cancel_requested(self, ids: Sequence[int]) -> set[int]:
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = self.read(f"SELECT id FROM jobs WHERE cancel = 1 AND id IN ({marks})", ids)
        return {r["id"] for r in rows}

    # --- servers ---------------------------------------------------------------------------

    def register(self, server: ServerRow) -> None:
        """Say that `server` lives (again: a server another one took for dead, after a long
        stall, comes back rather than beating for nobody)."""
        with self._write() as con:
            con.execute("INSERT INTO servers VALUES (?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE "
                        "SET heartbeat = excluded.heartbeat",
                        (server.id, server.host, server.pid, time.time(), time.time(),
                         server.slots, server.executor))

    def unregister(self, server: str) -> None:
        with self._write() as con:
            con.execute("DELETE FROM servers WHERE id = ?", (server,))

    def live_servers(self) -> list[ServerRow]:
        rows = self.read("SELECT * FROM servers")
        return [ServerRow(r["id"], r["host"], r["pid"], r["slots"], r["executor"],
                          r["heartbeat"]) for r in rows if not _dead(r)]

    def reap(self) -> list[int]:
        """Requeue the running jobs of servers that died (killed, machine lost): their attempts
        become `killed`. Any server calls this at start and at every heartbeat."""
        with self._write() as con:
            dead = [r["id"] for r in con.execute("SELECT * FROM servers") if _dead(r)]
            for server in dead:
                con.execute("DELETE FROM servers WHERE id = ?", (server,))
            live = {r["id"] for r in con.execute("SELECT id FROM servers")}
            orphans = [r for r in con.execute("SELECT * FROM jobs WHERE status = ?", (RUNNING,))
                       if r["server"] not in live]
            for row in orphans:
                _requeue_orphan(con, row)
        return [r["id"] for r in orphans]


def _requeue_orphan(con: sqlite3.Connection, row: sqlite3.Row) -> None:
    why = "its server died while it ran (killed, or its machine was lost)"
    con.execute("UPDATE attempts SET status = ?, ended_at = ?, error = ? WHERE job_id = ? "
                "AND n = ? AND status = ?", (KILLED, time.time(), why, row["id"],
                                             row["attempts"], RUNNING))
    outcome = Outcome(KILLED, None, why)
    status, (failures, killed) = _next_status(row, outcome)
    con.execute("UPDATE jobs SET status = ?, error = ?, killed = ?, ended_at = ? WHERE id = ?",
                (status, why, killed, None if status == QUEUED else time.time(), row["id"]))


def _next_status(row: sqlite3.Row, outcome: Outcome,
                 retries: int = 0) -> tuple[str, tuple[int, int]]:
    """The job's status after `outcome`, and its (failures, killed) counts."""
    failures, killed = row["failures"], row["killed"]
    if outcome.status == INTERRUPTED:
        return (CANCELLED if row["cancel"] else QUEUED), (failures, killed)
    if outcome.status == KILLED:
        killed += 1
        if row["cancel"]:
            return CANCELLED, (failures, killed)
        return (QUEUED if killed < MAX_KILLED else FAILED), (failures, killed)
    if outcome.status in (FAILED, TIMEOUT):
        failures += 1
        if failures <= max(retries, row["retries"]) and not row["cancel"]:
            return QUEUED, (failures, killed)
    assert outcome.status in ENDED, outcome.status
    return outcome.status, (failures, killed)


def _dead(row: sqlite3.Row) -> bool:
    """On this host the pid says it (a server stuck in a long call is not dead); elsewhere only
    the heartbeat can. A pid reused after a crash is caught by the long lease."""
    silent = time.time() - row["heartbeat"]
    if row["host"] == socket.gethostname():
        return not pid_alive(row["pid"]) or silent > 10 * LEASE_SECONDS
    return silent > LEASE_SECONDS


def _selector(ids: Sequence[int], batch: str | None) -> tuple[str, list[Any]]:
    if batch is not None:
        return "batch = ? AND kind = 'batch'", [batch]
    if not ids:
        raise QueueError("name the jobs to cancel: job ids, or --batch NAME")
    return f"id IN ({','.join('?' * len(ids))})", list(ids)


def _create_whole(path: Path) -> None:
    """Make the queue file with its tables, so that no reader ever sees it without them.

    A reader (every SQL statement reads the `jobs` table once the file exists) racing a first
    server would otherwise open a file SQLite has created but not yet given its tables. So the
    file is built under a temporary name and hard-linked into place, which never replaces a
    queue another process made first.
    """
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with contextlib.closing(_connect(tmp)) as con:  # `with con` would not close
                con.executescript(SCHEMA)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        except OSError:
            pass  # no hard links on this file system: create it in place below
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)
    with contextlib.closing(_connect(path)) as con:
        con.executescript(SCHEMA)  # a no-op on a whole file; tables added by newer versions


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None)
    con.row_factory = sqlite3.Row
    con.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")  # a queued job survives a power cut too
    return con


def _job(row: sqlite3.Row, **changes: Any) -> Job:
    doc = {key: row[key] for key in ("id", "kind", "batch", "script", "vid", "status",
                                     "attempts", "failures", "killed", "time_limit", "payload")}
    doc.update(changes)
    return Job(**doc, args=json.loads(row["args"]), cancel=bool(row["cancel"]))
