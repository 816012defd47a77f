"""Replay mode: a process started with FLOR_REPLAY re-runs part of a recorded run.

FLOR_REPLAY holds JSON: {"run_dir": ..., "replay_id": ..., "loop": "epoch", "start": k,
"stop": k2}. The outer loop skips to iteration `start`, restores the checkpoint saved there
(objects and RNG states), runs until `stop` (exclusive; null runs to the end), and its records
go to `<run_dir>/replays/<replay_id>/` with source `replay`, attached to the original run.
"""

from __future__ import annotations

import json
import os
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

    @property
    def out_dir(self) -> Path:
        return self.run_dir / "replays" / self.replay_id

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
        return ReplaySpec(
            run_dir=Path(doc["run_dir"]),
            replay_id=str(doc["replay_id"]),
            loop=doc.get("loop"),
            start=int(doc.get("start", 0)),
            stop=None if doc.get("stop") is None else int(doc["stop"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise FlorReplayError(f"flor: FLOR_REPLAY is not a valid replay spec ({exc})") from None
