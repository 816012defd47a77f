"""A batch's loop contexts, from the definitions in its record parts (parts.py), as arrays.

    PartContexts(loop_names, loop_index, cols)   one part's contexts: catalog ids, depths,
                                                 ancestors at depths 1..3 (and paths when asked)
    Definitions(pieces, levels)                  the run level, then every part's, numbered in
                                                 that order: a record's columns taken from its
                                                 own part, `_contexts` rows for those kept

Context ids are a function of the context's path (parts.py), so no part needs the catalog's
contexts. Everything is computed level by level over whole arrays, never a Python step per
context: contexts come in runs of one parent and loop (the steps of an epoch), and what depends
on the parent and the loop only (the id's base, the path's prefix) is computed once per run.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .parts import add_iterations, context_base, loop_hash

ANCESTOR_LEVELS = 3  # rows carry loop_k, iter_k, ctx_k for k = 1..ANCESTOR_LEVELS
ANCESTOR_COLUMNS = tuple(f"{c}_{k}" for k in range(1, ANCESTOR_LEVELS + 1)
                         for c in ("loop", "iter", "ctx"))
CTX_COLUMNS = ("ctx_id", "depth", "path", "parent_id", "loop_name", "iteration",
               *ANCESTOR_COLUMNS)
TEXT_DICT = pa.dictionary(pa.int32(), pa.string())
ANCESTOR_FIELDS = [f for k in range(1, ANCESTOR_LEVELS + 1)
                   for f in (pa.field(f"loop_{k}", TEXT_DICT), pa.field(f"iter_{k}", pa.int64()),
                             pa.field(f"ctx_{k}", pa.int64()))]
CTX_SCHEMA = pa.schema([
    pa.field("ctx_id", pa.int64()), pa.field("depth", pa.int32()),
    pa.field("path", pa.string()), pa.field("parent_id", pa.int64()),
    pa.field("loop_name", TEXT_DICT), pa.field("iteration", pa.int64()), *ANCESTOR_FIELDS])


def ancestor_arrays(columns: dict, levels: list[int], size: int,
               loop_values: pa.Array) -> list[pa.Array]:
    """The `loop_k`, `iter_k`, `ctx_k` columns (k = 1..3) from their numpy arrays."""
    out = []
    for k in range(1, ANCESTOR_LEVELS + 1):
        if k not in levels:
            out += [all_null(TEXT_DICT, size), all_null(pa.int64(), size),
                    all_null(pa.int64(), size)]
            continue
        loop = columns[f"loop_{k}"]
        null = loop < 0
        mask = null if null.any() else None
        out += [dictionary(loop, loop_values, mask),
                pa.array(columns[f"iter_{k}"], mask=mask),
                pa.array(columns[f"ctx_{k}"], mask=mask)]
    return out


def all_null(kind: pa.DataType, size: int) -> pa.Array:
    """`size` NULLs of `kind` (a fixed-width type, a dictionary, a string) over one zero
    buffer shared by every such column: `pa.nulls` fills a new zeroed buffer each call (24 MB
    for the columns 1M records leave NULL), whose pages the kernel has to clear first."""
    zeros = _zeros(8 * size + 8)
    if pa.types.is_dictionary(kind):
        indices = pa.Array.from_buffers(kind.index_type, size, [zeros, zeros], size)
        return pa.DictionaryArray.from_arrays(indices, pa.array([], kind.value_type))
    if kind == pa.string():  # every offset 0: each value empty, and NULL
        return pa.Array.from_buffers(kind, size, [zeros, zeros, zeros], size)
    return pa.Array.from_buffers(kind, size, [zeros, zeros], size)


def _zeros(size: int) -> pa.Buffer:
    """At least `size` zero bytes, never written: allocated zeroed (calloc), so reading them
    maps the kernel's zero page instead of clearing pages of its own."""
    global _ZERO_BUFFER
    buffer = _ZERO_BUFFER
    if buffer.size < size:
        buffer = _ZERO_BUFFER = pa.py_buffer(np.zeros(max(size, 2 * buffer.size), np.uint8))
    return buffer


_ZERO_BUFFER = pa.py_buffer(np.zeros(1 << 16, np.uint8))


class Definitions:
    """A batch's context definitions: the run level, then each part's, numbered in that order
    (`ends`: where each piece ends). Only the ids are joined; a record's context columns are
    taken from its own part's arrays, and a table is built for the few rows it needs."""

    def __init__(self, pieces: list[dict], levels: list[int]) -> None:
        self.pieces, self.levels = pieces, levels
        self.ends = np.cumsum([len(p["ctx_id"]) for p in pieces])
        self.rows = int(self.ends[-1])
        # a context several parts define is stored once, and counted as its first row; each
        # part's ids come sorted (on its decoding thread), so they merge in one pass
        ordered = np.sort(np.concatenate([p.get("sorted_ids", p["ctx_id"]) for p in pieces]),
                          kind="stable")  # timsort: merges the sorted runs
        self.keep, self.canonical = _first_definitions(pieces, self.ends, ordered)
        self.max_depth = max(int(p["depth"].max()) for p in pieces if len(p["depth"]))

    @functools.cached_property
    def ids(self) -> np.ndarray:
        """Every definition's id, joined (only where the catalog's contexts are looked up)."""
        return concat_pieces(self.pieces, "ctx_id")

    def record_keys(self) -> list[str]:
        return ["ctx_id", "depth", *(f"{c}_{k}" for k in self.levels
                                     for c in ("loop", "iter", "ctx"))]

    def record_columns(self, part: int, ctx: np.ndarray | None, size: int
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The context columns (`record_keys`) of `size` records of part `part` (-1: the run
        level) whose local context ids are `ctx`, taken from that part's definitions (local id
        0 is the run level); and each record's definition row (the first of its id)."""
        own = None if part < 0 or not len(self.pieces[part + 1]["ctx_id"]) else \
            self.pieces[part + 1]
        if own is None:  # the run level's records, or a part defining no context
            columns = {key: np.full(size, _value_at_run_level(key)[0])
                       for key in self.record_keys()}
            return columns, np.zeros(size, np.int64)
        index = ctx.astype(np.int64)
        index -= 1
        at_top = ctx == 0
        top = at_top.any()
        columns = {}
        for key in self.record_keys():
            run_level = _value_at_run_level(key)
            source = own.get(key)
            if source is None:  # this part reaches no such depth
                columns[key] = np.full(size, no_ancestor(key, 1)[0])
                continue
            column = columns[key] = np.empty(size, run_level.dtype)
            np.take(source, index, out=column, mode="clip")
            if top:
                column[at_top] = run_level[0]
        index += self.ends[part]  # the row of local id c is ends[part] + c - 1
        if top:
            index[at_top] = 0
        return columns, index if self.canonical is None else self.canonical[index]

    def kept_rows(self) -> np.ndarray:
        return np.arange(self.rows) if self.keep is None else np.flatnonzero(self.keep)

    def stored_rows(self, claimed: list[np.ndarray], known: np.ndarray) -> np.ndarray:
        """The rows `_contexts` gets: each context once, unless a record stands for it
        (`claimed`: rows, per chunk of records) or the catalog holds it already (`known`)."""
        stored = np.ones(self.rows, bool) if self.keep is None else self.keep.copy()
        for rows in claimed:
            stored[rows] = False
        if len(known):
            stored &= ~np.isin(self.ids, known)
        return np.flatnonzero(stored)

    def table(self, rows: np.ndarray, loop_values: pa.Array) -> pa.Table:
        """The `_contexts` rows of the definitions at `rows` (ascending)."""
        cuts = np.searchsorted(rows, np.concatenate([[0], self.ends]))
        local = [rows[a:b] - (end - len(p["ctx_id"]))
                 for p, a, b, end in zip(self.pieces, cuts[:-1], cuts[1:], self.ends, strict=True)]
        cols = {key: np.concatenate([p[key][i] if key in p else no_ancestor(key, len(i))
                                     for p, i in zip(self.pieces, local, strict=True)])
                for key in ("ctx_id", "depth", "loop_name", "iteration",
                            *self.record_keys()[2:])}
        cols["parent_id"] = np.concatenate([_parent_ids(p, i) for p, i in zip(
            self.pieces, local, strict=True)])
        paths = pa.concat_arrays([p["path"].take(i) for p, i in zip(self.pieces, local,
                                                                     strict=True)])
        top = cols["depth"] == 0
        loop = cols["loop_name"]
        return pa.Table.from_arrays(
            [pa.array(cols["ctx_id"]), pa.array(cols["depth"]), paths,
             pa.array(cols["parent_id"], mask=top), dictionary(loop, loop_values, loop < 0),
             pa.array(cols["iteration"], mask=top),
             *ancestor_arrays(cols, self.levels, len(loop), loop_values)], schema=CTX_SCHEMA)


def _parent_ids(piece: dict, rows: np.ndarray) -> np.ndarray:
    """The ids of the parents of a piece's definitions at `rows` (0: the run level)."""
    parent = piece["parent"][rows]
    return np.where(parent > 0, piece["ctx_id"][np.maximum(parent - 1, 0)], 0)


def _value_at_run_level(key: str) -> np.ndarray:
    return RUN_LEVEL[key] if key in RUN_LEVEL else no_ancestor(key, 1)


RUN_LEVEL = {  # the run level's row of `_contexts`
    "ctx_id": np.zeros(1, np.int64), "depth": np.zeros(1, np.int32),
    "path": pa.array([""], pa.string()), "parent": np.zeros(1, np.int64),
    "loop_name": np.full(1, -1, np.int32), "iteration": np.zeros(1, np.int64)}


def concat_pieces(pieces: list[dict], key: str) -> np.ndarray:
    """A column of the pieces, joined; an ancestor column a piece lacks is NULL there."""
    arrays = [p[key] if key in p else no_ancestor(key, len(p["ctx_id"])) for p in pieces]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def no_ancestor(key: str, size: int) -> np.ndarray:
    return np.full(size, -1, np.int32) if key.startswith("loop_") else np.zeros(size, np.int64)


def dictionary(indices: np.ndarray, values: pa.Array, mask: np.ndarray | None = None
                ) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices, mask=mask), values, safe=False)


def _first_definitions(pieces: list[dict], ends: np.ndarray, ordered: np.ndarray
                       ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Where some ids repeat (a context defined again by a later part): a mask of the rows
    whose id no earlier row has, and each row's first row of its id; (None, None) otherwise.
    `ordered`: the pieces' ids, sorted. Repeats are few (the contexts open at a part's
    start), so only they are looked up, piece by piece."""
    twice = ordered[1:] == ordered[:-1]
    if not twice.any():
        return None, None
    repeated = np.unique(ordered[1:][twice])
    found = [(np.flatnonzero(np.isin(p["ctx_id"], repeated)), p["ctx_id"], end - len(p["ctx_id"]))
             for p, end in zip(pieces, ends, strict=True)]
    candidates = np.concatenate([at + start for at, _, start in found])
    ids = np.concatenate([ids[at] for at, ids, _ in found])
    _, first, which = np.unique(ids, return_index=True, return_inverse=True)
    keep = np.ones(int(ends[-1]), bool)
    keep[candidates] = False
    keep[candidates[first]] = True
    canonical = np.arange(int(ends[-1]))
    canonical[candidates] = candidates[first][which]
    return keep, canonical


class PartContexts:
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
        self._order, selections = _levels(self.depth, levels)
        self.paths: list[pa.Array] = []
        # paths to depth 3 are derived by `_all_contexts` from the ancestor columns (NULL
        # here); a part with deeper contexts builds them all, as a deep one needs its parent's
        self.with_paths = paths or levels > ANCESTOR_LEVELS
        rank = np.zeros(n + 1, np.int64)  # position of a context within its level
        for level, sel in enumerate(selections, start=1):
            par, loop, iteration = self.parent[sel], local_loop[sel], self.iteration[sel]
            runs = _Runs(par, loop)
            base = context_base(self.ids[runs.first(par)], hashes[runs.first(loop)])
            ids = self.ids[sel] = add_iterations(runs.expand(base), iteration)
            for k in range(min(level - 1, ANCESTOR_LEVELS)):  # outer ancestors: the parent's
                for column in self.anc[k]:
                    column[sel] = runs.expand(column[runs.first(par)])
            if level <= ANCESTOR_LEVELS:  # itself
                own_loop, own_iteration, own_ctx = self.anc[level - 1]
                own_loop[sel] = loop_index[loop]
                own_iteration[sel] = iteration
                own_ctx[sel] = ids
            if self.with_paths:
                self._add_paths(runs, prefixes.take(runs.first(loop)), rank[runs.first(par)],
                                iteration)
                rank[sel] = np.arange(len(par))
        self._selections = selections

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
            paths = all_null(pa.string(), count)
        else:
            paths = pa.concat_arrays(self.paths) if self.paths else pa.array([], pa.string())
        if self.with_paths and not isinstance(self._order, slice):  # back to the part's order
            order = self._order
            if order is None:  # selected by masks
                order = np.concatenate([np.flatnonzero(s) for s in self._selections])
            position = np.empty(len(order), np.int64)
            position[order - 1] = np.arange(len(order))
            paths = paths.take(position)
        local = slice(1, None)
        # `parent`: the local id of each one's parent (0: the run level); Definitions.table
        # turns the few it stores into ids
        out = {"ctx_id": self.ids[local], "sorted_ids": np.sort(self.ids[local]),
               "depth": self.depth[local], "path": paths,
               "parent": self.parent[local], "loop_name": self.loop[local],
               "iteration": self.iteration[local]}
        for k, columns in enumerate(self.anc, start=1):
            for name, column in zip(("loop", "iter", "ctx"), columns, strict=True):
                out[f"{name}_{k}"] = column[local]
        return out


def _levels(depth: np.ndarray, levels: int
            ) -> tuple[slice | np.ndarray | None, list[slice | np.ndarray]]:
    """Which contexts are at each level 1..levels: slices when the part lists them level by
    level; else a mask per level (selecting by mask is ~2x faster than by positions), or for
    a deep part positions in level order. And the part's contexts in level order (a slice,
    positions, or None: from the masks, when needed)."""
    if len(depth) == 1:
        return slice(1, None), []
    sizes = np.bincount(depth[1:], minlength=levels + 1)[1:]
    ends = np.cumsum(sizes) + 1
    if not np.any(depth[2:] < depth[1:-1]):  # already level by level
        return slice(1, None), [slice(int(e - z), int(e)) for z, e in zip(sizes, ends,
                                                                          strict=True)]
    if levels <= _MASKED_LEVELS:
        return None, [depth == level for level in range(1, levels + 1)]
    order = np.argsort(depth[1:], kind="stable") + 1
    return order, [order[e - z - 1:e - 1] for z, e in zip(sizes, ends, strict=True)]


_MASKED_LEVELS = 4  # beyond, a pass per level over every context costs more than a sort


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
        self.lengths = np.diff(self.starts, append=size)

    def first(self, column: np.ndarray) -> np.ndarray:
        """Each run's value of a column constant within runs."""
        return column[self.starts]

    def expand(self, per_run: np.ndarray) -> np.ndarray:
        """A value per run, repeated for each item (`per_run` itself when each item is a run)."""
        if len(self.starts) == self.size:
            return per_run
        return np.repeat(per_run, self.lengths)

    def prefixed(self, per_run: pa.Array, texts: pa.Array) -> pa.Array:
        """`texts`, each behind its run's prefix."""
        if len(self.starts) > self._FEW:
            if len(self.starts) < self.size:
                per_run = per_run.take(np.repeat(np.arange(len(self.starts)), self.lengths))
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
