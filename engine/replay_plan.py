"""Plan a hindsight replay: which runs lack which names, the patched code for each version,
the segments to run from checkpoints, and an estimate of the time it takes.

plan_replay(session, names, where) -> ReplayPlan. Nothing runs here; `replay_run` executes.

The estimate is a makespan: segments assigned longest first to the workers, each segment
costing its share of the recorded loop time (or two checkpoint reads per skipped inner loop)
plus its start-up. With warm workers (replay_pool.py) a segment's start-up is a fork plus the
script's set-up outside the loop, less the imports the worker has already done; a worker that
is not warm yet first pays an interpreter and those imports, once. Without the pool every
segment is a new interpreter and pays them all.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from .catalog_session import CatalogSession
from .errors import EngineError
from .memo import is_memoizable
from .propagate import Refusal, propagate
from .replay_pool import ALSO_WARM, pool_enabled
from .where import parse_where

# Interpreter start and imports before the script's first flor call, which no record covers
# (torch alone takes 2-3 s on a 2-core machine).
IMPORT_SECONDS = 2.0
WORKTREE_SECONDS = 0.3  # a new interpreter per segment: git worktree, process start and exit
# Warm workers: per segment, git worktree add/remove, the fork, the child's set-up and exit.
FORK_SECONDS = 0.07
# What a script imports lazily after its first flor call, which a warm worker has imported
# already: torch's compiler stack, at the first optimizer (about 1 s on a 2-core machine).
LAZY_IMPORT_SECONDS = 1.0
_LAZY_MODULES = frozenset(m for extra in ALSO_WARM.values() for m in extra)
SETUP_FLOOR = 0.02  # the least set-up a segment pays outside its loop
FINISH_SECONDS = 0.1  # after the tasks: ingest of the new records
MAX_SPLIT = 8  # segments per run tried when balancing the workers


@dataclass
class Segment:
    start: int  # first outer iteration, restored from its checkpoint
    stop: int | None  # exclusive; None: to the end of the script
    seconds: float  # estimated


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


@dataclass
class Startup:
    """What running a segment costs outside its loop."""

    per_segment: float  # every segment: fork or interpreter, set-up, worktree
    per_worker: float = 0.0  # once per worker that is not warm yet: interpreter and imports
    warm_workers: int = 0  # workers already warm with the modules (replay_pool.py)
    pooled: bool = False  # segments run in forked children of warm workers


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
        return _makespan(seconds, self.workers, self.startup) + FINISH_SECONDS


def plan_replay(session: CatalogSession, names: list[str], where: str | None = None,
                workers: int = 1, iterations: set[int] | None = None) -> ReplayPlan:
    """The replay that recovers `names` for the finished runs matching `where`.

    `iterations` limits it to those outer-loop iterations (`epoch = 4`): only they are run,
    each from the nearest checkpoint at or before it; code after the loop is then not run.
    """
    session.refresh()
    rows = _candidate_runs(session, where)
    sources: dict[tuple[str, str], Any] = {}  # (vid, filename) -> old source, per plan
    runs = [_run_plan(session, row, names, iterations, sources) for row in rows]
    runs = [r for r in runs if r.names]
    workers = max(1, workers)
    modules = _modules(session, runs)
    startup = _startup(session, modules)
    timings = {r.tstamp: _timing(session, r) for r in runs if r.refusal is None}
    if iterations is None:
        _balance(runs, timings, workers, startup)
    else:
        for run in runs:
            if run.refusal is None:
                run.segments = _filtered_segments(run, timings[run.tstamp], iterations,
                                                  startup)
    return ReplayPlan(names=list(names), runs=runs, workers=workers, startup=startup,
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


def _run_plan(session: CatalogSession, row: tuple, names: list[str],
              iterations: set[int] | None, sources: dict) -> RunPlan:
    tstamp, runid, vid, filename, argv, run_dir = row
    run_dir = str(session.project.runs_dir / Path(run_dir).name)  # the project may have moved
    have = _names_present(session, tstamp, iterations)
    missing = [n for n in names if n.lower() not in have]
    plan = RunPlan(str(tstamp), runid, vid, filename, list(argv), run_dir, missing,
                   session.project.root)
    if not missing:
        return plan
    key = (vid, filename, tuple(missing))
    if key not in sources:  # runs of one version share the patch
        try:
            old = _source_at(session.project.root, vid, filename)
            new = (session.project.root / filename).read_text()
        except (OSError, EngineError) as e:
            sources[key] = str(e)
        else:
            result = propagate(old, new, missing)
            sources[key] = (result if isinstance(result, Refusal) else
                            (result.source, is_memoizable(result.source,
                                                          [i.line for i in result.inserted])))
    result = sources[key]
    if isinstance(result, str):
        plan.refusal = result
    elif isinstance(result, Refusal):
        plan.refusal = f"{result.name}: {result.reason}"
    else:
        plan.patched, plan.memoize = result
    return plan


@dataclass
class _Timing:
    """A run's recorded outer loop: its checkpoints and per-iteration seconds."""

    loop: str | None
    saved: set[int]
    seconds: dict[int, float]
    read: float  # seconds to read one of its checkpoints

    @property
    def n_iters(self) -> int:
        return max(self.seconds) + 1 if self.seconds else 0

    def cost(self, i: int, memoize: bool) -> float:
        """Iteration i replayed: two checkpoint reads when its inner loop is skipped (a
        memoized replay skips it where the state at its end was saved), else its time."""
        if memoize and i + 1 in self.saved:
            return 2 * self.read
        return self.seconds.get(i, 0.0)


def _timing(session: CatalogSession, run: RunPlan) -> _Timing:
    ckpts = session.con.execute(
        "SELECT loop_name, iteration FROM checkpoints WHERE tstamp = ? ORDER BY iteration",
        [run.tstamp]).fetchall()
    seconds = dict(session.con.execute(
        "SELECT iteration, seconds FROM iterations WHERE tstamp = ? AND source = 'forward'",
        [run.tstamp]).fetchall())
    return _Timing(ckpts[0][0] if ckpts else None, {i for _, i in ckpts}, seconds,
                   _checkpoint_read_seconds(session, run.tstamp))


def _balance(runs: list[RunPlan], timings: dict[str, _Timing], workers: int,
             startup: Startup) -> None:
    """Split the runs into segments so that the estimated makespan is least: every split
    adds a segment's start-up, so runs are split only where idle workers gain more."""
    best: tuple[float, dict[str, list[Segment]]] | None = None
    for split in range(1, MAX_SPLIT + 1):
        segs = {r.tstamp: _segments(r, timings[r.tstamp], split, startup)
                for r in runs if r.refusal is None}
        seconds = [seg.seconds for ss in segs.values() for seg in ss]
        span = _makespan(seconds, workers, startup) if seconds else 0.0
        if best is None or span < best[0] * 0.99:  # a split must gain something
            best = (span, segs)
        if workers == 1 or split >= max((t.n_iters for t in timings.values()), default=1):
            break
    for run in runs:
        if run.refusal is None:
            run.segments = best[1][run.tstamp] if best else []


def _segments(run: RunPlan, t: _Timing, split: int, startup: Startup) -> list[Segment]:
    """Contiguous ranges of outer iterations, each starting at a durable checkpoint."""
    if not t.saved or not t.seconds:  # no loop or no checkpoints: the whole script, once
        run.loop, run.memoize = t.loop, False
        return [Segment(0, None, startup.per_segment + sum(t.seconds.values()))]
    run.loop = t.loop
    if run.memoize and any(i + 1 in t.saved for i in range(t.n_iters)):
        # inner loops skipped wherever the state at their end was saved: one cheap segment
        return [Segment(0, None, startup.per_segment
                        + sum(t.cost(i, True) for i in range(t.n_iters)))]
    run.memoize = False
    starts = _split_points([i for i in t.saved if i < t.n_iters], t.seconds, split)
    bounds = [*starts[1:], None]
    return [Segment(a, b, startup.per_segment + sum(v for i, v in t.seconds.items()
                                                    if i >= a and (b is None or i < b)))
            for a, b in zip(starts, bounds, strict=True)]


def _makespan(seconds: list[float], workers: int, startup: Startup) -> float:
    """Longest-first assignment to the least loaded worker; workers not warm yet start
    loaded with their own start-up."""
    workers = max(1, workers)
    warm = min(workers, startup.warm_workers)
    loads = [0.0] * warm + [startup.per_worker] * (workers - warm)
    used = [False] * workers  # a worker that gets no segment is never started
    for seg in sorted(seconds, reverse=True):
        k = loads.index(min(loads))
        loads[k] += seg
        used[k] = True
    return max((load for load, u in zip(loads, used, strict=True) if u), default=0.0)


def _names_present(session: CatalogSession, tstamp: object,
                   iterations: set[int] | None) -> set[str]:
    """Lower-cased names the run has records of (in every one of `iterations`, if given)."""
    if iterations is None:
        return {n for (n,) in session.con.execute(
            "SELECT DISTINCT lower(value_name) FROM logs WHERE tstamp = ?", [tstamp]).fetchall()}
    rows = session.con.execute(
        "SELECT lower(l.value_name), count(DISTINCT lp.iteration) FROM logs l "
        "JOIN loops lp ON lp.tstamp = l.tstamp AND lp.ctx_id = l.ctx_id AND lp.depth = 0 "
        "WHERE l.tstamp = ? AND list_contains(?, lp.iteration) GROUP BY 1",
        [tstamp, sorted(iterations)]).fetchall()
    return {n for n, count in rows if count == len(iterations)}


def _filtered_segments(run: RunPlan, t: _Timing, iterations: set[int],
                       startup: Startup) -> list[Segment]:
    """One segment per wanted iteration, from the nearest checkpoint; overlaps merged."""
    if not t.saved:
        run.refusal = "the run has no checkpoints to start the wanted iterations from"
        return []
    run.loop = t.loop
    run.memoize = run.memoize and any(k + 1 in t.saved for k in iterations)
    spans: list[list[int]] = []
    for k in sorted(iterations):
        start = max(i for i in t.saved if i <= k)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = k + 1
        else:
            spans.append([start, k + 1])
    return [Segment(a, b, startup.per_segment + sum(t.cost(i, run.memoize)
                                                    for i in range(a, b)))
            for a, b in spans]


def _split_points(ckpt_iters: list[int], seconds: dict[int, float], workers: int) -> list[int]:
    """Up to `workers` checkpointed start iterations that balance the loop time."""
    total = sum(seconds.values())
    points, acc, target = [0], 0.0, total / max(1, workers)
    for i in sorted(seconds):
        if acc >= target * len(points) and i in ckpt_iters and i not in points:
            points.append(i)
            if len(points) == workers:
                break
        acc += seconds[i]
    return points


def _checkpoint_read_seconds(session: CatalogSession, tstamp: str) -> float:
    size = session.con.execute(
        "SELECT avg(bytes) FROM checkpoints WHERE tstamp = ?", [tstamp]).fetchone()[0] or 0
    return 0.002 + size / 500e6  # a file open plus ~0.5 GB/s of torch.load


def _modules(session: CatalogSession, runs: list[RunPlan]) -> list[str]:
    """What warm workers import ahead for these runs (empty without the pool)."""
    if not pool_enabled():
        return []
    from .replay_run import replay_modules

    return replay_modules(session.project.root, [r for r in runs if r.refusal is None])


def _startup(session: CatalogSession, modules: list[str]) -> Startup:
    """What a segment pays outside its loop: the set-up a forward run spends between its
    first flor call and its loop (median over finished runs), plus the interpreter and
    imports (IMPORT_SECONDS) for a new process, or a fork for a warm worker."""
    row = session.con.execute(
        "SELECT median(epoch(r.end_time - r.start_time) - i.loop_s) FROM runs r JOIN "
        "(SELECT tstamp, sum(seconds) AS loop_s FROM iterations WHERE source = 'forward' "
        "GROUP BY tstamp) i USING (tstamp) WHERE r.status = 'finished'").fetchone()
    setup = row[0] if row and row[0] is not None and row[0] > 0 else 0.0
    if not pool_enabled():
        return Startup(IMPORT_SECONDS + setup + WORKTREE_SECONDS)
    pool = getattr(session, "_replay_pool", None)  # only looked at: planning starts nothing
    warm = pool.warm_count(modules) if pool is not None and not pool.closed else 0
    # forward runs paid the lazy imports inside their set-up; a worker pays them once, ahead
    lazy = LAZY_IMPORT_SECONDS * sum(1 for m in modules if m in _LAZY_MODULES)
    return Startup(per_segment=FORK_SECONDS + max(SETUP_FLOOR, setup - lazy),
                   per_worker=IMPORT_SECONDS + lazy, warm_workers=warm, pooled=True)


def _source_at(root: Path, vid: str, filename: str) -> str:
    proc = subprocess.run(["git", "show", f"{vid}:{filename}"], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise EngineError(f"the code of version {vid[:10]} is not in this repository "
                          f"({proc.stderr.strip()[:120]}); fetch refs/flor/snapshots/*")
    return proc.stdout
