"""Build the `history` relation for the columns a query references, as SQL over `logs`.

The grain follows the query (as FlorDB's `flor.dataframe`): one row per run plus the deepest
loop context among the referenced value columns and loop dims. Values logged at an outer
context (args, epoch-level metrics) are repeated on every inner row below it. Within one
context the last value wins, and a forward value wins over a replayed one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlglot import exp

from ..catalog.names import IDENTITY_COLUMNS, HistorySchema, NameInfo

# Forward records outrank replay records; then the later record wins.
_ORDER_KEY = "CASE WHEN source = 'forward' THEN ord + 4611686018427387904 ELSE ord END"
# Ints are exact: from the double while it holds them exactly (|x| < 2^53), else from the text.
# TRY_: a pivot evaluates this on the rows of every name it filters (other names' text, NaN).
_EXACT_INT = ("CASE WHEN abs(value_num) < 9007199254740992 THEN CAST(value_num AS {0}) "
              "ELSE TRY_CAST(value_text AS {0}) END")
_VALUE_EXPR = {
    "BIGINT": _EXACT_INT.format("BIGINT"),
    "HUGEINT": _EXACT_INT.format("HUGEINT"),
    "DOUBLE": "value_num",
    "BOOLEAN": "(value_num <> 0)",
    "VARCHAR": "coalesce(value_text, CAST(value_num AS VARCHAR))",
}


def build_history_sql(schema: HistorySchema, referenced: Iterable[str] | None,
                      run_filter: str | None = None) -> str:
    """SQL of `history` restricted to `referenced` columns (None: every column) and to the
    runs `run_filter` (SQL over `runs` columns) keeps, applied before the joins: a query of one
    run's curve reads that run's records, not every run's."""
    wanted = set(schema.columns()) if referenced is None else {c.lower() for c in referenced}
    values = [i for k, i in sorted(schema.values.items()) if k in wanted]
    dims = [d for d in schema.dims if d.lower() in wanted]
    depth = max([i.max_depth for i in values] + [schema.dims[d] for d in dims] + [0])
    per_depth = {k: [i for i in values if k in i.depths] for k in range(depth + 1)}
    dim_levels = {d: sorted(k for k in schema.dim_depths[d] if k <= depth) for d in dims}
    # context levels to join: those holding a referenced dim or an outer value, and all between
    needed = {k for ks in dim_levels.values() for k in ks}
    needed |= {k for k in range(1, depth) if per_depth[k]}
    lowest = min(needed, default=None)
    # Inside the query each value column has a positional alias (_v0, _v1, ...), so no logged
    # name can meet an internal column (tstamp, ctx_id, source, ...) before the last SELECT.
    alias = {id(info): f"_v{n}" for n, info in enumerate(values)}
    select = [f"r.{_q(c)}" for c in IDENTITY_COLUMNS]
    select += [f"{_dim_expr(d, dim_levels[d])} AS {_q(d)}" for d in dims]
    select += [f"{_coalesce(i, depth, alias[id(i)])} AS {_q(i.column)}" for i in values]
    tables = _Tables.of(run_filter)
    joins = _joins(per_depth, depth, lowest, alias, tables)
    return f"SELECT {', '.join(select)} FROM {tables.runs} AS r {joins}"


class _Tables(NamedTuple):
    """The catalog tables `history` joins, each limited to the runs a filter keeps."""

    runs: str
    contexts: str
    logs_where: str  # a prefix for the WHERE of a scan of `logs`

    @classmethod
    def of(cls, run_filter: str | None) -> _Tables:
        if not run_filter:
            return cls("runs", "contexts", "")
        kept = f"tstamp IN (SELECT tstamp FROM runs WHERE {run_filter})"
        return cls(f"(SELECT * FROM runs WHERE {run_filter})",
                   f"(SELECT * FROM contexts WHERE {kept})", f"{kept} AND ")


def _joins(per_depth: dict[int, list[NameInfo]], depth: int, lowest: int | None,
           alias: dict[int, str], tables: _Tables) -> str:
    joins = []
    contexts = tables.contexts
    if depth > 0 and per_depth[depth]:
        joins.append(f"LEFT JOIN ({_pivot(per_depth[depth], depth, alias, tables)}) "
                     f"AS v{depth} ON v{depth}.tstamp = r.tstamp")
        if lowest is not None:
            joins.append(f"LEFT JOIN {contexts} AS c{depth} ON c{depth}.tstamp = r.tstamp "
                         f"AND c{depth}.ctx_id = v{depth}.ctx_id")
    elif depth > 0:  # only loop dims at the deepest level: the contexts are the grain
        joins.append(f"LEFT JOIN (SELECT * FROM {contexts} WHERE depth = {depth}) "
                     f"AS c{depth} ON c{depth}.tstamp = r.tstamp")
    for k in range(depth - 1, (lowest or depth) - 1, -1):
        joins.append(f"LEFT JOIN {contexts} AS c{k} ON c{k}.tstamp = r.tstamp "
                     f"AND c{k}.ctx_id = c{k + 1}.parent_id")
        if per_depth[k]:
            joins.append(f"LEFT JOIN ({_pivot(per_depth[k], k, alias, tables)}) AS v{k} "
                         f"ON v{k}.tstamp = r.tstamp AND v{k}.ctx_id = c{k}.ctx_id")
    if per_depth[0]:
        joins.append(f"LEFT JOIN ({_pivot(per_depth[0], 0, alias, tables)}) AS v0 "
                     "ON v0.tstamp = r.tstamp")
    return " ".join(joins)


def _pivot(infos: list[NameInfo], depth: int, alias: dict[int, str], tables: _Tables) -> str:
    """One row per (run, context) at `depth` with a column per name."""
    names = sorted({v for i in infos for v in i.variants})
    where = (f"{tables.logs_where}depth = {depth} AND value_name IN "
             f"({', '.join(_lit(n) for n in names)})")
    if len(infos) == 1 and _no_duplicates(infos[0], depth):
        info = infos[0]
        return (f"SELECT tstamp, ctx_id, {_VALUE_EXPR[info.sql_type]} AS {alias[id(info)]} "
                f"FROM logs WHERE {where}")
    cols = [
        f"arg_max({_VALUE_EXPR[i.sql_type]}, {_ORDER_KEY}) FILTER (WHERE value_name IN "
        f"({', '.join(_lit(v) for v in sorted(i.variants))})) AS {alias[id(i)]}"
        for i in infos
    ]
    return f"SELECT tstamp, ctx_id, {', '.join(cols)} FROM logs WHERE {where} GROUP BY ALL"


def _no_duplicates(info: NameInfo, depth: int) -> bool:
    records, contexts = info.depths[depth]
    return records == contexts and len(info.variants) == 1


def _coalesce(info: NameInfo, depth: int, alias: str) -> str:
    sources = [f"v{k}.{alias}" for k in range(depth, -1, -1) if k in info.depths]
    if not sources:  # logged by today's script, by no run yet
        return f"CAST(NULL AS {info.sql_type})"
    return sources[0] if len(sources) == 1 else f"COALESCE({', '.join(sources)})"


def _dim_expr(dim: str, levels: list[int]) -> str:
    whens = " ".join(f"WHEN c{k}.loop_name = {_lit(dim)} THEN c{k}.iteration"
                     for k in reversed(levels))
    return f"CASE {whens} END"


def _q(identifier: str) -> str:
    return exp.to_identifier(identifier, quoted=True).sql(dialect="duckdb")


def _lit(value: str) -> str:
    return exp.Literal.string(value).sql(dialect="duckdb")
