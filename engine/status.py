"""Derive a run's status from its files: end.json, else whether its process still lives."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

# A live writer touches the heartbeat every FLOR_FLUSH_SECONDS (2 s); allow for slow disks.
STALE_SECONDS = 60.0


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def derive_status(run: dict, end: dict | None, heartbeat: Path) -> tuple[str, None, str | None]:
    """(status, end_time, error): finished/failed/killed from end.json, else running/killed."""
    if end is not None:
        return end.get("status", "finished"), None, end.get("error")
    if _process_alive(run) and _heartbeat_fresh(heartbeat):
        return "running", None, None
    return "killed", None, "the process ended without finishing the run (killed or crashed)"


def _process_alive(run: dict) -> bool:
    pid, host = run.get("pid"), run.get("hostname")
    if host != socket.gethostname() or not isinstance(pid, int):
        return True  # another host: only the heartbeat can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _heartbeat_fresh(heartbeat: Path) -> bool:
    try:
        return time.time() - heartbeat.stat().st_mtime < STALE_SECONDS
    except OSError:
        return False
