"""florsql: SQL over machine-learning experiment history recorded with `import flor`.

PEP 249 module: `florsql.connect(path)` returns a Connection over the project's catalog.
"""

from __future__ import annotations

from typing import Any

from .dbapi import Connection, Cursor
from .engine import ReplayWarning
from .exceptions import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    Position,
    ProgrammingError,
    UnknownNameError,
    Warning,
)
from .types import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)

__version__ = "0.1.0"
apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections
paramstyle = "qmark"


def connect(path: str = ".", *, replay: str = "auto", max_replay_seconds: float | None = None,
            workers: int | None = None, confirm: Any = None, progress: Any = None,
            memory_limit: str | None = None, task_timeout: float | None = None,
            executor: str | None = None) -> Connection:
    """Open the catalog of the project at `path` (any directory inside its git repo).

    `replay` says what a query that names values some runs lack does: "auto" replays those
    runs first, "ask" replays when `confirm(plan)` returns True, "off" answers with NULLs and
    a warning. `max_replay_seconds` refuses a replay estimated to take longer; `workers`
    replay processes run at once (default: one per core); `progress(result, done, total)`
    is called as each replay task ends. `memory_limit` caps the query engine's memory
    ("8GB", "500MB", "75%" of RAM; default $FLORSQL_MEMORY_LIMIT, else "50%").
    `task_timeout` stops a replay task running longer (seconds; 0: no limit; default
    $FLOR_REPLAY_TASK_TIMEOUT, else max(120 s, 10 x its estimate)). `executor` says where
    replay tasks run: "local" (this machine, the default), "process", "queue" (the project's
    running `florsql serve`) or "ray"; default $FLOR_EXECUTOR.
    """
    return Connection(path, replay=replay, max_replay_seconds=max_replay_seconds,
                      workers=workers, confirm=confirm, progress=progress,
                      memory_limit=memory_limit, task_timeout=task_timeout, executor=executor)


__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "Date",
    "DateFromTicks",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "Position",
    "ProgrammingError",
    "ReplayWarning",
    "UnknownNameError",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
