"""The in-memory record buffer of a run, and the names it admits.

The training thread appends each record as four items, `(segment, step, name, value)`, to
one flat list with a single `list.extend` of a tuple: atomic under the GIL (so threads that
log at once never interleave their items), no lock, no I/O, and nothing allocated that
outlives the call but what the caller passed (a tuple kept per record, and a context tuple
per step, kept the cyclic garbage collector busy: a fifth of a 1M-record run went to full
collections walking the buffered records). Segment and step are ints that `flor.loop` keeps
current (`part_encode.ContextIds`); a value that is not a float comes with its name as the
tag `(name,)`. A writer thread (`part_writer`) takes whole records from the front of the list
into numbered part files (format in `part_encode`; each defines the contexts it uses, so it
can be read on its own), each written to a temp file, fsynced and renamed, so a reader sees
whole parts or none. It wakes at every outer-loop iteration (`flush_soon`) and at least every
FLUSH_SECONDS; `flush()` drains synchronously. Neither ever raises into the training thread.
"""

from __future__ import annotations

import warnings
from collections import deque
from pathlib import Path
from typing import Any

from . import protocol
from .errors import FlorNameError, FlorWarning
from .part_encode import ContextIds
from .part_writer import PartWriter


class Recorder:
    """Buffers the records of one run (or one replay) and owns its part writer."""

    # slots: `flor.log` and `flor.loop` read and set these once per step, between torch
    # kernels that evict the caches; a slot is one load where a dict lookup is several
    __slots__ = ("records", "extend", "seg", "step", "contexts", "depth", "known_names", "only",
                 "iterations", "args", "_by_lower", "_tags", "warned", "_writer")

    def __init__(self, out_dir: Path, source: str, only: frozenset[str] | None = None) -> None:
        self.records: list = []  # segment, step, name, value, segment, step, name, ...
        self.extend = self.records.extend  # extend((seg, step, name, value)): one record
        self.seg = self.step = 0  # the current loop context (0, 0: the run level)
        self.contexts = ContextIds()
        self.depth = 0
        self.known_names: set[str] = set()
        self.only = only  # a replay records just the names it was asked for
        self.iterations: deque = deque()
        self.args: deque = deque()
        self._by_lower: dict[str, str] = {}
        self._tags: dict[str, tuple[str]] = {}
        self.warned: set[object] = set()  # keys of warnings given, shared with the writer
        self._writer = PartWriter(self, out_dir / protocol.PARTS_DIR, source)
        self._writer.start()

    def admit_name(self, name: str) -> bool:
        """Validate a name the first time it is logged; False: a replay does not record it."""
        if not isinstance(name, str) or not name.strip():
            raise FlorNameError(f"flor.log: name must be a non-empty string, got {name!r}")
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

    def tag(self, name: str) -> tuple[str]:
        """What a record whose value is not a float carries as its name: `(name,)`, one
        object per name (see `part_encode`)."""
        tag = self._tags.get(name)
        if tag is None:
            tag = self._tags[name] = (name,)
        return tag

    def warn_unsupported(self, name: str, value: Any) -> None:
        key = (name, type(value).__name__)
        if key not in self.warned:
            self.warned.add(key)
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
        """Stop the writer after a last flush; warns about any record that was not recorded."""
        self._writer.close()
