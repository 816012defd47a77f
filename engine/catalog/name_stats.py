"""The name and loop statistics of a run (`_name_stats`, `_loop_stats`), kept as records arrive.

    keys = RecordKeys(...)                  a chunk of a batch's records, as numpy arrays
    counts = count_chunk(keys, depths)      on the chunk's thread (pieces.py)
    merge_batch_stats(con, tstamp, [keys, ...], [counts, ...], depths, known, deep_loops)
                                            before the batch's rows are inserted

An ingest used to recompute a changed run's statistics from all its rows in SQL: 0.3 s per
1M records (a third of them `count(DISTINCT ctx_id)`), and again at every refresh of a run
still recording. Now each batch's statistics come from the arrays it was built from (~15 ms
per 1M records: group codes in 32 bits, distinct contexts marked in a table) and are added to
the run's.

Counts add up, but distinct contexts do not: a context that holds records of a name in an
earlier batch and in this one counts once. Such a context was stored before this batch
(records refer to contexts their own part defines), so only records in `known` contexts are
looked up among the run's earlier rows. The counts stay exact; `history` relies on them to
skip ranking the records of a context that holds one (history.py `_no_duplicates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

_INT64 = (-(1 << 63), (1 << 63) - 1)
_INT128 = (-(1 << 127), (1 << 127) - 1)


@dataclass(frozen=True)
class RecordKeys:
    """What the statistics need of a batch's records (one item per record)."""

    names: list[str]  # the batch's dictionary of value names
    types: tuple[str, ...]  # the dictionary of value types
    name: np.ndarray  # index into `names`
    depth: np.ndarray
    kind: np.ndarray  # 0: log, 1: arg
    value_type: np.ndarray  # index into `types`
    ctx_row: np.ndarray  # the record's context as a dense row number: same context, same row
    ctx_id: np.ndarray
    value_num: np.ndarray
    value_text: pa.Array | None  # None: no record has a text
    loops: list[tuple[int, np.ndarray]]  # (k, the loop name index at depth k; -1: none)
    loop_names: list[str]


@dataclass(frozen=True)
class ChunkCounts:
    """A chunk's records counted per group code (`count_chunk`, on the chunk's thread)."""

    code: np.ndarray  # each record's group: (name * depths + depth) * 2 + kind
    records: np.ndarray  # records per code
    typed: np.ndarray  # records per code * len(types) + value_type


def count_chunk(keys: RecordKeys, depths: int) -> ChunkCounts:
    """The chunk's group codes and counts; `depths`: the batch's deepest context + 1, the
    same for every chunk of the batch."""
    code = _group_codes(keys, depths)
    return ChunkCounts(code, np.bincount(code),
                       np.bincount(code * len(keys.types) + keys.value_type))


@dataclass(frozen=True)
class _Group:
    name: str
    depth: int
    kind: str


def merge_batch_stats(con: Any, tstamp: str, chunks: list[RecordKeys],
                      counts: list[ChunkCounts], depths: int, known: np.ndarray,
                      deep_loops: list[tuple[str, int]]) -> None:
    """Add the batch's records (`chunks` of them, pieces.py, each counted by `count_chunk`
    with `depths`) to the run's statistics (run before they are inserted, so `_logs` holds
    only the run's earlier rows); `known`: the ids of the batch's contexts stored before it;
    `deep_loops`: (loop name, depth) of its contexts deeper than 3."""
    groups, batch = _batch_stats(chunks, counts, depths)
    overlap = _overlap(con, tstamp, chunks, known, groups)
    old = con.execute("SELECT value_name, depth, kind, records, contexts, types, over_int64, "
                      "over_int128 FROM _name_stats WHERE tstamp = CAST(? AS TIMESTAMP)",
                      [tstamp]).fetchall()
    merged = {_Group(n, d, k): [r, c, set(t), o64, o128] for n, d, k, r, c, t, o64, o128 in old}
    for group, (records, contexts, types, over64, over128) in batch.items():
        into = merged.setdefault(group, [0, 0, set(), 0, 0])
        into[0] += records
        into[1] += contexts - overlap.get(group, 0)
        into[2] |= types
        into[3] += over64
        into[4] += over128
    con.execute("DELETE FROM _name_stats WHERE tstamp = CAST(? AS TIMESTAMP)", [tstamp])
    con.executemany(
        "INSERT INTO _name_stats VALUES (CAST(? AS TIMESTAMP), lower(?), ?, ?, ?, ?, ?, ?, ?, ?)",
        [[tstamp, g.name, g.name, g.depth, g.kind, r, c, sorted(t), o64, o128]
         for g, (r, c, t, o64, o128) in merged.items()])
    _merge_loops(con, tstamp, chunks, deep_loops)


def _batch_stats(chunks: list[RecordKeys], counts: list[ChunkCounts], depths: int
                 ) -> tuple[list[np.ndarray], dict[_Group, list]]:
    """Each record's group (name, depth, kind) as a dense number (per chunk), and per group:
    records, distinct contexts, value types, ints beyond 64 and 128 bits."""
    names, types = chunks[0].names, chunks[0].types
    codes = [c.code for c in counts]
    records = _summed([c.records for c in counts])
    present = np.flatnonzero(records)
    count = len(present)
    dense = np.zeros(len(records), _small_int(count))
    dense[present] = np.arange(count)
    groups = [dense[code] for code in codes]
    contexts = _contexts_per_group([k.ctx_row for k in chunks], groups, count)
    stats: dict[_Group, list] = {}
    for g, code_of_group in enumerate(present.tolist()):
        kind, rest = code_of_group % 2, code_of_group // 2
        name, depth = divmod(rest, depths)
        stats[_Group(names[name], depth, ("log", "arg")[kind])] = [
            int(records[code_of_group]), int(contexts[g]), set(), 0, 0]
    listed = list(stats)
    kinds = len(types)
    typed = np.flatnonzero(_summed([c.typed for c in counts]))  # codes x types
    for at in typed.tolist():
        stats[listed[dense[at // kinds]]][2].add(types[at % kinds])
    if any("int" in entry[2] for entry in stats.values()):
        for keys, group in zip(chunks, groups, strict=True):
            for g, over64, over128 in _big_ints(keys):
                stats[listed[group[g]]][3] += over64
                stats[listed[group[g]]][4] += over128
    return groups, stats


def _summed(counts: list[np.ndarray]) -> np.ndarray:
    """Bincounts of different lengths, added up."""
    total = np.zeros(max(len(c) for c in counts), np.int64)
    for c in counts:
        total[:len(c)] += c
    return total


def _group_codes(keys: RecordKeys, depths: int) -> np.ndarray:
    """(name * depths + depth) * 2 + kind per record: in 32 bits when it fits, with room for
    `* len(types)` (half the memory to write and read), computed in place."""
    wide = 2 * len(keys.names) * depths * len(keys.types) >= 1 << 31
    code = keys.name.astype(np.int64 if wide else np.int32)  # a copy, then in place
    code *= depths
    code += keys.depth
    code *= 2
    code += keys.kind
    return code


def _small_int(count: int) -> type:
    return np.int8 if count < 1 << 7 else np.int16 if count < 1 << 15 else np.int32


def _contexts_per_group(ctx_rows: list[np.ndarray], groups: list[np.ndarray], count: int
                        ) -> np.ndarray:
    """Per group, how many distinct contexts (rows of the batch's definitions) hold it, over
    every chunk (`ctx_rows`, `groups`: per chunk): by marking each (context, group) in a table
    when that fits in 16 MB (one pass), else by sorting the pairs (~4x slower on 1M records)."""
    rows = max((int(r.max()) + 1 for r in ctx_rows if len(r)), default=0)
    if not rows:
        return np.zeros(count, np.int64)
    if rows * count > _MARK_LIMIT:
        pairs = np.concatenate([_pairs(r, g, count) for r, g in zip(ctx_rows, groups,
                                                                        strict=True)])
        return np.bincount(_distinct(pairs) % count, minlength=count)
    seen = np.zeros(rows * count, bool)
    for ctx_row, group in zip(ctx_rows, groups, strict=True):
        seen[ctx_row if count == 1 else _pairs(ctx_row, group, count)] = True
    # column g of the (context, group) table: every count-th item from g
    return np.array([np.count_nonzero(seen[g::count]) for g in range(count)], np.int64)


_MARK_LIMIT = 16 << 20


def _pairs(ctx_row: np.ndarray, group: np.ndarray, count: int) -> np.ndarray:
    pairs = ctx_row * count
    pairs += group
    return pairs


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (numpy's own unique hashes, ~5x slower on 1M int64)."""
    ordered = np.sort(values)
    keep = np.ones(len(ordered), bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _big_ints(keys: RecordKeys) -> list[tuple[int, int, int]]:
    """(record, beyond 64 bits, beyond 128 bits) of the ints whose double is too large to
    tell: their exact text decides (as `TRY_CAST(value_text AS BIGINT)` did)."""
    is_int = keys.value_type == keys.types.index("int")
    candidates = np.flatnonzero(is_int & (np.abs(keys.value_num) >= 9.2e18))
    out = []
    for i in candidates.tolist():
        text = None if keys.value_text is None else keys.value_text[i].as_py()
        value = _int_or_none(text)
        over64 = value is None or not _INT64[0] <= value <= _INT64[1]
        over128 = abs(keys.value_num[i]) >= 1.7e38 and (
            value is None or not _INT128[0] <= value <= _INT128[1])
        out.append((i, int(over64), int(over128)))
    return out


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _overlap(con: Any, tstamp: str, chunks: list[RecordKeys], known: np.ndarray,
             groups: list[np.ndarray]) -> dict[_Group, int]:
    """Per group, the contexts among `known` that hold a record of it in earlier rows."""
    if not len(known):
        return {}
    mine = [np.flatnonzero(np.isin(k.ctx_id, known)) for k in chunks]
    if not any(len(m) for m in mine):
        return {}

    def joined(column: str) -> np.ndarray:
        return np.concatenate([getattr(k, column)[m] for k, m in zip(chunks, mine,
                                                                      strict=True)])

    group = np.concatenate([g[m] for g, m in zip(groups, mine, strict=True)]).astype(np.int64)
    ctx_id, name, depth, kind = joined("ctx_id"), joined("name"), joined("depth"), joined("kind")
    pair = joined("ctx_row") * (int(group.max()) + 1) + group
    order = np.argsort(pair, kind="stable")
    first = np.ones(len(order), bool)
    np.not_equal(pair[order][1:], pair[order][:-1], out=first[1:])
    at = order[first]  # one record per (context, group)
    pairs = pa.table({
        "ctx_id": ctx_id[at],
        "value_name": pa.array([chunks[0].names[i] for i in name[at].tolist()], pa.string()),
        "depth": depth[at].astype(np.int32),
        "kind": pa.array(np.where(kind[at] == 1, "arg", "log"), pa.string())})
    name = "_florsql_stat_pairs"
    con.register(name, pairs)
    try:
        rows = con.execute(
            f"SELECT p.value_name, p.depth, p.kind, count(*) FROM {name} AS p SEMI JOIN "
            "(SELECT ctx_id, value_name, kind FROM _logs WHERE tstamp = CAST(? AS TIMESTAMP)) "
            "AS l USING (ctx_id, value_name, kind) GROUP BY ALL", [tstamp]).fetchall()
    finally:
        con.unregister(name)
    return {_Group(n, d, k): c for n, d, k, c in rows}


def _merge_loops(con: Any, tstamp: str, chunks: list[RecordKeys],
                 deep_loops: list[tuple[str, int]]) -> None:
    """The loop names records sit in at depths 1..3, and those of contexts deeper than 3."""
    found = set(deep_loops)
    for keys in chunks:
        for k, loop in keys.loops:
            found |= {(keys.loop_names[i], k) for i in _loops_present(loop)}
    if not found:
        return
    known = set(con.execute("SELECT loop_name, depth FROM _loop_stats WHERE tstamp = "
                            "CAST(? AS TIMESTAMP)", [tstamp]).fetchall())
    new = sorted(found - known)
    if new:
        con.executemany("INSERT INTO _loop_stats VALUES (CAST(? AS TIMESTAMP), ?, ?)",
                        [[tstamp, name, depth] for name, depth in new])


def _loops_present(loop: np.ndarray) -> list[int]:
    """The loop name indices set in `loop` (-1: none; set on the records at depth k or
    deeper): one pass when every record has the same (one loop around the others)."""
    if not len(loop):
        return []
    low, high = int(loop.min()), int(loop.max())
    if low == high:
        return [low] if low >= 0 else []
    return np.flatnonzero(np.bincount(loop[loop >= 0])).tolist()  # small indices
