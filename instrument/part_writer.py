"""The thread that turns a Recorder's queued records into crash-safe record parts, and never dies.

It wakes at every outer-loop iteration (`Recorder.flush_soon`) and at least every FLUSH_SECONDS,
encodes what was queued into one part (format in `part_encode`; one per MAX_PART_RECORDS
records) and writes it atomically to `parts/NNNNNN.part`, from the encoder's pieces, never
joined into one more copy; `flor.commit()` and the run's end drain it synchronously.

Training must outlive recording, so nothing here raises into the training thread or ends the
writer:
- a record the encoder cannot encode (an int of more than 4,300 digits, ...) is dropped with
  one FlorWarning per name, and the rest of its part is written;
- an I/O error (disk full, read-only, directory removed) gives one FlorWarning; the encoded
  parts are kept in memory, up to FLOR_MAX_UNWRITTEN_MB (64) MB, and written, in order, at
  the next flush that succeeds; beyond the bound new parts are dropped and counted, and the
  count is reported when the run ends;
- anything else (a bug) gives one FlorWarning and the loop goes on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import protocol
from .errors import warn_background
from .housekeeping import atomic_file
from .part_encode import encode_records, size_of

if TYPE_CHECKING:
    from .recorder import Recorder

FLUSH_SECONDS = float(os.environ.get("FLOR_FLUSH_SECONDS", "2.0"))
# A part holds at most this many records (a reader orders records by seq * 10M + position)
MAX_PART_RECORDS = 1_000_000
UNWRITTEN_LIMIT_ENV = "FLOR_MAX_UNWRITTEN_MB"


def unwritten_limit_bytes() -> int:
    """FLOR_MAX_UNWRITTEN_MB: how much encoded record data to hold while the disk refuses it."""
    try:
        return max(0, int(float(os.environ.get(UNWRITTEN_LIMIT_ENV, "64")) * 2**20))
    except ValueError:
        return 64 * 2**20


class PartWriter(threading.Thread):
    """Drains a Recorder into `parts/NNNNNN.part` files and keeps the run's heartbeat fresh."""

    def __init__(self, recorder: Recorder, parts_dir: Path, source: str) -> None:
        super().__init__(name="flor-writer", daemon=True)
        self.recorder = recorder
        self.parts_dir = parts_dir
        self.source = source
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._closed = False  # the last flush is done: the background thread writes no more
        self._seq = 0  # of the last part encoded and kept
        self._unwritten: deque[tuple[int, list, int, int]] = deque()  # seq, part, records, size
        self._unwritten_bytes = 0
        self._limit = unwritten_limit_bytes()
        self.lost = 0  # records dropped over the bound while the disk refused them
        self._warned = recorder.warned  # one warning per name, whichever thread finds it
        parts_dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat = parts_dir.parent / protocol.HEARTBEAT_FILE
        self.heartbeat.touch()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            try:
                self.write_pending(background=True)
                with contextlib.suppress(OSError):  # read-only: the write has said so
                    os.utime(self.heartbeat)
            except Exception as exc:  # noqa: BLE001 - the writer outlives every error
                self._warn_unexpected(exc)

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    def write_pending(self, background: bool = False) -> None:
        """Encode what is queued, then write every part not yet written. Never raises. The
        background thread writes nothing once the run's last flush is done: the interpreter
        may be exiting, and would kill it mid-write (a temporary part file left behind)."""
        with self._lock:
            if background and self._closed:
                return
            try:
                self._encode_queued()
                self._write_unwritten()
            except Exception as exc:  # noqa: BLE001 - see the module docstring
                self._warn_unexpected(exc)

    def close(self) -> None:
        """The run's last flush: say what could not be recorded."""
        self.stop()
        self.write_pending()
        with self._lock:
            self._closed = True
            lost = self.lost + sum(n for _, _, n, _ in self._unwritten)
            if lost:
                self.warn_once("exit", f"flor: {lost} records of this run were not recorded: "
                               f"{self.parts_dir} could not be written")

    def warn_once(self, key: object, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warn_background(message, "flor-writer")

    def _warn_unexpected(self, exc: Exception) -> None:
        with contextlib.suppress(Exception):  # even an exception whose str() fails
            self.warn_once(type(exc), f"flor: the record writer hit {type(exc).__name__}: "
                           f"{exc}; it goes on, but records may be missing")

    def _encode_queued(self) -> None:
        rec = self.recorder
        buf = rec.records
        n = len(buf)  # whole records: each was appended by one extend
        # strided slices are C loops; the training thread only appends past n meanwhile
        columns = [buf[0:n:4], buf[1:n:4], buf[2:n:4], buf[3:n:4]]  # seg, step, name, value
        del buf[:n]
        timings = [rec.iterations.popleft() for _ in range(len(rec.iterations))]
        args = [rec.args.popleft() for _ in range(len(rec.args))]
        count = len(columns[0])
        if not (count or timings or args):
            return
        if count <= MAX_PART_RECORDS:
            self._keep(columns, timings, args)
            return
        for start in range(0, count, MAX_PART_RECORDS):
            part = slice(start, start + MAX_PART_RECORDS)
            self._keep([c[part] for c in columns], [] if start else timings,
                       [] if start else args)

    def _keep(self, columns: list[list], timings: list, args: list) -> None:
        """Encode one part and hold it until written, or drop it over the memory bound."""
        seq = self._seq + 1
        part = self._encode(columns, timings, args, seq)
        count, size = len(columns[0]), size_of(part)
        if self._unwritten and self._unwritten_bytes + size > self._limit:
            self.lost += count  # the disk refuses and memory is spent: lose the newest
            self.warn_once("bound", f"flor: {self.parts_dir} still cannot be written and "
                           f"{self._limit / 2**20:g} MB of records wait in memory "
                           f"({UNWRITTEN_LIMIT_ENV}); dropping new records until it can "
                           "(the count is reported at exit)")
            return
        self._seq = seq
        self._unwritten.append((seq, part, count, size))
        self._unwritten_bytes += size

    def _write_unwritten(self) -> None:
        while self._unwritten:
            seq, part, _, size = self._unwritten[0]
            try:
                with atomic_file(self.parts_dir / f"{seq:06d}.part") as fh:
                    fh.writelines(part)  # the pieces: no joined copy of the part
            except OSError as exc:  # disk full, read-only, removed: retried at the next flush
                self.warn_once("io", f"flor: cannot write records to {self.parts_dir} "
                               f"({exc.strerror or exc}); training goes on, records wait in "
                               f"memory (up to {self._limit / 2**20:g} MB, "
                               f"{UNWRITTEN_LIMIT_ENV}) and are written when the disk allows")
                return
            self._unwritten.popleft()
            self._unwritten_bytes -= size

    def _encode(self, columns: list[list], timings: list, args: list, seq: int) -> list:
        """The part (as pieces); records and args the encoder refuses are dropped, one warning
        per name, and the rest encoded."""
        contexts, source = self.recorder.contexts, self.source

        def encode(records: list, arg_list: list, timing_list: list) -> list:
            cols = [list(c) for c in zip(*records, strict=True)] if records else [[], [], [], []]
            return encode_records(*cols, contexts, timing_list, arg_list, source, seq)

        def encodes(records: list, arg_list: list) -> bool:
            try:
                encode(records, arg_list, [])
            except Exception:  # noqa: BLE001 - whatever the encoder refuses
                return False
            return True

        try:
            return encode_records(*columns, contexts, timings, args, source, seq)
        except Exception:  # noqa: BLE001 - find the culprits below, keep the rest
            pass
        records, bad = split_encodable(list(zip(*columns, strict=True)),
                                       lambda recs: encodes(recs, []))
        args, bad_args = split_encodable(args, lambda items: encodes([], items))
        for name in [_plain(r[2]) for r in bad] + [a[0] for a in bad_args]:
            self.warn_once((name, "refused"), f"flor.log({name!r}): dropped a value that "
                           "cannot be recorded (e.g. an int of more than 4,300 digits); log "
                           "float(x) or str(x) instead; later ones of this name are dropped too")
        return encode(records, args, timings)


def _plain(name: str | tuple[str]) -> str:
    """A record's name, whether it came as the name or as its tag `(name,)`."""
    return name if type(name) is str else name[0]


def split_encodable(items: list, encodes: Callable[[list], bool]) -> tuple[list, list]:
    """(the items `encodes` accepts, those it refuses), in order: halves are tried in turn,
    so one bad record among n costs about 2 log2(n) encodings, not n."""
    if not items or encodes(items):
        return items, []
    if len(items) == 1:
        return [], items
    mid = len(items) // 2
    good_a, bad_a = split_encodable(items[:mid], encodes)
    good_b, bad_b = split_encodable(items[mid:], encodes)
    return good_a + good_b, bad_a + bad_b
