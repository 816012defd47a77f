"""Which executor runs a replay's tasks: FLOR_EXECUTOR, or a surface's --executor.

    local    this machine: the warm pool (a process per task where fork is unavailable)
    process  this machine, a new interpreter per task
    queue    the project's running `florsql serve` processes (engine/jobs/executor.py)
    ray      a Ray cluster (RAY_ADDRESS) or a local Ray instance (engine/replay/ray_executor.py)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EngineError
from ..replay.executor import Executor, SubprocessExecutor, default_executor

EXECUTOR_ENV = "FLOR_EXECUTOR"
EXECUTORS = ("local", "process", "queue", "ray")


def choose_executor(name: str | None, home: Path) -> Executor:
    """The executor `name` (else $FLOR_EXECUTOR, else local) for the project at `home`."""
    chosen = (name or os.environ.get(EXECUTOR_ENV) or "local").strip().lower()
    if chosen == "local":
        return default_executor()
    if chosen == "process":
        return SubprocessExecutor()
    if chosen == "queue":
        from .executor import QueueExecutor

        return QueueExecutor(home)
    if chosen == "ray":
        from ..replay.ray_executor import RayExecutor

        return RayExecutor()
    raise EngineError(f"unknown executor {chosen!r} (from --executor or {EXECUTOR_ENV}): "
                      f"choose one of {', '.join(EXECUTORS)}")
