"""The records an ingest here just added, kept as Arrow tables until DuckDB holds them: the tail.

    tail = LogTail()                    one per mirror (mirror.py)
    tail.add(con, rows, seg, tstamp)    an ingest's `_logs` rows (rows.py), queryable at once
    tail.attach(cursor)                 what every connection of the mirror reads as `_log_tail`
    fold_into_rows(con, pieces)         move them into `_log_rows`, in the caller's thread
    Fold(cursor, pieces, rows, db)      the same, then compress, on a thread (.start, .wait,
                                        .cancel when the mirror closes)

Appending 1M records to DuckDB's own table and compressing them costs ~0.6 s on 2 cores, more
than decoding them. The ingest therefore leaves its rows in the Arrow tables it built anyway:
`_logs` (schema.py) reads them through a registered view beside `_log_rows`, and once the
ingest has published, a thread moves them into `_log_rows` and compresses them while queries
go on. Which pieces are live is DuckDB's table `_tail_pieces`, so transactions keep it exact:
a rolled-back run's piece, or one `drop_run` removed, is never seen; the fold inserts a piece's
rows and deletes it from `_tail_pieces` in one transaction, so a statement sees each record
once, in the tail or in `_log_rows`, whichever its snapshot holds. The same transactions
switch `_logs` between the union (a piece was added) and `_log_rows` alone (the last one was
folded), so queries pay for no union while the tail is empty.

A connection sees the tail registered on it when it was made (mirror.cursor); the mirror's
own connection is re-registered after each change, always in the thread that uses it. A fold
takes every piece of the tail: nothing adds one while it runs (mirror.quiesce waits first).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

from .schema import LOG_COLUMNS, LOGS_VIEW, LOGS_VIEW_WITH_TAIL

TAIL_VIEW = "_log_tail"
FOLD_DELAY_S = 0.3  # a fold starts this long after the ingest, unless waited for sooner
# Rows an ingest keeps in the tail at most: a longer backlog is folded into DuckDB between runs
# (compressed every 2M rows, so 10M records stay within 1 GB) and its later rows go straight in.
TAIL_ROWS = 2 << 20
_COLUMNS = ", ".join(name for name, _ in LOG_COLUMNS)


@dataclass
class LogTail:
    """The tail's pieces (each one `_append` of `_logs` rows: one run's batch), by piece id."""

    pieces: dict[int, pa.Table] = field(default_factory=dict)
    open: bool = False  # taking rows: an ingest runs, and the tail is not full
    _next: int = 0

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.pieces.values())

    def add(self, con: duckdb.DuckDBPyConnection, rows: pa.Table, seg: int, tstamp: str) -> None:
        """Keep `rows` (every column of `_logs` but `_seg`) as a piece of segment `seg`,
        live once the transaction `con` is in commits."""
        piece, self._next = self._next, self._next + 1
        n = rows.num_rows
        self.pieces[piece] = rows.append_column("_seg", _constant(seg, n)).append_column(
            "_piece", _constant(piece, n))
        con.execute("INSERT INTO _tail_pieces VALUES (?, CAST(? AS TIMESTAMP), ?, ?)",
                    [piece, tstamp, seg, n])
        con.execute(LOGS_VIEW_WITH_TAIL)  # in the same transaction: rolled back with it
        self.attach(con)
        if self.rows >= TAIL_ROWS:
            self.open = False

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Register the tail on `con` as `_log_tail` (none: the empty stub table reads)."""
        with contextlib.suppress(duckdb.Error):
            con.unregister(TAIL_VIEW)
        if self.pieces:
            con.register(TAIL_VIEW, pa.concat_tables(self.pieces.values()))

    def forget(self, pieces: list[int]) -> None:
        """Drop pieces whose rows are in `_log_rows` now (or were never live)."""
        for piece in pieces:
            self.pieces.pop(piece, None)

    def clear(self) -> None:
        self.pieces.clear()
        self.open = False


def fold_into_rows(con: duckdb.DuckDBPyConnection, pieces: list[int]) -> None:
    """Move the live rows of `pieces` (registered on `con`) into `_log_rows`, in one
    transaction that also takes them off `_tail_pieces`."""
    con.execute("BEGIN")
    try:
        con.execute(f"INSERT INTO _log_rows SELECT {_COLUMNS} FROM {TAIL_VIEW} "
                    "WHERE _piece IN (SELECT piece FROM _tail_pieces)")
        con.execute("DELETE FROM _tail_pieces WHERE list_contains(?, piece)", [pieces])
        con.execute(LOGS_VIEW)  # no live piece is left: `_logs` is DuckDB's table alone
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@dataclass(eq=False)  # hashable by identity: _RUNNING holds it
class Fold:
    """A fold of the tail's `pieces` on a cursor of their own, run by a thread: the rows move
    into `_log_rows`, then a checkpoint compresses them (with any other rows waiting). With
    no piece it only compresses: what a load appended (Mirror.settle)."""

    cursor: duckdb.DuckDBPyConnection
    pieces: list[int]
    rows: int
    database: str
    compressed: bool = False
    error: BaseException | None = None
    _started: bool = False  # its thread was started (or it ran in a waiting thread)
    _cancelled: bool = False
    _now: threading.Event = field(default_factory=threading.Event)  # someone waits: no delay
    _ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._started = True
        _RUNNING.add(self)
        threading.Thread(target=self._run, name="flor-tail-fold", daemon=True).start()

    def _run(self) -> None:
        # the statement that made the ingest (a DB-API execute refreshes first) runs first on
        # its own: a fold takes both cores of a small machine for ~1 s per 1M records
        self._now.wait(FOLD_DELAY_S)
        try:
            if self._cancelled:
                raise duckdb.InterruptException("the mirror closed before the fold")
            if self.pieces:  # none: it only compresses what a load appended
                fold_into_rows(self.cursor, self.pieces)
            with contextlib.suppress(duckdb.Error):  # a write elsewhere: they wait uncompressed
                self.cursor.execute(f"CHECKPOINT {self.database}")
                self.compressed = True
        except BaseException as exc:  # the mirror folds again in its own thread
            self.error = exc
        finally:
            with contextlib.suppress(duckdb.Error):
                self.cursor.close()
            self._ended.set()

    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self) -> None:
        """Until the fold has ended (one never started runs here)."""
        self._now.set()
        if not self._started:
            self._started = True
            self._run()
        self._ended.wait()

    def cancel(self) -> None:
        """Its mirror closes: stop the fold (a pointless ~1 s per 1M records then) and wait
        until it has stopped. Nothing is lost: the rows are published, and the in-memory copy
        goes away with the mirror."""
        self._cancelled = True
        if self._started:
            with contextlib.suppress(duckdb.Error):
                self.cursor.interrupt()
        self.wait()  # one never started raises at once, in this thread


# Folds still running when the interpreter exits are stopped: a thread inside DuckDB while the
# process tears the database down could crash it (a connection's close() stops its own too).
_RUNNING: weakref.WeakSet[Fold] = weakref.WeakSet()


@atexit.register
def _stop_folds() -> None:
    for fold in list(_RUNNING):
        fold.cancel()


def _constant(value: int, n: int) -> pa.Array:
    return pa.array(np.full(n, value, np.int32))
