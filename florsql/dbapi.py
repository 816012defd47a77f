"""PEP 249 connection and cursor over a project's catalog.

    import florsql
    with florsql.connect("path/to/project") as conn:
        cur = conn.execute("SELECT runid, status FROM runs WHERE tstamp > ?", ["2026-01-01"])
        print(cur.fetchall())
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import duckdb

from . import exceptions as exc
from .engine import (
    CatalogSession,
    EngineError,
    IngestReport,
    QueryAnswer,
    ReplayBudgetError,
    ReplayPlan,
    ReplayPolicy,
    ReplayService,
    ReplayWarning,
    UnknownColumnError,
    budget_message,
    check_mode,
    choose_executor,
    run_interruptible,
)
from .engine.jobs.status import QueueTables
from .retroactive import EXPLAIN_REPLAY, PLAN_COLUMNS, plan_rows, surface_hints
from .translate import check_read_only, describe, translate, unknown_name


class Connection:
    """An open catalog. New record parts are ingested before every statement.

    A query that names values today's scripts log but some runs lack is answered after
    replaying those runs (`replay="auto"`), after `confirm(plan)` says yes (`"ask"`), or with
    NULLs and a warning (`"off"`). `max_replay_seconds` caps the estimated replay time.
    `surface` ("python", "cli" or "shell") says whose words its messages use. `executor`
    says where replay tasks run: "local" (default), "process", "queue" (a running `florsql
    serve`) or "ray"; default $FLOR_EXECUTOR.

    Statements run in a DuckDB that can read no file, load no extension and use at most
    `memory_limit` (e.g. "8GB" or "50%"; default $FLORSQL_MEMORY_LIMIT, else half the RAM).
    """

    def __init__(self, path: str = ".", *, replay: str = "auto",
                 max_replay_seconds: float | None = None, workers: int | None = None,
                 confirm: Any = None, progress: Any = None, surface: str = "python",
                 memory_limit: str | None = None, task_timeout: float | None = None,
                 executor: str | None = None) -> None:
        self.replay_policy = ReplayPolicy(replay, max_replay_seconds, workers, confirm, progress,
                                          surface_hints(surface), task_timeout)
        self._cursors: weakref.WeakSet[Cursor] = weakref.WeakSet()
        try:
            self.session = CatalogSession(path, memory_limit)
        except EngineError as e:
            raise exc.OperationalError(str(e)) from None
        except duckdb.Error as e:
            raise exc.OperationalError(f"could not open the catalog: {e}") from None
        self.project = self.session.project
        self._con = self.session.con
        # Plans, runs and ingests every replay of this connection, under the project's lock;
        # its warm workers live as long as the connection.
        try:
            chosen = choose_executor(executor, self.project.home)
        except EngineError as e:
            self.session.close()
            raise exc.OperationalError(str(e)) from None
        self.replay_service = ReplayService(self.session, chosen)
        self.session.add_side_tables(QueueTables(self.project.home))
        self.messages: list[tuple[type, str]] = []
        self._closed = False

    def cursor(self) -> Cursor:
        self._check_open()
        cursor = Cursor(self)
        self._cursors.add(cursor)
        return cursor

    def execute(self, sql: str, parameters: Sequence[Any] | dict | None = None) -> Cursor:
        """Shortcut (as in sqlite3): a new cursor that has executed `sql`."""
        return self.cursor().execute(sql, parameters)

    def refresh(self) -> IngestReport:
        """Ingest record parts written since the last statement."""
        self._check_open()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                report = self.session.refresh()
            except duckdb.Error as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise exc.OperationalError(f"could not ingest new records: {first}") from None
            except EngineError as e:  # an unreadable runs/ folder, say: one line, no traceback
                raise exc.OperationalError(str(e)) from None
        for w in caught:
            self.messages.append((exc.Warning, str(w.message)))
            warnings.warn(str(w.message), w.category, stacklevel=3)
        return report

    @property
    def replay(self) -> str:
        """The replay mode: auto, ask or off (settable)."""
        return self.replay_policy.mode

    @replay.setter
    def replay(self, mode: str) -> None:
        self.replay_policy.mode = check_mode(mode)

    def interrupt(self) -> None:
        """Stop the statements this connection's cursors are running; call it from another
        thread. Each stopped `execute()` or fetch raises OperationalError ("interrupted"); a
        cursor with nothing running is left alone. A replay that a statement is running stops
        its tasks too (finished ones keep their records) and raises KeyboardInterrupt."""
        self.replay_policy.cancel.set()
        for cursor in list(self._cursors):
            cursor._interrupt()

    def commit(self) -> None:
        """Nothing to commit: florsql takes no writes. Present for PEP 249."""
        self._check_open()

    def rollback(self) -> None:
        """Nothing to roll back: florsql takes no writes. Present for PEP 249."""
        self._check_open()

    def close(self) -> None:
        if not self._closed:
            self.replay_service.close()  # the warm replay workers
            self.session.close()
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise exc.InterfaceError("connection is closed; open a new one with florsql.connect()")


class Cursor:
    """A PEP 249 cursor. Results are held by DuckDB and fetched on demand."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.description: tuple | None = None
        self.rowcount = -1
        self.messages: list[tuple[type, str]] = []
        self.replay_plan: ReplayPlan | None = None  # the plan of the last EXPLAIN REPLAY
        self._result: duckdb.DuckDBPyConnection | None = None
        self._busy = False  # a statement or a fetch is running in DuckDB
        self._has_rows = False
        self._closed = False

    def execute(self, sql: str, parameters: Sequence[Any] | dict | None = None) -> Cursor:
        return self._execute(sql, parameters, refresh=True)

    def _execute(self, sql: str, parameters: Any, refresh: bool) -> Cursor:
        """`execute`, optionally without the ingest check (for callers that just did it)."""
        self._check_open()
        if refresh:
            self.connection.refresh()
        self.messages = list(self.connection.messages)
        self.connection.messages.clear()
        self._end_transaction()
        explain = EXPLAIN_REPLAY.match(sql)
        if explain:
            return self._explain_replay(explain.group(1), parameters, sql)
        session = self.connection.session
        kinds = check_read_only(session.con, sql)
        answer = self._answer(sql, parameters)
        self._result = session.cursor()
        try:
            if answer.rewrite.needs_full_view:  # sqlglot could not rewrite it: a temp view does
                self._result.execute(
                    f"CREATE OR REPLACE TEMP VIEW history AS {session.full_history_sql()}")
            # DuckDB's guard of the catalog: no statement in it can write (sandbox.py guards
            # files and extensions, check_read_only the temp objects this does not cover).
            self._result.execute("BEGIN TRANSACTION READ ONLY")
            result = self._result
            self._run(lambda: result.execute(answer.rewrite.sql, parameters))
        except duckdb.Error as e:
            self._end_transaction()
            raise translate(e, sql) from None
        except KeyboardInterrupt:
            self._end_transaction()
            raise
        self.description = describe(self._result.description, kinds[-1])
        self._has_rows = self.description is not None
        self.rowcount = -1
        return self

    def _answer(self, sql: str, parameters: Any) -> QueryAnswer:
        """The engine's one call: the statement to run, after the replay its policy allows;
        engine errors become PEP 249 ones, warnings go to `messages` and `warnings`."""
        connection = self.connection
        try:
            prepared = connection.session.prepare(sql, parameters)
        except UnknownColumnError as e:
            raise unknown_name(e, sql) from None
        try:
            answer = connection.replay_service.answer(prepared, sql, parameters,
                                                      connection.replay_policy)
        except ReplayBudgetError as e:
            raise exc.OperationalError(budget_message(e, connection.replay_policy.hints)) \
                from None
        except EngineError as e:
            raise exc.OperationalError(f"replay failed: {e}") from None
        except duckdb.Error as e:  # the query's own WHERE, run to choose runs, is wrong
            raise translate(e, sql) from None
        for line in answer.warnings:
            self.messages.append((exc.Warning, line))
            warnings.warn(line, ReplayWarning, stacklevel=4)
        return answer

    def _explain_replay(self, sql: str, parameters: Any, statement: str) -> Cursor:
        """`EXPLAIN REPLAY <select>` (`statement`; `sql` is the select): the replay plan as
        rows; nothing runs."""
        import pyarrow as pa

        connection = self.connection
        session = connection.session
        check_read_only(session.con, sql)
        try:
            analysis = session.prepare(sql, parameters).analysis
            plan = (connection.replay_service.plan_query(analysis,
                                                         connection.replay_policy.workers)
                    if analysis.replayable else None)
        except UnknownColumnError as e:
            raise unknown_name(e, statement) from None
        except duckdb.Error as e:
            raise translate(e, statement) from None
        except EngineError as e:
            raise exc.OperationalError(str(e)) from None
        rows = plan_rows(plan) if plan else []
        types = [pa.string()] * 6 + [pa.float64(), pa.string()]
        table = pa.table([pa.array([r[i] for r in rows], type=t) for i, t in enumerate(types)],
                         names=PLAN_COLUMNS)
        self.replay_plan = plan
        self._result = session.cursor()
        self._result.register("florsql_replay_plan", table)
        self._result.execute("SELECT * FROM florsql_replay_plan")
        self.description = describe(self._result.description, "SELECT")
        self._has_rows, self.rowcount = True, -1
        return self

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any] | dict]) -> Cursor:
        """Run `sql` once per parameter set; the cursor keeps the last result."""
        for parameters in seq_of_parameters:
            self.execute(sql, parameters)
        return self

    def fetchone(self) -> tuple | None:
        return self._fetch(lambda r: r.fetchone())

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        return self._fetch(lambda r: r.fetchmany(self.arraysize if size is None else size))

    def fetchall(self) -> list[tuple]:
        return self._fetch(lambda r: r.fetchall())

    def df(self) -> Any:
        """The remaining rows as a pandas DataFrame."""
        with warnings.catch_warnings():  # DuckDB notes the copy Arrow makes
            warnings.simplefilter("ignore")
            # Through Arrow: several times faster than DuckDB's .df() for text columns.
            return self._fetch(lambda r: r.to_arrow_table().to_pandas())

    def arrow(self) -> Any:
        """The remaining rows as a pyarrow Table."""
        with warnings.catch_warnings():  # DuckDB notes the copy; a DB-API cursor must make it
            warnings.simplefilter("ignore")
            return self._fetch(lambda r: r.to_arrow_table())

    def pl(self) -> Any:
        """The remaining rows as a polars DataFrame (needs polars: `pip install polars`)."""
        try:
            import polars
        except ImportError:
            raise exc.NotSupportedError(
                "cursor.pl() needs polars, which is not installed: pip install polars "
                "(or use cursor.df() for pandas, cursor.arrow() for pyarrow)") from None
        return polars.from_arrow(self.arrow())

    def fetch_record_batch(self, rows_per_batch: int = 1_000_000) -> Any:
        """The remaining rows as a pyarrow RecordBatchReader of `rows_per_batch` rows a batch,
        for results too large to hold at once. Read it before the next execute()."""
        if rows_per_batch < 1:
            raise exc.ProgrammingError(f"rows_per_batch must be at least 1, not {rows_per_batch}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._fetch(lambda r: r.to_arrow_reader(rows_per_batch))

    def setinputsizes(self, sizes: Any) -> None:
        """No-op, as PEP 249 allows."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """No-op, as PEP 249 allows."""

    def close(self) -> None:
        self._end_transaction()
        self._closed = True

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> tuple:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _end_transaction(self) -> None:
        if self._result is not None:
            try:
                self._result.execute("COMMIT")
            except duckdb.Error:
                pass  # already ended by a failed statement
            self._result.close()
            self._result = None

    def _fetch(self, take: Any) -> Any:
        self._check_open()
        if self._result is None or not self._has_rows:
            raise exc.ProgrammingError(
                "no result to fetch: call execute() with a query that returns rows first")
        result = self._result
        try:
            return self._run(lambda: take(result))
        except duckdb.Error as e:
            raise translate(e) from None

    def _run(self, work: Callable[[], Any]) -> Any:
        """`work()` on this cursor's DuckDB connection, stoppable by interrupt() and Ctrl-C."""
        self._busy = True
        try:
            return run_interruptible(self._result, work)
        finally:
            self._busy = False

    def _interrupt(self) -> None:
        result = self._result
        if self._busy and result is not None:
            result.interrupt()

    def _check_open(self) -> None:
        if self._closed:
            raise exc.InterfaceError("cursor is closed; get a new one with connection.cursor()")
        self.connection._check_open()


