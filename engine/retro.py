"""Retroactive SQL: turn a query's analysis into the replay that fills in what it lacks.

plan_retroactive(session, analysis, workers) -> RetroPlan: the runs the pushed-down filter
allows, minus those that already hold the names (or were replayed for them already), grouped
into one replay plan. run_retroactive(session, plan) runs it and returns one warning line per
run left NULL. Callers hold `replay_lock` around both, so concurrent queries in any process
never replay the same task twice: the second one plans after the first has stored its records.
What a run lacks is decided by replay_coverage.py, as for `florsql replay`: both complete a
replay that was cut short in the same way.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlglot import exp

from .analyze import Analysis
from .catalog_session import CatalogSession
from .replay_coverage import Coverage, coverage_facts, merge_windows, run_facts, run_needs
from .replay_plan import ReplayPlan, RunRequest, plan_runs
from .replay_run import TaskResult, run_replay
from .script_names import script_names


@dataclass
class Skipped:
    runid: str
    tstamp: str
    reason: str


@dataclass
class RetroPlan:
    """The replay a query needs, and the runs whose missing values no replay will fill."""

    names: list[str]
    replay: ReplayPlan
    skipped: list[Skipped] = field(default_factory=list)
    iterations: dict[str, list[int] | None] = field(default_factory=dict)  # tstamp -> subset

    @property
    def tasks(self) -> list:
        return self.replay.tasks

    @property
    def estimated_seconds(self) -> float:
        return self.replay.estimated_seconds

    def warnings(self) -> list[str]:
        lines = [f"{s.runid} ({s.tstamp}): {s.reason}" for s in self.skipped]
        lines += [f"{r.runid} ({r.tstamp}): not replayed: {r.refusal}"
                  for r in self.replay.runs if r.refusal]
        return lines


@contextmanager
def replay_lock(session: CatalogSession) -> Iterator[None]:
    """Serialise retroactive replays of one project across threads and processes."""
    path = session.project.home / "replay.lock"
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def plan_retroactive(session: CatalogSession, analysis: Analysis,
                     workers: int | None = None) -> RetroPlan:
    """What must be replayed before the analysed query can be answered (nothing runs)."""
    workers = max(1, workers or os.cpu_count() or 1)
    names = sorted(analysis.replayable)
    wanted = _wanted_runs(session, analysis)
    groups, skipped = _group_runs(session, wanted, names, coverage_facts(session, names))
    return _plan_groups(session, groups, skipped, workers)


def _group_runs(session: CatalogSession, wanted: dict, names: list[str],
                facts: Coverage) -> tuple[dict[tuple, list[datetime]], list[Skipped]]:
    """Runs that need a replay, grouped by (names, iterations); runs that cannot have one."""
    runs = facts.runs
    scripts = script_names(session.project.root, {runs[t][2] for t in wanted if t in runs})
    groups: dict[tuple, list[datetime]] = {}
    skipped: list[Skipped] = []
    for tstamp, window in wanted.items():
        if tstamp not in runs:
            continue
        runid, status, filename = runs[tstamp][:3]
        need = run_needs(facts, tstamp, window, names, scripts.get(filename, {}))
        if need and status != "finished":
            skipped.append(Skipped(runid, str(tstamp), f"not replayed: the run is {status}; "
                                                       "only finished runs can be replayed"))
        elif need:
            key = (tuple(sorted(need)), merge_windows(need.values()))
            groups.setdefault(key, []).append(tstamp)
    return groups, skipped


def run_retroactive(session: CatalogSession, plan: RetroPlan,
                    progress: Callable[[TaskResult, int, int], None] | None = None,
                    task_timeout: float | None = None,
                    cancel: threading.Event | None = None) -> list[str]:
    """Run the plan's tasks; one warning line per run that stays NULL (refused or failed).

    `task_timeout` and `cancel` are run_replay's: KeyboardInterrupt (or `cancel` set by
    another thread) stops every task before it propagates, as ReplayInterrupted."""
    results = (run_replay(session, plan.replay, progress, task_timeout, cancel)
               if plan.tasks else [])
    failed = {r.run.tstamp: r for r in results if not r.ok}
    return plan.warnings() + [f"{r.run.runid} ({r.run.tstamp}): replay failed: "
                              f"{_one_line(r.error)}" for r in failed.values()]


def _wanted_runs(session: CatalogSession,
                 analysis: Analysis) -> dict[datetime, set[int] | None]:
    """tstamp -> the outer-loop iterations the query can read (None: all of them)."""
    condition = analysis.pushed
    if condition is None:
        return {t: None for t in run_facts(session)}
    key = ("wanted", condition.sql(dialect="duckdb"), repr(analysis.params))
    return session.derived(key, lambda: _query_wanted(session, condition, analysis.params))


def _query_wanted(session: CatalogSession, condition: exp.Expression,
                  bound: dict) -> dict[datetime, set[int] | None]:
    outer = _outer_dim(session, condition)
    select = ["tstamp", outer] if outer else ["tstamp"]
    query = exp.select(*select).distinct().from_("history").where(condition.copy())
    prepared = session.prepare(query.sql(dialect="duckdb"))
    used = {p.name for p in query.find_all(exp.Placeholder)}
    params = {k: v for k, v in bound.items() if k in used} or None
    rows = session.con.execute(prepared.sql, params).fetchall()
    out: dict[datetime, set[int] | None] = {}
    for row in rows:
        key = row[0]
        if not outer or row[1] is None:
            out[key] = None
        elif key not in out or out[key] is not None:
            out.setdefault(key, set()).add(int(row[1]))
    return out


def _outer_dim(session: CatalogSession, condition: exp.Expression) -> str | None:
    """The outermost loop's name, when the condition reads a loop dimension and it is unique."""
    schema = session.history_schema
    dims = {c.name.lower() for c in condition.find_all(exp.Column)} & {
        d.lower() for d in schema.dims}
    outer = [d for d, depths in schema.dim_depths.items() if 1 in depths]
    return outer[0] if dims and len(outer) == 1 else None


def _plan_groups(session: CatalogSession, groups: dict[tuple, list[datetime]],
                 skipped: list[Skipped], workers: int) -> RetroPlan:
    runs = run_facts(session)
    requests = []
    for (names, iters), tstamps in groups.items():
        for t in tstamps:
            runid, _, filename, vid, argv, run_dir = runs[t]
            requests.append(RunRequest((t, runid, vid, filename, argv, run_dir), names, iters))
    requests.sort(key=lambda q: q.row[0])
    replay = plan_runs(session, requests, workers)
    iterations = {str(q.row[0]): None if q.iterations is None else sorted(q.iterations)
                  for q in requests}
    return RetroPlan(replay.names, replay, skipped, iterations)


def _one_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " | ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines[0] if lines else "")
