"""The in-memory record buffer and the thread that writes it to crash-safe record parts.

The training thread only appends `(context, name, value)` tuples to a deque (thread-safe,
no lock, no I/O). A writer thread drains the deque into numbered part files (format in
`part_encode`; each defines the contexts it uses, so it can be read on its own), each written
to a temp file, fsynced and renamed, so a reader sees whole parts or none. It wakes at every
outer-loop iteration (`flush_soon`) and at least every FLUSH_SECONDS; `flush()` drains
synchronously.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

from .errors import FlorNameError, FlorWarning
from .part_encode import encode_part

FLUSH_SECONDS = float(os.environ.get("FLOR_FLUSH_SECONDS", "2.0"))
RESERVED_NAMES = frozenset({"projid", "runid", "tstamp", "vid", "filename"})

Context = tuple  # (parent context or None, loop_name, iteration); None is the run level


class Recorder:
    """Buffers the records of one run (or one replay) and owns its part writer."""

    # slots: `flor.log` and `flor.loop` read and set these once per step, between torch
    # kernels that evict the caches; a slot is one load where a dict lookup is several
    __slots__ = ("queue", "append", "ctx", "depth", "known_names", "only", "iterations", "args",
                 "_by_lower", "_warned", "_writer")

    def __init__(self, out_dir: Path, source: str, only: frozenset[str] | None = None) -> None:
        self.queue: deque = deque()
        self.append = self.queue.append
        self.ctx: Context | None = None
        self.depth = 0
        self.known_names: set[str] = set()
        self.only = only  # a replay records just the names it was asked for
        self.iterations: deque = deque()
        self.args: deque = deque()
        self._by_lower: dict[str, str] = {}
        self._warned: set[tuple[str, str]] = set()
        self._writer = PartWriter(self, out_dir / "parts", source)
        self._writer.start()

    def admit_name(self, name: str) -> bool:
        """Validate a name the first time it is logged; False: a replay does not record it."""
        if not isinstance(name, str) or not name.strip():
            raise FlorNameError(f"flor.log: name must be a non-empty string, got {name!r}")
        if name in RESERVED_NAMES:
            raise FlorNameError(
                f"flor.log({name!r}): {name!r} is a run identity column; choose another name"
            )
        other = self._by_lower.setdefault(name.lower(), name)
        if other != name:
            raise FlorNameError(
                f"flor.log({name!r}): differs only by case from {other!r} logged earlier; "
                "SQL column names ignore case, so use one spelling"
            )
        if self.only is not None and name not in self.only:
            return False
        self.known_names.add(name)
        return True

    def warn_unsupported(self, name: str, value: Any) -> None:
        key = (name, type(value).__name__)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"flor.log({name!r}): cannot record a {type(value).__name__}; log a number, "
                "bool, str, None, 0-d tensor/array or small JSON-able list/dict (e.g. str(x)); "
                "value not recorded",
                FlorWarning,
                stacklevel=4,  # warn_unsupported, _log_any, log, the caller
            )

    def flush_soon(self) -> None:
        self._writer.wake.set()

    def flush(self) -> None:
        self._writer.write_pending()

    def close(self) -> None:
        self._writer.stop()
        self._writer.write_pending()


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
        self._seq = 0
        parts_dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat = parts_dir.parent / "heartbeat"
        self.heartbeat.touch()

    def run(self) -> None:
        while not self._stopping.is_set():
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            try:
                self.write_pending()
                os.utime(self.heartbeat)
            except OSError as exc:  # disk full, dir removed: keep training, say so once
                warnings.warn(f"flor: could not write records: {exc}", FlorWarning, stacklevel=1)
                time.sleep(FLUSH_SECONDS)

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    def write_pending(self) -> None:
        with self._lock:
            queue, iterations = self.recorder.queue, self.recorder.iterations
            records = [queue.popleft() for _ in range(len(queue))]
            timings = [iterations.popleft() for _ in range(len(iterations))]
            args = [self.recorder.args.popleft() for _ in range(len(self.recorder.args))]
            if records or timings or args:
                self._seq += 1
                part = encode_part(records, timings, args, self.source, self._seq)
                write_atomic(self.parts_dir / f"{self._seq:06d}.part", part)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file, the new file, or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
