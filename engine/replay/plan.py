"""Plan a hindsight replay: which runs lack which names, the patched code for each version,
the segments to run from checkpoints, and an estimate of the time it takes (estimate.py).

plan_replay(session, names, where) -> ReplayPlan for `florsql replay` and `flor.replay`;
plan_runs(session, requests) -> ReplayPlan when the caller already knows the runs and names
(retroactive SQL, retro.py). Nothing runs here; the service (service.py) runs plans. Planning
reads the catalog in bulk and keeps the old versions' sources and their patches, so planning a
replay over many runs stays cheap. The estimate uses the costs of the executor given (default:
the one a replay would get, executor.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import sqlglot
from sqlglot import exp

from flor import protocol

from ..code.memo import is_memoizable
from ..code.propagate import Refusal, propagate
from ..code.script_names import ScriptName, script_names
from ..errors import EngineError
from ..query.session import CatalogSession
from ..query.where import parse_where
from .coverage import coverage_facts, merge_windows, run_needs
from .estimate import (
    NO_TIMING,
    RunEstimate,
    balance,
    estimate_window,
    load_timings,
    plan_seconds,
    setup_seconds,
)
from .executor import Executor, default_executor
from .model import Patch, ReplayPlan, RunPlan, RunRequest, RunRow, Skipped
from .preload import ScriptVersion, replay_modules

__all__ = ["ReplayPlan", "RunPlan", "RunRequest", "plan_replay", "plan_runs"]
_PATCH_CACHE = 256  # propagation results kept per process (a pure function of its inputs)
_SOURCES: dict[tuple[Path, str, str], str] = {}  # (root, vid, filename): git objects never change
_PATCHES: OrderedDict[tuple, Patch | PatchRefused] = OrderedDict()  # refusals kept too


def plan_replay(session: CatalogSession, names: Sequence[str], where: str | None = None,
                workers: int = 1, iterations: set[int] | None = None,
                executor: Executor | None = None) -> ReplayPlan:
    """The replay that recovers `names` for the finished runs matching `where`.

    What each run lacks is decided as for a SQL query (coverage.py): per outer iteration for
    a name logged in a loop, so a replay cut short is completed. `iterations` limits it to
    those outer-loop iterations (`epoch = 4`): only the missing ones are run, each from the
    nearest checkpoint at or before it; code after the loop is then not run.
    """
    session.refresh()
    rows = _candidate_runs(session, where)
    facts = coverage_facts(session, names)
    scripts = script_names(session.project.root, {row.filename for row in rows})
    window = None if iterations is None else set(iterations)
    requests = []
    for row in rows:
        # a name today's script does not log is planned whole, for propagation to refuse
        logged = {**{n.lower(): ScriptName(n, False) for n in names},
                  **scripts.get(row.filename, {})}
        need = run_needs(facts, row.tstamp, window, names, logged)
        if need:
            requests.append(RunRequest(row, tuple(need), merge_windows(need.values())))
    return plan_runs(session, requests, workers, names, executor)


def plan_runs(session: CatalogSession, requests: Sequence[RunRequest], workers: int = 1,
              names: Sequence[str] | None = None, executor: Executor | None = None,
              skipped: Sequence[Skipped] = ()) -> ReplayPlan:
    """The replay of exactly `requests`: patches, segments and the estimate."""
    executor = executor or default_executor()
    _read_sources(session.project.root, requests)
    # filename -> today's source, or why it cannot be read
    today: dict[str, str | OSError] = {}
    runs_dir = str(session.project.runs_dir)
    patched = [_patched(session, q, today, runs_dir) for q in requests]
    ready = [p for p in patched if p.refusal is None]
    workers = max(1, workers)
    modules = (replay_modules(session.project.root,
                              [ScriptVersion(p.run.vid, p.run.filename, p.patch.source)
                               for p in ready]) if executor.preloads else [])
    startup = executor.startup(setup_seconds(session), modules)
    timings = load_timings(session)
    for_timing = {p.tstamp: timings.get(p.tstamp, NO_TIMING) for p in ready}
    whole = balance([p for p in ready if p.request.iterations is None], for_timing, workers,
                    startup)
    runs = []
    for p in patched:
        est = None
        if p.refusal is None:
            est = (whole[p.tstamp] if p.request.iterations is None else
                   estimate_window(for_timing[p.tstamp], p.memoize, set(p.request.iterations),
                                   startup))
        runs.append(_run_plan(p, est))
    all_names = names or sorted({n for q in requests for n in q.names})
    seconds = [s.seconds for r in runs if r.refusal is None for s in r.segments]
    return ReplayPlan(names=tuple(all_names), runs=tuple(runs), workers=workers,
                      executor=executor.name, slots=executor.slots, startup=startup,
                      modules=tuple(modules), skipped=tuple(skipped),
                      estimated_seconds=plan_seconds(seconds, executor.parallelism(workers),
                                                     startup))


class _Patched(NamedTuple):
    """A request with its patch (or why there is none), before the estimate."""

    request: RunRequest
    tstamp: str
    run_dir: str  # where the run's folder is now (the project may have moved)
    patch: Patch | None
    refusal: str | None

    @property
    def run(self) -> RunRow:
        return self.request.run

    @property
    def memoize(self) -> bool:  # what balance() reads: may inner loops be skipped
        return self.patch is not None and self.patch.memoizable


def _run_plan(p: _Patched, est: RunEstimate | None) -> RunPlan:
    """The run's plan, made once (a frozen dataclass costs microseconds per copy)."""
    row, patch = p.run, p.patch
    iterations = p.request.iterations
    return RunPlan(
        p.tstamp, row.runid, row.vid, row.filename, tuple(row.argv[1:]), p.run_dir,
        tuple(p.request.names), None if iterations is None else tuple(sorted(iterations)),
        loop=est.loop if est else None, patched=patch.source if patch else None,
        refusal=p.refusal or (est.refusal if est else None),
        memoize=est.memoize if est else bool(patch and patch.memoizable),
        segments=est.segments if est else (), statements=patch.statements if patch else ())


def _candidate_runs(session: CatalogSession, where: str | None) -> list[RunRow]:
    query = exp.select("tstamp").distinct().from_("history")
    if where:
        query = query.where(parse_where(where))
    rewritten = session.prepare(query.sql(dialect="duckdb"))
    tstamps = exp.select("r.tstamp", "r.runid", "r.vid", "r.filename", "r.argv", "r.run_dir")
    sql = (tstamps.from_("runs AS r").where("r.status = 'finished'")
           .where(exp.In(this=exp.column("tstamp", "r"),
                         query=sqlglot.parse_one(rewritten.sql, read="duckdb").subquery()))
           .order_by("r.tstamp"))
    return [RunRow(t, runid, vid, filename, tuple(argv), run_dir)
            for t, runid, vid, filename, argv, run_dir
            in session.con.execute(sql.sql(dialect="duckdb")).fetchall()]


def _patched(session: CatalogSession, request: RunRequest, today: dict[str, str | OSError],
             runs_dir: str) -> _Patched:
    row = request.run
    run_dir = f"{runs_dir}/{row.run_dir.rsplit('/', 1)[-1]}"
    if row.filename not in today:
        try:
            today[row.filename] = (session.project.root / row.filename).read_text()
        except OSError as e:
            today[row.filename] = e
    try:
        patch = _patch(session.project.root, row.vid, row.filename, request.names,
                       today[row.filename])
    except PatchRefused as refused:
        return _Patched(request, str(row.tstamp), run_dir, None, refused.reason)
    return _Patched(request, str(row.tstamp), run_dir, patch, None)


class PatchRefused(Exception):
    """Today's statements cannot be put into an old version; `reason` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _patch(root: Path, vid: str, filename: str, names: tuple[str, ...],
           new: str | OSError) -> Patch:
    """Today's statements for `names` in the version `vid` of `filename` (PatchRefused: why
    they cannot be put there). Runs of one version share one patch."""
    if isinstance(new, OSError):
        raise PatchRefused(f"cannot read today's {filename}: {new.strerror}; restore it to "
                           "replay")
    try:
        old = _source_at(root, vid, filename)
    except EngineError as e:
        raise PatchRefused(str(e)) from None
    key = (old, new, names)
    if key not in _PATCHES:
        result = propagate(old, new, list(names))
        if isinstance(result, Refusal):
            _PATCHES[key] = PatchRefused(f"{result.name}: {result.reason}")
        else:
            lines = [i.line for i in result.inserted]
            _PATCHES[key] = Patch(result.source, is_memoizable(result.source, lines),
                                  tuple(f"line {i.line}: {i.text}" for i in result.inserted))
        if len(_PATCHES) > _PATCH_CACHE:
            _PATCHES.popitem(last=False)
    _PATCHES.move_to_end(key)
    cached = _PATCHES[key]
    if isinstance(cached, PatchRefused):
        raise PatchRefused(cached.reason)
    return cached


def _read_sources(root: Path, requests: list[RunRequest]) -> None:
    """Read the script of every version the plan needs through one open repository (GitPython:
    50 files in 30-46 ms, against 100 ms for a `git show` each), into _SOURCES."""
    from flor import gitrepo

    wanted = {(q.run.vid, q.run.filename) for q in requests} - {(v, f) for r, v, f in _SOURCES
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
                              f"({e}); fetch {protocol.SNAPSHOT_REF_PREFIX}*") from None
    return _SOURCES[key]
