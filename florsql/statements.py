"""Split a script of SQL into statements, as sqlite3 and psql do before running each in turn.

    >>> [s.sql for s in split_statements("SELECT 1; -- note\\nSELECT ';' AS x;")]
    ['SELECT 1', "-- note\\nSELECT ';' AS x"]

The split is lexical (sqlglot's DuckDB tokenizer finds the `;` that end statements, skipping
those in strings, quoted names and comments), so a statement DuckDB cannot parse, or florsql's
own `EXPLAIN REPLAY`, is still cut out whole and reported with its own number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import sqlglot
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

READ_LIMIT = 10 * 1024 * 1024  # SQL scripts, not datasets: /dev/zero or a dump is a mistake


class ScriptReadError(ValueError):
    """A SQL script could not be read; the message is one line naming it and why."""


@dataclass(frozen=True)
class Statement:
    """One statement of a script: its 1-based number, its text, and the line it starts on."""

    number: int
    sql: str
    line: int


def split_statements(text: str) -> list[Statement]:
    """The statements of `text` in order, without their `;`; empty ones are dropped.

    Text the tokenizer cannot read (an unterminated string) is one statement, so that DuckDB
    reports the error with its own position.
    """
    try:
        tokens = sqlglot.tokenize(text, read="duckdb")
    except TokenError:
        return [Statement(1, text.strip(), 1)] if text.strip() else []
    statements: list[Statement] = []
    begin, has_tokens = 0, False
    for token in tokens:
        if token.token_type != TokenType.SEMICOLON:
            has_tokens = True
            continue
        if has_tokens:
            statements.append(_statement(text, begin, token.start, len(statements) + 1))
        begin, has_tokens = token.end + 1, False
    if has_tokens:
        statements.append(_statement(text, begin, len(text), len(statements) + 1))
    return statements


def _statement(text: str, begin: int, end: int, number: int) -> Statement:
    chunk = text[begin:end]
    stripped = chunk.strip()
    # The line of the statement's first character, for messages about a long script.
    first = begin + (len(chunk) - len(chunk.lstrip()))
    return Statement(number, stripped, text.count("\n", 0, first) + 1)


def read_sql_file(name: str, limit: int = READ_LIMIT) -> str:
    """The text of the SQL script at `name` (`.read`, `florsql -f`); ScriptReadError if it
    cannot be read, is over `limit` bytes, or is not UTF-8 text."""
    try:
        with Path(name).expanduser().open("rb") as fh:
            return read_sql_stream(fh, name, limit)
    except OSError as e:
        raise ScriptReadError(f"cannot read {name}: {e.strerror}") from None


def read_sql_stream(stream: BinaryIO, name: str, limit: int = READ_LIMIT) -> str:
    """At most `limit` bytes of UTF-8 without NUL bytes from `stream`, never holding more than
    that in memory (`/dev/zero` never ends)."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ScriptReadError(f"cannot read {name}: over {limit // (1024 * 1024)} MB, too "
                              "large for a SQL script")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise ScriptReadError(f"cannot read {name}: not a SQL script (binary, or not UTF-8 "
                              "text)")
    return text
