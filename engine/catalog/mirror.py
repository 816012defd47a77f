"""Each process's own in-memory DuckDB copy of the published catalog: the *mirror*.

    open_mirror(home, limit) -> Mirror   an in-memory instance with the catalog schema,
                                         locked down (sandbox.py) before any user statement
    Mirror.sync()                        load what the manifest publishes beyond what is loaded
    Mirror.publish(can_publish)          after an ingest here: publish it (store.py)
    Mirror.settle()                      after a refresh: fold, compress (on a thread: tail.py)

User SQL runs on this instance only. It holds no file: segments are read by Python (pyarrow)
and inserted, so the sandbox keeps every file out of SQL's reach, the catalog's included, and
no process ever waits for another to read. Sync is incremental: new segments are inserted,
retired ones deleted by segment id, tombstones applied, and the small tables replaced when
their state changed. Files are read before anything is deleted, so a file collected under a
slow reader (FileNotFoundError) leaves the mirror as it was, and the newer manifest is read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from flor import protocol

from ..errors import IngestWarning
from .rows import Output, insert_arrow
from .sandbox import lock_down
from .schema import LOGS_VIEW, SCHEMA, STORED
from .sink import SegmentSink, segment_tables
from .store import SEGMENTED, STATE_TABLES, Manifest, Store
from .tail import Fold, LogTail, fold_into_rows

_SYNC_ATTEMPTS = 8
# what reading a damaged segment or state file raises (pyarrow's errors are ValueErrors or
# OSErrors; DuckDB's when a file's column types do not fit the table)
_UNREADABLE = (ValueError, OSError, duckdb.Error)
CATALOG_DB = "catalog"  # the attached in-memory database holding the tables
# Rows kept uncompressed before a checkpoint compresses them (~200 bytes a row until then, ~10
# after): a long load or ingest compresses every COMPRESS_EVERY rows, so its memory stays
# bounded, and what is left once it ends is compressed when it fills a row group (SETTLE_ROWS):
# compressed rows are also quicker to query (dictionary-coded names are filtered once per
# dictionary entry; epoch_avg over 1M records: 19-23 ms uncompressed, 14 ms compressed), for
# ~0.35 s per 1M rows. A live run's small increments wait until they fill one.
COMPRESS_EVERY = 2 << 20
SETTLE_ROWS = 122_880


@dataclass
class _Loaded:
    """What the mirror holds, as published (`files`: per table, (segment id, file))."""

    manifest: Manifest = field(default_factory=Manifest)
    files: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: {t: set()
                                                                             for t in SEGMENTED})
    stamp: tuple | None = None
    broken: bool = False  # holds rows a failed publish left unpublished: reload in full
    local: bool = False  # holds rows that could not be published (read-only home)


class Mirror:
    def __init__(self, con: duckdb.DuckDBPyConnection, store: Store, spill: Path) -> None:
        self.con, self.store, self._spill = con, store, spill
        self.loaded = _Loaded()
        self._warned = False
        self._fresh = False  # loading into an empty mirror (see _load)
        self._uncompressed = 0  # rows added since the last checkpoint
        self.tail = LogTail()  # `_logs` rows an ingest here added, not in `_log_rows` yet
        self._tail_counted = 0  # of its rows, those `added` has been told of
        self._fold: Fold | None = None  # the tail's fold running in a thread

    @property
    def manifest(self) -> Manifest:
        return self.loaded.manifest

    def current(self) -> bool:
        """Whether the published catalog is the one loaded (a stat, no read)."""
        return not self.loaded.broken and self.store.stamp() == self.loaded.stamp

    def sync(self) -> bool:
        """Bring the mirror to the published manifest; whether anything changed."""
        for _ in range(_SYNC_ATTEMPTS):
            stamp = self.store.stamp()
            if stamp == self.loaded.stamp and not self.loaded.broken:
                return False
            manifest = self.store.read_manifest()
            try:
                changed = self._apply(manifest)
            except FileNotFoundError:
                continue  # collected after a newer manifest replaced it: read that one
            except _UNREADABLE as exc:  # a damaged file: the record files still say it all
                self._disown(manifest, exc)
                changed = True
            self.loaded.stamp = stamp
            return changed
        raise OSError(f"the catalog in {self.store.dir} changed under every read; "
                      "is a process rewriting it in a loop?")

    def _apply(self, manifest: Manifest) -> bool:
        loaded = self.loaded
        if loaded.broken or (loaded.local and manifest.version != loaded.manifest.version):
            self._reset()
            loaded = self.loaded
        if manifest.version == loaded.manifest.version and (
                manifest.state == loaded.manifest.state or loaded.manifest.state is None):
            return False  # loaded, or disowned (see _disown)
        self.quiesce()  # segments and tombstones apply to `_log_rows`: the tail goes in first
        new_files = {t: {(s.id, s.file) for s in manifest.segments[t]} for t in SEGMENTED}
        state = None
        if manifest.state != loaded.manifest.state and manifest.state:
            state = {t: self.store.read_table(f"{manifest.state}/{t}.parquet")
                     for t in STATE_TABLES}
        with contextlib.ExitStack() as stack:
            # every file is opened before any change: one collected since raises here, and
            # an open file stays readable however long the load takes
            incoming = {t: [(i, stack.enter_context(open(self.store.dir / f, "rb")))
                            for i, f in sorted(new_files[t] - loaded.files[t])]
                        for t in SEGMENTED}
            self._load(manifest, new_files, incoming, state)
        loaded.manifest, loaded.files = manifest, new_files
        return True

    def _load(self, manifest: Manifest, new_files: dict, incoming: dict,
              state: dict | None) -> None:
        """Apply the difference in one transaction: a query sees all of it or none. An empty
        mirror (a new connection: no query can see it yet) loads without one, compressing as
        it goes, so loading 10M records never holds them all uncompressed."""
        con, loaded = self.con, self.loaded
        self._fresh = not any(loaded.files.values()) and loaded.manifest.state is None
        if not self._fresh:
            con.execute("BEGIN")
        try:
            for table in SEGMENTED:
                gone = sorted({i for i, _ in loaded.files[table] - new_files[table]})
                if gone:
                    con.execute(f"DELETE FROM {STORED[table]} WHERE list_contains(?, _seg)",
                                [gone])
                for tstamp, upto in set(manifest.tombstones) - set(loaded.manifest.tombstones):
                    con.execute(f"DELETE FROM {STORED[table]} WHERE tstamp = "
                                "CAST(? AS TIMESTAMP) AND _seg <= ?", [tstamp, upto])
                for seg_id, handle in incoming[table]:
                    self._insert_segment(table, seg_id, handle, manifest.dead_in(seg_id))
            if state is not None:
                for table, rows in state.items():
                    con.execute(f"DELETE FROM {table}")
                    insert_arrow(con, rows, f"INSERT INTO {table} SELECT * FROM {{}}", [])
            _bump(con)
        except BaseException:
            if self._fresh:
                self._reset()
            else:
                con.execute("ROLLBACK")
            raise
        if not self._fresh:
            con.execute("COMMIT")

    def _insert_segment(self, table: str, seg_id: int, handle, dead: list[str]) -> None:
        for rows in segment_tables(handle):
            insert_arrow(self.con, rows, f"INSERT INTO {STORED[table]} BY NAME SELECT *, "
                         "CAST(? AS INTEGER) AS _seg FROM {}", [seg_id])
            if self._fresh:  # no transaction open: compress as it goes
                self.added(rows.num_rows)
            else:
                self._uncompressed += rows.num_rows
        if dead:  # tombstoned since it was written
            self.con.execute(f"DELETE FROM {STORED[table]} WHERE _seg = ? AND list_contains("
                             "CAST(? AS TIMESTAMP[]), tstamp)", [seg_id, dead])

    def _disown(self, manifest: Manifest, exc: Exception) -> None:
        """Leave out a published catalog with an unreadable file: this mirror starts empty at
        its version, so the next ingest reads every run from its record files and publishes
        a whole new catalog (the damaged files are collected as unreferenced)."""
        self._reset()
        self.loaded.manifest = Manifest(version=manifest.version)
        warnings.warn(f"a file of the catalog in {self.store.dir} is unreadable "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); rebuilding "
                      "the catalog from the record files", IngestWarning, stacklevel=4)

    def _reset(self) -> None:
        if self._fold is not None:  # everything goes: stop it, then empty the tables
            self._fold.cancel()
            self._fold = None
        for table in (*STORED.values(), *STATE_TABLES, "_tail_pieces", "_dropped"):
            self.con.execute(f"DELETE FROM {table}")
        self.con.execute(LOGS_VIEW)
        self.tail.clear()
        self.tail.attach(self.con)
        self.loaded = _Loaded()

    @property
    def pending_segment(self) -> int:
        """The segment id the next publish gives the rows ingested now."""
        return self.manifest.version + 1

    def begin_ingest(self) -> int:
        """Rows inserted from now on carry the pending segment id (a column default, so the
        publish needs no UPDATE of millions of rows); that id."""
        self.quiesce()
        pending = self.pending_segment
        for table in STORED.values():
            self.con.execute(f"ALTER TABLE {table} ALTER COLUMN _seg SET DEFAULT {pending}")
        self.tail.open, self._tail_counted = True, 0
        return pending

    def abandon(self, out: Output | None = None) -> None:
        """An ingest stopped part-way (an error, Ctrl-C): rows it committed are in no segment,
        and a later sync could load another process's copy of them. Reload in full."""
        self.loaded.broken = True
        self.tail.open = False
        if out is not None and out.sink is not None:
            out.sink.discard()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to this mirror, reading the catalog's tables by their names (and
        the tail as it is now). Call it in the thread that uses the mirror's own connection."""
        self.reap()
        return self._new_cursor()

    def _new_cursor(self) -> duckdb.DuckDBPyConnection:
        cur = self.con.cursor()
        cur.execute(f"USE {CATALOG_DB}")
        self.tail.attach(cur)
        return cur

    def added(self, rows: int) -> None:
        """An ingest added `rows` records (between two runs): a full tail goes into DuckDB's
        table now, and what waits uncompressed is compressed every COMPRESS_EVERY rows."""
        tail_rows = self.tail.rows
        self._uncompressed += max(0, rows - (tail_rows - self._tail_counted))
        self._tail_counted = tail_rows
        if self.tail.pieces and not self.tail.open:  # full: the rest of the ingest goes in
            self._fold_now()
        if self._uncompressed >= COMPRESS_EVERY:
            self.compress()

    def settle(self) -> None:
        """After a load or an ingest. The tail's rows go into DuckDB's table: a thread moves a
        row group's worth or more and compresses them while queries go on (the ingest returns
        ~0.6 s sooner per 1M records); fewer go in now. Rows a load appended wait for the same
        thread to compress them, if a row group's worth (a new connection answers ~1 s sooner
        per 1M records)."""
        self.tail.open = False
        self.reap()
        if self._fold is not None:  # one still runs (no ingest since): it compresses too
            return
        rows = self.tail.rows
        if rows and rows + self._uncompressed >= SETTLE_ROWS:
            self._fold = Fold(self._new_cursor(), list(self.tail.pieces), rows, CATALOG_DB)
            self._fold.start()
            return
        if rows:
            self._fold_now()
        if self._uncompressed >= SETTLE_ROWS:  # a fold of no piece: it compresses
            self._fold = Fold(self._new_cursor(), [], 0, CATALOG_DB)
            self._fold.start()

    def reap(self) -> None:
        """Take the result of a fold that ended: its pieces leave the tail (their rows are in
        `_log_rows`), and this connection stops reading them. A failed fold is done again."""
        fold = self._fold
        if fold is None or not fold.done():
            return
        self._fold = None
        if fold.error is not None:
            self._fold_now()
            return
        self.tail.forget(fold.pieces)
        self.tail.attach(self.con)
        if fold.compressed:
            self._uncompressed = 0
        else:
            self._uncompressed += fold.rows

    def quiesce(self) -> None:
        """Before this connection writes `_log_rows`: no fold runs, and the tail is empty."""
        if self._fold is not None:
            self._fold.wait()
            self.reap()
        if self.tail.pieces:
            self._fold_now()

    def _fold_now(self) -> None:
        """Move the tail into `_log_rows` in this thread."""
        pieces = list(self.tail.pieces)
        rows = self.tail.rows
        fold_into_rows(self.con, pieces)
        self.tail.forget(pieces)
        self.tail.attach(self.con)
        self._uncompressed += rows
        self._tail_counted = 0

    def compress(self) -> None:
        """Compress the rows added since the last call (DuckDB compresses an in-memory
        database at a checkpoint); skipped while a statement elsewhere holds a transaction."""
        with contextlib.suppress(duckdb.Error):
            self.con.execute(f"CHECKPOINT {CATALOG_DB}")
            self._uncompressed = 0

    def open_output(self, can_publish: bool) -> Output:
        """Where an ingest about to begin (after begin_ingest) puts its rows besides DuckDB's
        tables: the segment it writes as it goes (sink.py), the tail (tail.py)."""
        sink = SegmentSink(self.store.dir, self.pending_segment) if can_publish else None
        return Output(sink, self.tail, self.pending_segment)

    def publish(self, can_publish: bool, out: Output | None = None) -> None:
        """Publish what an ingest added to the mirror (under the ingest lock)."""
        sink = out.sink if out is not None else None
        if not can_publish:
            self.loaded.local = True
            self._warn(f"cannot write {self.store.dir}: this process ingests the record "
                       "files for itself (others do the same)")
            return
        try:
            new = self.store.publish(self.con, self.manifest, sink, self._new_cursor,
                                     before_compact=self._fold_now)
        except OSError as exc:
            self.loaded.broken = True  # its rows stay for this query; the next reloads
            self._warn(f"cannot publish the catalog to {self.store.dir} "
                       f"({exc.strerror or exc}); queries still see every record")
            return
        finally:
            if sink is not None:
                sink.discard()  # what publish did not take (nothing, once it finished)
        if new is not None:
            self.loaded.manifest = new
            self.loaded.files = {t: {(s.id, s.file) for s in new.segments[t]} for t in SEGMENTED}
            self.loaded.stamp = self.store.stamp()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, IngestWarning, stacklevel=4)

    def close(self) -> None:
        if self._fold is not None:
            self._fold.cancel()
        self.con.close()
        shutil.rmtree(self._spill, ignore_errors=True)


def open_mirror(home: Path, limit: str | None = None) -> Mirror:
    """A new mirror of the catalog of the flor home `home`, empty until `sync`."""
    _retire_legacy_catalog(home)
    spill = Path(tempfile.mkdtemp(prefix="florsql-spill-"))  # DuckDB's own, never the user's
    con = duckdb.connect(":memory:", config={"temp_directory": str(spill)})
    try:
        # a compressed in-memory database: once checkpointed, 10M records take ~100 MB, not GBs
        con.execute(f"ATTACH ':memory:' AS {CATALOG_DB} (COMPRESS)")
        con.execute(f"USE {CATALOG_DB}")
        con.execute(SCHEMA)
        # compress only when `compress()` says so: by default DuckDB checkpoints (compresses)
        # at each commit past 16 MB, and a run's rows cost 3x to compress that way (measured:
        # 10 runs of 100k records, commits 1.1 s vs 0.27 s plus 0.33 s for one CHECKPOINT)
        con.execute("SET checkpoint_threshold = '1000TB'")
        lock_down(con, limit)
    except BaseException:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
        raise
    return Mirror(con, Store(home, protocol.CATALOG_DIR), spill)


def new_catalog() -> duckdb.DuckDBPyConnection:
    """An empty in-memory catalog with the schema, not locked (tests and tools)."""
    con = duckdb.connect(":memory:")
    con.execute(SCHEMA)
    return con


def _bump(con: duckdb.DuckDBPyConnection) -> None:
    """Mark derived facts stale (CatalogSession.derived, the `history` schema)."""
    for key in ("data_version", "names_generation"):
        con.execute("INSERT OR REPLACE INTO _meta SELECT ?, CAST(coalesce(max(CAST(value AS "
                    "BIGINT)), 0) + 1 AS VARCHAR) FROM _meta WHERE key = ?", [key, key])


def _retire_legacy_catalog(home: Path) -> None:
    """Before 0.6 the catalog was one DuckDB file, which one process at a time could open.
    It was derived from the record files like the new one: remove it, once, with a notice."""
    old = home / protocol.CATALOG_FILE
    if not old.exists():
        return
    leftovers = [old, *home.glob(protocol.CATALOG_FILE + ".*")]
    for path in leftovers:
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() else os.unlink(path)
    warnings.warn(f"removed the old single-file catalog {old} (derived from the record files, "
                  f"like the new one in {home / protocol.CATALOG_DIR}/, built now)",
                  IngestWarning, stacklevel=3)
