"""Decode one record part (written by flor's PartWriter) and give its contexts their ids.

A part holds columns `ctx`, `name`, `value`, the definitions `[id, parent_id, loop_name,
iteration]` of the contexts they use (ids local to the part, 0 = run level), the run's `args`
as `[name, value]` and outer-loop `iterations` as `[loop_name, iteration, seconds]`. Format
flor-part/2 (`NNNNNN.json`) stores them as JSON lists; flor-part/3 (`NNNNNN.part`, written
since 0.4; layout in `flor.part_encode`) stores them as binary columns. Both are decoded to
header tables plus numpy columns and checked as a whole (`validate.check_part`); a part that
fails is a `PartError`, which ingest quarantines. rows.py turns a checked part into rows.

A context's id is a function of its path (`context_ids`), so a replay, a later part or
another process gets the same id for the same context without reading the catalog.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flor import protocol

from .validate import RecordFileError, check_int, check_part, one_line, parse_json

BINARY_MAGIC = protocol.PART_MAGIC
_COLUMN_DTYPES = {"parent": "<u4", "loop": "<u4", "iteration": "<i8", "ctx": "<u4", "name": "<u4",
                  "kind": "u1", "floats": "<f8"}  # as flor.part_encode writes them
ORD_STRIDE = 10_000_000  # ord = part seq * stride + position: "last value wins" order
class PartError(RecordFileError):
    """A record part is unreadable or not in the expected format."""


# --- reading a part ---------------------------------------------------------------------------


class Part(Mapping):
    """A checked part: its header (`seq`, `source`, `loops`, `names`, `values`, `args`,
    `iterations`, ...) and its numpy columns (`cols`).

    Read as a mapping it is also the flor-part/2 style document: `contexts`, `ctx`, `name`
    and `value` expand to Python lists on first use. Ingest never asks for them."""

    _EXPANDED = ("contexts", "ctx", "name", "value")

    def __init__(self, header: dict, cols: dict) -> None:
        self.header, self.cols = header, cols
        self._lists: dict | None = None

    def __getitem__(self, key: str) -> Any:
        if key in self._EXPANDED:
            if self._lists is None:
                self._lists = _expanded(self.header, self.cols)
            return self._lists[key]
        return self.header[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.header
        yield from (k for k in self._EXPANDED if k not in self.header)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def read_part(path: Path) -> Part:
    """The part at `path`, decoded to header tables plus numpy columns and checked as a whole
    (`validate.check_part`), whatever its format."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PartError(f"unreadable: {one_line(exc)}") from None
    try:
        if data.startswith(BINARY_MAGIC):
            header, cols = _binary_columns(data)
        else:
            header, cols = _v2_columns(parse_json(data))
        return Part(check_part(header, cols, ORD_STRIDE), cols)
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


def _ints(values: list) -> np.ndarray:
    return np.array(values, dtype=np.int64).reshape(-1)


def _expanded(header: dict, cols: dict) -> dict:
    """The checked part as lists: context definitions, and one item per record."""
    loops, names = header["loops"], header["names"]
    defs = [[i + 1, p, loops[n], it] for i, (p, n, it) in enumerate(zip(
        cols["parent"].tolist(), cols["loop"].tolist(), cols["iteration"].tolist(),
        strict=True))]
    floats, kinds = cols["floats"].tolist(), cols.get("kind")
    if kinds is None:
        values = floats
    else:
        next_float, next_other = iter(floats).__next__, iter(header["values"]).__next__
        values = [next_other() if k else next_float() for k in kinds.tolist()]
    return {"contexts": defs, "ctx": cols["ctx"].tolist(),
            "name": [names[i] for i in cols["name"].tolist()], "value": values}


# --- context ids ------------------------------------------------------------------------------

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ID_MASK = np.uint64((1 << 53) - 1)


@functools.lru_cache(maxsize=4096)
def loop_hash(loop_name: str) -> int:
    """h(loop_name): the first 8 bytes of BLAKE2b of its UTF-8, little-endian."""
    return int.from_bytes(hashlib.blake2b(loop_name.encode("utf-8")).digest()[:8], "little")


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def context_ids(parent_ids: np.ndarray, loop_hashes: np.ndarray,
                iterations: np.ndarray) -> np.ndarray:
    """The ids of contexts (loop, iteration) inside contexts `parent_ids` (0: run level).

    A function of the context's path only: `base(parent, loop) + iteration` modulo 2^53,
    where the base is a splitmix64 mix of the parent's id and the loop name's hash; 0 becomes
    2^53. So the steps of one loop get consecutive ids (never equal to each other), and ids
    stay exact as doubles (pandas reads the nullable `parent_id` as float64)."""
    return with_iteration(context_base(parent_ids, loop_hashes), iterations)


def context_base(parent_ids: np.ndarray, loop_hashes: np.ndarray) -> np.ndarray:
    return _splitmix(_splitmix(parent_ids.astype(np.int64).view(np.uint64) + _GOLDEN)
                     ^ loop_hashes)


def add_iterations(base: np.ndarray, iterations: np.ndarray) -> np.ndarray:
    """`with_iteration`, computed in `base` (uint64, one per iteration; overwritten)."""
    ids = base.view(np.uint64)
    ids += iterations.astype(np.int64, copy=False).view(np.uint64)
    ids &= _ID_MASK
    ids = ids.view(np.int64)
    ids[ids == 0] = 1 << 53
    return ids


def with_iteration(base: np.ndarray, iterations: np.ndarray) -> np.ndarray:
    ids = ((base + iterations.astype(np.int64).view(np.uint64)) & _ID_MASK).view(np.int64)
    ids[ids == 0] = 1 << 53
    return ids
