"""Derive a run's status from its files: end.json, else whether its process still lives."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import NamedTuple

# A live writer touches the heartbeat every FLOR_FLUSH_SECONDS (2 s); allow for slow disks.
STALE_SECONDS = 60.0


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


class RunStatus(NamedTuple):
    status: str  # finished, failed or killed from end.json; else running or killed
    error: str | None


def derive_status(run: dict, end: dict | None, heartbeat: Path) -> RunStatus:
    """How a run stands: from end.json when it has one, else from its process and heartbeat."""
    if end is not None:
        return RunStatus(end.get("status", "finished"), end.get("error"))
    if _process_alive(run) and _heartbeat_fresh(heartbeat):
        return RunStatus("running", None)
    return RunStatus("killed", "the process ended without finishing the run (killed or crashed)")


def _process_alive(run: dict) -> bool:
    pid, host = run.get("pid"), run.get("hostname")
    if host != socket.gethostname() or not isinstance(pid, int):
        return True  # another host: only the heartbeat can tell
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Process `pid` of this host exists and is not a zombie (killed, not yet reaped by its
    parent: it will never write again)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): the signal check is all there is
        return True


def _heartbeat_fresh(heartbeat: Path) -> bool:
    try:
        return time.time() - heartbeat.stat().st_mtime < STALE_SECONDS
    except OSError:
        return False
