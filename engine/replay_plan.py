"""Plan a hindsight replay: which runs lack which names, the patched code for each version,
the segments to run from checkpoints, and an estimate of the time it takes (replay_estimate.py).

plan_replay(session, names, where) -> ReplayPlan for `florsql replay`; plan_runs(session,
requests) -> ReplayPlan when the caller already knows the runs and names (retroactive SQL).
Nothing runs here; `replay_run` executes. Planning reads the catalog in bulk and keeps the
old versions' sources and their patches, so planning a replay over many runs stays cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp

from .catalog_session import CatalogSession
from .errors import EngineError
from .memo import is_memoizable
from .propagate import Refusal, propagate
from .replay_coverage import coverage_facts, merge_windows, run_needs
from .replay_estimate import (
    FINISH_SECONDS,
    Segment,
    Startup,
    Timing,
    balance,
    filtered_segments,
    load_timings,
    makespan,
    startup_costs,
)
from .replay_pool import pool_enabled
from .script_names import ScriptName, script_names
from .where import parse_where

__all__ = ["ReplayPlan", "RunPlan", "RunRequest", "Segment", "plan_replay", "plan_runs"]
_PATCH_CACHE = 256  # propagation results kept per process (a pure function of its inputs)
_SOURCES: dict[tuple[Path, str, str], str] = {}  # (root, vid, filename): git objects never change
_PATCHES: OrderedDict[tuple, object] = OrderedDict()


@dataclass
class RunPlan:
    tstamp: str
    runid: str
    vid: str
    filename: str
    argv: list[str]
    run_dir: str
    names: list[str]
    project_root: Path
    loop: str | None = None
    patched: str | None = None
    refusal: str | None = None
    memoize: bool = False
    segments: list[Segment] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)  # what is inserted, "line N: text"


@dataclass(frozen=True)
class RunRequest:
    """One run to replay: its `runs` row, the names it lacks, and the outer iterations
    wanted (None: the whole run)."""

    row: tuple  # tstamp, runid, vid, filename, argv, run_dir
    names: tuple[str, ...]
    iterations: frozenset[int] | None = None


@dataclass
class ReplayPlan:
    names: list[str]
    runs: list[RunPlan]
    workers: int
    startup: Startup = field(default_factory=lambda: Startup(0.0))
    modules: list[str] = field(default_factory=list)  # what warm workers import ahead

    @property
    def tasks(self) -> list[tuple[RunPlan, Segment]]:
        return [(r, s) for r in self.runs if r.refusal is None for s in r.segments]

    @property
    def estimated_seconds(self) -> float:
        """Makespan of the longest-first assignment of segments to the workers, plus the
        start of the workers that are not warm yet and the ingest at the end."""
        seconds = [s.seconds for _, s in self.tasks]
        if not seconds:
            return 0.0
        return makespan(seconds, self.workers, self.startup) + FINISH_SECONDS


def plan_replay(session: CatalogSession, names: list[str], where: str | None = None,
                workers: int = 1, iterations: set[int] | None = None) -> ReplayPlan:
    """The replay that recovers `names` for the finished runs matching `where`.

    What each run lacks is decided as for a SQL query (replay_coverage.py): per outer
    iteration for a name logged in a loop, so a replay cut short is completed. `iterations`
    limits it to those outer-loop iterations (`epoch = 4`): only the missing ones are run,
    each from the nearest checkpoint at or before it; code after the loop is then not run.
    """
    session.refresh()
    rows = _candidate_runs(session, where)
    facts = coverage_facts(session, names)
    scripts = script_names(session.project.root, {row[3] for row in rows})
    window = None if iterations is None else set(iterations)
    requests = []
    for row in rows:
        # a name today's script does not log is planned whole, for propagation to refuse
        logged = {**{n.lower(): ScriptName(n, False) for n in names},
                  **scripts.get(row[3], {})}
        need = run_needs(facts, row[0], window, names, logged)
        if need:
            requests.append(RunRequest(row, tuple(need), merge_windows(need.values())))
    return plan_runs(session, requests, workers, names)


def plan_runs(session: CatalogSession, requests: list[RunRequest], workers: int = 1,
              names: list[str] | None = None) -> ReplayPlan:
    """The replay of exactly `requests`: patches, segments and the estimate."""
    # filename -> today's source, or why it cannot be read; "" -> where the runs are now
    today: dict[str, str | OSError] = {"": str(session.project.runs_dir)}
    _read_sources(session.project.root, requests)
    runs = [_run_plan(session, request, today) for request in requests]
    workers = max(1, workers)
    modules = _modules(session, runs)
    startup = startup_costs(session, modules)
    timings = load_timings(session)
    ready = [r for r in runs if r.refusal is None]
    for_timing = {r.tstamp: timings.get(r.tstamp, Timing(None, set(), {}, 0.002)) for r in ready}
    whole = [r for r, q in zip(runs, requests, strict=True)
             if r.refusal is None and q.iterations is None]
    balance(whole, for_timing, workers, startup)
    for run, request in zip(runs, requests, strict=True):
        if run.refusal is None and request.iterations is not None:
            run.segments = filtered_segments(run, for_timing[run.tstamp],
                                             set(request.iterations), startup)
    all_names = names or sorted({n for q in requests for n in q.names})
    return ReplayPlan(names=list(all_names), runs=runs, workers=workers, startup=startup,
                      modules=modules)


def _candidate_runs(session: CatalogSession, where: str | None) -> list[tuple]:
    query = exp.select("tstamp").distinct().from_("history")
    if where:
        query = query.where(parse_where(where))
    rewritten = session.prepare(query.sql(dialect="duckdb"))
    tstamps = exp.select("r.tstamp", "r.runid", "r.vid", "r.filename", "r.argv", "r.run_dir")
    sql = (tstamps.from_("runs AS r").where("r.status = 'finished'")
           .where(exp.In(this=exp.column("tstamp", "r"),
                         query=sqlglot.parse_one(rewritten.sql, read="duckdb").subquery()))
           .order_by("r.tstamp"))
    return session.con.execute(sql.sql(dialect="duckdb")).fetchall()


def _run_plan(session: CatalogSession, request: RunRequest,
              today: dict[str, str | OSError]) -> RunPlan:
    tstamp, runid, vid, filename, argv, run_dir = request.row
    run_dir = f"{today['']}/{run_dir.rsplit('/', 1)[-1]}"  # the project may have moved
    plan = RunPlan(str(tstamp), runid, vid, filename, list(argv), run_dir, list(request.names),
                   session.project.root)
    if filename not in today:
        try:
            today[filename] = (session.project.root / filename).read_text()
        except OSError as e:
            today[filename] = e
    result = _patch(session.project.root, vid, filename, request.names, today[filename])
    if isinstance(result, str):
        plan.refusal = result
    elif isinstance(result, Refusal):
        plan.refusal = f"{result.name}: {result.reason}"
    else:
        plan.patched, plan.memoize, plan.statements = result
    return plan


def _patch(root: Path, vid: str, filename: str, names: tuple[str, ...],
           new: str | OSError) -> object:
    """Today's statements for `names` in the version `vid` of `filename`: (source, memoizable,
    statements), a Refusal, or an error line. Runs of one version share one patch."""
    if isinstance(new, OSError):
        return f"cannot read today's {filename}: {new.strerror}; restore it to replay"
    try:
        old = _source_at(root, vid, filename)
    except EngineError as e:
        return str(e)
    key = (old, new, names)
    if key in _PATCHES:
        _PATCHES.move_to_end(key)
        return _PATCHES[key]
    result = propagate(old, new, list(names))
    if not isinstance(result, Refusal):
        lines = [i.line for i in result.inserted]
        result = (result.source, is_memoizable(result.source, lines),
                  [f"line {i.line}: {i.text}" for i in result.inserted])
    _PATCHES[key] = result
    if len(_PATCHES) > _PATCH_CACHE:
        _PATCHES.popitem(last=False)
    return result


def _modules(session: CatalogSession, runs: list[RunPlan]) -> list[str]:
    """What warm workers import ahead for these runs (empty without the pool)."""
    if not pool_enabled():
        return []
    from .replay_run import replay_modules

    return replay_modules(session.project.root, [r for r in runs if r.refusal is None])


def _read_sources(root: Path, requests: list[RunRequest]) -> None:
    """Read the script of every version the plan needs through one open repository (GitPython:
    50 files in 30-46 ms, against 100 ms for a `git show` each), into _SOURCES."""
    from flor import gitrepo

    wanted = {(q.row[2], q.row[3]) for q in requests} - {(v, f) for r, v, f in _SOURCES
                                                           if r == root}
    if wanted:
        for (vid, filename), text in gitrepo.read_texts(root, sorted(wanted)).items():
            _SOURCES[(root, vid, filename)] = text


def _source_at(root: Path, vid: str, filename: str) -> str:
    key = (root, vid, filename)
    if key not in _SOURCES:  # not read ahead: missing, or asked for outside plan_runs
        from flor import gitrepo

        try:
            _SOURCES[key] = gitrepo.read_text(root, vid, filename)
        except gitrepo.GitError as e:
            raise EngineError(f"the code of version {vid[:10]} is not in this repository "
                              f"({e}); fetch refs/flor/snapshots/*") from None
    return _SOURCES[key]
