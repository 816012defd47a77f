"""Retroactive SQL: turn a query's analysis into the replay that fills in what it lacks.

plan_retroactive(session, analysis, workers) -> RetroPlan: the runs the pushed-down filter
allows, minus those that already hold the names (or were replayed for them already), grouped
into one replay plan. run_retroactive(session, plan) runs it and returns one warning line per
run left NULL. Callers hold `replay_lock` around both, so concurrent queries in any process
never replay the same task twice: the second one plans after the first has stored its records.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from sqlglot import exp

from .analyze import Analysis
from .catalog_session import CatalogSession
from .replay_plan import ReplayPlan, RunRequest, plan_runs
from .replay_run import TaskResult, run_replay
from .script_names import ScriptName, script_names


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
    facts = session.derived(("retro", tuple(names)), lambda: _catalog_facts(session, names))
    groups, skipped = _group_runs(session, wanted, names, facts)
    return _plan_groups(session, groups, skipped, workers)


def _group_runs(session: CatalogSession, wanted: dict, names: list[str],
                facts: tuple) -> tuple[dict[tuple, list[datetime]], list[Skipped]]:
    """Runs that need a replay, grouped by (names, iterations); runs that cannot have one."""
    runs = facts[0]
    scripts = script_names(session.project.root, {runs[t][2] for t in wanted if t in runs})
    groups: dict[tuple, list[datetime]] = {}
    skipped: list[Skipped] = []
    for tstamp, window in wanted.items():
        if tstamp not in runs:
            continue
        runid, status, filename = runs[tstamp][:3]
        need = _run_needs(tstamp, window, names, scripts.get(filename, {}), facts)
        if need and status != "finished":
            skipped.append(Skipped(runid, str(tstamp), f"not replayed: the run is {status}; "
                                                       "only finished runs can be replayed"))
        elif need:
            key = (tuple(sorted(need)), _merge_windows(need.values()))
            groups.setdefault(key, []).append(tstamp)
    return groups, skipped


def _run_needs(tstamp: datetime, window: set[int] | None, names: list[str],
               logged: dict[str, ScriptName], facts: tuple) -> dict:
    """Name (as the script spells it) -> what the run lacks of it (see _todo)."""
    _, present, covered, all_iters = facts
    need = {}
    for name in (n for n in names if n in logged):
        todo = _todo(logged[name], window, all_iters.get(tstamp, []),
                     present.get((tstamp, name)), covered.get(tstamp, []))
        if todo is not False:
            need[logged[name].name] = todo
    return need


def run_retroactive(session: CatalogSession, plan: RetroPlan,
                    progress: Callable[[TaskResult, int, int], None] | None = None
                    ) -> list[str]:
    """Run the plan's tasks; one warning line per run that stays NULL (refused or failed)."""
    results = run_replay(session, plan.replay, progress) if plan.tasks else []
    failed = {r.run.tstamp: r for r in results if not r.ok}
    return plan.warnings() + [f"{r.run.runid} ({r.run.tstamp}): replay failed: "
                              f"{_one_line(r.error)}" for r in failed.values()]


def _wanted_runs(session: CatalogSession,
                 analysis: Analysis) -> dict[datetime, set[int] | None]:
    """tstamp -> the outer-loop iterations the query can read (None: all of them)."""
    condition = analysis.pushed
    if condition is None:
        rows = session.derived(("retro-runs",), lambda: _run_facts(session))
        return {t: None for t in rows}
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


def _catalog_facts(session: CatalogSession, names: list[str]) -> tuple:
    """What planning reads of every run; kept by the session until the catalog changes."""
    runs = session.derived(("retro-runs",), lambda: _run_facts(session))
    return (runs, _present(session, names), _covered(session),
            _recorded_iterations(session))


def _run_facts(session: CatalogSession) -> dict[datetime, tuple]:
    rows = session.con.execute(
        "SELECT tstamp, runid, status, filename, vid, argv, run_dir FROM runs").fetchall()
    return {row[0]: row[1:] for row in rows}


def _present(session: CatalogSession,
             names: list[str]) -> dict[tuple[datetime, str], set[int | None]]:
    """(tstamp, name) -> the outer iterations holding a record of it (None: outside loops)."""
    rows = session.con.execute(
        "SELECT l.tstamp, lower(l.value_name), list(DISTINCT TRY_CAST("
        "split_part(split_part(c.path, '/', 1), '=', 2) AS BIGINT)) FROM logs l "
        "JOIN contexts c ON c.tstamp = l.tstamp AND c.ctx_id = l.ctx_id "
        "WHERE lower(l.value_name) IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL",
        [names]).fetchall()
    return {(t, n): set(iters) for t, n, iters in rows}


def _covered(session: CatalogSession) -> dict[datetime, list[tuple]]:
    """tstamp -> (names or None, start, stop) of each finished replay."""
    rows = session.con.execute(
        "SELECT tstamp, names, start_iter, stop_iter FROM replays "
        "WHERE status = 'finished' AND start_iter IS NOT NULL").fetchall()
    out: dict[datetime, list[tuple]] = {}
    for t, names, start, stop in rows:
        lowered = None if names is None else {n.lower() for n in names}
        out.setdefault(t, []).append((lowered, start, stop))
    return out


def _recorded_iterations(session: CatalogSession) -> dict[datetime, list[int]]:
    rows = session.con.execute(
        "SELECT tstamp, list(DISTINCT iteration ORDER BY iteration) "
        "FROM iterations WHERE source = 'forward' GROUP BY 1").fetchall()
    return dict(rows)


def _todo(site: ScriptName, window: set[int] | None, iterations: list[int],
          present: set[int | None] | None, covered: list[tuple]) -> frozenset[int] | None | bool:
    """What a run needs of one name: False nothing, None a whole replay, else iterations."""
    name = site.name.lower()
    spans = [(a, b) for names, a, b in covered if names is None or name in names]
    if not site.in_loop or not iterations:  # logged once per run: any record will do
        whole = any(a == 0 and b is None for a, b in spans)
        return False if present or whole else None
    wanted = set(iterations) if window is None else window & set(iterations)
    done = (present or set()) | {i for i in wanted for a, b in spans
                                 if a <= i and (b is None or i < b)}
    missing = wanted - done
    if not missing:
        return False
    return None if missing == set(iterations) else frozenset(missing)


def _merge_windows(todos) -> frozenset[int] | None:
    """One window for all of a run's names: a whole replay if any name needs one."""
    merged: set[int] = set()
    for todo in todos:
        if todo is None:
            return None
        merged |= todo
    return frozenset(merged)


def _plan_groups(session: CatalogSession, groups: dict[tuple, list[datetime]],
                 skipped: list[Skipped], workers: int) -> RetroPlan:
    runs = session.derived(("retro-runs",), lambda: _run_facts(session))
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
