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
    Returns the plan as a DataFrame with one row per run: the names replayed, the estimate,
    and what happened. Ctrl-C stops every task (the finished ones keep their records) and
    raises KeyboardInterrupt.
    """
    import pandas as pd

    from florsql.engine.replay_plan import plan_replay
    from florsql.engine.replay_run import run_replay
    from florsql.progress import replay_progress

    names = [apply_vars] if isinstance(apply_vars, str) else list(apply_vars)
    with _connection(path) as conn:
        wanted = None if iterations is None else set(iterations)
        plan = plan_replay(conn.session, names, where_clause, workers or os.cpu_count() or 1,
                           wanted)
        # made here, just before the replay starts, so its clock is the replay's
        bar = replay_progress(estimate=plan.estimated_seconds) if progress else None
        results = [] if dry_run else run_replay(conn.session, plan, bar, task_timeout)
    outcome: dict[str, list] = {}
    for result in results:
        outcome.setdefault(result.run.tstamp, []).append(result)
    rows = [_row(run, outcome.get(run.tstamp, []), dry_run) for run in plan.runs]
    return pd.DataFrame(rows, columns=["runid", "tstamp", "vid", "names", "status",
                                       "memoized", "est_seconds", "seconds", "error"])


def _row(run: Any, results: list, dry_run: bool) -> tuple:
    if run.refusal:
        status, error = "refused", run.refusal
    elif dry_run:
        status, error = "planned", None
    else:
        failed = [r for r in results if not r.ok]
        status, error = ("failed", failed[0].error) if failed else ("replayed", None)
    estimate = sum(s.seconds for s in run.segments)
    memoized = all(r.memoized for r in results) if results else run.memoize
    return (run.runid, run.tstamp, run.vid, ",".join(run.names), status, memoized,
            round(estimate, 2), round(sum(r.seconds for r in results), 2), error)
