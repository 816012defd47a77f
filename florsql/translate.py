"""Map DuckDB's errors and statement kinds onto PEP 249: exceptions, descriptions, read-only.

What user SQL may touch is enforced by DuckDB (engine/sandbox.py: no files, no extensions,
locked settings; a read-only transaction around each statement). This module turns DuckDB's
refusals into one line that says what was refused, and refuses up front the statement kinds
DuckDB's guards do not cover: transaction control (a `COMMIT;` would end the read-only
transaction, and the statements after it could write the catalog), ATTACH/DETACH (they change
the instance every connection shares) and DDL/DML (temp tables are outside the read-only
transaction), including under EXPLAIN ANALYZE, which runs its statement.
"""

from __future__ import annotations

import re

import duckdb

from . import exceptions as exc
from .engine import MEMORY_ENV, USER_TABLES, UnknownColumnError, closest

# Kinds sent to DuckDB. COPY, EXPORT and LOAD (INSTALL too) reach it so that its sandbox, not a
# parser of ours, refuses them; their messages come from translate().
_ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "SET", "VARIABLE_SET", "COPY", "EXPORT",
                       "COPY_DATABASE", "LOAD"}
_NO_RESULT = {"SET", "VARIABLE_SET"}
_SESSION_KINDS = {"TRANSACTION": "florsql runs each statement in its own read-only transaction",
                  "ATTACH": "florsql's SQL reads only the project's history",
                  "DETACH": "florsql's SQL reads only the project's history"}
_WRITES_FILES = re.compile(r"\bEXPORT\s+DATABASE\b|\bCOPY\b[\s\S]*\bTO\s*'", re.IGNORECASE)
_FILE = re.compile(r'Cannot (?:access file|access directory|COPY to) "([^"]*)"')
_LOCKED = re.compile(r'Cannot change configuration option "([^"]+)"')
_MEMORY = re.compile(r"\(([^()/]+)/([^()]+) used\)")
_REFERENCED = re.compile(r'Referenced column "([^"]+)" not found')
_CANDIDATES = re.compile(r'Candidate bindings: (.*)')
EXPORT_HINT = ("export a result with `florsql -c SQL --output FILE` (.parquet, .csv, .tsv, "
               ".json), `.export FILE` in the shell, or cursor.df(), .arrow() or .pl() in Python")
MEMORY_HINT = (f"raise it with {MEMORY_ENV}=8GB (or 75%) in the environment or "
               "florsql.connect(memory_limit='8GB'), or narrow the query")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The statement kinds of `sql`; raises NotSupportedError for kinds florsql refuses."""
    kinds = _statement_kinds(con, sql)
    if not kinds:
        raise exc.ProgrammingError("empty statement: write a SELECT query")
    for kind, text in kinds:
        _check_kind(kind)
        if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs the statement it explains
            for inner, _ in _statement_kinds(con, _explained(text), strict=False):
                _check_kind(inner)
    return [kind for kind, _ in kinds]


def _statement_kinds(con: duckdb.DuckDBPyConnection, sql: str,
                     strict: bool = True) -> list[tuple[str, str]]:
    try:
        statements = con.extract_statements(sql)
        return [(st.type.name, st.query) for st in statements]
    except duckdb.Error as e:
        if strict:
            raise translate(e) from None
        return []  # DuckDB will refuse the whole statement with its own syntax error
    except ValueError:  # a kind this duckdb module has no name for (UPDATE EXTENSIONS)
        raise exc.NotSupportedError("this statement is not allowed: florsql answers queries "
                                    "only") from None


def _check_kind(kind: str) -> None:
    if kind in _SESSION_KINDS:
        raise exc.NotSupportedError(f"{kind} is not allowed: {_SESSION_KINDS[kind]}")
    if kind not in _ALLOWED_STATEMENTS:
        raise exc.NotSupportedError(
            f"{kind.replace('_', ' ')} is not allowed: the catalog is rebuilt from the record "
            "files, so florsql answers queries only (record new values with flor.log)"
        )


def _explained(sql: str) -> str:
    """The statement after `EXPLAIN [ANALYZE] [(options)]`, found with DuckDB's tokenizer."""
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(sql)
              if kind != duckdb.token_type.comment]
    i = 1  # tokens[0] is EXPLAIN
    while i < len(tokens):
        pos = tokens[i][0]
        word = sql[pos:pos + 7].upper()
        if word == "ANALYZE" and tokens[i][1] == duckdb.token_type.keyword:
            i += 1
        elif sql[pos] == "(" and i + 1 < len(tokens) and not _starts_query(sql, tokens[i + 1][0]):
            i = _after_parenthesis(sql, tokens, i)
        else:
            return sql[pos:]
    return ""


def _starts_query(sql: str, pos: int) -> bool:
    return re.match(r"(SELECT|WITH|FROM|VALUES|TABLE|\()\b", sql[pos:], re.IGNORECASE) is not None


def _after_parenthesis(sql: str, tokens: list, i: int) -> int:
    depth = 0
    for j in range(i, len(tokens)):
        char = sql[tokens[j][0]]
        depth += (char == "(") - (char == ")")
        if depth == 0:
            return j + 1
    return len(tokens)


def describe(duck_description: list | None, kind: str) -> tuple | None:
    """PEP 249 description: None for statements that return no rows (SET, PRAGMA's Success)."""
    if duck_description is None or kind in _NO_RESULT:
        return None
    if kind == "PRAGMA" and [d[:2] for d in duck_description] == [("Success", "BOOLEAN")]:
        return None
    return tuple((name, str(kind), None, None, None, None, None)
                 for name, kind, *_ in duck_description)


def translate(error: duckdb.Error, sql: str | None = None) -> exc.Error:
    """The PEP 249 exception for a DuckDB error, with a one-line message.

    `sql`, the statement that failed, only chooses the words of a refusal (export or read).
    """
    message = one_line(str(error))
    refused = _refusal(error, message, sql)
    if refused is not None:
        return refused
    if isinstance(error, (duckdb.ConversionException, duckdb.OutOfRangeException)):
        return exc.DataError(message)
    if isinstance(error, duckdb.InvalidInputException):
        if "parameter" in message.lower():
            return exc.ProgrammingError(message)
        return exc.OperationalError(message)
    if isinstance(error, duckdb.CatalogException) and "does not exist" in message:
        return _unknown_table(message, sql)
    if isinstance(error, duckdb.BinderException) and _REFERENCED.search(message):
        return _unknown_column(message, str(error), sql)
    if isinstance(error, (duckdb.ParserException, duckdb.BinderException,
                          duckdb.CatalogException, duckdb.ProgrammingError)):
        return exc.ProgrammingError(message)
    if isinstance(error, duckdb.IOException):
        return exc.OperationalError(message)
    if isinstance(error, duckdb.InternalException):
        return exc.InternalError(message)
    if isinstance(error, duckdb.ConstraintException):
        return exc.IntegrityError(message)
    return exc.DatabaseError(message)


def _refusal(error: duckdb.Error, message: str, sql: str | None) -> exc.Error | None:
    """The one line for what DuckDB's sandbox, limits or read-only transaction refused."""
    if isinstance(error, duckdb.PermissionException) or message.startswith(
            "Binder Error: Cannot COPY to"):  # the catalog's own file: refused before access
        return exc.NotSupportedError(_permission(message, sql))
    if isinstance(error, duckdb.InvalidInputException) and "configuration has been locked" in (
            message):
        found = _LOCKED.search(message)
        return exc.NotSupportedError(_locked_setting(found.group(1) if found else "this"))
    if isinstance(error, duckdb.TransactionException) and "read-only" in message:
        return exc.NotSupportedError(
            "writes are not allowed: the catalog is rebuilt from the record files, so florsql "
            "answers queries only (record new values with flor.log)")
    if isinstance(error, duckdb.InterruptException):
        return exc.OperationalError("interrupted: the statement was stopped before it finished "
                                    "(connection.interrupt() or Ctrl-C)")
    if isinstance(error, duckdb.OutOfMemoryException):
        found = _MEMORY.search(message)
        limit = f" ({found.group(2).strip()})" if found else ""
        return exc.OperationalError(f"out of memory: the query needs more than florsql's memory "
                                    f"limit{limit}; {MEMORY_HINT}")
    return None


def _permission(message: str, sql: str | None) -> str:
    if "extension" in message.lower():
        return ("installing or loading DuckDB extensions is not allowed: florsql's SQL runs "
                "with DuckDB's own extensions only")
    found = _FILE.search(message)
    path = f" ({found.group(1)})" if found else ""
    if sql is not None and _WRITES_FILES.search(sql):
        return f"florsql's SQL cannot write files{path}: {EXPORT_HINT}"
    return (f"florsql's SQL cannot read files{path}: it reads only the project's history "
            "(history, runs, logs, ...)")


def _locked_setting(name: str) -> str:
    if name.lower() == "memory_limit":
        return ("SET memory_limit is not allowed: the limit is fixed when florsql opens; "
                + MEMORY_HINT.replace("raise it", "set it").replace(", or narrow the query", ""))
    return (f"SET/RESET {name} is not allowed: florsql locks DuckDB's settings (no file "
            "access, no extensions, a fixed memory limit); SET VARIABLE still works")


def _unknown_table(message: str, sql: str | None) -> exc.ProgrammingError:
    found = re.search(r'with name "?([^" !]+)"? does not exist', message)
    if not found:
        return exc.ProgrammingError(message)
    name = found.group(1)
    tables = [*USER_TABLES, "history"]
    close = closest(name, tables)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return exc.UnknownNameError(f"unknown table {name!r}{hint} (tables: {', '.join(tables)})",
                                name, close, "table", locate_name(sql, name))


def _unknown_column(message: str, raw: str, sql: str | None) -> exc.UnknownNameError:
    name = _REFERENCED.search(message).group(1)
    found = _CANDIDATES.search(raw)
    close = ([c.strip().strip('"').split(".")[-1].strip('"') for c in found.group(1).split(",")]
             if found else [])
    return exc.UnknownNameError(message, name, [c for c in close if c], "column",
                                locate_name(sql, name))


def unknown_name(error: UnknownColumnError, sql: str) -> exc.UnknownNameError:
    """The engine's unknown column as a PEP 249 error that keeps its name, closest matches
    and position."""
    return exc.UnknownNameError(str(error), error.name, error.closest, "column",
                                locate_name(sql, error.name))


def locate_name(sql: str | None, name: str) -> exc.Position | None:
    """Where `name` first appears in `sql` as a name (quoted or not, any case), found with
    DuckDB's tokenizer, so a word inside a string or a comment is never taken for it."""
    if not sql:
        return None
    try:
        tokens = duckdb.tokenize(sql)
    except (duckdb.Error, RuntimeError):
        return None
    wanted = name.lower()
    for pos, kind in tokens:
        if kind in (duckdb.token_type.string_const, duckdb.token_type.comment):
            continue
        text = sql[pos:pos + len(name) + 2]
        quoted = text.startswith('"') and text[1:len(name) + 1].lower() == wanted
        if quoted or (text[:len(name)].lower() == wanted
                      and not (text[len(name):len(name) + 1].isalnum()
                               or text[len(name):len(name) + 1] in ("_", "$"))):
            offset = pos + 1 if quoted else pos
            line = sql.count("\n", 0, offset) + 1
            column = offset - (sql.rfind("\n", 0, offset) + 1) + 1
            return exc.Position(line, column, offset)
    return None


def one_line(message: str) -> str:
    """DuckDB's multi-line error as one line: the error, then the 'did you mean' hint if any."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    head = lines[0] if lines else "unknown error"
    hints = [ln for ln in lines[1:] if ln.lower().startswith(("candidate", "did you mean"))]
    return head + (f" ({hints[0]})" if hints else "")
