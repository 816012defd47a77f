"""Rewrite a query over `history` into one over the catalog tables, with sqlglot.

parse -> find `history` references -> qualify against the schema to find the referenced
columns -> prepend a `history` CTE holding only those (see history.py) -> generate DuckDB SQL.
The user's SQL is never pasted into strings: only the parsed tree is changed. Statements
sqlglot cannot handle (a parse error, `DESCRIBE history`) fall back to a temp view holding
every column.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope
from sqlglot.schema import MappingSchema

from .errors import UnknownColumnError
from .history import build_history_sql
from .names import HistorySchema

log = logging.getLogger(__name__)
HISTORY = "history"
_MENTIONS_HISTORY = re.compile(r"\bhistory\b", re.IGNORECASE)
_UNRESOLVED = re.compile(r"Column '([^']+)' could not be resolved")


@dataclass
class Rewrite:
    """The SQL to run, and whether it needs a full `history` temp view (the fallback)."""

    sql: str
    needs_full_view: bool = False
    referenced: frozenset[str] | None = None


def rewrite_query(sql: str, schema: HistorySchema, tables: dict[str, dict[str, str]]) -> Rewrite:
    """Expand `history` in `sql`; `tables` maps the catalog's tables to their column types."""
    if not _MENTIONS_HISTORY.search(sql):
        return Rewrite(sql)
    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except SqlglotError as e:
        log.debug("sqlglot cannot parse, using the full history view: %s", e)
        return Rewrite(sql, needs_full_view=True)
    out, full, seen = [], False, set()
    for statement in filter(None, statements):
        if not _reads_history(statement):
            out.append(statement.sql(dialect="duckdb"))
            continue
        if not isinstance(statement, exp.Query):
            return Rewrite(sql, needs_full_view=True)
        referenced = referenced_columns(statement, schema, tables)
        seen |= referenced
        out.append(_with_history_cte(statement, schema, referenced).sql(dialect="duckdb"))
    return Rewrite(";\n".join(out), needs_full_view=full, referenced=frozenset(seen))


def referenced_columns(statement: exp.Expression, schema: HistorySchema,
                       tables: dict[str, dict[str, str]]) -> set[str]:
    """The `history` columns `statement` reads (every one for `SELECT *`)."""
    history_cols = schema.columns()
    mapping = MappingSchema({**tables, HISTORY: history_cols}, dialect="duckdb")
    try:
        qualified = qualify(statement.copy(), schema=mapping, dialect="duckdb",
                            validate_qualify_columns=True, quote_identifiers=False)
    except OptimizeError as e:
        unresolved = _UNRESOLVED.search(str(e))
        if unresolved:
            known = [*history_cols, *{c for cols in tables.values() for c in cols}]
            raise UnknownColumnError(unresolved.group(1), known) from None
        log.debug("qualify failed, falling back to column names: %s", e)
        return _column_names(statement, history_cols)
    except SqlglotError as e:
        log.debug("qualify failed, falling back to column names: %s", e)
        return _column_names(statement, history_cols)
    found: set[str] = set()
    for scope in traverse_scope(qualified):
        aliases = {alias for alias, (_, source) in scope.selected_sources.items()
                   if isinstance(source, exp.Table) and source.name.lower() == HISTORY}
        found |= {c.name.lower() for c in scope.columns if c.table in aliases}
    return found


def _reads_history(statement: exp.Expression) -> bool:
    ctes = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
    return HISTORY not in ctes and any(
        t.name.lower() == HISTORY and not t.db for t in statement.find_all(exp.Table))


def _with_history_cte(statement: exp.Query, schema: HistorySchema,
                      referenced: set[str]) -> exp.Query:
    body = sqlglot.parse_one(build_history_sql(schema, referenced), read="duckdb")
    cte = exp.CTE(this=body, alias=exp.TableAlias(this=exp.to_identifier(HISTORY)))
    rewritten = statement.copy()
    key = "with_" if "with_" in type(rewritten).arg_types else "with"  # sqlglot >= 28 renamed it
    with_ = rewritten.args.get(key)
    if with_ is None:
        rewritten.set(key, exp.With(expressions=[cte]))
    else:
        with_.set("expressions", [cte, *with_.expressions])
    return rewritten


def _column_names(statement: exp.Expression, history_cols: dict[str, str]) -> set[str]:
    if any(isinstance(s, exp.Star) for s in statement.find_all(exp.Star)):
        return {c.lower() for c in history_cols}
    names = {c.name.lower() for c in statement.find_all(exp.Column)}
    return names & {c.lower() for c in history_cols}


def closest(name: str, known: list[str], n: int = 3) -> list[str]:
    lowered = {k.lower(): k for k in known}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n)]
