"""Plan a hindsight replay: which runs lack which names, the patched code for each version,
the segments to run from checkpoints, and an estimate of the time it takes.

plan_replay(session, names, where) -> ReplayPlan. Nothing runs here; `replay_run` executes.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp

from .catalog_session import CatalogSession
from .errors import EngineError
from .memo import is_memoizable
from .propagate import Refusal, propagate
from .where import parse_where

# Interpreter start and imports before the script's first flor call, which no record covers
# (torch alone takes 2-3 s on a 2-core machine).
IMPORT_SECONDS = 2.0
WORKTREE_SECONDS = 0.3  # git worktree add/remove and writing the patched file, per segment


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
class ReplayPlan:
    names: list[str]
    runs: list[RunPlan]
    workers: int

    @property
    def tasks(self) -> list[tuple[RunPlan, Segment]]:
        return [(r, s) for r in self.runs if r.refusal is None for s in r.segments]

    @property
    def estimated_seconds(self) -> float:
        """Makespan of the longest-first assignment of segments to the workers."""
        loads = [0.0] * max(1, self.workers)
        for seg in sorted((s.seconds for _, s in self.tasks), reverse=True):
            loads[loads.index(min(loads))] += seg
        return max(loads)


def plan_replay(session: CatalogSession, names: list[str], where: str | None = None,
                workers: int = 1, iterations: set[int] | None = None) -> ReplayPlan:
    """The replay that recovers `names` for the finished runs matching `where`.

    `iterations` limits it to those outer-loop iterations (`epoch = 4`): only they are run,
    each from the nearest checkpoint at or before it; code after the loop is then not run.
    """
    session.refresh()
    rows = _candidate_runs(session, where)
    runs = [_run_plan(session, row, names, iterations) for row in rows]
    runs = [r for r in runs if r.names]
    startup = _startup_seconds(session)
    # every segment is a process that pays the start-up: split runs only to fill idle workers
    split = max(1, workers // max(1, len([r for r in runs if r.refusal is None])))
    for run in runs:
        if run.refusal is None:
            run.segments = (_segments(session, run, split, startup) if iterations is None
                            else _filtered_segments(session, run, iterations, startup))
    return ReplayPlan(names=list(names), runs=runs, workers=workers)


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
              iterations: set[int] | None) -> RunPlan:
    tstamp, runid, vid, filename, argv, run_dir = row
    run_dir = str(session.project.runs_dir / Path(run_dir).name)  # the project may have moved
    have = _names_present(session, tstamp, iterations)
    missing = [n for n in names if n.lower() not in have]
    plan = RunPlan(str(tstamp), runid, vid, filename, list(argv), run_dir, missing,
                   session.project.root)
    if not missing:
        return plan
    try:
        old = _source_at(session.project.root, vid, filename)
        new = (session.project.root / filename).read_text()
    except (OSError, EngineError) as e:
        plan.refusal = str(e)
        return plan
    result = propagate(old, new, missing)
    if isinstance(result, Refusal):
        plan.refusal = f"{result.name}: {result.reason}"
    else:
        plan.patched = result.source
        plan.memoize = is_memoizable(result.source, [i.line for i in result.inserted])
    return plan


def _segments(session: CatalogSession, run: RunPlan, workers: int,
              startup: float) -> list[Segment]:
    """Contiguous ranges of outer iterations, each starting at a durable checkpoint."""
    ckpts = session.con.execute(
        "SELECT loop_name, iteration FROM checkpoints WHERE tstamp = ? ORDER BY iteration",
        [run.tstamp]).fetchall()
    seconds = dict(session.con.execute(
        "SELECT iteration, seconds FROM iterations WHERE tstamp = ? AND source = 'forward'",
        [run.tstamp]).fetchall())
    total = sum(seconds.values())
    if not ckpts or not seconds:  # no loop or no checkpoints: the whole script, once
        return [Segment(0, None, startup + total)]
    run.loop = ckpts[0][0]
    n_iters = max(seconds) + 1
    saved = {i for _, i in ckpts}
    if run.memoize and all(i + 1 in saved for i in range(n_iters)):
        # the inner loops are skipped: each iteration costs two checkpoint reads and its tail
        reads = 2 * n_iters * _checkpoint_read_seconds(session, run.tstamp)
        return [Segment(0, None, startup + reads)]
    run.memoize = False
    starts = _split_points([i for _, i in ckpts if i < n_iters], seconds, workers)
    bounds = [*starts[1:], None]
    return [Segment(a, b, startup + sum(v for i, v in seconds.items()
                                        if i >= a and (b is None or i < b)))
            for a, b in zip(starts, bounds, strict=True)]


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


def _filtered_segments(session: CatalogSession, run: RunPlan, iterations: set[int],
                       startup: float) -> list[Segment]:
    """One segment per wanted iteration, from the nearest checkpoint; overlaps merged."""
    ckpts = session.con.execute(
        "SELECT loop_name, iteration FROM checkpoints WHERE tstamp = ? ORDER BY iteration",
        [run.tstamp]).fetchall()
    if not ckpts:
        run.refusal = "the run has no checkpoints to start the wanted iterations from"
        return []
    run.loop, saved = ckpts[0][0], {i for _, i in ckpts}
    seconds = dict(session.con.execute(
        "SELECT iteration, seconds FROM iterations WHERE tstamp = ? AND source = 'forward'",
        [run.tstamp]).fetchall())
    run.memoize = run.memoize and all(k in saved and k + 1 in saved for k in iterations)
    spans: list[list[int]] = []
    for k in sorted(iterations):
        start = k if run.memoize else max(i for i in saved if i <= k)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = k + 1
        else:
            spans.append([start, k + 1])
    per_iter = (2 * _checkpoint_read_seconds(session, run.tstamp) if run.memoize else None)
    return [Segment(a, b, startup + sum(per_iter or seconds.get(i, 0.0) for i in range(a, b)))
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


def _startup_seconds(session: CatalogSession) -> float:
    """What a replay process pays outside its loop: imports, plus the set-up a forward run
    spends between its first flor call and its loop (median over finished runs)."""
    row = session.con.execute(
        "SELECT median(epoch(r.end_time - r.start_time) - i.loop_s) FROM runs r JOIN "
        "(SELECT tstamp, sum(seconds) AS loop_s FROM iterations WHERE source = 'forward' "
        "GROUP BY tstamp) i USING (tstamp) WHERE r.status = 'finished'").fetchone()
    setup = row[0] if row and row[0] is not None and row[0] > 0 else 0.0
    return IMPORT_SECONDS + setup + WORKTREE_SECONDS


def _source_at(root: Path, vid: str, filename: str) -> str:
    proc = subprocess.run(["git", "show", f"{vid}:{filename}"], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise EngineError(f"the code of version {vid[:10]} is not in this repository "
                          f"({proc.stderr.strip()[:120]}); fetch refs/flor/snapshots/*")
    return proc.stdout
