"""Batch jobs and replays on Ray (a local instance each test's server or CLI starts itself):
the same runs and the same records as on this machine's own workers.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from test_jobs import SCRIPT, finish, finished_runs, serve
from test_jobs_replay import SCRIPT as REPLAY_SCRIPT
from test_jobs_replay import TODAY, replayed

import flor
import florsql
from conftest import make_repo, run_script


def test_serve_on_ray_runs_a_batch_with_the_right_args_once_each(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT, ".gitignore": "data/\n"})
    (repo / "data").mkdir()
    (repo / "data" / "base.txt").write_text("1.5")
    grid = flor.cross_prod(hidden=[100, 200], lr=(1e-4, 1e-3))
    flor.batch(grid, path=str(repo))
    out = finish(serve(repo, "--executor", "ray", "--workers", "2"), timeout=300)
    assert "executor ray" in out and out.count(" finished after ") == 4
    assert finished_runs(repo) == sorted((j["hidden"], j["lr"], 3, "finished") for j in grid)
    with florsql.connect(repo, replay="off") as conn:
        jobs = conn.execute("SELECT DISTINCT j.status, attempts, r.projid, r.runid FROM jobs j "
                            "JOIN runs r USING (tstamp)").fetchall()
    assert jobs == [("finished", 1, "proj", "BATCH")]


def test_one_replay_through_the_pool_the_queue_and_ray_stores_the_same_records(
        tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "proj", {"train.py": REPLAY_SCRIPT})
    for lr in ("0.1", "0.3"):
        run_script(origin, "train.py", "--kwargs", f"lr={lr}")
    (origin / "train.py").write_text(TODAY)
    copies = {name: tmp_path / name for name in ("local", "queue", "ray")}
    for path in copies.values():
        shutil.copytree(origin, path, symlinks=True)
    server = subprocess.Popen([sys.executable, "-m", "florsql", "serve"], cwd=copies["queue"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for name, path in copies.items():
            done = subprocess.run([sys.executable, "-m", "florsql", "replay", "double",
                                   "--executor", name], cwd=path, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            assert f"({name if name != 'local' else 'warm pool'}, " in done.stdout
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
    values = {name: replayed(path) for name, path in copies.items()}
    assert len(values["local"]) == 6
    assert values["local"] == values["queue"] == values["ray"]


def test_cancel_and_time_limits_reach_jobs_running_on_ray(tmp_path: Path) -> None:
    from test_jobs import queue, wait_for

    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT, ".gitignore": "data/\n"})
    (repo / "data").mkdir()
    (repo / "data" / "base.txt").write_text("1.5")
    flor.batch([{"hidden": 1, "nap": 60.0}], name="LONG", path=str(repo))
    flor.batch([{"hidden": 2, "nap": 60.0}], name="LIMITED", time_limit=3, path=str(repo))
    server = serve(repo, "--executor", "ray", "--workers", "2", once=False)
    q = queue(repo)
    try:
        wait_for(lambda: q.read("SELECT id FROM jobs WHERE batch = 'LONG' AND tstamp IS NOT "
                                "NULL"), timeout=120, what="the long job's run to start")
        cancelled = subprocess.run([sys.executable, "-m", "florsql", "jobs", "cancel",
                                    "--batch", "LONG"], cwd=repo, capture_output=True, text=True)
        assert "1 running job(s) are being stopped" in cancelled.stdout
        wait_for(lambda: {r["status"] for r in q.read("SELECT status FROM jobs")} == {
            "cancelled", "timeout"}, timeout=40, what="one cancelled and one timed out job")
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=120)
    rows = {r["batch"]: r for r in q.read("SELECT * FROM jobs")}
    assert rows["LIMITED"]["error"].startswith("stopped after its time limit of 3 s"), out
    with florsql.connect(repo, replay="off") as conn:  # neither left a finished run
        assert conn.execute("SELECT count(*) FROM runs WHERE status = 'finished'"
                            ).fetchall() == [(0,)]


def test_serve_on_ray_without_ray_says_how_to_install_it_in_one_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    flor.batch([{"hidden": 1}], path=str(repo))
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from florsql.cli import main; sys.exit(main(['serve', '--executor', 'ray']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "florsql: error: the ray executor needs Ray: pip install 'florsql[ray]'"]
    from test_jobs import queue

    assert queue(repo).read("SELECT status FROM jobs")[0]["status"] == "queued"
    assert not queue(repo).read("SELECT id FROM servers")
