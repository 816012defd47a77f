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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from ..catalog.names import HistorySchema
from .analyze import Analysis, analyze_statement
from .history import build_history_sql

log = logging.getLogger(__name__)
HISTORY = "history"
_BODY_MARKER = "__florsql_history_body__"
_MENTIONS_HISTORY = re.compile(r"\bhistory\b", re.IGNORECASE)


@dataclass
class Rewrite:
    """The SQL to run, and whether it needs a full `history` temp view (the fallback)."""

    sql: str
    needs_full_view: bool = False
    referenced: frozenset[str] | None = None
    analysis: Analysis = field(default_factory=Analysis)


def rewrite_query(sql: str, schema: HistorySchema, tables: dict[str, dict[str, str]],
                  script_names: Mapping[str, str] | None = None, params: Any = None) -> Rewrite:
    """Expand `history` in `sql`; `tables` maps the catalog's tables to their column types.

    `script_names` (lower-cased -> spelling) are names today's scripts log: the query may use
    them before any run has; they read as NULL until replayed (`Rewrite.analysis` says which).
    """
    if not _MENTIONS_HISTORY.search(sql):
        return Rewrite(sql)
    try:
        statements = sqlglot.parse(sql, read="duckdb")
    except SqlglotError as e:
        log.debug("sqlglot cannot parse, using the full history view: %s", e)
        return Rewrite(sql, needs_full_view=True)
    out, analysis, script_names = [], Analysis(), script_names or {}
    for statement in filter(None, statements):
        if not _reads_history(statement):
            out.append(statement.sql(dialect="duckdb"))
            continue
        if not isinstance(statement, exp.Query):
            return Rewrite(sql, needs_full_view=True)
        found = analyze_statement(statement, schema, tables, script_names, params)
        analysis.merge(found)
        pending = schema.with_pending(script_names[n] for n in found.referenced
                                      if n in script_names)
        out.append(_with_history_cte(statement, pending, found.referenced, found.run_filter))
    return Rewrite(";\n".join(out), referenced=frozenset(analysis.referenced),
                   analysis=analysis)


def _reads_history(statement: exp.Expression) -> bool:
    ctes = {cte.alias_or_name.lower() for cte in statement.find_all(exp.CTE)}
    return HISTORY not in ctes and any(
        t.name.lower() == HISTORY and not t.db for t in statement.find_all(exp.Table))


def _with_history_cte(statement: exp.Query, schema: HistorySchema, referenced: set[str],
                      run_filter: exp.Expression | None = None) -> str:
    """`statement` as DuckDB SQL with a `history` CTE in front of its own CTEs.

    The CTE body is built as SQL text by history.py; it goes in through a marker rather than
    through sqlglot's parser, which would cost a parse of it on every query.
    """
    marker = exp.select(exp.alias_(exp.Literal.number(1), _BODY_MARKER))
    cte = exp.CTE(this=marker, alias=exp.TableAlias(this=exp.to_identifier(HISTORY)))
    rewritten = statement.copy()
    key = "with_" if "with_" in type(rewritten).arg_types else "with"  # sqlglot >= 28 renamed it
    with_ = rewritten.args.get(key)
    if with_ is None:
        rewritten.set(key, exp.With(expressions=[cte]))
    else:
        with_.set("expressions", [cte, *with_.expressions])
    runs = None if run_filter is None else run_filter.sql(dialect="duckdb")
    text, body = rewritten.sql(dialect="duckdb"), build_history_sql(schema, referenced, runs)
    placeholder = marker.sql(dialect="duckdb")
    if text.count(placeholder) != 1:  # the user's own SQL holds the marker: parse the body
        cte.set("this", sqlglot.parse_one(body, read="duckdb"))
        return rewritten.sql(dialect="duckdb")
    return text.replace(placeholder, body)


def closest(name: str, known: list[str], n: int = 3) -> list[str]:
    lowered = {k.lower(): k for k in known}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=n)]
