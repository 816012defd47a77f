"""The queue as a replay executor: a replay handed to a running `florsql serve` stores the same
records as one run by the local pool, and says in its plan where it runs and on how many slots.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import florsql
from conftest import TOTAL_SCRIPT, TOTAL_TODAY, total_history

SCRIPT, TODAY = TOTAL_SCRIPT, TOTAL_TODAY


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return total_history(tmp_path / "proj")


def replayed(repo: Path) -> set[tuple]:
    with florsql.connect(repo, replay="off") as conn:
        return set(conn.execute(
            "SELECT r.argv[-1], l.ctx_id, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "WHERE l.value_name = 'double' AND l.source = 'replay'").fetchall())


def florsql_cli(repo: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "florsql", *args], cwd=repo,
                          capture_output=True, text=True, timeout=timeout)


def test_a_replay_through_the_queue_stores_what_the_local_pool_stores(project: Path,
                                                                        tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(project, twin, symlinks=True)
    local = florsql_cli(twin, "replay", "double", "--executor", "local")
    assert local.returncode == 0, local.stderr
    server = subprocess.Popen([sys.executable, "-m", "florsql", "serve", "--workers", "2"],
                              cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        queued = florsql_cli(project, "replay", "double", "--executor", "queue")
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=60)
    assert queued.returncode == 0, queued.stderr + out
    assert "(queue, 2 slot(s))" in queued.stdout
    assert out.count("replay of train.py") == 2  # the server ran both tasks
    values = replayed(project)
    assert len(values) == 6 and values == replayed(twin)
    with florsql.connect(project, replay="off") as conn:
        jobs = conn.execute("SELECT kind, status, count(*) FROM jobs GROUP BY ALL").fetchall()
    assert jobs == [("replay", "finished", 2)]


def test_the_queue_executor_without_a_server_says_how_to_start_one(project: Path) -> None:
    out = florsql_cli(project, "replay", "double", "--executor", "queue")
    assert out.returncode == 1
    assert "no `florsql serve` is running for the project" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_flor_executor_names_an_unknown_executor_in_one_line(project: Path) -> None:
    env = {**os.environ, "FLOR_EXECUTOR": "slurm"}
    out = subprocess.run([sys.executable, "-m", "florsql", "-c", "SELECT 1"], cwd=project,
                         capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "unknown executor 'slurm'" in out.stderr and "local, process, queue, ray" in out.stderr


def test_ctrl_c_on_a_queued_replay_stops_its_tasks_on_the_server(project: Path) -> None:
    slow = TODAY.replace('flor.log("double", total * 2)',
                         'flor.log("double", (__import__("time").sleep(60), total * 2)[1])')
    (project / "train.py").write_text(slow)
    server = subprocess.Popen([sys.executable, "-m", "florsql", "serve", "--workers", "2"],
                              cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    replay = subprocess.Popen([sys.executable, "-m", "florsql", "replay", "double",
                               "--executor", "queue"], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_running(project, 2)
        started = time.monotonic()
        replay.send_signal(signal.SIGINT)
        _, err = replay.communicate(timeout=60)
        assert time.monotonic() - started < 30  # not the 60 s nap
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    assert replay.returncode == 130 and "replay interrupted: 2 task(s) stopped" in err, err
    with florsql.connect(project, replay="off") as conn:
        jobs = conn.execute("SELECT status, count(*) FROM jobs GROUP BY ALL").fetchall()
    assert jobs == [("cancelled", 2)], out
    assert not list((project / ".flor" / "replays-staging").glob("*/*"))


def _wait_running(project: Path, count: int, timeout: float = 60) -> None:
    from florsql.engine.jobs.store import QUEUE_FILE, JobQueue

    deadline = time.monotonic() + timeout
    path = project / ".flor" / QUEUE_FILE
    while time.monotonic() < deadline:
        if path.exists() and len(JobQueue(path).read(
                "SELECT id FROM jobs WHERE status = 'running'")) == count:
            time.sleep(1.0)  # past the tasks' start, into their nap
            return
        time.sleep(0.1)
    raise AssertionError(f"{count} replay tasks never ran on the server")


def test_a_queued_replay_whose_servers_all_died_fails_instead_of_waiting(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from florsql.engine import CatalogSession, ReplayService
    from florsql.engine.jobs import executor as queue_executor

    monkeypatch.setattr(queue_executor, "ORPHAN_SECONDS", 3.0)
    slow = TODAY.replace('flor.log("double", total * 2)',
                         'flor.log("double", (__import__("time").sleep(60), total * 2)[1])')
    (project / "train.py").write_text(slow)
    server = subprocess.Popen([sys.executable, "-m", "florsql", "serve"], cwd=project,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    session = CatalogSession(project)
    service = ReplayService(session, queue_executor.QueueExecutor(session.project.home))
    try:
        _wait_for_server(project)
        killer = threading.Timer(3.0, server.kill)
        killer.start()
        started = time.monotonic()
        report = service.replay_names(["double"])
        killer.join()
    finally:
        server.kill()
        server.wait()
        service.close()
        session.close()
    assert time.monotonic() - started < 40  # not the 60 s nap, nor forever
    assert len(report.results) == 2 and not any(r.ok for r in report.results)
    assert all("no `florsql serve` is running" in r.error for r in report.results)


def _wait_for_server(project: Path, timeout: float = 30) -> None:
    from florsql.engine.jobs.store import JobQueue

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (project / ".flor" / "jobs.sqlite").exists() and JobQueue.open(
                project / ".flor").live_servers():
            return
        time.sleep(0.1)
    raise AssertionError("the server never registered")
