"""Build the `history` relation for the columns a query references, as SQL over `_logs`.

The grain follows the query (as FlorDB's `flor.dataframe`): one row per run plus the deepest
loop context among the referenced value columns and loop dims. Values logged at an outer
context (args, epoch-level metrics) are repeated on every inner row below it. Within one
context the last value wins, and a forward value wins over a replayed one.

Every row of `_logs` and `_contexts` carries its enclosing contexts at depths 1..3 (`loop_k`,
`iter_k`, `ctx_k`, see rows.py), so up to depth 3 `history` is one filtered scan (grouped
where a context holds several records of a name) at the grain, which carries the loop dims
and the ids of the outer contexts; outer values join on those ids. Deeper grains walk the
contexts (`_all_contexts`: those stored, and those their first record stands for) by
`parent_id`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlglot import exp

from ..catalog.definitions import ANCESTOR_LEVELS
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
    # Inside the query each value column has a positional alias (_v0, _v1, ...), and each dim
    # one too (_d0, ...), so no logged name can meet an internal column (tstamp, ctx_id,
    # source, ...) before the last SELECT.
    alias = {id(info): f"_v{n}" for n, info in enumerate(values)}
    tables = _Tables.of(run_filter)
    select = [f"r.{_q(c)}" for c in IDENTITY_COLUMNS]
    if depth <= ANCESTOR_LEVELS:
        # the loop statistics come from records: trusted for a grain of records only
        only = _only_loop(schema) if per_depth[depth] else {}
        dim_exprs = [_dim_expr(d, dim_levels[d], "", only) for d in dims]
        select += [f"v{depth}._d{n} AS {_q(d)}" for n, d in enumerate(dims)]
        joins = _scan_joins(per_depth, depth, dim_exprs, alias, tables)
    else:
        select += [f"{_dim_expr(d, dim_levels[d], 'c', {})} AS {_q(d)}" for d in dims]
        joins = _parent_joins(per_depth, depth, dim_levels, alias, tables)
    select += [f"{_coalesce(i, depth, alias[id(i)])} AS {_q(i.column)}" for i in values]
    return f"SELECT {', '.join(select)} FROM {tables.runs} AS r {joins}"


class _Tables(NamedTuple):
    """The catalog tables `history` reads, each limited to the runs a filter keeps."""

    runs: str
    contexts: str
    logs_where: str  # a prefix for the WHERE of a scan of `_logs` or `_all_contexts`

    @classmethod
    def of(cls, run_filter: str | None) -> _Tables:
        if not run_filter:
            return cls("runs", "_all_contexts", "")
        kept = f"tstamp IN (SELECT tstamp FROM runs WHERE {run_filter})"
        return cls(f"(SELECT * FROM runs WHERE {run_filter})",
                   f"(SELECT * FROM _all_contexts WHERE {kept})", f"{kept} AND ")


def _scan_joins(per_depth: dict[int, list[NameInfo]], depth: int, dim_exprs: list[str],
                alias: dict[int, str], tables: _Tables) -> str:
    """Grain at depth <= 3: one scan of `_logs` (or of the contexts for dims alone) at the grain
    depth, carrying the dims and the ids of the outer contexts that hold referenced values."""
    joins = []
    if depth > 0:
        outer = [k for k in range(1, depth) if per_depth[k]]
        carried = [(f"ctx_{k}", f"_c{k}") for k in outer]
        carried += [(e, f"_d{n}") for n, e in enumerate(dim_exprs)]
        if per_depth[depth]:
            grain = _pivot(per_depth[depth], depth, alias, tables, carried)
        else:  # only loop dims (and outer values) here: the contexts are the grain
            cols = "".join(f", {e} AS {a}" for e, a in carried)
            grain = (f"SELECT tstamp, ctx_id{cols} FROM _all_contexts "
                     f"WHERE {tables.logs_where}depth = {depth}")
        joins.append(f"LEFT JOIN ({grain}) AS v{depth} ON v{depth}.tstamp = r.tstamp")
        for k in reversed(outer):
            joins.append(f"LEFT JOIN ({_pivot(per_depth[k], k, alias, tables)}) AS v{k} "
                         f"ON v{k}.tstamp = r.tstamp AND v{k}.ctx_id = v{depth}._c{k}")
    joins += _run_level_join(per_depth, alias, tables)
    return " ".join(joins)


def _parent_joins(per_depth: dict[int, list[NameInfo]], depth: int,
                  dim_levels: dict[str, list[int]], alias: dict[int, str],
                  tables: _Tables) -> str:
    """Grain deeper than the ancestor columns reach: walk the contexts up by `parent_id`."""
    # context levels to join: those holding a referenced dim or an outer value, and all between
    needed = {k for ks in dim_levels.values() for k in ks}
    needed |= {k for k in range(1, depth) if per_depth[k]}
    lowest = min(needed, default=None)
    joins = []
    contexts = tables.contexts
    if per_depth[depth]:
        joins.append(f"LEFT JOIN ({_pivot(per_depth[depth], depth, alias, tables)}) "
                     f"AS v{depth} ON v{depth}.tstamp = r.tstamp")
        if lowest is not None:
            joins.append(f"LEFT JOIN {contexts} AS c{depth} ON c{depth}.tstamp = r.tstamp "
                         f"AND c{depth}.ctx_id = v{depth}.ctx_id")
    else:  # only loop dims at the deepest level: the contexts are the grain
        joins.append(f"LEFT JOIN (SELECT * FROM {contexts} WHERE depth = {depth}) "
                     f"AS c{depth} ON c{depth}.tstamp = r.tstamp")
    for k in range(depth - 1, (lowest or depth) - 1, -1):
        joins.append(f"LEFT JOIN {contexts} AS c{k} ON c{k}.tstamp = r.tstamp "
                     f"AND c{k}.ctx_id = c{k + 1}.parent_id")
        if per_depth[k]:
            joins.append(f"LEFT JOIN ({_pivot(per_depth[k], k, alias, tables)}) AS v{k} "
                         f"ON v{k}.tstamp = r.tstamp AND v{k}.ctx_id = c{k}.ctx_id")
    joins += _run_level_join(per_depth, alias, tables)
    return " ".join(joins)


def _run_level_join(per_depth: dict[int, list[NameInfo]], alias: dict[int, str],
                    tables: _Tables) -> list[str]:
    """Values logged outside every loop (args, run-level metrics): one row per run."""
    if not per_depth[0]:
        return []
    return [f"LEFT JOIN ({_pivot(per_depth[0], 0, alias, tables)}) AS v0 "
            "ON v0.tstamp = r.tstamp"]


def _pivot(infos: list[NameInfo], depth: int, alias: dict[int, str], tables: _Tables,
           carried: list[tuple[str, str]] = ()) -> str:
    """One row per (run, context) at `depth` with a column per name, plus the `carried`
    (expression, alias) pairs: properties of the context, the same on each of its records."""
    names = sorted({v for i in infos for v in i.variants})
    where = (f"{tables.logs_where}depth = {depth} AND value_name IN "
             f"({', '.join(_lit(n) for n in names)})")
    if len(infos) == 1 and _no_duplicates(infos[0], depth):
        info = infos[0]
        extra = "".join(f", {e} AS {a}" for e, a in carried)
        return (f"SELECT tstamp, ctx_id, {_VALUE_EXPR[info.sql_type]} AS {alias[id(info)]}"
                f"{extra} FROM _logs WHERE {where}")
    # a name no context holds twice needs no ranking of its records
    cols = [
        (f"any_value({_VALUE_EXPR[i.sql_type]})" if _no_duplicates(i, depth) else
         f"arg_max({_VALUE_EXPR[i.sql_type]}, {_ORDER_KEY})") +
        f" FILTER (WHERE value_name IN ({', '.join(_lit(v) for v in sorted(i.variants))}))"
        f" AS {alias[id(i)]}"
        for i in infos
    ]
    cols += [f"any_value({e}) AS {a}" for e, a in carried]
    return (f"SELECT tstamp, ctx_id, {', '.join(cols)} FROM _logs WHERE {where} "
            "GROUP BY tstamp, ctx_id")


def _no_duplicates(info: NameInfo, depth: int) -> bool:
    """Whether no context at `depth` holds two records of the name. (Counts of a name that is
    an arg too add an arg's and a log's count of one context: never trusted.)"""
    records, contexts = info.depths[depth]
    return records == contexts and len(info.variants) == 1 and not info.is_arg


def _coalesce(info: NameInfo, depth: int, alias: str) -> str:
    sources = [f"v{k}.{alias}" for k in range(depth, -1, -1) if k in info.depths]
    if not sources:  # logged by today's script, by no run yet
        return f"CAST(NULL AS {info.sql_type})"
    return sources[0] if len(sources) == 1 else f"COALESCE({', '.join(sources)})"


def _only_loop(schema: HistorySchema) -> dict[int, str]:
    """Depth -> the loop name, at the depths where every run's loop has the same name."""
    names: dict[int, set[str]] = {}
    for name, depths in schema.dim_depths.items():
        for k in depths:
            names.setdefault(k, set()).add(name)
    return {k: next(iter(n)) for k, n in names.items() if len(n) == 1}


def _dim_expr(dim: str, levels: list[int], walked: str, only: dict[int, str]) -> str:
    """The dim's iteration: from the row's ancestor columns (`walked` empty), or from the
    contexts `c1`, `c2`, ... joined by walking parents (`walked` = 'c'); deepest level first.
    At a depth where the dim is the only loop name (`only`), every row at the grain (no
    shallower than the dim's levels) has it: its iteration needs no test of the name."""
    whens = []
    for k in reversed(levels):
        name, iteration = ((f"{walked}{k}.loop_name", f"{walked}{k}.iteration") if walked
                           else (f"loop_{k}", f"iter_{k}"))
        if only.get(k) == dim:
            if not whens:
                return iteration
            return f"CASE {' '.join(whens)} ELSE {iteration} END"
        whens.append(f"WHEN {name} = {_lit(dim)} THEN {iteration}")
    return f"CASE {' '.join(whens)} END"


def _q(identifier: str) -> str:
    return exp.to_identifier(identifier, quoted=True).sql(dialect="duckdb")


def _lit(value: str) -> str:
    return exp.Literal.string(value).sql(dialect="duckdb")
