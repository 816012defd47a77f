"""Encode a batch of records as a self-contained record part (format flor-part/3).

`flor.commit()` waits for a part to be encoded and written, once per epoch, and the writer
thread that encodes the others shares the GIL (and, on a small machine, the CPU) with
training, so the encoding is columnar binary, built with whole-column C-level operations
instead of a Python loop per record. A part file is `MAGIC`, a little-endian u32 header
length, a JSON header, then the binary columns the header lists as `[name, dtype, count]`,
in that order:

- `parent` (u32), `loop` (u32 index into the header's `loops`), `iteration` (i64): the
  contexts 1..n this part uses, ancestors first (0 is the run level);
- `ctx` and `name` (u32 index into `names`): one per record;
- `kind` (u8, absent when every value is a float): 0 = the next value of `floats`, 1 = the
  next of the header's `values` (ints, bools, strings, None, lists, dicts as JSON);
- `floats` (f64).

The header also holds `source`, `seq`, the run's `args` as `[name, value]` and outer-loop
`iterations` as `[loop, i, seconds]`.

How records reach the encoder (the file is the same either way):
- a run (`encode_records`): `flor.loop` numbers contexts with ints (`ContextIds`): each loop
  entered opens a segment, and a record holds its segment and its position in it (from
  `STEP_INTS`, shared int objects: a step allocates nothing). When the records of a segment
  come in step order as the same number of records at evenly spaced steps (every step logs
  `loss`, or `loss` and `acc`, or every 10th step does), or as any number at each step
  (`loss` every step, `acc` every 10th), their part-local context ids come from arithmetic
  on whole columns (`_Definitions`); other records get them by a lookup per record. A record
  whose value is not a float carries its name as the 1-tuple `(name,)` (`Recorder.tag`), so
  a part of float records is known from its names alone;
- `encode_part` takes records whose context is the linked tuple `(parent, loop_name,
  iteration)` (None = run level), found by identity, never by hashing paths.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from bisect import bisect_left, insort
from itertools import compress, repeat
from operator import lshift, not_, or_

from . import protocol

PART_FORMAT = protocol.PART_FORMAT
MAGIC = protocol.PART_MAGIC
_BIG_ENDIAN = sys.byteorder == "big"

SEGMENT_STEPS = 1 << 14  # iterations of a loop per segment; a longer loop opens more
STEP_INTS = list(range(SEGMENT_STEPS))  # the positions, as int objects made once
_CID_BITS = SEGMENT_STEPS.bit_length() - 1  # a context as one int: segment << 14 | position
_MAX_RUNS = 256  # at most this many runs in a part, of 64 records on average, for the
_RUN_RECORDS = 64  # whole-column paths; with more, shorter runs, the per-record path is faster


class ContextIds:
    """The loop contexts of a run as ints: (0, 0) is the run level, and (s, k) is iteration
    `first + k` of loop segment `s` (k < SEGMENT_STEPS, so (s, k) packs as one int).

    `flor.loop` (the training thread) opens a segment per loop entered (and per SEGMENT_STEPS
    iterations of one loop); the writer thread only reads segments that records it drained
    refer to, which were complete before those records were appended. A segment's parent was
    open when it was opened, so it has a smaller number: ordered by (segment, position),
    ancestors come first. Three array items per segment, kept for the life of the run.
    """

    __slots__ = ("parent", "loop", "first", "loop_names", "_loop_ids")

    def __init__(self) -> None:
        self.parent = array("q", [0])  # per segment: its parent as one int (_CID_BITS)
        self.loop = array("I", [0])  # segment 0: the run level, never opened
        self.first = array("q", [0])
        self.loop_names: list[str] = [""]
        self._loop_ids: dict[str, int] = {}

    def open(self, parent_seg: int, parent_step: int, loop: str, first: int) -> int:
        """A new segment, returned, for iterations `first`, `first + 1`, ... of `loop` inside
        step `parent_step` of segment `parent_seg`."""
        loop_id = self._loop_ids.get(loop)
        if loop_id is None:
            self.loop_names.append(loop)
            loop_id = self._loop_ids[loop] = len(self.loop_names) - 1
        self.parent.append(parent_seg << _CID_BITS | parent_step)
        self.loop.append(loop_id)
        self.first.append(first)
        return len(self.parent) - 1

    def path(self, seg: int, step: int) -> tuple | None:
        """The linked-tuple context of step `step` of segment `seg` (for tests)."""
        if not seg:
            return None
        parent = self.parent[seg]
        return (self.path(parent >> _CID_BITS, parent & _STEP_MASK),
                self.loop_names[self.loop[seg]], self.first[seg] + step)


_STEP_MASK = (1 << _CID_BITS) - 1
_U32_MAX = (1 << 32) - 1


def encode_records(segs: list, steps: list, names: list, values: list, contexts: ContextIds,
                   timings: list, args: list, source: str, seq: int) -> list:
    """The part file for the records `(segs[i], steps[i], names[i], values[i])` of a run whose
    contexts are `contexts` (a name is a str, or `(name,)` when the value is not a float),
    and run metadata, as pieces (bytes-like) to write in order: joined, they would be one
    more copy of the part."""
    defs = _Definitions(contexts)
    ctx = defs.dense_ctx_column(segs, steps) if steps else []
    if ctx is None:  # irregular steps: one lookup per record
        defs = _Definitions(contexts)
        cids = list(map(or_, map(lshift, segs, repeat(_CID_BITS)), steps))
        ctx = [defs.sorted_ctx_column(cids)]
    return _assemble(defs.columns(), list(defs.loops), ctx, names, values, timings, args,
                     source, seq)


class _Definitions:
    """The context definitions of one part, built from `ContextIds` a block at a time: a block
    is the steps `k0, k0 + stride, ..., k1` of one segment, with consecutive local ids from
    `off`."""

    def __init__(self, contexts: ContextIds) -> None:
        self.contexts = contexts
        self.count = 0  # contexts defined
        self.parents: list = []  # column pieces (bytes-like), little-endian
        self.loop_ids: list = []
        self.iterations: list = []
        self.loops: dict[str, int] = {}
        self.blocks: dict[int, list[tuple[int, int, int, int]]] = {}  # (k0, k1, stride, off)

    def columns(self) -> list[tuple[str, str, int, list]]:
        return [("parent", "<u4", self.count, self.parents),
                ("loop", "<u4", self.count, self.loop_ids),
                ("iteration", "<i8", self.count, self.iterations)]

    def dense_ctx_column(self, segs: list, steps: list) -> list | None:
        """The `ctx` column (little-endian u32 pieces) when each run of records of one segment
        is in step order and has the same number of records at each of the evenly spaced
        steps it covers, or any number at each step (`_consecutive_run`); else None."""
        n = len(steps)
        try:
            positions = _little_endian(array("I", steps)).tobytes()
        except (OverflowError, TypeError):  # not a step flor.loop gives: the general path
            return None
        try:
            segments, width = bytes(segs), 1  # fewer than 256 segments so far: a byte each
        except ValueError:
            segments, width = _little_endian(array("I", segs)).tobytes(), 4
        pieces, start, most = [], 0, _most_runs(n)
        while start < n:
            if len(pieces) == most:
                return None
            unit = segments[width * start:width * (start + 1)]
            stop = start + _repeats(segments, width * start, unit, n - start)
            piece = self._dense_run(segs[start], positions[4 * start:4 * stop])
            if piece is None:
                return None
            pieces.append(piece)
            start = stop
        return pieces

    def _dense_run(self, seg: int, steps: bytes) -> bytes | None:
        """Local ids for records of segment `seg` at positions `steps` (little-endian u32):
        `per` records at each of the steps k0, k0 + stride, ..., k1, in order."""
        if not seg:
            return bytes(len(steps))  # the run level
        count = len(steps) // 4
        per = _repeats(steps, 0, steps[:4], count)
        k0 = int.from_bytes(steps[:4], "little")
        stride = int.from_bytes(steps[4 * per:4 * per + 4], "little") - k0 if per < count else 1
        m = count // per
        if stride <= 0 or count % per or \
                steps != _repeat_each(_ramp(k0, m, stride), per):
            return self._consecutive_run(seg, steps, k0)
        found = self._block(seg, k0, k0 + stride * (m - 1), stride)
        if found is None:
            return None
        off, step = found
        return _repeat_each(_ramp(off, m, step), per)

    def _consecutive_run(self, seg: int, steps: bytes, k0: int) -> bytes | None:
        """Local ids for records at every step from k0 on, each step having any number of
        records (`loss` each step, `acc` every 10th), in order; else None. The steps go up
        by 0 or 1 from record to record: one big-integer subtraction of the column from
        itself shifted by a record says so."""
        count = len(steps) // 4
        column = int.from_bytes(steps, "little")
        try:  # lane i: steps[i + 1] - steps[i]; a step going down borrows and shows
            rises = ((column >> 32) - (column & ((1 << 32 * (count - 1)) - 1))).to_bytes(
                4 * (count - 1), "little")
        except OverflowError:
            return None
        if rises.translate(None, b"\0\1") or rises.count(1) != rises[0::4].count(1):
            return None
        found = self._block(seg, k0, k0 + rises.count(1), 1)
        if found is None:
            return None
        shift = found[0] - k0  # local id = step + shift
        if shift >= 0:
            return (column + shift * _ones(count)).to_bytes(4 * count, "little")
        return (column - -shift * _ones(count)).to_bytes(4 * count, "little")

    def _block(self, seg: int, k0: int, k1: int, stride: int) -> tuple[int, int] | None:
        """(local id of step k0 of `seg`, step between the local ids of k0, k0 + stride, ...),
        defining the steps (and ancestors) if new; None when they overlap a block defined
        before without lying inside it."""
        blocks = self.blocks.setdefault(seg, [])
        for a, b, d, off in blocks:
            if a <= k0 and k1 <= b and not (k0 - a) % d and (k0 == k1 or not stride % d):
                return off + (k0 - a) // d, max(stride // d, 1)
            if k0 <= b and a <= k1:
                return None
        c = self.contexts
        parent = c.parent[seg]
        up = parent & _STEP_MASK
        found = self._block(parent >> _CID_BITS, up, up, 1) if parent else (0, 1)
        if found is None:
            return None
        m, first = (k1 - k0) // stride + 1, c.first[seg] + k0
        loop_id = self.loops.setdefault(c.loop_names[c.loop[seg]], len(self.loops))
        self.parents.append(struct.pack("<I", found[0]) * m)
        self.loop_ids.append(struct.pack("<I", loop_id) * m)
        if first + stride * (m - 1) <= _U32_MAX:
            wide = bytearray(8 * m)  # i64 little-endian: the low words, high words zero
            memoryview(wide).cast("I")[0::2] = memoryview(_ramp(first, m, stride)).cast("I")
            self.iterations.append(wide)
        else:
            self.iterations.append(_little_endian(array("q", list(
                range(first, first + stride * m, stride)))))
        off = self.count + 1
        self.count += m
        blocks.append((k0, k1, stride, off))
        return off, 1

    def sorted_ctx_column(self, cids: list) -> array:
        """The `ctx` column for any records: local ids in sorted order of context id (which
        puts ancestors first), mapped per record."""
        used = set(cids)
        used.discard(0)
        order = sorted(used)
        runs, missing = _segment_runs(order, self.contexts.parent, used)
        if missing:  # ancestors no record of this part uses directly
            for cid in missing:
                insort(order, cid)
            runs, _ = _segment_runs(order, self.contexts.parent, None)
        c = self.contexts
        for seg, start, stop in runs:
            parent = c.parent[seg]
            parent_id = bisect_left(order, parent) + 1 if parent else 0
            m, offset = stop - start, c.first[seg] - (seg << _CID_BITS)
            loop_id = self.loops.setdefault(c.loop_names[c.loop[seg]], len(self.loops))
            self.parents.append(struct.pack("<I", parent_id) * m)
            self.loop_ids.append(struct.pack("<I", loop_id) * m)
            self.iterations.append(struct.pack(f"<{m}q", *map(offset.__add__,
                                                                order[start:stop])))
        self.count = len(order)
        local = dict(zip(order, range(1, len(order) + 1), strict=True))
        local[0] = 0
        return _little_endian(array("I", list(map(local.__getitem__, cids))))


def _segment_runs(order: list, parent: array,
                  used: set | None) -> tuple[list[tuple[int, int, int]], set]:
    """(segment, start, stop) for each segment of the sorted ids `order`; with `used`, also
    the ancestors of those segments that are not in `used`."""
    runs, missing = [], set()
    start, end = 0, len(order)
    while start < end:
        seg = order[start] >> _CID_BITS
        stop = bisect_left(order, (seg + 1) << _CID_BITS, start)
        runs.append((seg, start, stop))
        start = stop
        if used is not None:
            up = parent[seg]
            while up and up not in used and up not in missing:
                missing.add(up)
                up = parent[up >> _CID_BITS]
    return runs, missing


def _most_runs(records: int) -> int:
    return min(_MAX_RUNS, 1 + records // _RUN_RECORDS)


def _repeats(seq: bytes | list, start: int, unit: bytes | list, most: int) -> int:
    """How many times (at most `most`, at least 1) `unit` repeats in `seq` from `start`:
    galloping, then bisecting, with C-level compares of whole slices."""
    size = len(unit)
    good, step = 1, 1  # seq[start:start + good * size] is `unit` repeated
    while good < most:
        end = min(good + step, most)
        if seq[start + good * size:start + end * size] == unit * (end - good):
            good, step = end, step * 2
            continue
        bad = end  # the first other unit is in [good, bad)
        while bad - good > 1:
            mid = (good + bad) // 2
            if seq[start + good * size:start + mid * size] == unit * (mid - good):
                good = mid
            else:
                bad = mid
        return good
    return most


_RAMP = b""  # little-endian u32 0, 1, 2, ...: built as needed up to _RAMP_VALUES
_RAMP_VALUES = 1 << 20  # as many as a part has records
_BYTES = bytes(range(256))
_BYTES_256 = b"".join(bytes([b]) * 256 for b in range(256))  # 0 x 256, 1 x 256, ...


def _ramp(start: int, count: int, step: int = 1) -> bytes:
    """Little-endian u32 `start, start + step, ..., start + step * (count - 1)` (all below
    2**32): a slice of a cached ramp, else one big-integer operation on one."""
    global _RAMP
    need = start + count if step == 1 else count
    if len(_RAMP) < 4 * min(need, _RAMP_VALUES):
        _RAMP = _make_ramp(min(-(-need // 65536) * 65536, _RAMP_VALUES))
    if step == 1 and 4 * need <= len(_RAMP):
        return _RAMP[4 * start:4 * need]
    base = _RAMP[:4 * count] if 4 * count <= len(_RAMP) else \
        _little_endian(array("I", list(range(count)))).tobytes()
    if step != 1:
        base = (int.from_bytes(base, "little") * step).to_bytes(len(base), "little")
    return _add_each(base, start) if start else base


def _make_ramp(count: int) -> bytes:
    """Little-endian u32 0, 1, ..., count - 1 (count a multiple of 65536, at most 2**24),
    byte by byte with strided copies: a few ns a value, where int-by-int takes ~50."""
    out = bytearray(4 * count)
    blocks = count >> 16
    out[0::4] = _BYTES * (count >> 8)
    out[1::4] = _BYTES_256 * blocks
    out[2::4] = b"".join(bytes([b]) * 65536 for b in range(blocks))
    return bytes(out)


def _add_each(words: bytes, value: int) -> bytes:
    """`value` added to each little-endian u32 of `words` (no sum may reach 2**32): one
    big-integer addition instead of a loop."""
    return (int.from_bytes(words, "little") + value * _ones(len(words) // 4)).to_bytes(
        len(words), "little")


def _ones(count: int) -> int:
    """The integer whose `count` little-endian u32 lanes are each 1."""
    return int.from_bytes(b"\1\0\0\0" * count, "little")


def _repeat_each(words: bytes, times: int) -> bytes:
    """Each u32 of `words` `times` times in a row: (a, b) x 2 -> (a, a, b, b)."""
    if times == 1:
        return words
    out = bytearray(len(words) * times)
    dest, src = memoryview(out).cast("I"), memoryview(words).cast("I")
    for i in range(times):
        dest[i::times] = src
    return bytes(out)


def encode_part(records: list, timings: list, args: list, source: str, seq: int) -> bytes:
    """The part file's bytes for `records` [(ctx, name, value), ...] whose contexts are
    linked tuples, and run metadata."""
    tables = _Tables()
    ctx_col = array("I")
    ctx_append = ctx_col.append
    ctx_ids, define = tables.ids, tables.define
    last_ctx, last_id = None, 0
    for ctx, _, _ in records:
        if ctx is not last_ctx:  # the records of one step share their context object
            last_ctx = ctx
            last_id = 0 if ctx is None else ctx_ids.get(id(ctx)) or define(ctx)
        ctx_append(last_id)
    count = len(tables.parents)
    columns = [("parent", "<u4", count, [_little_endian(tables.parents)]),
               ("loop", "<u4", count, [_little_endian(tables.loop_col)]),
               ("iteration", "<i8", count, [_little_endian(tables.iterations)])]
    names = [n if type(v) is float else (n,) for _, n, v in records]
    return b"".join(_assemble(columns, list(tables.loops), [_little_endian(ctx_col)], names,
                              [r[2] for r in records], timings, args, source, seq))


def _assemble(contexts: list[tuple[str, str, int, list]], loops: list, ctx: list,
              names: list, values: list, timings: list, args: list, source: str,
              seq: int) -> list:
    """The part, as pieces to write in order, from its context columns, its `ctx` column (as
    pieces) and the records' names (a value that is not a float has its name as `(name,)`)
    and values."""
    count = len(names)
    table, name_col, kinds = _name_columns(names)
    if kinds is None:  # floats only: the common case
        floats, others = values, []
    elif kinds.count(0) == 0:
        floats, others = [], values
    else:
        floats = list(compress(values, map(not_, kinds)))
        others = list(compress(values, kinds))
    columns = [*contexts, ("ctx", "<u4", count, ctx), ("name", "<u4", count, name_col),
               *([("kind", "u1", count, [kinds])] if kinds is not None else []),
               ("floats", "<f8", len(floats), [struct.pack(f"<{len(floats)}d", *floats)])]
    header = {"format": PART_FORMAT, "source": source, "seq": seq, "loops": loops,
              "names": table, "values": others, "args": args, "iterations": timings,
              "columns": [[name, dtype, n] for name, dtype, n, _ in columns]}
    head = json.dumps(header, separators=(",", ":")).encode()
    return [MAGIC, struct.pack("<I", len(head)), head,
            *(piece for column in columns for piece in column[3])]


def size_of(pieces: list) -> int:
    """The byte length of a part given as pieces (bytes, bytearrays and arrays)."""
    return sum(memoryview(piece).nbytes for piece in pieces)


def _name_columns(names: list) -> tuple[list[str], list, bytes | None]:
    """(the part's name table, the `name` column as pieces, the `kind` column or None when
    every value is a float). `names` holds str for float values and `(name,)` for others."""
    runs = _pattern_runs(names)
    keys = list(dict.fromkeys(k for pattern, _ in runs for k in pattern) if runs
                else dict.fromkeys(names))
    table: dict[str, int] = {}
    index = {key: table.setdefault(key if type(key) is str else key[0], len(table))
             for key in keys}
    kind_of = {key: 0 if type(key) is str else 1 for key in keys}
    tagged = any(kind_of.values())
    if runs:  # each step logs the same names: a column is its pattern repeated
        name_col = [_little_endian(array("I", [index[k] for k in pattern])) * times
                    for pattern, times in runs]
        kinds = b"".join(bytes([kind_of[k] for k in pattern]) * times
                         for pattern, times in runs) if tagged else None
    else:
        name_col = [_little_endian(array("I", list(map(index.__getitem__, names))))]
        kinds = bytes(list(map(kind_of.__getitem__, names))) if tagged else None
    return list(table), name_col, kinds


def _pattern_runs(names: list) -> list[tuple[list, int]]:
    """`names` as (pattern, times) runs, each pattern the names from one occurrence of its
    first name to the next; [] when that takes too many runs (`_most_runs`)."""
    runs, start, count = [], 0, len(names)
    most = _most_runs(count)
    while start < count:
        if len(runs) == most:
            return []
        first = names[start]
        try:
            period = names.index(first, start + 1) - start
        except ValueError:
            period = count - start
        pattern = names[start:start + period]
        times = names.count(first) if not start else 0  # a guess checked in one pass
        if not (times * period == count and (period == 1 or pattern * times == names)):
            times = _repeats(names, start, pattern, (count - start) // period)
        runs.append((pattern, times))
        start += period * times
    return runs


class _Tables:
    """Context definitions of one part from linked-tuple contexts; ids are local to the part."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}  # id(context tuple) -> local id; records keep them alive
        self.parents, self.loop_col, self.iterations = array("I"), array("I"), array("q")
        self.loops: dict[str, int] = {}
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


def _little_endian(column: array) -> array:
    """`column` (or a byte-swapped copy on a big-endian machine), to write as is."""
    if _BIG_ENDIAN and column.itemsize > 1:
        column = array(column.typecode, column)
        column.byteswap()
    return column
