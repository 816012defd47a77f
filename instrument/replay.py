"""Replay mode: a process started with FLOR_REPLAY re-runs part of a recorded run.

FLOR_REPLAY holds JSON: {"run_dir": ..., "replay_id": ..., "loop": "epoch", "start": k,
"stop": k2, "names": [...], "out_dir": ...}. The outer loop skips to iteration `start`,
restores the checkpoint saved there (objects and RNG states) and runs until `stop`
(exclusive; null runs to the end of the script). A replay stopped early exits right there, so
code after the loop never runs on a half-trained state. Only `names` are recorded (all when
absent), with source `replay`, into `out_dir` (default `<run_dir>/replays/<replay_id>/`);
the replay executor moves a finished one there, so ingest never sees a partial replay.
At every later outer iteration that has a checkpoint, the replay restores it too: a new
statement with side effects (random draws, consumed data) is evaluated at its point of the
original run and its effects do not leak past the next checkpoint. With "memoize": true, the
first inner loop of each outer iteration k whose end state was saved (a checkpoint of k + 1)
is skipped by restoring that checkpoint; after the code that follows it the state must still
equal that checkpoint, else the process exits with code 3 and the run is replayed in full.
An iteration without such a checkpoint runs its inner loop in full.
A replay run as a process of its own gets "parent": the pid of the florsql process that
started it; reading the spec binds this process to it (Linux: it gets SIGKILL when that
process dies), so a killed `florsql replay` leaves no task running behind it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import FlorReplayError


@dataclass(frozen=True)
class ReplaySpec:
    run_dir: Path
    replay_id: str
    loop: str | None
    start: int
    stop: int | None
    names: frozenset[str] | None = None
    staging_dir: Path | None = None
    memoize: bool = False

    @property
    def out_dir(self) -> Path:
        return self.staging_dir or self.run_dir / "replays" / self.replay_id

    def window(self, loop: str) -> tuple[int, int | None]:
        """The iterations of outer loop `loop` to run; other outer loops run whole."""
        if self.loop is not None and loop != self.loop:
            return 0, None
        return self.start, self.stop


def replay_spec_from_env() -> ReplaySpec | None:
    raw = os.environ.get("FLOR_REPLAY")
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        spec = ReplaySpec(
            run_dir=Path(doc["run_dir"]),
            replay_id=str(doc["replay_id"]),
            loop=doc.get("loop"),
            start=int(doc.get("start", 0)),
            stop=None if doc.get("stop") is None else int(doc["stop"]),
            names=None if doc.get("names") is None else frozenset(doc["names"]),
            staging_dir=Path(doc["out_dir"]) if doc.get("out_dir") else None,
            memoize=bool(doc.get("memoize", False)),
        )
        parent = None if doc.get("parent") is None else int(doc["parent"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FlorReplayError(f"flor: FLOR_REPLAY is not a valid replay spec ({exc})") from None
    _die_with(parent)
    return spec


def _die_with(parent: int | None) -> None:
    """End this process when `parent` ends (or at once if it already has)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the line above: nothing would signal us
        os._exit(1)
