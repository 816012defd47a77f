"""An independent, slow implementation of the `history` grain rule in pandas, for the tests.

Rule: rows are keyed by run plus the deepest loop context among the referenced value columns
and loop dims; a value logged at an outer context repeats on every row below it; within a
context the last forward value wins (replayed values only where no forward value exists).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

IDENTITY = ["projid", "runid", "tstamp", "vid", "filename"]


def load_raw(conn: Any) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    runs = conn.execute("SELECT projid, runid, tstamp, vid, filename FROM runs").df()
    ctx = conn.execute(
        "SELECT tstamp, ctx_id, depth, parent_id, loop_name, iteration FROM contexts").df()
    logs = conn.execute(
        "SELECT tstamp, ctx_id, depth, value_name, value_type, value_num, value_text, source, "
        "ord FROM logs").df()
    return runs, ctx, logs


def expected_history(raw: tuple, columns: list[str]) -> pd.DataFrame:
    runs, ctx, logs = raw
    dim_depth = ctx[ctx.depth > 0].groupby("loop_name").depth.max().to_dict()
    name_depth = logs.groupby("value_name").depth.max().to_dict()
    values = [c for c in columns if c in name_depth]
    dims = [c for c in columns if c in dim_depth]
    depth = max([name_depth[v] for v in values] + [dim_depth[d] for d in dims] + [0])
    ctx_by_key = {(r.tstamp, r.ctx_id): r for r in ctx.itertuples()}
    last = _last_values(logs[logs.value_name.isin(values)])
    rows = []
    for run in runs.itertuples():
        for ctx_id in _grain_contexts(run.tstamp, ctx, logs, values, depth):
            chain = _ancestors(ctx_by_key, run.tstamp, 0 if ctx_id is None else ctx_id)
            chain = chain if ctx_id is not None else chain[-1:]  # no grain row: run level only
            row = {c: getattr(run, c) for c in IDENTITY}
            for d in dims:
                row[d] = next((c.iteration for c in chain if c.loop_name == d), None)
            for v in values:
                row[v] = next((last[(run.tstamp, c.ctx_id, v)] for c in chain
                               if (run.tstamp, c.ctx_id, v) in last), None)
            rows.append(row)
    return pd.DataFrame(rows, columns=[*IDENTITY, *dims, *values])


def _grain_contexts(tstamp, ctx, logs, values, depth) -> list:
    if depth == 0:
        return [0]
    mine = logs[(logs.tstamp == tstamp) & (logs.depth == depth) & logs.value_name.isin(values)]
    if values and any(logs[logs.value_name == v].depth.max() == depth for v in values):
        ids = sorted(set(mine.ctx_id))
    else:
        ids = sorted(ctx[(ctx.tstamp == tstamp) & (ctx.depth == depth)].ctx_id)
    return ids or [None]


def _ancestors(ctx_by_key: dict, tstamp, ctx_id) -> list:
    chain = []
    while ctx_id is not None and not pd.isna(ctx_id):
        node = ctx_by_key[(tstamp, int(ctx_id))]
        chain.append(node)
        ctx_id = node.parent_id
    return chain


def _last_values(logs: pd.DataFrame) -> dict:
    out = {}
    types = logs.groupby("value_name").value_type.agg(lambda t: set(t) - {"null"}).to_dict()
    ranked = logs.assign(fwd=logs.source == "forward").sort_values(["fwd", "ord"])
    for r in ranked.itertuples():
        out[(r.tstamp, r.ctx_id, r.value_name)] = _typed(r, types[r.value_name])
    return out


def _typed(r, kinds: set) -> Any:
    if r.value_type == "null":
        return None
    if kinds <= {"int", "float"}:
        return int(r.value_num) if kinds == {"int"} else r.value_num
    if kinds == {"bool"}:
        return r.value_num != 0
    return r.value_text
