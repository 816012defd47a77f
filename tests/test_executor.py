"""The replay service runs on any Executor, and every surface goes through its one lock.

`InlineExecutor` below is written here, from the interface alone: it runs each task as a plain
`subprocess.run` after a JSON round trip, one at a time, with nothing of the warm pool or of
the engine's local executors. Replays through it store the values a real run logs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import flor
import florsql
from conftest import TOTAL_SCRIPT, TOTAL_TODAY, run_script, total_history
from florsql.engine import (
    CatalogSession,
    Executor,
    ReplayService,
    ReplayTask,
    Submission,
    TaskResult,
    perform_task,
)
from florsql.engine.replay.model import INTERRUPTED, Startup
from florsql.engine.replay.process import Exit, Launch
from florsql.engine.replay.service import project_lock

SCRIPT, TODAY = TOTAL_SCRIPT, TOTAL_TODAY


def _subprocess_run(launch: Launch, cancel: threading.Event) -> Exit:
    proc = subprocess.run([sys.executable, *launch.argv], cwd=launch.cwd, env=launch.env,
                          capture_output=True, text=True, timeout=launch.limit)
    (launch.logs / "stderr.log").write_text(proc.stderr)
    return Exit(proc.returncode, None, proc.stderr, launch.limit)


class InlineExecutor(Executor):
    name = "inline (test)"

    def __init__(self) -> None:
        self.received: list[ReplayTask] = []
        self.sent: list[ReplayTask] = []

    def startup(self, setup_seconds: float, modules: Sequence[str]) -> Startup:
        return Startup(0.25 + setup_seconds)

    def submit(self, tasks: Sequence[ReplayTask], workers: int,
               cancel: threading.Event) -> Submission:
        self.sent.extend(tasks)
        return _InlineSubmission(self, list(tasks), cancel)


class _InlineSubmission(Submission):
    def __init__(self, executor: InlineExecutor, tasks: list[ReplayTask],
                 cancel: threading.Event) -> None:
        self.executor, self.tasks, self.cancel = executor, tasks, cancel
        self.done: list[TaskResult] = []

    def results(self) -> Iterator[TaskResult]:
        for task in self.tasks:
            if self.cancel.is_set():
                raise KeyboardInterrupt
            copy = ReplayTask.from_json(task.to_json())  # as it would travel to another host
            self.executor.received.append(copy)
            self.done.append(perform_task(copy, _subprocess_run, self.cancel))
            yield self.done[-1]

    def stop(self) -> list[TaskResult]:
        self.cancel.set()
        left = self.tasks[len(self.done):]
        return self.done + [TaskResult(t, False, 0.0, "stopped", stopped=INTERRUPTED)
                            for t in left]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return total_history(tmp_path / "proj")


def test_a_replay_runs_on_an_executor_written_from_the_interface_alone(project: Path) -> None:
    executor = InlineExecutor()
    session = CatalogSession(project)
    service = ReplayService(session, executor)
    try:
        plan = service.plan_names(["double"], workers=2)
        assert plan.executor == "inline (test)" and len(plan.tasks) == 2
        assert plan.startup.per_segment >= 0.25  # the executor's own start-up cost
        report = service.run(plan)
    finally:
        service.close()
        session.close()
    assert [r.ok for r in report.results] == [True, True] and not report.failed
    assert not any(r.pooled for r in report.results)
    assert executor.received == executor.sent  # plain data: equal after a JSON round trip
    assert {t.filename for t in executor.received} == {"train.py"}
    replayed = {(lr, v) for lr, _, v in _values(project, "double", "replay")}
    for lr in ("0.1", "0.3"):
        run_script(project, "train.py", "--kwargs", f"lr={lr}")  # what a real run logs today
    forward = {(lr, v) for lr, _, v in _values(project, "double", "forward")}
    assert replayed == forward and len(replayed) == 6


def _values(repo: Path, name: str, source: str) -> list[tuple]:
    with florsql.connect(repo, replay="off") as conn:
        return conn.execute(
            "SELECT r.argv[-1], l.ctx_id, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "WHERE l.value_name = ? AND l.source = ? ORDER BY ALL", [name, source]).fetchall()


def test_a_query_replays_through_the_executor_of_its_connection(project: Path) -> None:
    executor = InlineExecutor()
    with florsql.connect(project) as conn:
        conn.replay_service = ReplayService(conn.session, executor)
        rows = conn.execute("SELECT lr, epoch, double FROM history ORDER BY ALL").fetchall()
    assert len(executor.received) == 2
    assert len(rows) == 6 and all(d is not None for _, _, d in rows)


def test_the_estimate_never_edits_the_plan_and_plans_the_same_twice(project: Path) -> None:
    session = CatalogSession(project)
    service = ReplayService(session, InlineExecutor())
    try:
        first = service.plan_names(["double"], workers=1)
        second = service.plan_names(["double"], workers=1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            first.runs[0].segments = ()  # type: ignore[misc]
    finally:
        session.close()
    assert first == second and first.estimated_seconds > 0


def _hold_lock(project: Path) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """Hold the project's replay lock in another thread until `release` is set."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # the lock alone: the catalog stays free for the others to open
        with project_lock(project / ".flor").hold():
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(30)
    return held, release, thread


def test_florsql_replay_waits_for_the_lock_a_query_holds(project: Path) -> None:
    _, release, holder = _hold_lock(project)
    env = {**os.environ, "FLOR_REPLAY_POOL": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "florsql", "replay", "double", str(project)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # long enough to plan and start, were there no lock
        # on disk, not through the catalog: the waiting process holds it (one process at a time)
        assert proc.poll() is None and not list(project.glob(".flor/runs/*/replays/*"))
    finally:
        release.set()
        holder.join(30)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "another replay of this project is running; waiting" in err
    assert len(_values(project, "double", "replay")) == 6


def test_flor_replay_and_a_query_wait_for_the_same_lock(project: Path) -> None:
    _, release, holder = _hold_lock(project)
    outcome: dict[str, object] = {}

    def replay() -> None:
        outcome["frame"] = flor.replay("double", "lr > 0.2", path=project, progress=False)

    def query() -> None:
        with florsql.connect(project) as conn:
            outcome["rows"] = conn.execute("SELECT double FROM history WHERE lr < 0.2").fetchall()

    workers = [threading.Thread(target=replay), threading.Thread(target=query)]
    for w in workers:
        w.start()
    time.sleep(2)
    try:
        assert all(w.is_alive() for w in workers) and "frame" not in outcome
    finally:
        release.set()
        holder.join(30)
    for w in workers:
        w.join(120)
    assert outcome["frame"].status.tolist() == ["replayed"]
    assert [d is not None for (d,) in outcome["rows"]] == [True] * 3
