"""Turn checked record parts (parts.py) into catalog rows, as Arrow columns, and insert them.

Rows are built with whole-array operations, never one Python step per record. Each part is
decoded by decode.py (its contexts by definitions.py); when a batch is inserted, its records'
rows are built a chunk at a time on a thread each (pieces.py), each record's context columns
gathered from its own part's definitions, so each row of `_logs` carries its enclosing contexts
at depths 1..3 (`loop_k`, `iter_k`, `ctx_k`; k = depth is the row's own context) and `history`
reads loop dimensions and outer contexts from the row itself. The first record of a context at
depth 1..3 stands for it (`defines_ctx`); `_contexts` gets the contexts no record stands for,
once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .decode import DecodedPart, prepare_part
from .definitions import ANCESTOR_LEVELS, CTX_COLUMNS, RUN_LEVEL, Definitions
from .name_stats import merge_batch_stats
from .parts import Part
from .pieces import BatchShape, ContextClaims, build_chunks
from .schema import STORED
from .sink import SegmentSink
from .tail import LogTail

_INSERT_CHUNK_ROWS = 122_880  # DuckDB's row group


# --- rows -------------------------------------------------------------------------------------


@dataclass
class Output:
    """Where an ingest's rows go besides DuckDB's tables: the pending segment's files (sink.py)
    and, while it takes them, the tail (tail.py), which keeps `_logs` rows out of DuckDB's
    table until a fold moves them in; `seg`: the pending segment's id."""

    sink: SegmentSink | None = None
    tail: LogTail | None = None
    seg: int = 0


@dataclass
class RowBatch:
    """Rows for `_logs`, `_contexts` and `_iterations` from the new parts of one source.

    Each part adds its context definitions (ids, paths, ancestors: numpy arrays in the part's
    order) and its records (the context each refers to, names as indices into the batch's own
    dictionary, values); `insert_into` builds the `_logs` rows a chunk of records at a time
    (pieces.py: each chunk's context columns taken from its own part's definitions) and
    joins the chunks' tables without copying them."""

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
        definitions = self._definitions()
        table = definitions.table(definitions.kept_rows(), self._loop_values())
        return list(zip(*(table.column(c).to_pylist() for c in CTX_COLUMNS), strict=True))

    def insert_into(self, con: Any, out: Output | None = None) -> None:
        """Append the rows through Arrow (executemany is far too slow for log volumes), and
        hand each table to `out` (the pending segment's writer, the tail; see Output).
        A context already stored for the run, or listed by several parts, is stored once."""
        out = out or Output()
        if self.count or self._contexts:
            definitions = self._definitions()
            known = _stored_ids(con, definitions if self._contexts else None, self.tstamp)
            claims = ContextClaims(definitions.rows)
            shape = BatchShape(definitions, list(self._names), list(self._loops), self.tstamp,
                               self.source, known)
            tables, keys, counts = [], [], []
            for chunk in build_chunks(self._records, shape):
                tables.append(claims.settle(chunk))
                keys.append(chunk.keys)
                counts.append(chunk.counts)
                _to_segment(out, "_logs", tables[-1])  # written while the next are built
            contexts = None
            if self._contexts:  # neither stored yet nor stood for by a record
                contexts = definitions.table(definitions.stored_rows(claims.claimed, known),
                                             self._loop_values())
            if tables:
                # before the rows are stored: they look up the run's earlier records only
                merge_batch_stats(con, self.tstamp, keys, counts, shape.depths, known,
                                  _deep_loops(contexts))
                _store(con, out, "_logs", pa.concat_tables(tables), self.tstamp)
            del tables, keys, counts
            if contexts is not None:
                _append(con, out, "_contexts", self._whole(contexts))
        if self.iterations:
            columns = list(zip(*self.iterations, strict=True))
            rows = pa.Table.from_arrays([pa.array(c, t) for c, t in zip(
                columns, (pa.string(), pa.int64(), pa.float64(), pa.string()), strict=True)],
                names=["loop_name", "iteration", "seconds", "source"])
            _append(con, out, "_iterations", self._whole(rows))

    def _whole(self, rows: pa.Table) -> pa.Table:
        """`rows` behind their run's tstamp: every column of the table but `_seg`, as the
        segment holds them."""
        tstamp = pa.array(np.full(rows.num_rows, np.datetime64(self.tstamp, "us")),
                          pa.timestamp("us"))
        return rows.add_column(0, "tstamp", tstamp)

    def _definitions(self) -> Definitions:
        """The batch's context definitions: the run level, then each part's."""
        pieces = [RUN_LEVEL, *self._contexts]
        levels = [k for k in range(1, ANCESTOR_LEVELS + 1)
                  if any(f"loop_{k}" in p for p in pieces)]  # no part reaches the others
        return Definitions(pieces, levels)

    def _loop_values(self) -> pa.Array:
        return pa.array(list(self._loops), pa.string())

    def add(self, decoded: DecodedPart) -> None:
        """Add a decoded part's rows (decode.py; prepared against this batch)."""
        records = decoded.records
        records["part"] = len(self._contexts)
        self._contexts.append(decoded.definitions)
        for piece in (records, decoded.args):
            if piece["size"]:
                self._records.append(piece)
                self.count += piece["size"]
        self.iterations.extend(decoded.iterations)

    def name_indices(self, texts: list[str]) -> np.ndarray:
        return self._indices(self._names, texts)

    def loop_indices(self, texts: list[str]) -> np.ndarray:
        return self._indices(self._loops, texts)

    def _indices(self, table: dict[str, int], texts: list[str]) -> np.ndarray:
        """The batch's dictionary indices of `texts`, with -1 appended (index -1: NULL)."""
        return np.array([table.setdefault(t, len(table)) for t in texts] + [-1], np.int32)


def _stored_ids(con: Any, definitions: Definitions | None, tstamp: str) -> np.ndarray:
    """The ids of the batch's contexts the catalog holds already for the run (a live run's
    earlier parts defined some): a probe of the run's contexts among them, when it has any
    (every run stores its run level, so a run without it has none)."""
    none = np.empty(0, np.int64)
    if definitions is None or not con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM _contexts WHERE tstamp = CAST(? AS TIMESTAMP) "
            "LIMIT 1)", [tstamp]).fetchall()[0][0]:
        return none
    name = "_florsql_new_contexts"
    con.register(name, pa.table({"ctx_id": definitions.ids}))
    try:
        return con.execute(f"SELECT ctx_id FROM _all_contexts WHERE tstamp = CAST(? AS "
                           f"TIMESTAMP) AND ctx_id IN (SELECT ctx_id FROM {name})",
                           [tstamp]).fetchnumpy()["ctx_id"].astype(np.int64)
    finally:
        con.unregister(name)


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


def _append(con: Any, out: Output, table: str, rows: pa.Table) -> None:
    _to_segment(out, table, rows)  # first, so that the segment is written while DuckDB inserts
    _store(con, out, table, rows)


def _to_segment(out: Output, table: str, rows: pa.Table) -> None:
    if out.sink is not None and rows.num_rows:
        out.sink.write(table, rows)


def _store(con: Any, out: Output, table: str, rows: pa.Table, tstamp: str = "") -> None:
    """Into the mirror: DuckDB's table, or the tail while it takes `_logs` rows."""
    if not rows.num_rows:
        return
    # slices of one row group each (zero-copy): DuckDB scans an Arrow table a chunk per thread
    chunks = pa.Table.from_batches(rows.to_batches(max_chunksize=_INSERT_CHUNK_ROWS))
    if table == "_logs" and out.tail is not None and out.tail.open:
        out.tail.add(con, chunks, out.seg, tstamp)  # queryable now; DuckDB's table later
        return
    insert_arrow(con, chunks, f"INSERT INTO {STORED[table]} BY NAME SELECT * FROM {{}}", [])


def rows_of_part(part: Part, batch: RowBatch, ctx_map: object = None) -> None:
    """Add the rows of `part` to `batch`, all or none. (`ctx_map` is ignored: context ids
    are a function of their path.)"""
    batch.add(prepare_part(part, batch).decode())


def insert_arrow(con: Any, batch: pa.Table, sql: str, params: list) -> None:
    """Run `sql` (an INSERT reading `{}`) over `batch`, registered for this statement only:
    the query sandbox turns DuckDB's scans of Python variables off."""
    name = "_florsql_ingest_batch"
    con.register(name, batch)
    try:
        con.execute(sql.format(name), params)
    finally:
        con.unregister(name)
