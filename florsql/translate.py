"""Map DuckDB's errors and statement kinds onto PEP 249: exceptions, descriptions, read-only."""

from __future__ import annotations

import re

import duckdb

from . import exceptions as exc
from .engine.catalog import USER_TABLES
from .engine.rewrite import closest

# The catalog is derived from record files: statements that change it would be lost or corrupt it.
_ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "SET", "VARIABLE_SET"}
_NO_RESULT = {"SET", "VARIABLE_SET"}
_WRITES_FILES = {"COPY", "EXPORT", "COPY_DATABASE"}
EXPORT_HINT = ("florsql's SQL cannot write files: export a result with `florsql -c SQL --output "
               "FILE` (.parquet, .csv, .tsv, .json), `.export FILE` in the shell, or "
               "cursor.df(), .arrow() or .pl() in Python")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The statement kinds of `sql`; raises NotSupportedError for anything but queries."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise translate(e) from None
    if not statements:
        raise exc.ProgrammingError("empty statement: write a SELECT query")
    for statement in statements:
        kind = statement.type.name
        if kind in _WRITES_FILES:
            raise exc.NotSupportedError(f"{kind.replace('_', ' ')} is not allowed: {EXPORT_HINT}")
        if kind not in _ALLOWED_STATEMENTS:
            raise exc.NotSupportedError(
                f"{kind} is not allowed: the catalog is rebuilt from the record files, so "
                "florsql answers queries only (record new values with flor.log)"
            )
    return [st.type.name for st in statements]


def describe(duck_description: list | None, kind: str) -> tuple | None:
    """PEP 249 description: None for statements that return no rows (SET, PRAGMA's Success)."""
    if duck_description is None or kind in _NO_RESULT:
        return None
    if kind == "PRAGMA" and [d[:2] for d in duck_description] == [("Success", "BOOLEAN")]:
        return None
    return tuple((name, str(kind), None, None, None, None, None)
                 for name, kind, *_ in duck_description)


def translate(error: duckdb.Error) -> exc.Error:
    """The PEP 249 exception for a DuckDB error, with a one-line message."""
    message = one_line(str(error))
    if isinstance(error, (duckdb.ConversionException, duckdb.OutOfRangeException)):
        return exc.DataError(message)
    if isinstance(error, duckdb.InvalidInputException):
        if "parameter" in message.lower():
            return exc.ProgrammingError(message)
        return exc.OperationalError(message)
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
