"""Turn checked record parts (parts.py) into catalog rows, as Arrow columns.

Rows are built with whole-array operations, never one Python step per record (only values
other than floats are converted one by one): context ids, depths, paths and ancestors level by
level over the part's definitions; each record's context columns by one gather per column
when a batch is inserted. `_contexts` keeps one row per context. Each row of `_logs` and
`_contexts` carries its enclosing contexts at depths 1..3 (`loop_k`, `iter_k`, `ctx_k`; k =
depth is the row's own context), so `history` reads loop dimensions and outer contexts from
the row itself.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .name_stats import RecordKeys, merge_batch_stats
from .parts import ORD_STRIDE, Part, PartError, context_base, loop_hash, with_iteration
from .sink import SegmentSink
from .validate import clean_text, one_line

ANCESTOR_LEVELS = 3  # rows carry loop_k, iter_k, ctx_k for k = 1..ANCESTOR_LEVELS
ANCESTOR_COLUMNS = tuple(f"{c}_{k}" for k in range(1, ANCESTOR_LEVELS + 1)
                         for c in ("loop", "iter", "ctx"))
LOG_COLUMNS = ("ctx_id", "depth", "value_name", "value_type", "value_num", "value_text",
               "kind", "ord", *ANCESTOR_COLUMNS)
CTX_COLUMNS = ("ctx_id", "depth", "path", "parent_id", "loop_name", "iteration",
               *ANCESTOR_COLUMNS)
_INSERT_CHUNK_ROWS = 122_880  # DuckDB's row group
_TYPES = ("float", "int", "bool", "str", "json", "null")  # value_type's dictionary
_TYPE_INDEX = {t: i for i, t in enumerate(_TYPES)}
_KINDS = ("log", "arg")
_TEXT_DICT = pa.dictionary(pa.int32(), pa.string())
_SMALL_DICT = pa.dictionary(pa.int8(), pa.string())
_ANCESTOR_FIELDS = [f for k in range(1, ANCESTOR_LEVELS + 1)
                    for f in (pa.field(f"loop_{k}", _TEXT_DICT), pa.field(f"iter_{k}", pa.int64()),
                              pa.field(f"ctx_{k}", pa.int64()))]
LOG_SCHEMA = pa.schema([
    pa.field("ctx_id", pa.int64()), pa.field("depth", pa.int32()),
    pa.field("value_name", _TEXT_DICT), pa.field("value_type", _SMALL_DICT),
    pa.field("value_num", pa.float64()), pa.field("value_text", pa.string()),
    pa.field("kind", _SMALL_DICT), pa.field("ord", pa.int64()), *_ANCESTOR_FIELDS])
CTX_SCHEMA = pa.schema([
    pa.field("ctx_id", pa.int64()), pa.field("depth", pa.int32()),
    pa.field("path", pa.string()), pa.field("parent_id", pa.int64()),
    pa.field("loop_name", _TEXT_DICT), pa.field("iteration", pa.int64()), *_ANCESTOR_FIELDS])
_TYPE_VALUES = pa.array(_TYPES, pa.string())
_KIND_VALUES = pa.array(_KINDS, pa.string())



# --- rows -------------------------------------------------------------------------------------


@dataclass
class RowBatch:
    """Rows for `_logs`, `_contexts` and `_iterations` from the new parts of one source.

    Each part adds its context definitions (ids, paths, ancestors: numpy arrays in the part's
    order) and its records (the context each refers to, names as indices into the batch's own
    dictionary, values); `insert_into` joins them into one single-chunk Arrow table per table
    (DuckDB appends one large chunk far faster than many small ones), taking each record's
    context columns from the joined contexts in one gather per column."""

    tstamp: str
    source: str = "forward"
    paths: bool = False  # build every context's path, also where `_all_contexts` derives it
    iterations: list[tuple] = field(default_factory=list)
    count: int = 0  # records
    _records: list[dict] = field(default_factory=list, repr=False)
    _contexts: list[dict] = field(default_factory=list, repr=False)
    _names: dict[str, int] = field(default_factory=dict, repr=False)
    _loops: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def contexts(self) -> list[tuple]:
        """The context rows as tuples in `CTX_COLUMNS` order, each context once."""
        if not self._contexts:
            return []
        table = self._tables()[1]
        return list(zip(*(table.column(c).to_pylist() for c in CTX_COLUMNS), strict=True))

    def insert_into(self, con: Any, sink: SegmentSink | None = None) -> None:
        """Append the rows through Arrow (executemany is far too slow for log volumes), and
        hand each table to `sink`, which writes the pending segment meanwhile (sink.py).
        A context already stored for the run, or listed by several parts, is stored once."""
        if self.count or self._contexts:
            logs, contexts, keys, context_rows = self._tables()
            known = _stored_ids(con, contexts, self.tstamp)
            if logs is not None:
                merge_batch_stats(con, self.tstamp, keys, known, _deep_loops(contexts))
                defines = _defining_records(keys, known)
                logs = logs.append_column("defines_ctx", pa.array(defines))
                _append(con, sink, "_logs", self._whole(logs, source=True))
                if contexts is not None:  # a record of theirs stands for these
                    contexts = contexts.filter(_unclaimed(context_rows, keys.ctx_row[defines]))
            del logs, keys
            if contexts is not None:
                if len(known):  # stored already
                    contexts = contexts.filter(pc.invert(pc.is_in(contexts.column("ctx_id"),
                                                                  pa.array(known))))
                _append(con, sink, "_contexts", self._whole(contexts))
        if self.iterations:
            columns = list(zip(*self.iterations, strict=True))
            rows = pa.Table.from_arrays([pa.array(c, t) for c, t in zip(
                columns, (pa.string(), pa.int64(), pa.float64(), pa.string()), strict=True)],
                names=["loop_name", "iteration", "seconds", "source"])
            _append(con, sink, "_iterations", self._whole(rows))

    def _whole(self, rows: pa.Table, source: bool = False) -> pa.Table:
        """`rows` behind their run's tstamp (and the records' source): every column of the
        table but `_seg`, as the segment holds them."""
        n = rows.num_rows
        tstamp = pa.array(np.full(n, np.datetime64(self.tstamp, "us")), pa.timestamp("us"))
        rows = rows.add_column(0, "tstamp", tstamp)
        if source:
            where = rows.schema.get_field_index("ord")
            rows = rows.add_column(where, "source", _dictionary(
                np.zeros(n, np.int8), pa.array([self.source], pa.string())))
        return rows

    def _tables(self) -> tuple[pa.Table | None, pa.Table | None, RecordKeys | None,
                               np.ndarray | None]:
        """The rows for `_logs` and for `_contexts` (None: no rows), the records' keys (for
        their statistics, name_stats.py) and, for each context row, its row among the joined
        definitions (the numbering of the keys' `ctx_row`)."""
        pieces = [_RUN_LEVEL, *self._contexts]
        levels = [k for k in range(1, ANCESTOR_LEVELS + 1)
                  if any(f"loop_{k}" in p for p in pieces)]  # no part reaches the others
        contexts = {key: _concat(pieces, key) for key in
                    ("ctx_id", "depth", "parent_id", "loop_name", "iteration",
                     *(f"{c}_{k}" for k in levels for c in ("loop", "iter", "ctx")))}
        ids = contexts["ctx_id"]
        keep, canonical = _first_definitions(ids)  # a context several parts define: once
        logs, keys = self._log_table(contexts, np.cumsum([len(p["ctx_id"]) for p in pieces]),
                                     levels, canonical)
        if not self._contexts:
            return logs, None, keys, None
        paths = pa.concat_arrays([p["path"] for p in pieces])
        rows = np.arange(len(ids))
        if keep is not None:
            rows = np.flatnonzero(keep)
            contexts = {key: column[keep] for key, column in contexts.items()}
            paths = paths.filter(pa.array(keep))
        top = contexts["depth"] == 0
        loop = contexts["loop_name"]
        columns = [pa.array(contexts["ctx_id"]), pa.array(contexts["depth"]), paths,
                   pa.array(contexts["parent_id"], mask=top),
                   _dictionary(loop, self._loop_values(), loop < 0),
                   pa.array(contexts["iteration"], mask=top),
                   *self._ancestors(contexts, levels, len(loop))]
        return logs, pa.Table.from_arrays(columns, schema=CTX_SCHEMA), keys, rows

    def _log_table(self, contexts: dict, ends: np.ndarray, levels: list[int],
                   canonical: np.ndarray | None) -> tuple[pa.Table | None, RecordKeys | None]:
        """The records' rows and keys; each record's context columns are gathered from
        `contexts` (the run level, then each part's definitions, ending at `ends`;
        `canonical`: each row's first row of the same context, when some repeat)."""
        pieces = self._records
        if not self.count:
            return None, None
        at = np.empty(self.count, np.int64)  # each record's row in `contexts`
        start = 0
        for piece in pieces:
            stop = start + piece["size"]
            ctx, part = piece["ctx"], piece["part"]
            if part < 0:  # the run level
                at[start:stop] = 0
            else:  # local id c > 0 is row ends[part] + c - 1; 0 is the run level
                np.add(ctx, ends[part] - 1, out=at[start:stop], casting="unsafe")
                at[start:stop][ctx == 0] = 0
            start = stop
        cat = functools.partial(_concat, pieces)
        text = [p["value_text"] for p in pieces]
        gathered = {key: column[at] for key, column in contexts.items()
                    if key not in ("parent_id", "loop_name", "iteration")}
        name, value_type, num, kind = (cat("value_name"), cat("value_type"), cat("value_num"),
                                       cat("kind"))
        texts = None if all(t is None for t in text) else pa.concat_arrays(
            [pa.nulls(p["size"], pa.string()) if t is None else t
             for p, t in zip(pieces, text, strict=True)])
        columns = [pa.array(gathered["ctx_id"]), pa.array(gathered["depth"]),
                   _dictionary(name, pa.array(list(self._names), pa.string())),
                   _dictionary(value_type, _TYPE_VALUES),
                   pa.array(num, mask=_concat_masks(pieces, "num_null")),
                   pa.nulls(self.count, pa.string()) if texts is None else texts,
                   _dictionary(kind, _KIND_VALUES), pa.array(cat("ord")),
                   *self._ancestors(gathered, levels, self.count)]
        keys = RecordKeys(
            names=list(self._names), types=_TYPES, name=name, depth=gathered["depth"],
            kind=kind, value_type=value_type, ctx_row=at if canonical is None else canonical[at],
            ctx_id=gathered["ctx_id"], value_num=num, value_text=texts,
            loops=[(k, gathered[f"loop_{k}"]) for k in levels], loop_names=list(self._loops))
        return pa.Table.from_arrays(columns, schema=LOG_SCHEMA), keys

    def _ancestors(self, columns: dict, levels: list[int], size: int) -> list[pa.Array]:
        out = []
        for k in range(1, ANCESTOR_LEVELS + 1):
            if k not in levels:
                out += [pa.nulls(size, _TEXT_DICT), pa.nulls(size, pa.int64()),
                        pa.nulls(size, pa.int64())]
                continue
            loop = columns[f"loop_{k}"]
            null = loop < 0
            mask = null if null.any() else None
            out += [_dictionary(loop, self._loop_values(), mask),
                    pa.array(columns[f"iter_{k}"], mask=mask),
                    pa.array(columns[f"ctx_{k}"], mask=mask)]
        return out

    def _loop_values(self) -> pa.Array:
        return pa.array(list(self._loops), pa.string())

    def _indices(self, table: dict[str, int], texts: list[str]) -> np.ndarray:
        """The batch's dictionary indices of `texts`, with -1 appended (index -1: NULL)."""
        return np.array([table.setdefault(t, len(table)) for t in texts] + [-1], np.int32)


_RUN_LEVEL = {  # the run level's row of `_contexts`
    "ctx_id": np.zeros(1, np.int64), "depth": np.zeros(1, np.int32),
    "path": pa.array([""], pa.string()), "parent_id": np.zeros(1, np.int64),
    "loop_name": np.full(1, -1, np.int32), "iteration": np.zeros(1, np.int64)}


def _concat(pieces: list[dict], key: str) -> np.ndarray:
    """A column of the pieces, joined; an ancestor column a piece lacks is NULL there."""
    arrays = [p[key] if key in p else _no_ancestor(key, len(p["ctx_id"])) for p in pieces]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _no_ancestor(key: str, size: int) -> np.ndarray:
    return np.full(size, -1, np.int32) if key.startswith("loop_") else np.zeros(size, np.int64)


def _concat_masks(pieces: list[dict], key: str) -> np.ndarray | None:
    if all(p[key] is None for p in pieces):
        return None
    return np.concatenate([np.zeros(p["size"], bool) if p[key] is None else p[key]
                           for p in pieces])


def _dictionary(indices: np.ndarray, values: pa.Array, mask: np.ndarray | None = None
                ) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices, mask=mask), values, safe=False)


def _first_definitions(ids: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Where some ids repeat (a context defined again by a later part): a mask of the rows
    whose id no earlier row has, and each row's first row of its id; (None, None) otherwise.
    Repeats are few (the contexts open at a part's start), so only they are looked up."""
    ordered = np.sort(ids)
    twice = ordered[1:] == ordered[:-1]
    if not twice.any():
        return None, None
    repeated = np.unique(ordered[1:][twice])
    candidates = np.flatnonzero(np.isin(ids, repeated))
    _, first, which = np.unique(ids[candidates], return_index=True, return_inverse=True)
    keep = np.ones(len(ids), bool)
    keep[candidates] = False
    keep[candidates[first]] = True
    canonical = np.arange(len(ids))
    canonical[candidates] = candidates[first][which]
    return keep, canonical


def _stored_ids(con: Any, contexts: pa.Table | None, tstamp: str) -> np.ndarray:
    """The ids of `contexts` the catalog holds already for the run (a live run's earlier
    parts defined some): a probe of the run's contexts among them, when it has any (every run
    stores its run level, so a run without it has none)."""
    none = np.empty(0, np.int64)
    if contexts is None or not con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM _contexts WHERE tstamp = CAST(? AS TIMESTAMP) "
            "LIMIT 1)", [tstamp]).fetchall()[0][0]:
        return none
    name = "_florsql_new_contexts"
    con.register(name, contexts.select(["ctx_id"]))
    try:
        return con.execute(f"SELECT ctx_id FROM _all_contexts WHERE tstamp = CAST(? AS "
                           f"TIMESTAMP) AND ctx_id IN (SELECT ctx_id FROM {name})",
                           [tstamp]).fetchnumpy()["ctx_id"].astype(np.int64)
    finally:
        con.unregister(name)


def _defining_records(keys: RecordKeys, known: np.ndarray) -> np.ndarray:
    """A mask of the records that stand for their context (`defines_ctx`): the first of each
    context at depth 1..3 the catalog does not hold yet. Such a context needs no row in
    `_contexts`: `_all_contexts` reads it off that record's ancestor columns."""
    count = len(keys.depth)
    eligible = (keys.depth >= 1) & (keys.depth <= ANCESTOR_LEVELS)
    if len(known):
        eligible &= ~np.isin(keys.ctx_id, known)
    where = np.flatnonzero(eligible)
    defines = np.zeros(count, bool)
    if len(where):
        first = np.full(int(keys.ctx_row.max()) + 1, count, np.int64)
        np.minimum.at(first, keys.ctx_row[where], where)
        defines[first[first < count]] = True
    return defines


def _deep_loops(contexts: pa.Table | None) -> list[tuple[str, int]]:
    """(loop name, depth) of the contexts deeper than the ancestor columns reach."""
    if contexts is None:
        return []
    deep = contexts.filter(pc.greater(contexts.column("depth"), ANCESTOR_LEVELS))
    if not deep.num_rows:
        return []
    pairs = deep.select(["loop_name", "depth"]).group_by(["loop_name", "depth"]).aggregate([])
    return list(zip(pairs.column("loop_name").to_pylist(), pairs.column("depth").to_pylist(),
                    strict=True))


def _unclaimed(context_rows: np.ndarray, claimed: np.ndarray) -> pa.Array:
    """A mask of the contexts (at `context_rows` of the joined definitions, ascending) whose
    row no record claimed (`claimed`: the rows of contexts a record stands for)."""
    taken = np.zeros(int(context_rows[-1]) + 1, bool)
    taken[claimed] = True
    return pa.array(~taken[context_rows])


def _append(con: Any, sink: SegmentSink | None, table: str, rows: pa.Table) -> None:
    if not rows.num_rows:
        return
    # slices of one row group each (zero-copy): DuckDB scans an Arrow table a chunk per thread
    chunks = pa.Table.from_batches(rows.to_batches(max_chunksize=_INSERT_CHUNK_ROWS))
    insert_arrow(con, chunks, f"INSERT INTO {table} BY NAME SELECT * FROM {{}}", [])
    if sink is not None:
        sink.write(table, rows)


def rows_of_part(part: Part, batch: RowBatch, ctx_map: object = None) -> None:
    """Add the rows of `part` to `batch`, all or none. (`ctx_map` is ignored: context ids
    are a function of their path.)"""
    try:
        header, cols = part.header, part.cols
        loops = batch._indices(batch._loops, header["loops"])
        contexts = _Contexts(header["loops"], loops, cols, batch.paths)
        base = int(header["seq"]) * ORD_STRIDE
        records = _record_rows(header, cols, batch._indices(batch._names, header["names"]),
                               base)
        args = _arg_rows(header["args"], batch, base)
        iterations = [(n, int(i), float(s), batch.source) for n, i, s in header["iterations"]]
        definitions = contexts.rows()
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError) as exc:
        raise PartError(f"malformed records: {one_line(repr(exc), 100)}") from None
    records["part"] = len(batch._contexts)
    batch._contexts.append(definitions)
    for piece in (records, args):
        if piece["size"]:
            batch._records.append(piece)
            batch.count += piece["size"]
    batch.iterations.extend(iterations)


class _Contexts:
    """The contexts of one part, indexed by local id (0 = run level): catalog ids, depths and
    ancestors at depths 1..3 (loop names as the batch's indices), computed level by level.
    Contexts come in runs of one parent and loop (the steps of an epoch): what depends on the
    parent and the loop only (the id's base, the path's prefix) is computed once per run."""

    def __init__(self, loop_names: list[str], loop_index: np.ndarray, cols: dict,
                 paths: bool = False) -> None:
        n = len(cols["parent"])
        hashes = np.array([loop_hash(name) for name in loop_names], dtype=np.uint64)
        prefixes = pa.array([f"{name}=" for name in loop_names], pa.string())
        self.parent = _after_run_level(cols["parent"], 0)
        local_loop = _after_run_level(cols["loop"], -1)
        self.loop = loop_index[local_loop]  # the batch's index; -1 at the run level
        self.iteration = _after_run_level(cols["iteration"], 0)
        self.depth = _depths(self.parent)
        levels = int(self.depth.max()) if n else 0
        self.ids = np.zeros(n + 1, np.int64)
        self.anc = [(np.full(n + 1, -1, np.int32), np.zeros(n + 1, np.int64),
                     np.zeros(n + 1, np.int64)) for _ in range(min(levels, ANCESTOR_LEVELS))]
        sizes = np.bincount(self.depth[1:], minlength=levels + 1)[1:] if n else []
        ends = np.cumsum(sizes) + 1
        if n and not np.any(self.depth[2:] < self.depth[1:-1]):  # already level by level
            self.order: slice | np.ndarray = slice(1, None)
            selections = [slice(int(e - z), int(e)) for z, e in zip(sizes, ends, strict=True)]
        else:
            self.order = np.argsort(self.depth[1:], kind="stable") + 1
            selections = [self.order[e - z - 1:e - 1] for z, e in zip(sizes, ends, strict=True)]
        self.paths: list[pa.Array] = []
        # paths to depth 3 are derived by `_all_contexts` from the ancestor columns (NULL
        # here); a part with deeper contexts builds them all, as a deep one needs its parent's
        self.with_paths = paths or levels > ANCESTOR_LEVELS
        rank = np.zeros(n + 1, np.int64)  # position of a context within its level
        for level, sel in enumerate(selections, start=1):
            par, loop, iteration = self.parent[sel], local_loop[sel], self.iteration[sel]
            runs = _Runs(par, loop)
            base = context_base(self.ids[runs.first(par)], hashes[runs.first(loop)])
            self.ids[sel] = with_iteration(runs.expand(base), iteration)
            for k in range(min(level - 1, ANCESTOR_LEVELS)):  # outer ancestors: the parent's
                for column in self.anc[k]:
                    column[sel] = column[par]
            if level <= ANCESTOR_LEVELS:  # itself
                for column, own in zip(self.anc[level - 1], (self.loop, self.iteration,
                                                             self.ids), strict=True):
                    column[sel] = own[sel]
            if self.with_paths:
                self._add_paths(runs, prefixes.take(runs.first(loop)), rank[runs.first(par)],
                                iteration)
                rank[sel] = np.arange(len(par))

    def _add_paths(self, runs: _Runs, prefix: pa.Array, parent_rank: np.ndarray,
                   iteration: np.ndarray) -> None:
        """The paths of one level: each behind its parent's (by its rank in the level above)."""
        if self.paths:
            prefix = pc.binary_join_element_wise(self.paths[-1].take(parent_rank), prefix, "/")
        self.paths.append(runs.prefixed(prefix, pa.array(iteration).cast(pa.string())))

    def rows(self) -> dict:
        """The part's definitions as rows for `_contexts`, in the part's order."""
        count = len(self.ids) - 1
        if not self.with_paths:
            paths = pa.nulls(count, pa.string())
        else:
            paths = pa.concat_arrays(self.paths) if self.paths else pa.array([], pa.string())
        if self.with_paths and isinstance(self.order, np.ndarray):  # back to the part's order
            position = np.empty(len(self.order), np.int64)
            position[self.order - 1] = np.arange(len(self.order))
            paths = paths.take(position)
        local = slice(1, None)
        out = {"ctx_id": self.ids[local], "depth": self.depth[local], "path": paths,
               "parent_id": self.ids[self.parent[local]], "loop_name": self.loop[local],
               "iteration": self.iteration[local]}
        for k, columns in enumerate(self.anc, start=1):
            for name, column in zip(("loop", "iter", "ctx"), columns, strict=True):
                out[f"{name}_{k}"] = column[local]
        return out


def _after_run_level(column: np.ndarray, run_level: int) -> np.ndarray:
    """`column` (one item per context definition) as int64, behind the run level's item."""
    out = np.empty(len(column) + 1, np.int64)
    out[0] = run_level
    out[1:] = column
    return out


class _Runs:
    """Consecutive items of one level that share their parent and loop."""

    _FEW = 32  # up to this many runs, a path prefix is inserted run by run

    def __init__(self, parent: np.ndarray, loop: np.ndarray) -> None:
        size = len(parent)
        change = np.empty(size, bool)
        change[:1] = True
        np.not_equal(parent[1:], parent[:-1], out=change[1:])
        change[1:] |= loop[1:] != loop[:-1]
        self.starts = np.flatnonzero(change)
        self.size = size
        self._change = change

    def first(self, column: np.ndarray) -> np.ndarray:
        """Each run's value of a column constant within runs."""
        return column[self.starts]

    def expand(self, per_run: np.ndarray) -> np.ndarray:
        """A value per run, repeated for each item (one run: broadcast)."""
        if len(self.starts) in (1, self.size):
            return per_run
        return per_run[np.cumsum(self._change) - 1]

    def prefixed(self, per_run: pa.Array, texts: pa.Array) -> pa.Array:
        """`texts`, each behind its run's prefix."""
        if len(self.starts) > self._FEW:
            if len(self.starts) < self.size:
                per_run = per_run.take(np.cumsum(self._change) - 1)
            return pc.binary_join_element_wise(per_run, texts, "")
        bounds = itertools.pairwise([*self.starts.tolist(), self.size])
        return pa.concat_arrays([
            pc.utf8_replace_slice(texts.slice(a, b - a), 0, 0, per_run[i].as_py())
            for i, (a, b) in enumerate(bounds)])


def _depths(parent: np.ndarray) -> np.ndarray:
    """Each context's depth (0 = run level): `depth = depth[parent] + 1` to its fixed point
    (one pass per level), or by pointer jumping, O(n log depth), for deeply nested parts."""
    depth = np.zeros(len(parent), np.int32)
    for _ in range(8):
        deeper = depth[parent] + 1
        deeper[0] = 0
        if np.array_equal(deeper, depth):
            return depth
        depth = deeper
    depth = np.ones(len(parent), np.int32)
    depth[0] = 0
    up = parent.copy()
    while True:
        live = np.flatnonzero(up)
        if not len(live):
            return depth
        target = up[live]
        depth[live] += depth[target]
        up[live] = up[target]


def _record_rows(header: dict, cols: dict, names: np.ndarray, base: int) -> dict:
    """The records of a part: contexts as local ids; names as the batch's indices."""
    ctx = cols["ctx"]
    count = len(ctx)
    if not len(cols["name"]) == count:
        raise ValueError("columns of different lengths")
    num, num_null, types, text = _values(cols, header["values"], count)
    return {"size": count, "ctx": ctx, "value_name": names[cols["name"]], "value_type": types,
            "value_num": num, "num_null": num_null, "value_text": text,
            "kind": np.zeros(count, np.int8),
            "ord": np.arange(base, base + count, dtype=np.int64)}


def _values(cols: dict, others: list, count: int) -> tuple:
    """value_num (and where it is NULL), value_type indices and value_text (None: all NULL)
    of the records: floats straight from their column, the other values one by one."""
    floats, kinds = cols["floats"], cols.get("kind")
    if kinds is None or not others:
        return floats, None, np.zeros(count, np.int8), None
    other = kinds.astype(bool)
    num = np.empty(count, np.float64)
    num[~other] = floats
    typed = [_typed(v) for v in others]
    at = np.flatnonzero(other)
    num_null = np.zeros(count, bool)
    num[at] = [0.0 if n is None else n for _, n, _ in typed]
    num_null[at] = [n is None for _, n, _ in typed]
    types = np.zeros(count, np.int8)
    types[at] = [_TYPE_INDEX[t] for t, _, _ in typed]
    texts = pa.array([None, *(t for _, _, t in typed)], pa.string())
    where = np.zeros(count, np.int32)
    where[at] = np.arange(1, len(at) + 1, dtype=np.int32)
    return num, num_null, types, texts.take(where)


def _arg_rows(args: list, batch: RowBatch, base: int) -> dict:
    """The run's args: run-level records of kind `arg`, ords base-1, base-2, ..."""
    n = len(args)
    typed = [_typed(v) for _, v in args]
    return {"size": n, "ctx": None, "part": -1,
            "value_name": batch._indices(batch._names, [a[0] for a in args])[:n],
            "value_type": np.array([_TYPE_INDEX[t] for t, _, _ in typed], np.int8),
            "value_num": np.array([0.0 if v is None else v for _, v, _ in typed], np.float64),
            "num_null": np.array([v is None for _, v, _ in typed], bool),
            "value_text": pa.array([text for _, _, text in typed], pa.string()),
            "kind": np.ones(n, np.int8),
            "ord": np.arange(base - 1, base - 1 - n, -1, dtype=np.int64)}


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


def insert_arrow(con: Any, batch: pa.Table, sql: str, params: list) -> None:
    """Run `sql` (an INSERT reading `{}`) over `batch`, registered for this statement only:
    the query sandbox turns DuckDB's scans of Python variables off."""
    name = "_florsql_ingest_batch"
    con.register(name, batch)
    try:
        con.execute(sql.format(name), params)
    finally:
        con.unregister(name)
