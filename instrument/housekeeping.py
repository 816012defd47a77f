"""Temporary files: how flor writes a file atomically, and how it removes the ones crashed
processes left behind.

Every file flor writes under the flor home goes first to a hidden temporary file beside it
(`.<name>.tmp`: `.000003.part.tmp`, `.epoch-000004.pt.tmp`), is fsynced, then renamed, so a
reader sees the old file, the new file or nothing. A failed write removes its temporary file;
a process killed with `kill -9` (or a power loss) cannot, and leaves it, up to a whole
checkpoint's size. `clean_stale_temp_files` removes those, at the start of each run and from
ingest:

    from flor.housekeeping import clean_stale_temp_files
    removed = clean_stale_temp_files(Path(protocol.HOME_DIRNAME))

Staleness rule: a temporary file belongs to the nearest directory holding `run.json`,
`replay.json` or `heartbeat` (its writer's directory). A writer's directory with `end.json` is
not searched: its writer ended, and a write that fails removes its own temporary file, so only
crashed writers leave any (this keeps the sweep of a project of 1,000 finished runs to one
directory listing each). The writer touches `heartbeat` at every flush (FLOR_FLUSH_SECONDS,
2 s), so a temporary file is removed only when
  - the heartbeat (or, lacking one, the identity file) and the file itself were last modified
    more than STALE_SECONDS ago (the larger of 60 s and 10 flush intervals), and
  - the writer's process is gone: the pid in the identity file, on this host, no longer runs
    or now belongs to a process started after the run. Where that cannot be told (another
    host sharing the directory, no pid), the heartbeat must be REMOTE_STALE_SECONDS (1 h) old.
A stopped (SIGSTOP) or suspended writer keeps its pid, so its files stay.

Cleaning never follows a symbolic link: directories are opened with O_NOFOLLOW relative to
their parent's descriptor, and only regular files are removed, so nothing outside the flor
home (or behind a link inside it) is ever touched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from . import protocol

TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
FLUSH_SECONDS = float(os.environ.get("FLOR_FLUSH_SECONDS", "2.0"))
STALE_SECONDS = max(60.0, 10 * FLUSH_SECONDS)
REMOTE_STALE_SECONDS = 3600.0
_IDENTITY_FILES = (protocol.RUN_IDENT_FILE, protocol.REPLAY_IDENT_FILE)
_OWNER_FILES = frozenset({*_IDENTITY_FILES, protocol.HEARTBEAT_FILE})
# where writers' directories live under the flor home
_TOPS = (protocol.RUNS_DIR, protocol.REPLAYS_STAGING_DIR)
_MAX_DEPTH = 5  # runs/<key>/replays/<id>/parts
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_MAX_IDENTITY_BYTES = 1 << 20


def temp_path(path: Path) -> Path:
    """The temporary file `path` is written to before it is renamed into place."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Open `path`'s temporary file for writing; on success fsync it and rename it to `path`.
    On any error the temporary file is removed (a full disk keeps no half-written litter)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file, the new file, or nothing."""
    with atomic_file(path) as fh:
        fh.write(data)


def clean_stale_temp_files(home: Path) -> list[Path]:
    """Remove the temporary files that dead writers left under the flor home `home` (see the
    staleness rule above) and return their paths. Never raises for I/O: what cannot be read
    or removed is left alone."""
    if os.open not in os.supports_dir_fd or not hasattr(os, "O_NOFOLLOW"):
        return []  # no safe way to walk without following links: leave everything
    removed: list[Path] = []
    sweep = _Sweep(time.time(), removed)
    for top in _TOPS:
        with contextlib.suppress(OSError):
            fd = os.open(Path(home) / top, _DIR_FLAGS)  # the home itself may be a link
            try:
                sweep.walk(fd, os.path.join(home, top), None, _MAX_DEPTH)
            finally:
                os.close(fd)
    return removed


def clean_in_background(home: Path, delay: float = 0.0) -> threading.Thread:
    """Run `clean_stale_temp_files(home)` on a daemon thread after `delay` seconds; whatever
    goes wrong there stays there.

    A run passes a delay: a thread sweeping while the run starts holds the GIL each time the
    start's git commands return, and measurably slowed the start (a project of 1,000 runs:
    +20 ms, median of 12); a sweep during training costs the loop no more than one flush.
    """

    def clean() -> None:
        time.sleep(delay)
        with contextlib.suppress(Exception):
            clean_stale_temp_files(home)

    thread = threading.Thread(target=clean, name="flor-housekeeping", daemon=True)
    thread.start()
    return thread


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX) and len(name) > 5


class _Sweep:
    """One walk of the flor home: directories by descriptor, writers judged lazily (most
    directories hold no temporary file, so their identity is never read)."""

    def __init__(self, now: float, removed: list[Path]) -> None:
        self.now = now
        self.removed = removed

    def walk(self, fd: int, path: str, owner: _Owner | None, depth: int) -> None:
        with os.scandir(fd) as it:
            entries = list(it)
        names = {e.name for e in entries}
        if protocol.END_FILE in names:
            return  # its writer finished, and removed what it failed to write: nothing here
        if not names.isdisjoint(_OWNER_FILES):
            owner = _Owner(fd, self.now)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if depth > 0:
                    self._descend(fd, path, entry.name, owner, depth - 1)
            elif is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
                self._maybe_remove(fd, path, entry, owner)

    def _descend(self, fd: int, path: str, name: str, owner: _Owner | None, depth: int) -> None:
        with contextlib.suppress(OSError):
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)  # O_NOFOLLOW: a link swapped in fails
            try:
                self.walk(child, f"{path}/{name}", owner, depth)  # str: Path costs a third
            finally:
                os.close(child)

    def _maybe_remove(self, fd: int, path: str, entry: os.DirEntry, owner: _Owner | None) -> None:
        if owner is None or not owner.is_stale():
            return  # no writer directory above it: not a file flor's writers make
        with contextlib.suppress(OSError):
            if self.now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS:
                os.unlink(entry.name, dir_fd=fd)  # unlink never follows a link
                self.removed.append(Path(path, entry.name))


class _Owner:
    """The writer's directory of some temporary files: is its process gone?"""

    def __init__(self, fd: int, now: float) -> None:
        self.fd = fd
        self.now = now
        self._stale: bool | None = None

    def is_stale(self) -> bool:
        if self._stale is None:
            self._stale = self._judge()
        return self._stale

    def _judge(self) -> bool:
        identity = self._identity()
        age = self.now - self._last_sign_of_life()
        alive = _writer_alive(identity)
        if alive is None:  # another host, or no pid: only the heartbeat can tell
            return age > REMOTE_STALE_SECONDS
        return age > STALE_SECONDS and not alive

    def _last_sign_of_life(self) -> float:
        for name in (protocol.HEARTBEAT_FILE, *_IDENTITY_FILES):
            with contextlib.suppress(OSError):
                return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mtime
        return os.stat(self.fd).st_mtime

    def _identity(self) -> dict:
        for name in _IDENTITY_FILES:
            with contextlib.suppress(OSError, ValueError):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self.fd)
                with os.fdopen(fd, "rb") as fh:
                    doc = json.loads(fh.read(_MAX_IDENTITY_BYTES))
                return doc if isinstance(doc, dict) else {}
        return {}


def _writer_alive(identity: dict) -> bool | None:
    """Whether the process that wrote `identity` still runs; None when this host cannot tell."""
    pid, host = identity.get("pid"), identity.get("hostname")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    started = _process_start(pid)
    run_start = _timestamp(identity.get("start_time"))
    # a pid reused by a process started after the run is not the run's writer
    return started is None or run_start is None or started <= run_start + 5.0


def _process_start(pid: int) -> float | None:
    """The start time of process `pid` (Linux /proc), in seconds since the epoch."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith(b"btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _timestamp(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
