"""Retroactive SQL: turn a query's analysis into the replay that fills in what it lacks.

plan_retroactive(session, analysis, workers) -> ReplayPlan: the runs the pushed-down filter
allows, minus those that already hold the names (or were replayed for them already), in one
replay plan whose `skipped` lists the runs no replay can fill (not finished). The service
(service.py) runs it under the project's replay lock, so concurrent queries in any process
never replay the same task twice: the second one plans after the first has stored its records.
What a run lacks is decided by coverage.py, as for `florsql replay`: both complete a replay
that was cut short in the same way.
"""

from __future__ import annotations

import os
from datetime import datetime

from sqlglot import exp

from ..code.script_names import script_names
from ..query.analyze import Analysis
from ..query.session import CatalogSession
from .coverage import Coverage, coverage_facts, merge_windows, run_facts, run_needs
from .executor import Executor
from .model import ReplayPlan, RunRequest, Skipped
from .plan import plan_runs


def plan_retroactive(session: CatalogSession, analysis: Analysis, workers: int | None = None,
                     executor: Executor | None = None) -> ReplayPlan:
    """What must be replayed before the analysed query can be answered (nothing runs)."""
    workers = max(1, workers or os.cpu_count() or 1)
    names = sorted(analysis.replayable)
    wanted = _wanted_runs(session, analysis)
    facts = coverage_facts(session, names)
    requests, skipped = _requests(session, wanted, names, facts)
    return plan_runs(session, requests, workers, executor=executor, skipped=skipped)


def _requests(session: CatalogSession, wanted: dict, names: list[str],
              facts: Coverage) -> tuple[list[RunRequest], list[Skipped]]:
    """Runs that need a replay, in tstamp order; runs that cannot have one."""
    runs = facts.runs
    scripts = script_names(session.project.root,
                           {runs[t].filename for t in wanted if t in runs})
    requests: list[RunRequest] = []
    skipped: list[Skipped] = []
    for tstamp, window in wanted.items():
        if tstamp not in runs:
            continue
        row = runs[tstamp]
        need = run_needs(facts, tstamp, window, names, scripts.get(row.filename, {}))
        if need and row.status != "finished":
            skipped.append(Skipped(row.runid, str(tstamp),
                                   f"not replayed: the run is {row.status}; "
                                   "only finished runs can be replayed"))
        elif need:
            requests.append(RunRequest(row, tuple(sorted(need)),
                                       merge_windows(need.values())))
    requests.sort(key=lambda q: q.run.tstamp)
    return requests, skipped


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
