"""FlorDB's read-side helpers: `flor.dataframe`, `query`, `log_records`, `full_pivot`.

They open the project's catalog through florsql (imported lazily: recording never needs it)
and keep it open between calls, so a notebook's repeated calls run warm; the connection (and
its in-memory copy of the catalog) is released after FLOR_CATALOG_IDLE seconds (default 10)
without a call, so a notebook does not keep that memory. No other process ever waits for it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA_PREP = ("projid", "runid", "tstamp", "vid")
_IDENTITY = (*DATA_PREP, "filename")
_open: dict[Path, Any] = {}
_timers: dict[Path, threading.Timer] = {}
_lock = threading.RLock()


@contextlib.contextmanager
def _connection(path: str | os.PathLike) -> Iterator[Any]:
    """The project's florsql connection, reused while calls keep coming."""
    import florsql

    key = Path(path).resolve()
    with _lock:
        timer = _timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        conn = _open.get(key) or florsql.connect(str(key))
        _open[key] = conn
        try:
            yield conn
        finally:
            idle = float(os.environ.get("FLOR_CATALOG_IDLE", "10"))
            _timers[key] = threading.Timer(idle, _release, args=(key,))
            _timers[key].daemon = True
            _timers[key].start()


def _release_all() -> None:
    for key in list(_open):
        _release(key)


atexit.register(_release_all)


def _release(key: Path) -> None:
    with _lock:
        timer = _timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        conn = _open.pop(key, None)
        if conn is not None:
            conn.close()


def query(sql: str, params: Any = None, path: str | os.PathLike = ".") -> Any:
    """Run SQL over the project's history (tables and `history`) and return a DataFrame."""
    with _connection(path) as conn:
        return conn.execute(sql, params).df()


def dataframe(*names: str, path: str | os.PathLike = ".") -> Any:
    """The pivoted history of `names`: identity, the loop dims down to their grain, the values.

    `flor.dataframe("loss")` has a row per step of every run; `flor.dataframe("lr", "acc")`
    a row per run (or per epoch if `acc` is logged per epoch). A name that today's script logs
    but past runs lack is replayed for them first, as any florsql query does.
    """
    from sqlglot import exp

    if not names:
        raise ValueError("flor.dataframe(*names): name at least one logged value or arg")
    with _connection(path) as conn:
        conn.refresh()
        _fill_missing(conn, names)
        schema = conn.session.history_schema
        known = {k: info for k, info in schema.values.items()}
        # A logged name that collides with an identity or loop column lives in <name>_value.
        wanted = [schema.column_of(n) or n for n in names]
        depth = max((known[c.lower()].max_depth for c in wanted if c.lower() in known), default=0)
        dims = [d for d, d_depth in sorted(schema.dims.items(), key=lambda x: x[1])
                if d_depth <= depth]
        columns = list(dict.fromkeys([*_IDENTITY, *dims, *wanted]))
        select = ", ".join(exp.to_identifier(c, quoted=True).sql("duckdb") for c in columns)
        frame = conn.cursor()._execute(f"SELECT {select} FROM history", None,
                                       refresh=False).df()
    # pandas sorts these keys faster than DuckDB sorts rows with their text payload
    return frame.sort_values(["tstamp", *dims], kind="stable", ignore_index=True)


def _fill_missing(conn: Any, names: tuple[str, ...]) -> None:
    """Names only today's script logs: replay them first (by the connection's replay mode),
    so the grain below comes from where they are logged."""
    from sqlglot import exp

    known = conn.session.history_schema.columns_lower
    missing = [n for n in names if n.lower() not in known]
    if missing:
        select = ", ".join(exp.to_identifier(n, quoted=True).sql("duckdb") for n in missing)
        with conn.cursor() as cur:
            cur._execute(f"SELECT {select} FROM history LIMIT 0", None, refresh=False)


def log_records(path: str | os.PathLike = ".") -> Any:
    """Every recorded value in long form: identity, loop dims, value_name, value."""
    with _connection(path) as conn:
        conn.refresh()
        dims = sorted(conn.session.history_schema.dims.items(), key=lambda x: x[1])
        dim_cols = "".join(
            f", max(lp.iteration) FILTER (WHERE lp.loop_name = '{d}') AS \"{d}\""
            for d, _ in dims if d.isidentifier())
        sql = (
            "SELECT r.projid, r.runid, r.tstamp, r.vid, r.filename" + dim_cols +
            ", l.value_name, coalesce(l.value_text, CAST(l.value_num AS VARCHAR)) AS value "
            "FROM logs l JOIN runs r USING (tstamp) LEFT JOIN loops lp "
            "ON lp.tstamp = l.tstamp AND lp.ctx_id = l.ctx_id "
            "GROUP BY ALL ORDER BY r.tstamp, min(l.ord)")
        return conn.cursor()._execute(sql, None, refresh=False).df()


def full_pivot(df: Any) -> Any:
    """FlorDB's full pivot of `log_records()`: one column per value_name, outer values repeated.

    Records are pivoted per loop depth and merged from the outermost inward, so run-level args
    and epoch-level metrics appear on every step row below them.
    """
    dims = [c for c in df.columns if c not in (*_IDENTITY, "value_name", "value")]
    levels = []
    for depth in range(len(dims) + 1):
        inner = dims[:depth]
        mask = df[inner].notna().all(axis=1) & df[dims[depth:]].isna().all(axis=1)
        part = df[mask]
        if part.empty:
            continue
        wide = part.pivot_table(index=[*_IDENTITY, *inner], columns="value_name",
                                values="value", aggfunc="last").reset_index()
        levels.append((inner, wide.rename_axis(columns=None)))
    if not levels:
        return df.iloc[0:0]
    merged = levels[0][1]
    for inner, wide in levels[1:]:
        shared = [c for c in merged.columns if c in wide.columns and c in (*_IDENTITY, *inner)]
        merged = wide.merge(merged, on=shared, how="outer", suffixes=("", "_outer"))
    return merged
