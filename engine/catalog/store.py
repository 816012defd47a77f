"""The published catalog: immutable Parquet segments plus one manifest, read by every process.

    <home>/catalog/manifest.json                 what is published; replaced by rename
    <home>/catalog/seg-<id>-<token>-<table>.arrow     rows of a large table (_logs, _contexts,
                                                 _iterations) first published as segment <id>,
                                                 an Arrow IPC stream (zstd); older catalogs
                                                 have .parquet ones, read alike
    <home>/catalog/state-<v>-<token>/<table>.parquet  the small tables, whole, as of version <v>
    <home>/catalog/ingest.lock                   held by the one process ingesting

Publishing (`publish`, under `ingest_lock`): the new segment and state files are written to
temporary names, fsynced and renamed; then the manifest is written the same way. The rename
of the manifest is the commit: a process killed before it leaves unreferenced files (swept by
a later publish), never a half-visible change. Readers (`mirror.py`) read the manifest and the
files it names without any lock, so they never wait for each other or for a writer.

A run rebuilt from its files (or deleted) gets a *tombstone* `(tstamp, upto)`: its rows in
segments up to `upto` are gone. Compaction merges many small segments into one, leaving the
tombstoned rows out; a replaced file is deleted only FLORSQL_GC_GRACE seconds (120) after it
left the manifest, long after any reader that saw it has read it (a reader that still misses
one reads the newer manifest and goes on).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from flor.housekeeping import atomic_file, write_atomic

from ..errors import CatalogLockedError, IngestWarning
from .codec import encode_batch, encoded_schema
from .schema import SEGMENT_ROWS, STORED
from .sink import IPC_OPTIONS, SegmentSink, file_token, segment_name

FORMAT = "florsql-catalog/2"  # 2: BIGINT columns stored as steps (codec.py)
READABLE_FORMATS = ("florsql-catalog/1", FORMAT)  # a /1 segment has no step columns: read as is
MANIFEST = "manifest.json"
LOCK_FILE = "ingest.lock"
# Rows that grow with every record or step: published as append-only segments.
SEGMENTED = ("_logs", "_contexts", "_iterations")
# Small tables: published whole at each change.
STATE_TABLES = ("runs", "checkpoints", "replays", "_sources", "_ingested", "_name_stats",
                "_loop_stats")
GRACE_ENV = "FLORSQL_GC_GRACE"  # seconds a retired file is kept (default 120)
COMPACT_ENV = "FLORSQL_COMPACT_AT"  # segments of one table before the small ones are merged
SMALL_SEGMENT_ROWS = 2_000_000
_WRITE_BATCH_ROWS = 1 << 20
_PARALLEL_ROWS = 4_000_000  # new rows up to which a publish writes its tables at once
_LOCK_TIMEOUT_ENV = "FLOR_CATALOG_TIMEOUT"
# Fault injection for the crash tests: the process kills itself (SIGKILL) at the named point.
CRASH_ENV = "FLORSQL_CRASH_AT"


@dataclass(frozen=True)
class Segment:
    id: int
    file: str
    rows: int


@dataclass
class Manifest:
    version: int = 0
    state: str | None = None  # directory of the small tables
    state_hash: str | None = None
    segments: dict[str, list[Segment]] = field(default_factory=lambda: {t: [] for t in SEGMENTED})
    tombstones: list[tuple[str, int]] = field(default_factory=list)  # (tstamp, upto segment id)
    garbage: list[tuple[str, float]] = field(default_factory=list)  # (file or dir, when retired)

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "version": self.version, "state": self.state,
            "state_hash": self.state_hash,
            "segments": {t: [[s.id, s.file, s.rows] for s in segs]
                         for t, segs in self.segments.items()},
            "tombstones": [list(t) for t in self.tombstones],
            "garbage": [list(g) for g in self.garbage]}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") not in READABLE_FORMATS:
            raise ValueError(f"not a {FORMAT} manifest")
        segments = {t: [Segment(int(i), _name(f), int(n)) for i, f, n in doc["segments"].get(t, [])]
                    for t in SEGMENTED}
        return cls(int(doc["version"]), doc["state"] and _name(doc["state"]), doc["state_hash"],
                   segments, [(str(t), int(u)) for t, u in doc["tombstones"]],
                   [(_name(f), float(w)) for f, w in doc["garbage"]])

    def successor(self) -> Manifest:
        """A copy to publish as the next version (lists copied, so edits stay in it)."""
        return Manifest(self.version + 1, self.state, self.state_hash,
                        {t: list(s) for t, s in self.segments.items()},
                        list(self.tombstones), list(self.garbage))

    def dead_in(self, segment_id: int) -> list[str]:
        """The tstamps whose rows in segment `segment_id` are tombstoned."""
        return sorted({t for t, upto in self.tombstones if upto >= segment_id})


def _name(text: object) -> str:
    """A file name the manifest may name: plain, inside the catalog directory."""
    if not isinstance(text, str) or not text or "/" in text or text.startswith("."):
        raise ValueError(f"bad file name {text!r:.40} in the manifest")
    return text


class Store:
    """The catalog directory of one flor home."""

    def __init__(self, home: Path, directory: str) -> None:
        self.dir = home / directory
        self.manifest_path = self.dir / MANIFEST

    def stamp(self) -> tuple | None:
        """Changes whenever the manifest is replaced (a rename gives a new inode)."""
        try:
            st = os.stat(self.manifest_path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read_manifest(self) -> Manifest:
        """The published manifest; an empty one before the first publish. An unreadable
        manifest (damaged by hand: it is only ever replaced whole) counts as empty, so the
        next ingest republishes everything from the record files."""
        try:
            return Manifest.from_json(self.manifest_path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return Manifest()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"catalog manifest {self.manifest_path} is unreadable ({exc}); "
                          "rebuilding the catalog from the record files", IngestWarning,
                          stacklevel=3)
            return Manifest()

    def read_table(self, name: str) -> pa.Table:
        """A segment or state file (raises FileNotFoundError once it was collected)."""
        return pq.read_table(self.dir / name)

    @contextlib.contextmanager
    def ingest_lock(self) -> Iterator[bool]:
        """Hold the ingest lock (True), or nothing when the home cannot be written (False:
        then no process can publish, and this one ingests for itself alone)."""
        try:
            self.dir.mkdir(exist_ok=True)
            handle = open(self.dir / LOCK_FILE, "a+b")
        except OSError:
            yield False
            return
        try:
            _flock_waiting(handle, self.dir / LOCK_FILE)
            yield True
        finally:
            handle.close()  # releases the lock

    # --- publishing (under the ingest lock) -------------------------------------------------

    def publish(self, con: duckdb.DuckDBPyConnection, manifest: Manifest,
                sink: SegmentSink | None = None,
                cursor: Callable[[], duckdb.DuckDBPyConnection] | None = None,
                before_compact: Callable[[], None] | None = None) -> Manifest | None:
        """Publish what the mirror `con` holds beyond `manifest` (the new rows' segments
        written by `sink` as the ingest went, when it has them all); the new manifest, or None
        when nothing changed. `cursor()` makes another connection reading what `con` reads
        (the mirror's tail too); `before_compact()` runs before rows change segment. Raises
        OSError when the directory cannot be written."""
        new = manifest.successor()
        version = new.version
        dropped = [t for (t,) in con.execute(
            "SELECT DISTINCT strftime(tstamp, '%Y-%m-%dT%H:%M:%S.%f') FROM _dropped").fetchall()]
        new.tombstones += [(t, manifest.version) for t in dropped]
        changed = bool(dropped)
        cursor = cursor or functools.partial(_cursor, con, con.execute(
            "SELECT current_database()").fetchall()[0][0])
        segments = self._write_segments(con, version, sink, cursor)
        for table, segment in zip(SEGMENTED, segments, strict=True):
            if segment is not None:
                new.segments[table].append(segment)
                changed = True
        _crash_point("segments-written")
        changed |= self._write_state(con, version, new)
        if not changed:
            return None
        _crash_point("state-written")
        self._collect(new)
        self._commit(new)
        _crash_point("published")
        con.execute("DELETE FROM _dropped")
        # the new records are visible now; merging small segments is the ingest's after-work
        merged = new.successor()
        if self._compact(con, merged, before_compact or (lambda: None)):
            self._commit(merged)
            return merged
        return new

    def _write_segments(self, con: duckdb.DuckDBPyConnection, version: int,
                        sink: SegmentSink | None,
                        cursor: Callable[[], duckdb.DuckDBPyConnection]) -> list[Segment | None]:
        """Each segmented table's new segment (None: no new rows): the sink's files when they
        hold exactly the rows the mirror has for this version (sink.py), else the rows read
        back out of the mirror (a thread per table: DuckDB's export and pyarrow's encoding
        let go of the GIL), one table after the other for a large publish, so that 10M
        records stay within the 1 GB docs/catalog.md promises."""
        pending = dict(zip(SEGMENTED, con.execute("SELECT " + ", ".join(
            SEGMENT_ROWS[t].format(seg=int(version)) for t in SEGMENTED)
        ).fetchall()[0], strict=True))
        if sink is not None:
            written = _finished(sink, {t: n for t, n in pending.items() if n})
            if written is not None:
                return [Segment(version, *written[t]) if t in written else None
                        for t in SEGMENTED]
        if sum(pending.values()) > _PARALLEL_ROWS:
            return [self._write_segment(cursor(), t, version) for t in SEGMENTED]
        cursors = [cursor() for _ in SEGMENTED]  # made here: the threads only use them
        with ThreadPoolExecutor(len(SEGMENTED), thread_name_prefix="flor-publish") as pool:
            return list(pool.map(lambda c, table: self._write_segment(c, table, version),
                                 cursors, SEGMENTED))

    def _write_segment(self, con, table: str, version: int) -> Segment | None:
        # the ingest gave its rows `_seg = version` (mirror.begin_ingest): no UPDATE here
        try:
            pending = f"SELECT * EXCLUDE (_seg) FROM {table} WHERE _seg = {int(version)}"
            if not con.execute(f"SELECT count(*) FROM ({pending})").fetchall()[0][0]:
                return None
            name = segment_name(version, table)
            return Segment(version, name, self._stream_segment(name, con.sql(pending)))
        finally:
            con.close()

    def _write_state(self, con, version: int, new: Manifest) -> bool:
        tables = {t: con.sql(f"SELECT * FROM {t} ORDER BY ALL").to_arrow_table()
                  for t in STATE_TABLES}
        digest = _digest(tables)
        if digest == new.state_hash:
            return False
        name = f"state-{version:08d}-{file_token()}"
        folder = self.dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for table, rows in tables.items():
            self._write_parquet(f"{name}/{table}.parquet", rows)
        _fsync_dir(folder)
        if new.state:
            new.garbage.append((new.state, time.time()))
        new.state, new.state_hash = name, digest
        return True

    def _stream_segment(self, name: str, relation: duckdb.DuckDBPyRelation) -> int:
        """Write the rows of `relation` as an Arrow IPC stream, a batch at a time (memory
        stays bounded however many there are); how many there were."""
        rows = 0
        with atomic_file(self.dir / name) as fh:
            reader = relation.to_arrow_reader(_WRITE_BATCH_ROWS)
            try:
                with pa.ipc.new_stream(fh, encoded_schema(reader.schema),
                                       options=IPC_OPTIONS) as writer:
                    for batch in reader:
                        writer.write_batch(encode_batch(batch))
                        rows += batch.num_rows
            finally:
                reader.close()  # the connection is busy until its result is closed
        return rows

    def _write_parquet(self, name: str, rows: pa.Table) -> None:
        with atomic_file(self.dir / name) as fh:
            pq.write_table(rows, fh, compression="zstd")

    def _compact(self, con, new: Manifest, before: Callable[[], None]) -> bool:
        """Merge the small segments of a table once there are many (rows read from the mirror,
        which holds them already, without the tombstoned ones); whether any were merged.
        `before()` runs once, before the first merge."""
        merged_any = False
        for table in SEGMENTED:
            small = [s for s in new.segments[table] if s.rows < SMALL_SEGMENT_ROWS]
            if len(new.segments[table]) < _setting(COMPACT_ENV, 16) or len(small) < 2:
                continue
            if not merged_any:
                before()
            ids = [s.id for s in small]
            merged_id = max(ids)  # keeps its place among tombstones: nothing newer is merged
            name = segment_name(new.version, table, f"c{merged_id}")
            rows = self._stream_segment(name, con.sql(
                f"SELECT * EXCLUDE (_seg) FROM {table} WHERE list_contains($ids, _seg) "
                "ORDER BY _seg", params={"ids": ids}))
            _crash_point("compacted")
            con.execute(f"UPDATE {STORED[table]} SET _seg = ? WHERE list_contains(?, _seg)",
                        [merged_id, ids])
            now = time.time()
            new.garbage += [(s.file, now) for s in small]
            kept = [s for s in new.segments[table] if s.id not in ids]
            new.segments[table] = sorted([*kept, Segment(merged_id, name, rows)],
                                         key=lambda s: s.id)
            merged_any = True
        oldest = min((s.id for segs in new.segments.values() for s in segs), default=None)
        new.tombstones = [(t, u) for t, u in new.tombstones if oldest is not None and u >= oldest]
        return merged_any

    def _collect(self, new: Manifest) -> None:
        """Delete retired files after the grace period, and litter of killed publishers."""
        now = time.time()
        grace = _setting(GRACE_ENV, 120)
        due = [(f, t) for f, t in new.garbage if now - t >= grace]
        for name, _ in due:
            _remove(self.dir / name)
        new.garbage = [g for g in new.garbage if g not in due]
        named = {s.file for segs in new.segments.values() for s in segs}
        named |= {f for f, _ in new.garbage} | {new.state, MANIFEST, LOCK_FILE}
        for entry in os.scandir(self.dir):
            if entry.name in named:
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime >= grace:
                    _remove(Path(entry.path))

    def _commit(self, new: Manifest) -> None:
        _fsync_dir(self.dir)
        write_atomic(self.manifest_path, new.to_json())
        _fsync_dir(self.dir)


def _finished(sink: SegmentSink, pending: dict[str, int]) -> dict[str, tuple[str, int]] | None:
    """The sink's files, when they hold exactly the rows pending; else None (discarded), and
    the rows are exported from the mirror: rows rolled back or dropped again, or a sink that
    failed on anything but the disk (an OSError, a full disk say, fails the publish)."""
    if sink.rows() != pending:
        sink.discard()
        return None
    try:
        return sink.finish()
    except OSError:
        raise
    except Exception:  # noqa: BLE001  (the export below needs no sink)
        return None


def _digest(tables: dict[str, pa.Table]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, rows in tables.items():
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        h.update(name.encode() + b"\0" + sink.getvalue())
    return h.hexdigest()


def _flock_waiting(handle, path: Path) -> None:
    timeout = _setting(_LOCK_TIMEOUT_ENV, 60)  # a value that is no number: the default
    start, delay = time.monotonic(), 0.005
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            waited = time.monotonic() - start
            if waited > timeout:
                raise CatalogLockedError(str(path), waited) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _setting(env: str, default: float) -> float:
    try:
        return float(os.environ.get(env, default))
    except ValueError:
        return default


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _cursor(con: duckdb.DuckDBPyConnection, database: str) -> duckdb.DuckDBPyConnection:
    """A connection of its own to `con`'s database, for another thread."""
    cursor = con.cursor()
    cursor.execute(f'USE "{database}"')
    return cursor


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
