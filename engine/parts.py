"""Decode one record part (written by flor's PartWriter) into catalog rows."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

PART_FORMAT = "flor-part/1"
_ORD_STRIDE = 10_000_000  # ord = part seq * stride + position: "last value wins" order


class PartError(ValueError):
    """A record part is unreadable or not in the expected format."""


@dataclass
class RowBatch:
    """Rows for logs, contexts, loops and iterations from one part."""

    tstamp: str
    logs: dict[str, list] = field(default_factory=lambda: {
        k: [] for k in ("ctx_id", "depth", "value_name", "value_type", "value_num",
                        "value_text", "kind", "ord")})
    contexts: list[tuple] = field(default_factory=list)
    loops: list[tuple] = field(default_factory=list)
    iterations: list[tuple] = field(default_factory=list)
    source: str = "forward"

    def extend(self, other: RowBatch) -> None:
        for key, values in other.logs.items():
            self.logs[key].extend(values)
        self.contexts.extend(other.contexts)
        self.loops.extend(other.loops)
        self.iterations.extend(other.iterations)

    @property
    def count(self) -> int:
        return len(self.logs["ctx_id"])

    def insert_into(self, con: Any) -> None:
        """Append the rows through Arrow (executemany is far too slow for log volumes)."""
        if self.count:
            logs_batch = pa.table(self.logs)  # noqa: F841  (read by DuckDB's replacement scan)
            con.execute(
                "INSERT INTO logs SELECT CAST(? AS TIMESTAMP), ctx_id, depth, value_name, "
                "value_type, value_num, value_text, kind, ?, ord FROM logs_batch",
                [self.tstamp, self.source],
            )
        _append(con, "contexts", ["ctx_id", "depth", "path", "parent_id", "loop_name", "iteration"],
                self.tstamp, self.contexts)
        _append(con, "loops", ["ctx_id", "depth", "loop_name", "iteration"], self.tstamp,
                self.loops)
        _append(con, "iterations", ["loop_name", "iteration", "seconds", "source"], self.tstamp,
                self.iterations)


def _append(con: Any, table: str, columns: list[str], tstamp: str, rows: list[tuple]) -> None:
    if not rows:
        return
    rows_batch = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})  # noqa: F841
    con.execute(
        f"INSERT INTO {table} SELECT CAST(? AS TIMESTAMP), {', '.join(columns)} FROM rows_batch",
        [tstamp],
    )


def read_part(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PartError(f"not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(doc, dict) or doc.get("format") != PART_FORMAT:
        raise PartError(f"not a {PART_FORMAT} file")
    return doc


def rows_of_part(doc: dict, batch: RowBatch, ctx_map: dict[str, int]) -> None:
    """Add the rows of `doc` to `batch`, all or none; new loop contexts get catalog ids."""
    staged = RowBatch(tstamp=batch.tstamp, source=batch.source)
    known = dict(ctx_map)
    try:
        local = {int(k): (_catalog_ctx(staged, known, v), len(v))
                 for k, v in doc["contexts"].items()}
        base = int(doc["seq"]) * _ORD_STRIDE
        for pos, (cid, name, value) in enumerate(doc["records"]):
            _add_value(staged, *local[cid], name, value, "log", base + pos)
        run_level = _catalog_ctx(staged, known, [])
        for pos, (name, value) in enumerate(doc.get("args", [])):
            _add_value(staged, run_level, 0, name, value, "arg", base - pos - 1)
        staged.iterations = [(n, int(i), float(s), batch.source)
                             for n, i, s in doc.get("iterations", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise PartError(f"malformed records: {exc!r}"[:120]) from None
    ctx_map.update(known)
    batch.extend(staged)


def mark_ingested(con: Any, rows: list[tuple]) -> None:
    """Record ingested files (path, size, mtime, status, message) in one statement."""
    if not rows:
        return
    cols = ["path", "size", "mtime", "status", "message"]
    done_batch = pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})  # noqa: F841
    con.execute("INSERT OR REPLACE INTO _ingested SELECT * FROM done_batch")


def _catalog_ctx(batch: RowBatch, ctx_map: dict[str, int], dims: list) -> int:
    """The catalog id of the context `dims`, creating it and its missing ancestors."""
    path = "/".join(f"{name}={i}" for name, i in dims)
    ctx_id = ctx_map.get(path)
    if ctx_id is None:
        parent = _catalog_ctx(batch, ctx_map, dims[:-1]) if dims else None
        name, iteration = dims[-1] if dims else (None, None)
        ctx_id = ctx_map[path] = len(ctx_map)
        batch.contexts.append((ctx_id, len(dims), path, parent, name, iteration))
        batch.loops.extend((ctx_id, d, n, i) for d, (n, i) in enumerate(dims))
    return ctx_id


def _add_value(batch: RowBatch, ctx_id: int, depth: int, name: str, value: Any, kind: str,
               ord_: int) -> None:
    logs = batch.logs
    logs["ctx_id"].append(ctx_id)
    logs["depth"].append(depth)
    logs["value_name"].append(name)
    logs["kind"].append(kind)
    logs["ord"].append(ord_)
    if value is None:
        logs["value_type"].append("null")
        logs["value_num"].append(None)
        logs["value_text"].append(None)
    elif isinstance(value, bool):
        logs["value_type"].append("bool")
        logs["value_num"].append(float(value))
        logs["value_text"].append("true" if value else "false")
    elif isinstance(value, (int, float)):
        logs["value_type"].append("int" if isinstance(value, int) else "float")
        logs["value_num"].append(_as_double(value))
        logs["value_text"].append(repr(value))
    elif isinstance(value, str):
        logs["value_type"].append("str")
        logs["value_num"].append(None)
        logs["value_text"].append(value)
    else:
        logs["value_type"].append("json")
        logs["value_num"].append(None)
        logs["value_text"].append(json.dumps(value))


def _as_double(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
