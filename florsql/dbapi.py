"""PEP 249 connection and cursor over a project's catalog.

    import florsql
    with florsql.connect("path/to/project") as conn:
        cur = conn.execute("SELECT runid, status FROM runs WHERE tstamp > ?", ["2026-01-01"])
        print(cur.fetchall())
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb

from . import exceptions as exc
from .engine import CatalogSession, EngineError, IngestReport, UnknownColumnError
from .engine.catalog import USER_TABLES
from .engine.rewrite import closest

# The catalog is derived from record files: statements that change it would be lost or corrupt it.
_ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "SET", "VARIABLE_SET"}


class Connection:
    """An open catalog. New record parts are ingested before every statement."""

    def __init__(self, path: str = ".") -> None:
        try:
            self.session = CatalogSession(path)
        except EngineError as e:
            raise exc.OperationalError(str(e)) from None
        self.project = self.session.project
        self._con = self.session.con
        self.messages: list[tuple[type, str]] = []
        self._closed = False

    def cursor(self) -> Cursor:
        self._check_open()
        return Cursor(self)

    def execute(self, sql: str, parameters: Sequence[Any] | dict | None = None) -> Cursor:
        """Shortcut (as in sqlite3): a new cursor that has executed `sql`."""
        return self.cursor().execute(sql, parameters)

    def refresh(self) -> IngestReport:
        """Ingest record parts written since the last statement."""
        self._check_open()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = self.session.refresh()
        for w in caught:
            self.messages.append((exc.Warning, str(w.message)))
            warnings.warn(str(w.message), w.category, stacklevel=3)
        return report

    def commit(self) -> None:
        """Nothing to commit: florsql takes no writes. Present for PEP 249."""
        self._check_open()

    def rollback(self) -> None:
        """Nothing to roll back: florsql takes no writes. Present for PEP 249."""
        self._check_open()

    def close(self) -> None:
        if not self._closed:
            self._con.close()
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
        self._result: duckdb.DuckDBPyConnection | None = None
        self._closed = False

    def execute(self, sql: str, parameters: Sequence[Any] | dict | None = None) -> Cursor:
        self._check_open()
        self.connection.refresh()
        self.messages = list(self.connection.messages)
        self.connection.messages.clear()
        session = self.connection.session
        _check_read_only(session.con, sql)
        try:
            prepared = session.prepare(sql)
        except UnknownColumnError as e:
            raise exc.ProgrammingError(str(e)) from None
        self._end_transaction()
        self._result = session.con.cursor()
        try:
            if prepared.needs_full_view:  # sqlglot could not rewrite it: a temp view does
                self._result.execute(
                    f"CREATE OR REPLACE TEMP VIEW history AS {session.full_history_sql()}")
            # The safety net under _check_read_only: EXPLAIN ANALYZE <write> and the like.
            self._result.execute("BEGIN TRANSACTION READ ONLY")
            self._result.execute(prepared.sql, parameters)
        except duckdb.Error as e:
            self._end_transaction()
            raise _translate(e) from None
        self.description = _describe(self._result.description)
        self.rowcount = -1
        return self

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any] | dict]) -> Cursor:
        """Run `sql` once per parameter set; the cursor keeps the last result."""
        for parameters in seq_of_parameters:
            self.execute(sql, parameters)
        return self

    def fetchone(self) -> tuple | None:
        return self._fetch(lambda r: r.fetchone())

    def fetchmany(self, size: int | None = None) -> list[tuple]:
        return self._fetch(lambda r: r.fetchmany(size or self.arraysize))

    def fetchall(self) -> list[tuple]:
        return self._fetch(lambda r: r.fetchall())

    def df(self) -> Any:
        """The remaining rows as a pandas DataFrame."""
        with warnings.catch_warnings():  # DuckDB's own pandas call warns about pandas 4
            warnings.filterwarnings("ignore", message="The inplace keyword")
            return self._fetch(lambda r: r.df())

    def arrow(self) -> Any:
        """The remaining rows as a pyarrow Table."""
        with warnings.catch_warnings():  # DuckDB notes the copy; a DB-API cursor must make it
            warnings.simplefilter("ignore")
            return self._fetch(lambda r: r.to_arrow_table())

    def setinputsizes(self, sizes: Any) -> None:
        """No-op, as PEP 249 allows."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """No-op, as PEP 249 allows."""

    def close(self) -> None:
        self._end_transaction()
        self._closed = True

    def __iter__(self) -> Iterator[tuple]:
        while (row := self.fetchone()) is not None:
            yield row

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
        if self._result is None:
            raise exc.ProgrammingError("no result to fetch: call execute() first")
        try:
            return take(self._result)
        except duckdb.Error as e:
            raise _translate(e) from None

    def _check_open(self) -> None:
        if self._closed:
            raise exc.InterfaceError("cursor is closed; get a new one with connection.cursor()")
        self.connection._check_open()


def _check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise _translate(e) from None
    if not statements:
        raise exc.ProgrammingError("empty statement: write a SELECT query")
    for statement in statements:
        kind = statement.type.name
        if kind not in _ALLOWED_STATEMENTS:
            raise exc.NotSupportedError(
                f"{kind} is not allowed: the catalog is rebuilt from the record files, so "
                "florsql answers queries only (record new values with flor.log)"
            )


def _describe(duck_description: list | None) -> tuple | None:
    if duck_description is None:
        return None
    return tuple((name, str(kind), None, None, None, None, None)
                 for name, kind, *_ in duck_description)


def _translate(error: duckdb.Error) -> exc.Error:
    message = one_line(str(error))
    if isinstance(error, (duckdb.ConversionException, duckdb.OutOfRangeException)):
        return exc.DataError(message)
    if isinstance(error, duckdb.InvalidInputException) and "parameter" in message.lower():
        return exc.ProgrammingError(message)
    if isinstance(error, duckdb.CatalogException) and "does not exist" in message:
        return exc.ProgrammingError(_unknown_table(message))
    if isinstance(error, (duckdb.ParserException, duckdb.BinderException,
                          duckdb.CatalogException, duckdb.ProgrammingError)):
        return exc.ProgrammingError(message)
    if isinstance(error, duckdb.TransactionException) and "read-only" in message:
        return exc.NotSupportedError(
            "writes are not allowed: the catalog is rebuilt from the record files, so florsql "
            "answers queries only (record new values with flor.log)")
    if isinstance(error, duckdb.IOException):
        return exc.OperationalError(message)
    if isinstance(error, duckdb.InternalException):
        return exc.InternalError(message)
    if isinstance(error, duckdb.ConstraintException):
        return exc.IntegrityError(message)
    return exc.DatabaseError(message)


def _unknown_table(message: str) -> str:
    import re

    found = re.search(r'with name "?([^" !]+)"? does not exist', message)
    if not found:
        return message
    name = found.group(1)
    close = closest(name, [*USER_TABLES, "history"])
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown table {name!r}{hint} (tables: {', '.join([*USER_TABLES, 'history'])})"


def one_line(message: str) -> str:
    """DuckDB's multi-line error as one line: the error, then the 'did you mean' hint if any."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    head = lines[0] if lines else "unknown error"
    hints = [ln for ln in lines[1:] if ln.lower().startswith(("candidate", "did you mean"))]
    return head + (f" ({hints[0]})" if hints else "")
