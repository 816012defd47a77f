"""Folders a replay leaves when it is killed, and their removal by the next replay.

A replay writes three kinds of folders: a temporary tree per task (`$TMPDIR/flor-replay-*`,
the run's version), its pool's folder of worker logs (`$TMPDIR/flor-replay-pool-*`), and a
staging folder per task (`.flor/replays-staging/<id>`) that becomes the replay's records only
when the task succeeds. A replay that ends, is interrupted or hits a time limit removes its own;
one killed with SIGKILL cannot. Each such folder therefore holds a marker naming its owner
(pid, the process's start time, the host), written as soon as the folder exists, and every
replay first removes the folders whose owner is dead:

    claim(folder)                 # right after creating it
    remove_leftovers(flor_home)   # before a replay: {folder: why} of what it removed

Never removed: a folder without a marker (it is not known to be a replay's), a live owner's
(same pid and start time: a reused pid is not the owner), another host's (its liveness cannot
be checked here), another user's, and a symlink (never followed: only the link would go).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from flor import protocol

MARKER = ".flor-replay-owner"
TMP_PREFIX = "flor-replay-"


def claim(folder: Path) -> None:
    """Mark `folder` as this process's, so that it is removed if this process is killed."""
    doc = {"pid": os.getpid(), "started": _start_time(os.getpid()),
           "host": socket.gethostname()}
    (folder / MARKER).write_text(json.dumps(doc))


def unclaim(folder: Path) -> None:
    """Drop the marker of a folder that is kept (a finished replay's records)."""
    with contextlib.suppress(OSError):
        (folder / MARKER).unlink()


def remove_leftovers(home: Path) -> dict[Path, str]:
    """Remove the temporary trees, pool folders and staging folders of dead replays; the
    folders removed, each with its owner's pid."""
    removed: dict[Path, str] = {}
    tmp = Path(tempfile.gettempdir())
    staging = home / protocol.REPLAYS_STAGING_DIR
    candidates = [*_children(tmp, TMP_PREFIX), *_children(staging, "")]
    for folder in candidates:
        owner = _dead_owner(folder)
        if owner is not None:
            shutil.rmtree(folder, ignore_errors=True)
            removed[folder] = owner
    return removed


def _children(parent: Path, prefix: str) -> list[Path]:
    """Real folders (not symlinks) in `parent` whose name starts with `prefix`, owned by us."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
            out.append(Path(entry.path))
    return out


def _dead_owner(folder: Path) -> str | None:
    """`pid N` when the folder's marker names a process of this host that is gone."""
    try:
        doc = json.loads((folder / MARKER).read_text())
        pid, started, host = int(doc["pid"]), doc.get("started"), doc.get("host")
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no marker (or not ours to judge): leave it
    if host != socket.gethostname() or _alive(pid, started):
        return None
    return f"pid {pid}"


def _alive(pid: int, started: int | None) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process holds that pid: ours is gone, but be careful
    now = _start_time(pid)
    return started is None or now is None or now == started


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields and fields[0] == "Z":
        return -1  # a zombie: it has exited, whatever its parent does with it
    return int(fields[19]) if len(fields) > 19 else None
