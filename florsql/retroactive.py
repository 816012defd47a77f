"""The surfaces' side of retroactive SQL: their words, and the one way plans are shown.

The engine decides and runs (engine/replay/service.py: `ReplayService.answer` under a
ReplayPolicy); the shell, the CLI, the DB-API and `flor.replay` differ only in how they confirm
a replay, show its progress and word their hints. Every plan is shown through `plan_rows`:
`EXPLAIN REPLAY`, `florsql replay`, the shell's and the CLI's confirmation, and
`flor.replay`'s DataFrame.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .engine import ReplayPlan, SurfaceHints
from .engine.replay.policy import PYTHON_HINTS

EXPLAIN_REPLAY = re.compile(r"^\s*EXPLAIN\s+REPLAY\s+(.+)$", re.IGNORECASE | re.DOTALL)

# Each surface speaks its own language: flags on the CLI, dot commands in the shell.
SURFACES = {
    "python": PYTHON_HINTS,
    "cli": SurfaceHints("rerun with --yes", "--no-replay", "a larger --max-replay-seconds"),
    "shell": SurfaceHints("answer y, or .replay auto", ".replay off",
                          "florsql --max-replay-seconds"),
}


def surface_hints(surface: str) -> SurfaceHints:
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {', '.join(SURFACES)}, not {surface!r}")
    return SURFACES[surface]


class PlanRow(NamedTuple):
    """One run of a plan, as every surface shows it."""

    runid: str
    tstamp: str
    vid: str | None  # the first 10 characters
    names: str
    iterations: str | None  # "all", or the outer iterations asked for
    action: str  # "replay N segment(s)[, inner loops skipped]", "refused: ...", or why not
    est_seconds: float
    statements: str | None  # what is inserted into the old code, "line N: text; ..."


PLAN_COLUMNS = list(PlanRow._fields)


def plan_rows(plan: ReplayPlan) -> list[PlanRow]:
    """One row per run of the plan, then one per run it skips."""
    rows = []
    for run in plan.runs:
        action = (f"refused: {run.refusal}" if run.refusal else
                  f"replay {len(run.segments)} segment(s)"
                  + (", inner loops skipped" if run.memoize else ""))
        rows.append(PlanRow(
            run.runid, run.tstamp, run.vid[:10], ",".join(run.names),
            "all" if run.iterations is None else ",".join(map(str, run.iterations)), action,
            round(run.est_seconds, 1), "; ".join(run.statements) or None))
    rows += [PlanRow(s.runid, s.tstamp, None, ",".join(plan.names), None, s.reason, 0.0, None)
             for s in plan.skipped]
    return rows


def task_summary(plan: ReplayPlan) -> str:
    return (f"{len(plan.tasks)} task(s) on {plan.workers} worker(s) ({plan.executor}, "
            f"{plan.slots} slot(s)), estimated {plan.estimated_seconds:.1f} s")


def plan_summary(plan: ReplayPlan) -> str:
    """What a query's replay will do, in one line."""
    if not plan.runs and not plan.skipped:
        return "nothing to replay: every run the query reads already has these values"
    return task_summary(plan)


def describe_plan(plan: ReplayPlan, summary: str | None = None) -> str:
    """The plan as a table plus its summary line, as the shell and the CLI show it."""
    from .formatting import format_rows

    rows = plan_rows(plan)
    table = format_rows(PLAN_COLUMNS, rows) + "\n" if rows else ""
    return table + (summary or plan_summary(plan))


def ask_on_terminal(plan: ReplayPlan) -> bool:
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
