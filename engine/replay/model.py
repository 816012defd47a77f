"""The records a replay is made of, from the runs it reads to the results it returns.

    RunRow -> RunRequest -> RunPlan (patch + segments) -> ReplayPlan (+ skipped runs)
    ReplayPlan -> ReplayTask (one per segment: plain data, JSON-serialisable) -> TaskResult

A ReplayTask says everything an executor needs to run it anywhere the project's git objects
and flor home can be read: the version and its patched script, the arguments, the window of
outer-loop iterations, the names to record and where the records go. Nothing here runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import NamedTuple


@dataclass(frozen=True)
class RunRow:
    """The `runs` row of a run a replay reads."""

    tstamp: datetime | str
    runid: str
    vid: str
    filename: str
    argv: tuple[str, ...]
    run_dir: str
    status: str = "finished"


@dataclass(frozen=True)
class RunRequest:
    """One run to replay: the names it lacks and the outer iterations wanted (None: the whole
    run)."""

    run: RunRow
    names: tuple[str, ...]
    iterations: frozenset[int] | None = None


@dataclass(frozen=True)
class Segment:
    start: int  # first outer iteration, restored from its checkpoint
    stop: int | None  # exclusive; None: to the end of the script
    seconds: float  # estimated
    full: float | None = None  # estimated with every inner loop run (memoized segments only)

    @property
    def unmemoized(self) -> float:
        """The estimate of the full replay a failed memoization check falls back to."""
        return self.seconds if self.full is None else max(self.seconds, self.full)


@dataclass(frozen=True)
class Patch:
    """Today's statements propagated into an old version of a script."""

    source: str
    memoizable: bool  # inner loops may be skipped where their end state was saved
    statements: tuple[str, ...]  # what was inserted, "line N: text"


@dataclass(frozen=True)
class RunPlan:
    """What replaying one run takes: its patched script and its segments, or why not."""

    tstamp: str
    runid: str
    vid: str
    filename: str
    argv: tuple[str, ...]
    run_dir: str
    names: tuple[str, ...]
    iterations: tuple[int, ...] | None = None  # the outer iterations asked for; None: all
    loop: str | None = None
    patched: str | None = None
    refusal: str | None = None
    memoize: bool = False
    segments: tuple[Segment, ...] = ()
    statements: tuple[str, ...] = ()

    @property
    def est_seconds(self) -> float:
        return sum(s.seconds for s in self.segments)


@dataclass(frozen=True)
class Skipped:
    """A run the query reads whose missing values no replay will fill."""

    runid: str
    tstamp: str
    reason: str


class PlannedTask(NamedTuple):
    run: RunPlan
    segment: Segment


@dataclass(frozen=True)
class Startup:
    """What running a segment costs outside its loop, as the executor that runs it says."""

    per_segment: float  # every segment: fork or interpreter, set-up, the vid's tree
    per_worker: float = 0.0  # once per worker that is not warm yet: interpreter and imports
    warm_workers: int = 0  # workers already warm with the modules
    pooled: bool = False  # segments run in forked children of warm workers


@dataclass(frozen=True)
class ReplayPlan:
    """Every run a replay covers, how, and what it is estimated to cost."""

    names: tuple[str, ...]
    runs: tuple[RunPlan, ...]
    workers: int
    executor: str  # which executor's costs the estimate assumes
    slots: int = 0  # how many tasks that executor runs at once (servers' workers, cluster CPUs)
    estimated_seconds: float = 0.0
    startup: Startup = field(default_factory=lambda: Startup(0.0))
    modules: tuple[str, ...] = ()  # what warm workers import ahead
    skipped: tuple[Skipped, ...] = ()

    @property
    def tasks(self) -> list[PlannedTask]:
        return [PlannedTask(r, s) for r in self.runs if r.refusal is None for s in r.segments]

    @property
    def refused(self) -> list[RunPlan]:
        return [r for r in self.runs if r.refusal is not None]

    def warnings(self) -> list[str]:
        """One line per run whose values no replay of this plan fills."""
        lines = [f"{s.runid} ({s.tstamp}): {s.reason}" for s in self.skipped]
        return lines + [f"{r.runid} ({r.tstamp}): not replayed: {r.refusal}"
                        for r in self.refused]


@dataclass(frozen=True)
class ReplayTask:
    """One segment of one run, as plain data: what an executor runs, here or elsewhere."""

    task_id: str  # also the name of its records' folder under the run's replays/
    project_root: str
    home: str  # the flor home: its replays-staging/ holds the records until the task ends
    runid: str
    tstamp: str
    vid: str
    filename: str  # the script, relative to the project root
    argv: tuple[str, ...]  # the run's arguments after the script
    source: str  # the script of version `vid` with today's statements in it
    run_dir: str  # the recorded run: its checkpoints, and where the records end up
    loop: str | None
    start: int
    stop: int | None
    names: tuple[str, ...]
    memoize: bool
    estimate: float  # seconds, as planned
    full_estimate: float  # seconds if memoization fails and the task runs in full
    timeout: float | None = None  # seconds; None: from the estimate; 0: no limit
    threads: int = 1  # for the task's numeric libraries
    preload: tuple[str, ...] = ()  # modules its script imports, that a warm worker loads ahead

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> ReplayTask:
        doc = json.loads(raw)
        for key in ("argv", "names", "preload"):
            doc[key] = tuple(doc[key])
        return cls(**doc)


@dataclass(frozen=True)
class TaskResult:
    """How one task ended. `stopped`: "timeout" or "interrupted" when florsql stopped it."""

    task: ReplayTask
    ok: bool
    seconds: float
    error: str | None = None
    memoized: bool = False  # the inner loops were skipped (and the run-time check held)
    pooled: bool = False  # ran in a forked child of a warm worker, not a new interpreter
    stopped: str | None = None


@dataclass(frozen=True)
class ReplayReport:
    """What a replay did: one result per task that ran or was stopped."""

    plan: ReplayPlan
    results: tuple[TaskResult, ...]

    @property
    def failed(self) -> list[TaskResult]:
        return failures(self.results)

    def warnings(self) -> list[str]:
        """One line per run left without its values: refused, skipped or failed."""
        failed = {r.task.tstamp: r for r in self.results if not r.ok}
        return self.plan.warnings() + [
            f"{r.task.runid} ({r.task.tstamp}): replay failed: {one_line(r.error)}"
            for r in failed.values()]


INTERRUPTED = "interrupted"


def failures(results: Iterable[TaskResult]) -> list[TaskResult]:
    """Tasks that failed by themselves (not those an interrupt stopped)."""
    return [r for r in results if not r.ok and r.stopped != INTERRUPTED]


class ReplayInterrupted(KeyboardInterrupt):
    """A replay stopped by Ctrl-C, SIGTERM or its cancel event: every running task was killed
    and its folders removed; the tasks that had finished keep their records."""

    def __init__(self, stopped: int, kept: int, results: list[TaskResult]) -> None:
        super().__init__(f"replay interrupted: {stopped} task(s) stopped, "
                         f"{kept} finished and kept")
        self.stopped, self.kept, self.results = stopped, kept, results


def one_line(text: str | None) -> str:
    """The first and last non-blank lines of `text` (an error's message and traceback)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return " | ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines[0] if lines else "")
