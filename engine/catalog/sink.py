"""Segment files: the pending segment's, written while an ingest inserts its rows; and reading one.

    sink = SegmentSink(store_dir, version)    opened by the session under the ingest lock
    sink.write("_logs", rows)                 each Arrow table the ingest inserts (rows.py)
    sink.finish()                             at publish: fsync + rename; the new segments
    sink.discard()                            an ingest that stopped, or rows it removed again
    segment_tables(file)                      a segment's rows, a table at a time (for loading)

Publishing used to read the new rows back out of DuckDB and encode them (about 1 s for one run
of 1M records on 2 cores). The ingest builds those rows as Arrow tables anyway, so a thread of
its own writes them to Arrow IPC streams (zstd, BIGINT columns as steps: codec.py) as each
chunk of rows is built, while the next ones are built; pyarrow lets go of the GIL while it
compresses and writes. The files are named only by the manifest that the
publish commits (store.py), so a killed ingest leaves unreferenced temporary files, which a
later publish sweeps.

The sink is exact only while the ingest appends: rows of a run rolled back, or dropped again
in the same pass (two run directories claiming one tstamp), stay in its files. The publish
therefore compares the sink's row counts with the rows the mirror holds for the pending
segment, and exports them from DuckDB as before when they differ (store.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from flor.housekeeping import temp_path

from .codec import decode_batch, encode_batch, encoded_schema

SEGMENT_SUFFIX = ".arrow"
# zstd on one thread: on pyarrow's pool it took both cores of a small machine from the ingest.
# (lz4 wrote 1M records in 0.08 s, as zstd does with BIGINTs stored as steps: in 23 MB, not 7.)
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd", use_threads=False)
# Rows waiting for the writer beyond which `write` waits: bounds the memory a long backlog holds,
# while the small tables that follow a large one never wait for it to be written.
_QUEUED_ROWS = 2 << 20
_BATCH_ROWS = 1 << 20  # rows read from a segment at a time: bounds a reader's peak memory


def segment_name(version: int, table: str, extra: str = "") -> str:
    """`seg-<version>-<token>-<table>[-<extra>].arrow`."""
    return (f"seg-{version:08d}-{file_token()}-{table.lstrip('_')}"
            f"{'-' + extra if extra else ''}{SEGMENT_SUFFIX}")


def file_token() -> str:
    """Part of every file name: a manifest rebuilt from scratch restarts its versions, and
    must never write over a file an older manifest (held by a slow reader) still names."""
    return secrets.token_hex(4)


@dataclass
class _Open:
    """One table's stream being written: its final name, temporary file and writer."""

    name: str
    handle: IO[bytes]
    writer: pa.ipc.RecordBatchStreamWriter
    schema: pa.Schema
    rows: int = 0


@dataclass
class SegmentSink:
    directory: Path
    version: int
    _open: dict[str, _Open] = field(default_factory=dict)
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _queued: int = 0  # rows handed over, not written yet
    _written: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None
    _rows: dict[str, int] = field(default_factory=dict)  # handed to write(), per table

    def write(self, table: str, rows: pa.Table) -> None:
        """Append `rows` (every column of `table` but `_seg`) to the pending segment."""
        if not rows.num_rows:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="flor-segment-writer",
                                            daemon=True)
            self._thread.start()
        self._rows[table] = self._rows.get(table, 0) + rows.num_rows
        with self._written:
            self._written.wait_for(lambda: self._queued <= _QUEUED_ROWS)
            self._queued += rows.num_rows
        self._queue.put((table, rows))

    def rows(self) -> dict[str, int]:
        return dict(self._rows)

    def finish(self) -> dict[str, tuple[str, int]]:
        """Close every stream: fsynced and renamed into place, {table: (file name, rows)}.
        Raises OSError when one could not be written (nothing is then left behind)."""
        self._drain()
        if self._error is not None:
            self.discard()
            raise self._error
        done: dict[str, tuple[str, int]] = {}
        try:
            for table, stream in self._open.items():
                stream.writer.close()
                stream.handle.flush()
                os.fsync(stream.handle.fileno())
                stream.handle.close()
                os.replace(temp_path(self.directory / stream.name), self.directory / stream.name)
                done[table] = (stream.name, stream.rows)
        except BaseException:
            self.discard()
            for name, _ in done.values():
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)
            raise
        self._open.clear()
        return done

    def discard(self) -> None:
        """Stop writing and remove the temporary files."""
        self._drain()
        for stream in self._open.values():
            with contextlib.suppress(Exception):
                stream.writer.close()
            with contextlib.suppress(OSError):
                stream.handle.close()
            with contextlib.suppress(OSError):
                os.unlink(temp_path(self.directory / stream.name))
        self._open.clear()

    def _drain(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            table, rows = item
            try:
                if self._error is None:  # after one, tables are taken, so write never waits
                    self._append(table, rows)
            except BaseException as exc:  # a full disk, say: raised by finish()
                self._error = exc
            finally:
                with self._written:
                    self._queued -= rows.num_rows
                    self._written.notify_all()

    def _append(self, table: str, rows: pa.Table) -> None:
        stream = self._open.get(table)
        if stream is None:
            name = segment_name(self.version, table)
            handle = open(temp_path(self.directory / name), "wb")
            try:
                writer = pa.ipc.new_stream(handle, encoded_schema(rows.schema),
                                           options=IPC_OPTIONS)
            except BaseException:
                handle.close()
                raise
            stream = self._open[table] = _Open(name, handle, writer, rows.schema)
        if not rows.schema.equals(stream.schema):  # another batch's types: one stream, one schema
            rows = rows.cast(stream.schema)
        for batch in rows.to_batches():
            stream.writer.write_batch(encode_batch(batch))
        stream.rows += rows.num_rows


# --- reading segments -------------------------------------------------------------------------


def segment_tables(handle: IO[bytes]) -> Iterator[pa.Table]:
    """A segment file's rows, in tables of about _BATCH_ROWS rows (mirror.py loads them)."""
    return _tables_of(_batches(handle))


def _batches(handle) -> Iterator[pa.RecordBatch]:
    """A segment's rows a batch at a time: an Arrow IPC stream, or Parquet (older catalogs)."""
    if handle.read(4) == b"PAR1":
        handle.seek(0)
        batches = pq.ParquetFile(handle).iter_batches(batch_size=_BATCH_ROWS)
    else:
        handle.seek(0)
        batches = pa.ipc.open_stream(handle)
    for batch in batches:
        yield decode_batch(batch)  # as written: an older segment has no step columns


def _tables_of(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """The batches gathered into tables of about _BATCH_ROWS rows. An ingest writes a batch
    per chunk of at most 262,144 records (pieces.py); DuckDB inserts 10 tables of 100k rows in
    ~1.5 s where one of 1M takes 0.2-0.4 s (a chunk per thread, and a cost per statement)."""
    group: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        group.append(batch)
        rows += batch.num_rows
        if rows >= _BATCH_ROWS:
            yield pa.Table.from_batches(group)
            group, rows = [], 0
    if group:
        yield pa.Table.from_batches(group)
