"""The bounds of the DuckDB instance that runs user SQL, enforced by DuckDB itself.

    lock_down(con)            no file access, no extensions, a memory limit; settings locked
    run_interruptible(con, f) f() on `con`, stoppable by Ctrl-C even while DuckDB computes

Every surface (CLI, shell, DB-API, saved queries, `flor.dataframe`) runs user statements on a
connection whose database instance went through `lock_down`, so no parser of ours has to
recognise a write: `COPY ... TO`, `EXPLAIN ANALYZE COPY`, `EXPORT DATABASE`, `ATTACH 'file'`,
`read_csv`/`read_text` of any path, `INSTALL`/`LOAD` and `SET enable_external_access = true`
are all refused by DuckDB. The catalog is guarded by DuckDB too: each user statement runs in a
read-only transaction (dbapi.py). That transaction does not cover temp tables, and a user's
`COMMIT;` would end it, so translate.check_read_only refuses DDL/DML and transaction control.

What stays allowed, measured on DuckDB 2.0: writes through the Python API to the attached
catalog (ingest appends registered Arrow tables, `con.register`), spilling to DuckDB's own temp
directory (`<catalog>.tmp`), and `SET` of the local options in USER_SETTABLE. Python
replacement scans (a query naming a local variable) are off with external access.

The catalog's Parquet segments reach SQL without opening any file to it: Python (pyarrow) reads
them into the session's in-memory instance (mirror.py). DuckDB's allow-lists
(`allowed_directories`, `allowed_paths`) also allow *writing* into what they allow (`COPY ...
TO` an allowed Parquet file overwrites it), so they stay closed to the flor home.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import duckdb

from ..errors import EngineError

T = TypeVar("T")
MEMORY_ENV = "FLORSQL_MEMORY_LIMIT"
# Half the machine: training often runs beside the queries. DuckDB takes a percentage of the
# physical memory (or of the cgroup limit) as well as sizes like 8GB or 500MB.
DEFAULT_MEMORY_LIMIT = "50%"
# Options a user may still SET once locked: unable to reach a file (profiling_output could, so
# profiling stays off). The progress bar's are local to the statement's connection;
# preserve_insertion_order is the instance's, and the engine turns it off while it inserts
# (`unordered_inserts`).
USER_SETTABLE = ("enable_progress_bar", "enable_progress_bar_print", "progress_bar_time",
                 "preserve_insertion_order")
_LOCKS = (  # applied in this order; lock_configuration last, since it freezes the others
    ("enable_external_access", "false"),
    ("autoinstall_known_extensions", "false"),
    ("autoload_known_extensions", "false"),
    ("allow_community_extensions", "false"),
    ("allow_persistent_secrets", "false"),
)
_WAIT_SECONDS = 0.1  # how often the main thread wakes to notice Ctrl-C while DuckDB works


class SandboxError(EngineError):
    """The query engine's limits cannot be applied as asked (a bad or conflicting limit)."""


def memory_limit(requested: str | None = None) -> str:
    """The memory limit to use: `requested`, else $FLORSQL_MEMORY_LIMIT, else half the RAM."""
    return requested or os.environ.get(MEMORY_ENV) or DEFAULT_MEMORY_LIMIT


def lock_down(con: duckdb.DuckDBPyConnection, limit: str | None = None) -> None:
    """Bound the database instance of `con` for its life: no files, no extensions, `limit`.
    Each catalog session has an instance of its own (mirror.py), locked once."""
    wanted = memory_limit(limit)
    if _locked(con):
        return
    try:
        con.execute(f"SET memory_limit = {_literal(wanted)}")
    except duckdb.Error:
        raise SandboxError(
            f"memory limit {wanted!r} is not a size: give one like 8GB, 500MB or 50% (of RAM) "
            f"in {MEMORY_ENV} or florsql.connect(memory_limit=...)") from None
    settable = ", ".join(_literal(name) for name in USER_SETTABLE)
    con.execute(f"SET allowed_configs = [{settable}]")
    for name, value in _LOCKS:
        con.execute(f"SET {name} = {value}")
    con.execute("SET lock_configuration = true")


@contextlib.contextmanager
def unordered_inserts(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Let DuckDB append the rows of one INSERT from several threads, in any order (rows carry
    their `ord`; nothing reads a table's physical order). Measured on 2 cores: 1M records into
    `_logs` 0.43 -> 0.17 s. Statements that run meanwhile may return unordered results, as SQL
    allows without ORDER BY; the setting is restored after."""
    before = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0]
    con.execute("SET preserve_insertion_order = false")
    try:
        yield
    finally:
        con.execute(f"SET preserve_insertion_order = {str(bool(before)).lower()}")


def current_memory_limit(con: duckdb.DuckDBPyConnection) -> str:
    """The memory limit `con` runs under, as DuckDB prints it (`11.7 GiB`)."""
    return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def run_interruptible(con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """`work()`, which runs a statement on `con`, stopped by Ctrl-C within moments.

    DuckDB computes without returning to Python, so a KeyboardInterrupt would wait for the
    whole query. In the main thread (the only one Python delivers SIGINT to) the work runs in
    a helper thread while this one waits; on Ctrl-C it interrupts `con`, waits for DuckDB to
    stop and re-raises KeyboardInterrupt. Elsewhere `work()` runs directly.
    """
    if threading.current_thread() is not threading.main_thread() or not _python_handles_sigint():
        return work()
    outcome: dict[str, object] = {}
    done = threading.Event()
    # Waits on an Event, not Thread.join: before Python 3.13 a join interrupted by Ctrl-C can
    # mark a running thread as finished, and a second join then returns at once.
    threading.Thread(target=_capture, args=(work, outcome, done), name="florsql-query",
                     daemon=True).start()
    try:
        while not done.wait(_WAIT_SECONDS):
            pass
    except KeyboardInterrupt:
        con.interrupt()
        _wait_through_interrupts(done)  # `con` stays busy until DuckDB has stopped
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _capture(work: Callable[[], object], outcome: dict[str, object],
             done: threading.Event) -> None:
    try:
        outcome["value"] = work()
    except BaseException as e:  # handed to the waiting thread, which raises it
        outcome["error"] = e
    finally:
        done.set()


def _wait_through_interrupts(done: threading.Event) -> None:
    while True:
        try:
            done.wait()
            return
        except KeyboardInterrupt:  # a second Ctrl-C: DuckDB is already stopping
            continue


def _python_handles_sigint() -> bool:
    """Whether Ctrl-C reaches Python code here (not ignored, as in background jobs)."""
    return signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL, None)


def _locked(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the instance is locked already; by us, since it cannot read files."""
    locked, access = con.execute("SELECT current_setting('lock_configuration'), "
                                 "current_setting('enable_external_access')").fetchone()
    if locked and access:  # locked open by other code in this process: never query it
        raise SandboxError("the catalog's DuckDB instance was locked with file access on by "
                           "other code in this process; florsql cannot sandbox it")
    return bool(locked)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
