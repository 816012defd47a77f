"""Segments and cost estimates of a replay, from the recorded per-iteration timings.

The estimate is a makespan: segments assigned longest first to the workers, each segment
costing its share of the recorded loop time (or two checkpoint reads per skipped inner loop)
plus its start-up. With warm workers (replay_pool.py) a segment's start-up is a fork plus the
script's set-up outside the loop, less the imports the worker has already done; a worker that
is not warm yet first pays an interpreter and those imports, once. Without the pool every
segment is a new interpreter and pays them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .catalog_session import CatalogSession
from .replay_pool import ALSO_WARM, pool_enabled

if TYPE_CHECKING:
    from .replay_plan import RunPlan

# Interpreter start and imports before the script's first flor call, which no record covers
# (torch alone takes 2-3 s on a 2-core machine).
IMPORT_SECONDS = 2.0
WORKTREE_SECONDS = 0.3  # a new interpreter per segment: the vid's tree, process start and exit
# Warm workers: per segment, the vid's tree (read-tree -u), the fork, the child's set-up and exit.
FORK_SECONDS = 0.07
# What a script imports lazily after its first flor call, which a warm worker has imported
# already: torch's compiler stack, at the first optimizer (about 1 s on a 2-core machine).
LAZY_IMPORT_SECONDS = 1.0
_LAZY_MODULES = frozenset(m for extra in ALSO_WARM.values() for m in extra)
SETUP_FLOOR = 0.02  # the least set-up a segment pays outside its loop
FINISH_SECONDS = 0.05  # after the tasks: ingest of the new records (~30 ms)
MAX_SPLIT = 8  # segments per run tried when balancing the workers


@dataclass
class Segment:
    start: int  # first outer iteration, restored from its checkpoint
    stop: int | None  # exclusive; None: to the end of the script
    seconds: float  # estimated
    full: float | None = None  # estimated with every inner loop run (memoized segments only)

    @property
    def unmemoized(self) -> float:
        """The estimate of the full replay a failed memoization check falls back to."""
        return self.seconds if self.full is None else max(self.seconds, self.full)


@dataclass
class Startup:
    """What running a segment costs outside its loop."""

    per_segment: float  # every segment: fork or interpreter, set-up, the vid's tree
    per_worker: float = 0.0  # once per worker that is not warm yet: interpreter and imports
    warm_workers: int = 0  # workers already warm with the modules (replay_pool.py)
    pooled: bool = False  # segments run in forked children of warm workers


@dataclass
class Timing:
    """A run's recorded outer loop: its checkpoints and per-iteration seconds."""

    loop: str | None
    saved: set[int]
    seconds: dict[int, float]
    read: float  # seconds to read one of its checkpoints
    cache: dict = field(default_factory=dict, repr=False)  # segments() results, see there

    @property
    def n_iters(self) -> int:
        return max(self.seconds) + 1 if self.seconds else 0

    def cost(self, i: int, memoize: bool) -> float:
        """Iteration i replayed: two checkpoint reads when its inner loop is skipped (a
        memoized replay skips it where the state at its end was saved), else its time."""
        if memoize and i + 1 in self.saved:
            return 2 * self.read
        return self.seconds.get(i, 0.0)


def load_timings(session: CatalogSession) -> dict[str, Timing]:
    """str(tstamp) -> Timing for every run: three queries, kept until the catalog changes."""
    return session.derived("timings", lambda: _read_timings(session))


def _read_timings(session: CatalogSession) -> dict[str, Timing]:
    ckpts = session.con.execute(
        "SELECT tstamp, arg_min(loop_name, iteration), list(iteration), avg(bytes) "
        "FROM checkpoints GROUP BY tstamp").fetchall()
    seconds = session.con.execute(
        "SELECT tstamp, list(iteration), list(seconds) FROM iterations "
        "WHERE source = 'forward' GROUP BY tstamp").fetchall()
    out = {str(t): Timing(None, set(), dict(zip(its, secs, strict=True)), 0.002)
           for t, its, secs in seconds}
    for t, loop, iters, size in ckpts:
        timing = out.setdefault(str(t), Timing(None, set(), {}, 0.002))
        timing.loop, timing.saved = loop, set(iters)
        timing.read = 0.002 + (size or 0) / 500e6  # a file open plus ~0.5 GB/s of torch.load
    return out


def makespan(seconds: list[float], workers: int, startup: Startup) -> float:
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


def balance(runs: list[RunPlan], timings: dict[str, Timing], workers: int,
            startup: Startup) -> None:
    """Split the runs into segments so that the estimated makespan is least: every split
    adds a segment's start-up, so runs are split only where idle workers gain more."""
    best: tuple[float, dict[str, list[Segment]]] | None = None
    for split in range(1, MAX_SPLIT + 1):
        segs = {r.tstamp: segments(r, timings[r.tstamp], split, startup) for r in runs}
        seconds = [seg.seconds for ss in segs.values() for seg in ss]
        span = makespan(seconds, workers, startup) if seconds else 0.0
        if best is not None and span >= best[0] * 0.99:  # a split must gain something
            break
        best = (span, segs)
        if workers == 1 or split >= max((timings[r.tstamp].n_iters for r in runs), default=1):
            break
    for run in runs:
        run.segments = best[1][run.tstamp] if best else []


def segments(run: RunPlan, t: Timing, split: int, startup: Startup) -> list[Segment]:
    """Contiguous ranges of outer iterations, each starting at a durable checkpoint.

    Kept on the Timing (which lives until the catalog changes): planning many runs again
    costs a lookup per run."""
    key = (split, run.memoize, startup.per_segment)
    if key not in t.cache:
        segs = _segments(run, t, split, startup)
        t.cache[key] = (run.loop, run.memoize,
                        [(s.start, s.stop, s.seconds, s.full) for s in segs])
    run.loop, run.memoize, spans = t.cache[key]
    return [Segment(*span) for span in spans]


def _segments(run: RunPlan, t: Timing, split: int, startup: Startup) -> list[Segment]:
    if not t.saved or not t.seconds:  # no loop or no checkpoints: the whole script, once
        run.loop, run.memoize = t.loop, False
        return [Segment(0, None, startup.per_segment + sum(t.seconds.values()))]
    run.loop = t.loop
    if run.memoize and any(i + 1 in t.saved for i in range(t.n_iters)):
        # inner loops skipped wherever the state at their end was saved: one cheap segment
        return [Segment(0, None, startup.per_segment
                        + sum(t.cost(i, True) for i in range(t.n_iters)),
                        startup.per_segment + sum(t.seconds.values()))]
    run.memoize = False
    starts = split_points([i for i in t.saved if i < t.n_iters], t.seconds, split)
    bounds = [*starts[1:], None]
    return [Segment(a, b, startup.per_segment + sum(v for i, v in t.seconds.items()
                                                    if i >= a and (b is None or i < b)))
            for a, b in zip(starts, bounds, strict=True)]


def filtered_segments(run: RunPlan, t: Timing, iterations: set[int],
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
    return [Segment(a, b, startup.per_segment + sum(t.cost(i, run.memoize) for i in range(a, b)),
                    startup.per_segment + sum(t.cost(i, False) for i in range(a, b))
                    if run.memoize else None)
            for a, b in spans]


def split_points(ckpt_iters: list[int], seconds: dict[int, float], workers: int) -> list[int]:
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


def startup_costs(session: CatalogSession, modules: list[str]) -> Startup:
    """What a segment pays outside its loop: the set-up a forward run spends between its
    first flor call and its loop (median over finished runs), plus the interpreter and
    imports (IMPORT_SECONDS) for a new process, or a fork for a warm worker."""
    setup = session.derived("setup_seconds", lambda: _setup_seconds(session))
    if not pool_enabled():
        return Startup(IMPORT_SECONDS + setup + WORKTREE_SECONDS)
    pool: Any = getattr(session, "_replay_pool", None)  # only looked at: planning starts none
    warm = pool.warm_count(modules) if pool is not None and not pool.closed else 0
    # forward runs paid the lazy imports inside their set-up; a worker pays them once, ahead
    lazy = LAZY_IMPORT_SECONDS * sum(1 for m in modules if m in _LAZY_MODULES)
    return Startup(per_segment=FORK_SECONDS + max(SETUP_FLOOR, setup - lazy),
                   per_worker=IMPORT_SECONDS + lazy, warm_workers=warm, pooled=True)


def _setup_seconds(session: CatalogSession) -> float:
    row = session.con.execute(
        "SELECT median(epoch(r.end_time - r.start_time) - i.loop_s) FROM runs r JOIN "
        "(SELECT tstamp, sum(seconds) AS loop_s FROM iterations WHERE source = 'forward' "
        "GROUP BY tstamp) i USING (tstamp) WHERE r.status = 'finished'").fetchone()
    return row[0] if row and row[0] is not None and row[0] > 0 else 0.0
