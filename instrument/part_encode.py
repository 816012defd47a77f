"""Encode a batch of records as a self-contained record part (format flor-part/3).

`flor.commit()` waits for a part to be encoded and written, once per epoch, so the encoding
is columnar binary: 2,000 float records take about a fifth of the time `json.dumps` needed.
A part file is `MAGIC`, a little-endian u32 header length, a JSON header, then the binary
columns the header lists as `[name, dtype, count]`, in that order:

- `parent` (u32), `loop` (u32 index into the header's `loops`), `iteration` (i64): the
  contexts 1..n this part uses, ancestors first (0 is the run level);
- `ctx` and `name` (u32 index into `names`): one per record;
- `kind` (u8, absent when every value is a float): 0 = the next value of `floats`, 1 = the
  next of the header's `values` (ints, bools, strings, None, lists, dicts as JSON);
- `floats` (f64).

The header also holds `source`, `seq`, the run's `args` as `[name, value]` and outer-loop
`iterations` as `[loop, i, seconds]`. A record's context is the linked tuple
`(parent, loop_name, iteration)` that `flor.loop` builds (None = run level); all steps of an
epoch share the parent object, so contexts are found by identity, never by hashing paths.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array

from . import protocol

PART_FORMAT = protocol.PART_FORMAT
MAGIC = protocol.PART_MAGIC
_BIG_ENDIAN = sys.byteorder == "big"
_DTYPES = {"I": "<u4", "q": "<i8", "d": "<f8", "B": "u1"}


def encode_part(records: list, timings: list, args: list, source: str, seq: int) -> bytes:
    """The part file's bytes for `records` [(ctx, name, value), ...] and run metadata."""
    tables = _Tables()
    ctx_col, name_col = array("I"), array("I")
    ctx_append, name_append = ctx_col.append, name_col.append
    name_ids, ctx_ids, define = tables.names, tables.ids, tables.define
    last_ctx, last_id = None, 0
    for ctx, name, _ in records:
        if ctx is not last_ctx:  # the records of one step share their context object
            last_ctx = ctx
            last_id = 0 if ctx is None else ctx_ids.get(id(ctx)) or define(ctx)
        ctx_append(last_id)
        name_id = name_ids.get(name)
        if name_id is None:
            name_id = name_ids[name] = len(name_ids)
        name_append(name_id)
    kinds, floats, others = _value_columns([r[2] for r in records])
    columns = {"parent": tables.parents, "loop": tables.loop_col,
               "iteration": tables.iterations, "ctx": ctx_col, "name": name_col,
               **({"kind": kinds} if kinds is not None else {}), "floats": floats}
    header = {"format": PART_FORMAT, "source": source, "seq": seq,
              "loops": list(tables.loops), "names": list(name_ids), "values": others,
              "args": args, "iterations": timings,
              "columns": [[k, _DTYPES[c.typecode], len(c)] for k, c in columns.items()]}
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack("<I", len(head)), head,
                     *(_little_endian(c) for c in columns.values())])


class _Tables:
    """Context definitions and string tables of one part; ids are local to the part."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}  # id(context tuple) -> local id; records keep them alive
        self.parents, self.loop_col, self.iterations = array("I"), array("I"), array("q")
        self.loops: dict[str, int] = {}
        self.names: dict[str, int] = {}
        self._parent: tuple | None = None  # the parent of the last context defined
        self._parent_id = 0

    def define(self, ctx: tuple) -> int:
        """Give `ctx` (and any ancestor not yet given one) the next local id."""
        parent, loop, iteration = ctx
        if parent is self._parent:  # consecutive steps of one epoch: no lookup
            parent_id = self._parent_id
        else:
            parent_id = 0 if parent is None else self.ids.get(id(parent)) or self.define(parent)
            self._parent, self._parent_id = parent, parent_id
        loop_id = self.loops.get(loop)
        if loop_id is None:
            loop_id = self.loops[loop] = len(self.loops)
        self.parents.append(parent_id)
        self.loop_col.append(loop_id)
        self.iterations.append(iteration)
        local = self.ids[id(ctx)] = len(self.parents)
        return local


def _value_columns(values: list) -> tuple[array | None, array, list]:
    """(kinds or None when all are floats, the floats, the other values in order)."""
    if all(type(v) is float for v in values):  # the common case: a float metric
        return None, array("d", values), []
    kinds, floats, others = array("B", bytes(len(values))), array("d"), []
    for i, value in enumerate(values):
        if type(value) is float:
            floats.append(value)
        else:
            kinds[i] = 1
            others.append(value)
    return kinds, floats, others


def _little_endian(column: array) -> bytes:
    if _BIG_ENDIAN and column.itemsize > 1:
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()
