"""Segments and cost estimates of a replay, from the recorded per-iteration timings.

The estimate is a makespan: segments assigned longest first to the workers, each segment
costing its share of the recorded loop time (or two checkpoint reads per skipped inner loop)
plus its start-up, which the executor says (executor.py): with warm workers a segment's
start-up is a fork plus the script's set-up outside the loop, less the imports the worker has
already done, and a worker that is not warm yet first pays an interpreter and those imports,
once; a process per task pays them all every time.

Every function here returns numbers and segments; none edits the plan it estimates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..query.session import CatalogSession
from .model import RunPlan, Segment, Startup

# Interpreter start and imports before the script's first flor call, which no record covers
# (torch alone takes 2-3 s on a 2-core machine).
IMPORT_SECONDS = 2.0
WORKTREE_SECONDS = 0.3  # a new interpreter per segment: the vid's tree, process start and exit
# Warm workers: per segment, the vid's tree (read-tree -u), the fork, the child's set-up and exit.
FORK_SECONDS = 0.07
# What a script imports lazily after its first flor call, which a warm worker has imported
# already: torch's compiler stack, at the first optimizer (about 1 s on a 2-core machine).
LAZY_IMPORT_SECONDS = 1.0
SETUP_FLOOR = 0.02  # the least set-up a segment pays outside its loop
FINISH_SECONDS = 0.05  # after the tasks: ingest of the new records (~30 ms)
MAX_SPLIT = 8  # segments per run tried when balancing the workers


@dataclass(frozen=True)
class RunEstimate:
    """How one run is replayed: the loop its segments cut, whether inner loops are skipped,
    the segments, or why it cannot be."""

    loop: str | None
    memoize: bool
    segments: tuple[Segment, ...]
    refusal: str | None = None


@dataclass
class Timing:
    """A run's recorded outer loop: its checkpoints and per-iteration seconds."""

    loop: str | None
    saved: set[int]
    seconds: dict[int, float]
    read: float  # seconds to read one of its checkpoints
    cache: dict = field(default_factory=dict, repr=False)  # estimate_run results, see there

    @property
    def n_iters(self) -> int:
        return max(self.seconds) + 1 if self.seconds else 0

    def cost(self, i: int, memoize: bool) -> float:
        """Iteration i replayed: two checkpoint reads when its inner loop is skipped (a
        memoized replay skips it where the state at its end was saved), else its time."""
        if memoize and i + 1 in self.saved:
            return 2 * self.read
        return self.seconds.get(i, 0.0)


NO_TIMING = Timing(None, set(), {}, 0.002)


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


def plan_seconds(seconds: Sequence[float], workers: int, startup: Startup) -> float:
    """The estimated wall time of a replay of segments costing `seconds`: their makespan on
    `workers` plus the ingest at the end."""
    if not seconds:
        return 0.0
    return makespan(list(seconds), workers, startup) + FINISH_SECONDS


def balance(runs: Sequence[RunPlan], timings: dict[str, Timing], workers: int,
            startup: Startup) -> dict[str, RunEstimate]:
    """tstamp -> segments of each run so that the estimated makespan is least: every split
    adds a segment's start-up, so runs are split only where idle workers gain more.
    `run.memoize` says whether its patch allows skipping inner loops."""
    best: tuple[float, dict[str, RunEstimate]] | None = None
    for split in range(1, MAX_SPLIT + 1):
        ests = {r.tstamp: estimate_run(timings[r.tstamp], r.memoize, split, startup)
                for r in runs}
        seconds = [seg.seconds for e in ests.values() for seg in e.segments]
        span = makespan(seconds, workers, startup) if seconds else 0.0
        if best is not None and span >= best[0] * 0.99:  # a split must gain something
            break
        best = (span, ests)
        if workers == 1 or split >= max((timings[r.tstamp].n_iters for r in runs), default=1):
            break
    return best[1] if best else {}


def estimate_run(t: Timing, memoizable: bool, split: int, startup: Startup) -> RunEstimate:
    """Contiguous ranges of outer iterations, each starting at a durable checkpoint.

    Kept on the Timing (which lives until the catalog changes): planning many runs again
    costs a lookup per run."""
    key = (split, memoizable, startup.per_segment)
    if key not in t.cache:
        t.cache[key] = _estimate_run(t, memoizable, split, startup)
    return t.cache[key]


def _estimate_run(t: Timing, memoizable: bool, split: int, startup: Startup) -> RunEstimate:
    if not t.saved or not t.seconds:  # no loop or no checkpoints: the whole script, once
        return RunEstimate(t.loop, False,
                           (Segment(0, None, startup.per_segment + sum(t.seconds.values())),))
    if memoizable and any(i + 1 in t.saved for i in range(t.n_iters)):
        # inner loops skipped wherever the state at their end was saved: one cheap segment
        return RunEstimate(t.loop, True, (Segment(
            0, None, startup.per_segment + sum(t.cost(i, True) for i in range(t.n_iters)),
            startup.per_segment + sum(t.seconds.values())),))
    starts = split_points([i for i in t.saved if i < t.n_iters], t.seconds, split)
    bounds = [*starts[1:], None]
    return RunEstimate(t.loop, False, tuple(
        Segment(a, b, startup.per_segment + sum(v for i, v in t.seconds.items()
                                                if i >= a and (b is None or i < b)))
        for a, b in zip(starts, bounds, strict=True)))


def estimate_window(t: Timing, memoizable: bool, iterations: set[int],
                    startup: Startup) -> RunEstimate:
    """One segment per wanted iteration, from the nearest checkpoint; overlaps merged."""
    if not t.saved:
        return RunEstimate(t.loop, False, (),
                           "the run has no checkpoints to start the wanted iterations from")
    memoize = memoizable and any(k + 1 in t.saved for k in iterations)
    spans: list[list[int]] = []
    for k in sorted(iterations):
        start = max(i for i in t.saved if i <= k)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = k + 1
        else:
            spans.append([start, k + 1])
    return RunEstimate(t.loop, memoize, tuple(
        Segment(a, b, startup.per_segment + sum(t.cost(i, memoize) for i in range(a, b)),
                startup.per_segment + sum(t.cost(i, False) for i in range(a, b))
                if memoize else None)
        for a, b in spans))


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


def setup_seconds(session: CatalogSession) -> float:
    """The set-up a forward run spends between its first flor call and its loop (median over
    finished runs): what a segment pays outside its loop besides its start."""
    return session.derived("setup_seconds", lambda: _setup_seconds(session))


def _setup_seconds(session: CatalogSession) -> float:
    row = session.con.execute(
        "SELECT median(epoch(r.end_time - r.start_time) - i.loop_s) FROM runs r JOIN "
        "(SELECT tstamp, sum(seconds) AS loop_s FROM iterations WHERE source = 'forward' "
        "GROUP BY tstamp) i USING (tstamp) WHERE r.status = 'finished'").fetchone()
    return row[0] if row and row[0] is not None and row[0] > 0 else 0.0
