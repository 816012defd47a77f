"""How a surface wants a query that names missing values answered: replay them (`auto`), ask
first (`ask`), or answer with NULLs and a warning (`off`); a budget, a progress callback, a
per-task time limit and a cancel event. The surfaces (shell, CLI, DB-API, `flor.dataframe`)
differ only in the policy they pass: how they confirm, show progress and word their hints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ReplayBudgetError
from .model import ReplayPlan, TaskResult

MODES = ("auto", "ask", "off")


@dataclass(frozen=True)
class SurfaceHints:
    """How the user of one surface says each thing a replay message suggests."""

    replay_now: str  # replay the missing values now
    answer_without: str  # answer with NULLs instead
    raise_limit: str  # allow a longer replay


PYTHON_HINTS = SurfaceHints("connect(..., replay='auto')", "replay='off'",
                            "a larger max_replay_seconds=")


@dataclass
class ReplayPolicy:
    """How a connection answers a query that names values some runs lack."""

    mode: str = "auto"
    max_seconds: float | None = None
    workers: int | None = None
    confirm: Callable[[ReplayPlan], bool] | None = None  # `ask`: True to replay
    progress: Callable[[TaskResult, int, int], None] | None = None  # per finished task
    hints: SurfaceHints = PYTHON_HINTS  # the words its messages use
    task_timeout: float | None = None  # seconds per replay task; None: from its estimate
    # Set by Connection.interrupt() from another thread: the running replay stops its tasks.
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.mode = check_mode(self.mode)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"replay mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def declined_warnings(plan: ReplayPlan, reason: str, hints: SurfaceHints) -> list[str]:
    """The lines of a query answered without the replay it needed."""
    if not plan.tasks:
        return plan.warnings()
    runs = sorted({t.run.runid for t in plan.tasks})
    head = (f"{reason}: {', '.join(plan.names)} answered as NULL for {len(runs)} run(s) "
            f"({', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''}); to replay them, "
            f"{hints.replay_now}, or run florsql replay {','.join(plan.names)}")
    return [head, *plan.warnings()]


def budget_message(error: ReplayBudgetError, hints: SurfaceHints) -> str:
    """The over-budget refusal in the surface's words."""
    return (f"this query needs a replay of {error.tasks} task(s), estimated "
            f"{error.estimate:.0f} s, over the limit of {error.limit:g} s: narrow the query "
            f"with WHERE, allow it with {hints.raise_limit}, or answer without replaying "
            f"({hints.answer_without})")
