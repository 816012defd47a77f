"""Decode one record part (written by flor's PartWriter) into catalog rows.

A part holds columns `ctx`, `name`, `value`, the definitions `[id, parent_id, loop_name,
iteration]` of the contexts they use (ids local to the part, 0 = run level), the run's `args`
as `[name, value]` and outer-loop `iterations` as `[loop_name, iteration, seconds]`. Format
flor-part/2 (`NNNNNN.json`) stores them as JSON lists; flor-part/3 (`NNNNNN.part`, written
since 0.4; layout in `flor.part_encode`) stores them as binary columns, and `read_part` turns
it into the same lists. Both are first decoded to header tables plus numpy columns and checked
as a whole (`validate.check_part`); a part that fails is a `PartError`, which ingest
quarantines. Contexts are matched to the catalog by path (`epoch=2/step=13`), so replays
attach to the same contexts as the forward run.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flor import protocol

from .validate import RecordFileError, check_int, check_part, clean_text, one_line, parse_json

BINARY_MAGIC = protocol.PART_MAGIC
_COLUMN_DTYPES = {"parent": "<u4", "loop": "<u4", "iteration": "<i8", "ctx": "<u4", "name": "<u4",
                  "kind": "u1", "floats": "<f8"}  # as flor.part_encode writes them
_ORD_STRIDE = 10_000_000  # ord = part seq * stride + position: "last value wins" order
_LOG_COLUMNS = ("ctx_id", "depth", "value_name", "value_type", "value_num", "value_text",
                "kind", "ord")
_CTX_COLUMNS = ("ctx_id", "depth", "path", "parent_id", "loop_name", "iteration")


class PartError(RecordFileError):
    """A record part is unreadable or not in the expected format."""


@dataclass
class RowBatch:
    """Rows for logs, contexts and iterations from the new parts of one source."""

    tstamp: str
    source: str = "forward"
    logs: dict[str, list] = field(default_factory=lambda: {k: [] for k in _LOG_COLUMNS})
    contexts: list[tuple] = field(default_factory=list)
    iterations: list[tuple] = field(default_factory=list)

    def extend(self, other: RowBatch) -> None:
        for key, values in other.logs.items():
            self.logs[key].extend(values)
        self.contexts.extend(other.contexts)
        self.iterations.extend(other.iterations)

    @property
    def count(self) -> int:
        return len(self.logs["ctx_id"])

    def insert_into(self, con: Any) -> None:
        """Append the rows through Arrow (executemany is far too slow for log volumes)."""
        if self.count:
            insert_arrow(con, pa.table(self.logs),
                         "INSERT INTO logs SELECT CAST(? AS TIMESTAMP), ctx_id, depth, "
                         "value_name, value_type, value_num, value_text, kind, ?, ord FROM {}",
                         [self.tstamp, self.source])
        _append(con, "contexts", _CTX_COLUMNS, self.tstamp, self.contexts)
        _append(con, "iterations", ("loop_name", "iteration", "seconds", "source"),
                self.tstamp, self.iterations)


def read_part(path: Path) -> dict:
    """A part as a flor-part/2 style document (columns as lists), whatever its format.

    The part is decoded to header tables plus numpy columns, checked as a whole
    (`validate.check_part`), and only then expanded to one list item per record.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PartError(f"unreadable: {one_line(exc)}") from None
    try:
        if data.startswith(BINARY_MAGIC):
            header, cols = _binary_columns(data)
        else:
            header, cols = _v2_columns(parse_json(data))
        return _expanded(check_part(header, cols, _ORD_STRIDE), cols)
    except PartError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError,
            struct.error) as exc:
        raise PartError(f"malformed part: {one_line(exc, 100)}") from None


def _binary_columns(data: bytes) -> tuple[dict, dict]:
    """Split a flor-part/3 file into its JSON header and its binary columns (numpy views)."""
    (size,) = struct.unpack_from("<I", data, len(BINARY_MAGIC))
    start = len(BINARY_MAGIC) + 4
    header = parse_json(data[start:start + size])
    if not isinstance(header, dict) or header.get("format") != protocol.PART_FORMAT:
        raise ValueError("the header is not a flor-part/3 object")
    offset, cols = start + size, {}
    for name, dtype, count in header["columns"]:
        if _COLUMN_DTYPES.get(name) != dtype or type(count) is not int or count < 0:
            raise ValueError(f"bad column {name!r:.20}: {dtype!r:.10} x {count!r:.20}")
        cols[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += np.dtype(dtype).itemsize * count
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes after the last column")
    return header, cols


def _v2_columns(doc: object) -> tuple[dict, dict]:
    """A flor-part/2 document (JSON lists, explicit context ids) in flor-part/3's shape."""
    if not isinstance(doc, dict) or doc.get("format") != protocol.LEGACY_PART_FORMAT:
        raise PartError("not a flor-part/2 or flor-part/3 file")
    local: dict = {0: 0}
    loops: dict = {}
    parents, loop_ids, iterations = [], [], []
    for cid, parent, loop, iteration in doc["contexts"]:
        if cid in local:
            raise ValueError(f"context {cid!r:.20} defined twice")
        parents.append(local[parent])
        loop_ids.append(loops.setdefault(loop, len(loops)))
        iterations.append(check_int(iteration, "iteration", low=0))
        local[cid] = len(parents)
    names: dict = {}
    name_ids = [names.setdefault(n, len(names)) for n in doc["name"]]
    values = doc["value"]
    kind = [0 if type(v) is float else 1 for v in values]
    header = {**doc, "loops": list(loops), "names": list(names),
              "values": [v for v in values if type(v) is not float]}
    cols = {"parent": _ints(parents), "loop": _ints(loop_ids), "iteration": _ints(iterations),
            "ctx": _ints([local[c] for c in doc["ctx"]]), "name": _ints(name_ids),
            "kind": np.array(kind, dtype=np.uint8),
            "floats": np.array([v for v in values if type(v) is float], dtype=np.float64)}
    return header, cols


def _expanded(header: dict, cols: dict) -> dict:
    """The checked part as lists: context definitions, and one item per record."""
    loops, names = header["loops"], header["names"]
    defs = [[i + 1, p, loops[n], it] for i, (p, n, it) in enumerate(zip(
        cols["parent"].tolist(), cols["loop"].tolist(), cols["iteration"].tolist(),
        strict=True))]
    name_col = [names[i] for i in cols["name"].tolist()]
    return {**header, "contexts": defs, "ctx": cols["ctx"].tolist(), "name": name_col,
            "value": _merged_values(cols, header["values"])}


def _merged_values(cols: dict, others: list) -> list:
    floats, kinds = cols["floats"].tolist(), cols.get("kind")
    if kinds is None:
        return floats
    next_float, next_other = iter(floats).__next__, iter(others).__next__
    return [next_other() if k else next_float() for k in kinds.tolist()]


def _ints(values: list) -> np.ndarray:
    return np.array(values, dtype=np.int64).reshape(-1)


def rows_of_part(doc: dict, batch: RowBatch, ctx_map: dict[str, int]) -> None:
    """Add the rows of `doc` to `batch`, all or none; new loop contexts get catalog ids."""
    staged = RowBatch(tstamp=batch.tstamp, source=batch.source)
    known = dict(ctx_map)
    try:
        local = _contexts(doc["contexts"], staged, known)
        base = int(doc["seq"]) * _ORD_STRIDE
        ctx = doc["ctx"]
        if not len(ctx) == len(doc["name"]) == len(doc["value"]):
            raise ValueError("columns of different lengths")
        ids = [local[c][0] for c in ctx]
        depths = [local[c][1] for c in ctx]
        _add_values(staged, ids, depths, doc["name"], doc["value"], "log",
                    range(base, base + len(ctx)))
        args = doc.get("args", [])
        _add_values(staged, [local[0][0]] * len(args), [0] * len(args),
                    [a[0] for a in args], [a[1] for a in args], "arg",
                    range(base - 1, base - 1 - len(args), -1))
        staged.iterations = [(n, int(i), float(s), batch.source)
                             for n, i, s in doc.get("iterations", [])]
    except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
        raise PartError(f"malformed records: {one_line(repr(exc), 100)}") from None
    ctx_map.update(known)
    batch.extend(staged)


def _contexts(defs: list, batch: RowBatch, ctx_map: dict[str, int]) -> dict[int, tuple]:
    """Local context id -> (catalog id, depth, path); new contexts are added to `batch`."""
    local = {0: (_catalog_id(batch, ctx_map, "", 0, None, None, None), 0, "")}
    for cid, parent, name, iteration in defs:
        parent_id, depth, parent_path = local[parent]
        step = f"{name}={int(iteration)}"
        path = f"{parent_path}/{step}" if parent_path else step
        cat = _catalog_id(batch, ctx_map, path, depth + 1, parent_id, name, int(iteration))
        local[cid] = (cat, depth + 1, path)
    return local


def _catalog_id(batch: RowBatch, ctx_map: dict[str, int], path: str, depth: int,
                parent: int | None, name: str | None, iteration: int | None) -> int:
    ctx_id = ctx_map.get(path)
    if ctx_id is None:
        ctx_id = ctx_map[path] = len(ctx_map)
        batch.contexts.append((ctx_id, depth, path, parent, name, iteration))
    return ctx_id


def _add_values(batch: RowBatch, ids: list, depths: list, names: list, values: list,
                kind: str, ords: range) -> None:
    logs = batch.logs
    logs["ctx_id"].extend(ids)
    logs["depth"].extend(depths)
    logs["value_name"].extend(names)
    logs["kind"].extend([kind] * len(ids))
    logs["ord"].extend(ords)
    if all(type(v) is float for v in values):  # the common case: a float metric
        logs["value_type"].extend(["float"] * len(values))
        logs["value_num"].extend(values)
        logs["value_text"].extend([None] * len(values))
        return
    for value in values:
        kind_, num, text = _typed(value)
        logs["value_type"].append(kind_)
        logs["value_num"].append(num)
        logs["value_text"].append(text)


def _typed(value: Any) -> tuple[str, float | None, str | None]:
    """(value_type, value_num, value_text): floats need no text, DOUBLE holds them exactly."""
    if value is None:
        return "null", None, None
    if isinstance(value, bool):
        return "bool", float(value), "true" if value else "false"
    if isinstance(value, int):
        return "int", _as_double(value), repr(value)
    if isinstance(value, float):
        return "float", value, None
    if isinstance(value, str):
        return "str", None, clean_text(value)
    return "json", None, json.dumps(value)  # ASCII: any surrogate becomes a JSON escape


def _as_double(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _append(con: Any, table: str, columns: tuple, tstamp: str | None, rows: list[tuple]) -> None:
    if not rows:
        return
    rows_batch = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    lead = "CAST(? AS TIMESTAMP), " if tstamp is not None else ""
    sql = f"INSERT INTO {table} SELECT {lead}{', '.join(columns)} FROM {{}}"
    insert_arrow(con, rows_batch, sql, [tstamp] if tstamp is not None else [])


def insert_arrow(con: Any, batch: pa.Table, sql: str, params: list) -> None:
    """Run `sql` (an INSERT reading `{}`) over `batch`, registered for this statement only:
    the query sandbox turns DuckDB's scans of Python variables off."""
    name = "_florsql_ingest_batch"
    con.register(name, batch)
    try:
        con.execute(sql.format(name), params)
    finally:
        con.unregister(name)
