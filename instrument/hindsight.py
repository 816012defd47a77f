"""`flor.replay`: recover values that today's script logs for runs that finished long ago."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .history import _connection


def replay(apply_vars: list[str] | str, where_clause: str | None = None,
           path: str | os.PathLike = ".", workers: int | None = None,
           dry_run: bool = False, iterations: Iterable[int] | None = None,
           progress: bool = True, task_timeout: float | None = None) -> Any:
    """Replay the past runs that lack `apply_vars`, as FlorDB's `flor.replay` does.

    `where_clause` picks runs: SQL over `history` columns (`"lr > 0.01"`) or FlorDB's pandas
    style (`'cf_matrix.isna() and hidden_size.astype("float") < 250'`); `iterations` limits
    it to those outer-loop iterations (epochs); `progress` draws a bar on stderr as runs
    finish; `task_timeout` stops a task that runs longer than that many seconds (0: no
    limit; default: FLOR_REPLAY_TASK_TIMEOUT, else max(120 s, 10 x the task's estimate)).
    Returns a DataFrame with one row per run: the plan as `florsql replay` and `EXPLAIN
    REPLAY` show it (runid, tstamp, vid, names, iterations, action, est_seconds, statements),
    then what happened (status: planned, replayed, failed or refused; memoized; seconds;
    error). Ctrl-C stops every task (the finished ones keep their records) and
    raises KeyboardInterrupt.
    """
    import pandas as pd

    from florsql.progress import replay_progress
    from florsql.retroactive import PLAN_COLUMNS, plan_rows

    names = [apply_vars] if isinstance(apply_vars, str) else list(apply_vars)

    # made once the plan is known, just before the replay starts, so its clock is the replay's
    def show(plan: Any) -> Any:
        return replay_progress(estimate=plan.estimated_seconds) if progress else None

    with _connection(path) as conn:
        wanted = None if iterations is None else set(iterations)
        report = conn.replay_service.replay_names(
            names, where_clause, workers or os.cpu_count() or 1, wanted, on_plan=show,
            dry_run=dry_run, task_timeout=task_timeout)
    outcome: dict[str, list] = {}
    for result in report.results:
        outcome.setdefault(result.task.tstamp, []).append(result)
    shown = plan_rows(report.plan)  # the runs first, in order
    rows = [(*row, *_outcome(run, outcome.get(run.tstamp, []), dry_run))
            for run, row in zip(report.plan.runs, shown, strict=False)]
    return pd.DataFrame(rows, columns=[*PLAN_COLUMNS, "status", "memoized", "seconds",
                                       "error"])


def _outcome(run: Any, results: list, dry_run: bool) -> tuple:
    if run.refusal:
        status, error = "refused", run.refusal
    elif dry_run:
        status, error = "planned", None
    else:
        failed = [r for r in results if not r.ok]
        status, error = ("failed", failed[0].error) if failed else ("replayed", None)
    memoized = all(r.memoized for r in results) if results else run.memoize
    return status, memoized, round(sum(r.seconds for r in results), 2), error
