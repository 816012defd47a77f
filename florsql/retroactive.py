"""The DB-API side of retroactive SQL: replay modes, confirmation, budgets and warnings.

Before a query runs, `fill_missing` asks the engine which runs lack the values the query names
and, by the connection's mode, replays them (`auto`), asks first (`ask`), or answers with NULLs
and a warning (`off`). `EXPLAIN REPLAY <select>` returns the plan as rows and runs nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .engine.analyze import Analysis
from .engine.errors import ReplayBudgetError
from .engine.retro import RetroPlan, plan_retroactive, replay_lock, run_retroactive
from .engine.rewrite import Rewrite

MODES = ("auto", "ask", "off")
EXPLAIN_REPLAY = re.compile(r"^\s*EXPLAIN\s+REPLAY\s+(.+)$", re.IGNORECASE | re.DOTALL)
PLAN_COLUMNS = ["runid", "tstamp", "vid", "names", "iterations", "action", "est_seconds",
                "statements"]


@dataclass(frozen=True)
class SurfaceHints:
    """How the user of one surface says each thing a replay message suggests."""

    replay_now: str  # replay the missing values now
    answer_without: str  # answer with NULLs instead
    raise_limit: str  # allow a longer replay


# Each surface speaks its own language: flags on the CLI, dot commands in the shell.
SURFACES = {
    "python": SurfaceHints("connect(..., replay='auto')", "replay='off'",
                           "a larger max_replay_seconds="),
    "cli": SurfaceHints("rerun with --yes", "--no-replay", "a larger --max-replay-seconds"),
    "shell": SurfaceHints("answer y, or .replay auto", ".replay off",
                          "florsql --max-replay-seconds"),
}


@dataclass
class ReplayPolicy:
    """How a connection answers a query that names values some runs lack."""

    mode: str = "auto"
    max_seconds: float | None = None
    workers: int | None = None
    confirm: Callable[[RetroPlan], bool] | None = None  # `ask`: True to replay
    progress: Callable[[Any, int, int], None] | None = None  # per finished task
    surface: str = "python"  # whose words the messages use: python, cli or shell
    task_timeout: float | None = None  # seconds per replay task; None: from its estimate
    # Set by Connection.interrupt() from another thread: the running replay stops its tasks.
    cancel: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.mode = check_mode(self.mode)
        if self.surface not in SURFACES:
            raise ValueError(f"surface must be one of {', '.join(SURFACES)}, not "
                             f"{self.surface!r}")

    @property
    def hints(self) -> SurfaceHints:
        return SURFACES[self.surface]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"replay mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def fill_missing(session: Any, prepared: Rewrite, sql: str, params: Any,
                 policy: ReplayPolicy) -> tuple[Rewrite, list[str]]:
    """Replay what `prepared` lacks as `policy` says; the query to run, and warning lines."""
    analysis: Analysis = prepared.analysis
    if not analysis.replayable:
        return prepared, []
    key = ("retro-plan", sql, repr(params), policy.workers, session.scripts_state())
    if policy.mode == "off":
        plan = session.derived(key, lambda: plan_retroactive(session, analysis, policy.workers))
        return prepared, _declined(plan, "replay is off", policy.hints)
    with replay_lock(session):
        session.refresh()  # another query may have replayed while this one waited
        # kept until the catalog changes: asking again costs nothing when nothing is missing
        plan = session.derived(key, lambda: plan_retroactive(session, analysis, policy.workers))
        warnings = _run_by_policy(session, plan, policy)
    # Prepared again: the names have data now, here or from the query that held the lock.
    return session.prepare(sql, params), warnings


def _run_by_policy(session: Any, plan: RetroPlan, policy: ReplayPolicy) -> list[str]:
    if not plan.tasks:
        return plan.warnings()
    if policy.max_seconds is not None and plan.estimated_seconds > policy.max_seconds:
        raise ReplayBudgetError(plan.estimated_seconds, policy.max_seconds, len(plan.tasks))
    if policy.mode == "ask" and not (policy.confirm and policy.confirm(plan)):
        reason = ("the replay was declined" if policy.confirm
                  else "replay='ask' needs a confirm callback")
        return _declined(plan, reason, policy.hints)
    policy.cancel.clear()  # an interrupt of an earlier statement does not stop this one
    return run_retroactive(session, plan, policy.progress, policy.task_timeout, policy.cancel)


def _declined(plan: RetroPlan, reason: str, hints: SurfaceHints) -> list[str]:
    if not plan.tasks:
        return plan.warnings()
    runs = sorted({r.runid for r, _ in plan.tasks})
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


def plan_rows(plan: RetroPlan) -> list[tuple]:
    """One row per run of the plan, in PLAN_COLUMNS order."""
    rows = []
    for run in plan.replay.runs:
        iters = plan.iterations.get(run.tstamp)
        action = (f"refused: {run.refusal}" if run.refusal else
                  f"replay {len(run.segments)} segment(s)"
                  + (", inner loops skipped" if run.memoize else ""))
        rows.append((run.runid, run.tstamp, run.vid[:10], ",".join(run.names),
                     "all" if iters is None else ",".join(map(str, iters)), action,
                     round(sum(s.seconds for s in run.segments), 1),
                     "; ".join(run.statements) or None))
    rows += [(s.runid, s.tstamp, None, ",".join(plan.names), None, s.reason, 0.0, None)
             for s in plan.skipped]
    return rows


def plan_summary(plan: RetroPlan) -> str:
    if not plan.replay.runs and not plan.skipped:
        return "nothing to replay: every run the query reads already has these values"
    return (f"{len(plan.tasks)} task(s) on {plan.replay.workers} worker(s), "
            f"estimated {plan.estimated_seconds:.1f} s")


def describe_plan(plan: RetroPlan) -> str:
    """The plan as a table plus its summary line, as the shell and the CLI show it."""
    from .formatting import format_rows

    rows = plan_rows(plan)
    table = format_rows(PLAN_COLUMNS, rows) + "\n" if rows else ""
    return table + plan_summary(plan)


def ask_on_terminal(plan: RetroPlan) -> bool:
    """`ask` for the CLI: show the plan on stderr and read y/N from the terminal."""
    import sys

    print(describe_plan(plan), file=sys.stderr)
    if not sys.stdin.isatty():
        print("florsql: not replaying without a terminal to ask on; pass --yes to replay",
              file=sys.stderr)
        return False
    answer = input(f"Replay {len(plan.tasks)} task(s), estimated "
                   f"{plan.estimated_seconds:.0f} s? [y/N] ")
    return answer.strip().lower() in ("y", "yes")
