"""A batch's `_logs` rows, built a chunk of records at a time on a thread each (rows.RowBatch).

    shape = BatchShape(definitions, ...)     what every chunk of a batch shares (rows.py)
    claims = ContextClaims(rows)             a context is stood for by one record of the batch
    for chunk in build_chunks(records, shape):   each chunk's table, statistics keys, first
        table = claims.settle(chunk)             records, in order as they are built

A batch's records come in pieces (a part's records, a run's args), cut into chunks of at most
CHUNK_RECORDS. A chunk's context columns are gathered from its own part's definitions and its
other columns taken as they are, so the chunks are built on a thread each (numpy's `take` lets
go of the GIL), and the batch's table is their tables one after the other: no column is copied
to join them. Measured on 2 cores, 1M records in a fresh process: 60-75 ms for the rows, the
records that stand for their contexts and the statistics' counts, against 135-160 ms when the
batch's columns were joined first and gathered a column at a time.

The first record of a context at depth 1..3 that the catalog does not hold yet stands for it
(`defines_ctx`). Each chunk marks its own first records; `ContextClaims.settle` then goes
through the chunks in order, and a record whose context an earlier chunk stood for already stands
for nothing: a context's records span chunks, and a context defined by several parts is one row.
Chunks come out in order as soon as they are built, so the segment writer (sink.py) compresses
the first while the next are built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .decode import VALUE_TYPES
from .definitions import (
    ANCESTOR_FIELDS,
    ANCESTOR_LEVELS,
    TEXT_DICT,
    Definitions,
    all_null,
    ancestor_arrays,
    dictionary,
)
from .name_stats import ChunkCounts, RecordKeys, count_chunk

CHUNK_RECORDS = 1 << 18  # records built on one thread at a time
_PARALLEL_RECORDS = 100_000  # from this many records, chunks are built on a thread each
BUILDERS = max(1, min(4, os.cpu_count() or 1))
_SMALL_DICT = pa.dictionary(pa.int8(), pa.string())
# a chunk's table: `_logs` in its segments' and tail's column order, but `defines_ctx` (added
# once the chunks before it are settled: ContextClaims.settle) and `_seg`
_CHUNK_SCHEMA = pa.schema([
    pa.field("tstamp", pa.timestamp("us")), pa.field("ctx_id", pa.int64()),
    pa.field("depth", pa.int32()), pa.field("value_name", TEXT_DICT),
    pa.field("value_type", _SMALL_DICT), pa.field("value_num", pa.float64()),
    pa.field("value_text", pa.string()), pa.field("kind", _SMALL_DICT),
    pa.field("source", _SMALL_DICT), pa.field("ord", pa.int64()), *ANCESTOR_FIELDS])
_TYPE_VALUES = pa.array(VALUE_TYPES, pa.string())
_KIND_VALUES = pa.array(("log", "arg"), pa.string())


@dataclass(frozen=True)
class BatchShape:
    """What every chunk of a batch is built against."""

    definitions: Definitions
    names: list[str]  # the batch's value names (value_name's dictionary)
    loop_names: list[str]  # the batch's loop names (loop_k's dictionary)
    tstamp: str
    source: str
    known: np.ndarray  # ids of the batch's contexts the catalog held before it

    @property
    def depths(self) -> int:
        """The deepest context of the batch + 1 (group codes of the statistics use it)."""
        return self.definitions.max_depth + 1


@dataclass
class BuiltChunk:
    """A chunk's `_logs` rows but `defines_ctx`, its records' statistics keys and counts, and
    which of its records stand for their context (until `ContextClaims.settle`)."""

    table: pa.Table
    keys: RecordKeys
    counts: ChunkCounts
    defines: np.ndarray


def build_chunks(pieces: list[dict], shape: BatchShape) -> Iterator[BuiltChunk]:
    """Each chunk of the record pieces built, in order, as soon as it and those before it are:
    on a thread each when they are many."""
    chunks = [(p, start, min(start + CHUNK_RECORDS, p["size"]))
              for p in pieces for start in range(0, p["size"], CHUNK_RECORDS)]
    longest = max((stop - start for _, start, stop in chunks), default=0)
    shared = _Shared(pa.array(shape.names, pa.string()), pa.array(shape.loop_names, pa.string()),
                    pa.array([shape.source], pa.string()),
                    pa.array(np.full(longest, np.datetime64(shape.tstamp, "us")),
                             pa.timestamp("us")))
    if sum(p["size"] for p in pieces) < _PARALLEL_RECORDS or len(chunks) < 2:
        yield from (_build(chunk, shape, shared) for chunk in chunks)
        return
    with ThreadPoolExecutor(min(len(chunks), BUILDERS), thread_name_prefix="flor-rows") as pool:
        yield from pool.map(lambda chunk: _build(chunk, shape, shared), chunks)


class ContextClaims:
    """Which definition rows (`rows` of them) a record of the batch stands for, settled chunk
    by chunk in the records' order: a record whose context an earlier chunk's record stood
    for stands for nothing."""

    def __init__(self, rows: int) -> None:
        self.taken = np.zeros(rows, bool)
        self.claimed: list[np.ndarray] = []  # the rows stood for, per chunk

    def settle(self, chunk: BuiltChunk) -> pa.Table:
        """The chunk's `_logs` rows, `defines_ctx` included, once earlier chunks are settled."""
        at = np.flatnonzero(chunk.defines)
        row = chunk.keys.ctx_row[at]
        again = self.taken[row]
        if again.any():
            chunk.defines[at[again]] = False
            row = row[~again]
        self.taken[row] = True
        self.claimed.append(row)
        return chunk.table.append_column("defines_ctx", pa.array(chunk.defines, pa.bool_()))


@dataclass(frozen=True)
class _Shared:
    """What every chunk of a batch shares: the dictionaries, and its tstamp column (sliced)."""

    names: pa.Array
    loops: pa.Array
    source: pa.Array
    tstamps: pa.Array


def _build(chunk: tuple[dict, int, int], shape: BatchShape, shared: _Shared) -> BuiltChunk:
    piece, start, stop = chunk
    part, size = piece["part"], stop - start
    cut = slice(start, stop)
    definitions = shape.definitions
    ctx = None if piece["ctx"] is None else piece["ctx"][cut]
    columns, row = definitions.record_columns(part, ctx, size)
    name, value_type, kind = piece["value_name"][cut], piece["value_type"][cut], piece["kind"][cut]
    num = piece["value_num"][cut]
    null = None if piece["num_null"] is None else piece["num_null"][cut]
    text = piece["value_text"]
    text = all_null(pa.string(), size) if text is None else text.slice(start, size)
    levels = definitions.levels
    table = pa.Table.from_arrays([
        shared.tstamps.slice(0, size), pa.array(columns["ctx_id"]), pa.array(columns["depth"]),
        dictionary(name, shared.names), dictionary(value_type, _TYPE_VALUES),
        pa.array(num, mask=null), text, dictionary(kind, _KIND_VALUES),
        dictionary(np.zeros(size, np.int8), shared.source), pa.array(piece["ord"][cut]),
        *ancestor_arrays(columns, levels, size, shared.loops)], schema=_CHUNK_SCHEMA)
    keys = RecordKeys(
        names=shape.names, types=VALUE_TYPES, name=name, depth=columns["depth"], kind=kind,
        value_type=value_type, ctx_row=row, ctx_id=columns["ctx_id"], value_num=num,
        value_text=None if piece["value_text"] is None else text,
        loops=[(k, columns[f"loop_{k}"]) for k in levels], loop_names=shape.loop_names)
    return BuiltChunk(table, keys, count_chunk(keys, shape.depths),
                      _first_records(keys, shape.known))



def _first_records(keys: RecordKeys, known: np.ndarray) -> np.ndarray:
    """A mask of the chunk's records that are the first of their context (depth 1..3, not
    held by the catalog yet) within the chunk: one comparison pass when the records' context
    rows never go back (the steps of a loop), else the least record index per row."""
    count = len(keys.depth)
    eligible = (keys.depth >= 1) & (keys.depth <= ANCESTOR_LEVELS)
    if len(known):
        eligible &= ~np.isin(keys.ctx_id, known)
    where = np.flatnonzero(eligible)
    defines = np.zeros(count, bool)
    if not len(where):
        return defines
    row = keys.ctx_row[where]
    if np.all(row[1:] >= row[:-1]):
        first = np.ones(len(row), bool)
        np.not_equal(row[1:], row[:-1], out=first[1:])
        defines[where[first]] = True
        return defines
    low = int(row.min())
    least = np.full(int(row.max()) - low + 1, count, np.int64)
    np.minimum.at(least, row - low, where)
    defines[least[least < count]] = True
    return defines
