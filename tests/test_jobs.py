"""Batch jobs: flor.cross_prod / flor.batch queue them, `florsql serve` runs each once as a
recorded run, and a killed worker or server costs a rerun, never a lost or doubled run.

Real git repos, real `florsql serve` subprocesses, real training runs (plain Python, no
torch: each run takes a fraction of a second unless it is told to nap).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flor
import florsql
from conftest import git, make_repo
from florsql.engine.jobs.store import QUEUE_FILE, JobQueue
from florsql.engine.jobs.submit import BatchError

SCRIPT = """import time
import flor
hidden = flor.arg("hidden", 10)
lr = flor.arg("lr", 0.1)
nap = flor.arg("nap", 0.0)
with open("data/base.txt") as fh:  # ignored by git: read through the project's own folder
    base = float(fh.read())
for epoch in flor.loop("epoch", range(3)):
    time.sleep(nap)
    flor.log("loss", base + hidden * lr / (epoch + 1))
if hidden < 0:
    raise ValueError("hidden must be positive")
print("trained", hidden, lr)
"""
GRID = {"hidden": [100, 200, 300], "lr": (1e-4, 1e-3)}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = make_repo(tmp_path / "proj", {"train.py": SCRIPT, ".gitignore": "data/\n"})
    (path / "data").mkdir()
    (path / "data" / "base.txt").write_text("1.5")
    return path


def serve(repo: Path, *args: str, once: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "florsql", "serve", *(["--once"] if once else []), *args]
    return subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "FLOR_FLUSH_SECONDS": "0.2"})


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def queue(repo: Path) -> JobQueue:
    return JobQueue(repo / ".flor" / QUEUE_FILE)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def finished_runs(repo: Path) -> list[tuple]:
    with florsql.connect(repo, replay="off") as conn:
        return conn.execute(
            "SELECT hidden, lr, count(loss), r.status FROM history h JOIN runs r "
            "USING (tstamp) WHERE r.status = 'finished' GROUP BY ALL ORDER BY ALL").fetchall()


def expected_runs(nap: float | None = None) -> list[tuple]:
    return sorted((h, lr, 3, "finished") for h in GRID["hidden"] for lr in GRID["lr"])


def test_cross_prod_gives_every_combination_with_the_last_name_fastest() -> None:
    jobs = flor.cross_prod(hidden=[100, 200], lr=(1e-4, 1e-3), epochs=5)
    assert jobs == [{"hidden": 100, "lr": 1e-4, "epochs": 5}, {"hidden": 100, "lr": 1e-3,
                    "epochs": 5}, {"hidden": 200, "lr": 1e-4, "epochs": 5},
                    {"hidden": 200, "lr": 1e-3, "epochs": 5}]
    assert flor.cross_prod(hidden=[]) == []


def test_batch_prints_flordb_lines_and_queues_durable_jobs(repo: Path, capsys) -> None:
    ids = flor.batch(flor.cross_prod(**GRID), path=str(repo))
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["--hidden 100 --lr 0.0001 ", "--hidden 100 --lr 0.001 "]
    assert len(ids) == 6 and len(lines) == 7
    rows = queue(repo).read("SELECT batch, script, args, status, vid FROM jobs ORDER BY id")
    assert [json.loads(r["args"]) for r in rows] == flor.cross_prod(**GRID)
    assert {(r["batch"], r["script"], r["status"]) for r in rows} == {("BATCH", "train.py",
                                                                       "queued")}
    vid = rows[0]["vid"]  # a snapshot of the code at queue time, under a hidden ref
    assert git(repo, "cat-file", "-t", vid) == "commit"
    assert git(repo, "status", "--porcelain") == ""  # the user's tree is untouched


@pytest.mark.parametrize("jobs, script, message", [
    ([{"hidden": 1}, {"hiden": 2}], "train.py", "has no flor.arg('hiden') (did you mean "
                                                "'hidden'?)"),
    ([{"hidden": 1}], "missing.py", "no script 'missing.py'"),
    ([{"hidden": [1, 2]}], "train.py", "is not a number, string or bool"),
])
def test_a_bad_batch_queues_nothing(repo: Path, jobs, script, message) -> None:
    with pytest.raises(BatchError, match=re.escape(message)):
        flor.batch(jobs, script=script, path=str(repo))
    assert not (repo / ".flor" / QUEUE_FILE).exists() or not queue(repo).read(
        "SELECT id FROM jobs")


def test_serve_runs_a_six_job_cross_product_once_each(repo: Path) -> None:
    flor.batch(flor.cross_prod(**GRID), path=str(repo))
    (repo / "train.py").write_text(SCRIPT.replace("hidden * lr", "0 *"))  # after queueing
    out = finish(serve(repo, "--workers", "2"))
    assert out.count(" finished after ") == 6
    assert finished_runs(repo) == expected_runs()  # the code of queue time, the right args
    with florsql.connect(repo, replay="off") as conn:
        jobs = conn.execute("SELECT j.status, done, attempts, path, exit_code, j.vid = r.vid, "
                            "r.runid, r.projid FROM jobs j JOIN runs r USING (tstamp)"
                            ).fetchall()
        progress = conn.execute("SELECT done, path, count(*) FROM jobs GROUP BY done, path"
                                ).fetchall()
    assert len(jobs) == 6
    assert set(jobs) == {("finished", 1, 1, str(repo), 0, True, "BATCH", "proj")}
    assert progress == [(1, str(repo), 6)]  # FlorDB's own progress query
    assert git(repo, "status", "--porcelain") == "M train.py"  # only the user's edit (stripped)
    assert git(repo, "worktree", "list").count("\n") == 0


def test_a_worker_killed_mid_job_reruns_it_and_keeps_the_killed_run_apart(repo: Path) -> None:
    flor.batch(flor.cross_prod(**GRID, nap=0.4), path=str(repo))
    server = serve(repo, "--workers", "2")
    q = queue(repo)
    pid_of = "SELECT id, pid FROM jobs WHERE status = 'running' AND pid IS NOT NULL"
    wait_for(lambda: q.read(pid_of), what="a running job with its run's pid")
    victim = q.read(pid_of)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    finish(server)
    assert finished_runs(repo) == expected_runs()  # six finished, no record twice
    attempts = q.read("SELECT n, status FROM attempts WHERE job_id = ? ORDER BY n",
                      [victim["id"]])
    assert [tuple(a) for a in attempts] == [(1, "killed"), (2, "finished")]
    with florsql.connect(repo, replay="off") as conn:
        statuses = conn.execute("SELECT status, count(*) FROM runs GROUP BY ALL ORDER BY ALL"
                                ).fetchall()
        killed = conn.execute("SELECT a.status, r.status FROM job_attempts a JOIN runs r "
                              "USING (tstamp) WHERE a.job_id = ? ORDER BY a.attempt",
                              [victim["id"]]).fetchall()
    assert statuses == [("finished", 6), ("killed", 1)]
    assert killed == [("killed", "killed"), ("finished", "finished")]


def test_two_servers_on_one_project_run_every_job_once(repo: Path) -> None:
    flor.batch(flor.cross_prod(**GRID, nap=0.1), path=str(repo))
    first, second = serve(repo, "--workers", "2"), serve(repo, "--workers", "2")
    outs = finish(first) + finish(second)
    assert outs.count(" finished after ") == 6
    rows = queue(repo).read("SELECT attempts, status FROM jobs")
    assert [tuple(r) for r in rows] == [(1, "finished")] * 6
    assert finished_runs(repo) == expected_runs()


def test_a_server_killed_mid_job_leaves_it_to_the_next_server(repo: Path) -> None:
    flor.batch([{"hidden": 7, "nap": 1.0}], path=str(repo))
    server = serve(repo, once=False)
    q = queue(repo)
    wait_for(lambda: q.read("SELECT pid FROM jobs WHERE pid IS NOT NULL"), what="job start")
    run_pid = q.read("SELECT pid FROM jobs")[0]["pid"]
    server.kill()  # SIGKILL: no clean-up at all
    server.wait()
    wait_for(lambda: not _alive(run_pid), timeout=10, what="the job to die with its server")
    out = finish(serve(repo))
    assert "requeued job(s) 1" in out
    rows = q.read("SELECT n, status FROM attempts ORDER BY n")
    assert [tuple(r) for r in rows] == [(1, "killed"), (2, "finished")]


def test_first_ctrl_c_lets_a_job_finish_and_a_second_requeues_it(repo: Path) -> None:
    flor.batch([{"hidden": 1, "nap": 1.0}, {"hidden": 2, "nap": 1.0}], path=str(repo))
    q = queue(repo)
    server = serve(repo, once=False)
    wait_for(lambda: q.read("SELECT id FROM jobs WHERE tstamp IS NOT NULL"), what="job start")
    server.send_signal(signal.SIGINT)
    out = finish(server, timeout=60)
    assert "waiting for 1 running job(s)" in out
    assert [r["status"] for r in q.read("SELECT status FROM jobs ORDER BY id")] == [
        "finished", "queued"]
    server = serve(repo, once=False)
    wait_for(lambda: q.read("SELECT id FROM jobs WHERE id = 2 AND tstamp IS NOT NULL"),
             what="job 2 start")
    server.send_signal(signal.SIGINT)
    time.sleep(0.3)
    server.send_signal(signal.SIGINT)
    finish(server, timeout=60)
    assert q.read("SELECT status FROM jobs WHERE id = 2")[0]["status"] == "queued"
    assert q.read("SELECT status FROM attempts WHERE job_id = 2")[0]["status"] == "interrupted"


def test_failures_retry_only_when_asked_and_time_limits_stop_jobs(repo: Path) -> None:
    flor.batch([{"hidden": -1}], name="BAD", path=str(repo))
    flor.batch([{"hidden": 1, "nap": 30.0}], name="SLOW", time_limit=1.5, path=str(repo))
    finish(serve(repo, "--workers", "2"))
    rows = {r["batch"]: r for r in queue(repo).read("SELECT * FROM jobs")}
    assert (rows["BAD"]["status"], rows["BAD"]["attempts"]) == ("failed", 1)
    assert "ValueError: hidden must be positive" in rows["BAD"]["error"]
    assert (rows["SLOW"]["status"], rows["SLOW"]["attempts"]) == ("timeout", 1)
    log = subprocess.run([sys.executable, "-m", "florsql", "jobs", "log",
                          str(rows["BAD"]["id"])], cwd=repo, capture_output=True, text=True)
    assert log.returncode == 0 and "raise ValueError" in log.stdout
    flor.batch([{"hidden": -2}], name="RETRY", path=str(repo))
    finish(serve(repo, "--retries", "1"))
    retry = queue(repo).read("SELECT status, attempts FROM jobs WHERE batch = 'RETRY'")[0]
    assert (retry["status"], retry["attempts"]) == ("failed", 2)


def test_cancel_reaches_queued_and_running_jobs(repo: Path) -> None:
    flor.batch([{"hidden": 1, "nap": 20.0}, {"hidden": 2}], path=str(repo))
    q = queue(repo)
    server = serve(repo, once=False)
    wait_for(lambda: q.read("SELECT id FROM jobs WHERE id = 1 AND pid IS NOT NULL"),
             what="job 1 start")
    cancel = subprocess.run([sys.executable, "-m", "florsql", "jobs", "cancel", "1", "2"],
                            cwd=repo, capture_output=True, text=True)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled 1 queued job(s); 1 running job(s) are being stopped" in cancel.stdout
    started = time.monotonic()
    wait_for(lambda: q.read("SELECT id FROM jobs WHERE id = 1 AND status = 'cancelled'"),
             timeout=20, what="job 1 cancelled")
    assert time.monotonic() - started < 15  # not the 60 s the job would take
    server.send_signal(signal.SIGTERM)
    finish(server)
    assert [r["status"] for r in q.read("SELECT status FROM jobs ORDER BY id")] == [
        "cancelled", "cancelled"]


def test_jobs_command_and_python_m_flor_serve_show_and_run_the_queue(repo: Path) -> None:
    flor.batch([{"hidden": 5}], path=str(repo))
    listing = subprocess.run([sys.executable, "-m", "florsql", "jobs"], cwd=repo,
                             capture_output=True, text=True)
    assert "1 job(s): 1 queued; no server running" in listing.stdout
    out = subprocess.run([sys.executable, "-m", "flor", "serve", "--once"], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "job 1 finished" in out.stdout, out.stdout + out.stderr
    listing = subprocess.run([sys.executable, "-m", "florsql", "jobs", "--watch"], cwd=repo,
                             capture_output=True, text=True, timeout=30)
    assert "hidden=5" in listing.stdout and "1 job(s): 1 finished" in listing.stdout
    shell = shell_output(repo, ".jobs\n.jobs OTHER\n.quit\n")
    assert re.search(r"^status +\| finished$", shell, re.M)  # narrow: one block per row
    assert re.search(r"^args +\| hidden=5$", shell, re.M)
    assert "1 job(s): 1 finished" in shell and "0 job(s): none" in shell


def test_the_shell_says_how_to_queue_jobs_when_there_are_none(repo: Path) -> None:
    subprocess.run([sys.executable, "train.py"], cwd=repo, check=True, capture_output=True)
    assert "no jobs: queue some with flor.batch" in shell_output(repo, ".jobs\n.quit\n")


def shell_output(repo: Path, keys: str) -> str:
    """What a real shell prints for `keys` typed into it."""
    import io

    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from florsql.shell import run_shell

    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        run_shell(str(repo), input=pipe, output=DummyOutput(), stdout=out, history_file=None)
    return out.getvalue()


def test_replay_tasks_are_claimed_before_queued_batch_jobs(repo: Path) -> None:
    from florsql.engine.jobs.model import BATCH, REPLAY, REPLAY_PRIORITY
    from florsql.engine.jobs.store import NewJob

    q = JobQueue.open(repo / ".flor")
    batch = NewJob(BATCH, "B", "train.py", {}, "v", 10, str(repo))
    replay = NewJob(REPLAY, "r", "train.py", {}, "v", REPLAY_PRIORITY, str(repo))
    q.enqueue([batch, batch])
    q.enqueue([replay])
    claimed = [q.claim("s", "w")[0].kind for _ in range(3)]
    assert claimed == [REPLAY, BATCH, BATCH] and q.claim("s", "w") is None


def test_a_reader_never_sees_the_queue_file_before_its_tables(tmp_path: Path) -> None:
    # every SQL statement reads `jobs` once the file exists; a first server may be making it
    import threading

    homes = [tmp_path / f"h{i}" for i in range(40)]
    errors: list[BaseException] = []
    done = threading.Event()

    def read_as_soon_as_it_exists() -> None:
        while not done.is_set():
            for home in homes:
                if (home / QUEUE_FILE).exists():
                    try:
                        JobQueue(home / QUEUE_FILE).read("SELECT count(*) FROM jobs")
                    except Exception as exc:  # noqa: BLE001  (any error fails the test below)
                        errors.append(exc)

    reader = threading.Thread(target=read_as_soon_as_it_exists)
    reader.start()
    for home in homes:
        openers = [threading.Thread(target=JobQueue.open, args=(home,)) for _ in range(3)]
        for t in openers:
            t.start()
        for t in openers:
            t.join()
    done.set()
    reader.join()
    assert not errors, errors[:3]
    assert all(sorted(p.name for p in home.iterdir()) == [QUEUE_FILE] for home in homes)


def _alive(pid: int) -> bool:
    from conftest import process_alive

    return process_alive(pid)


def test_each_gpu_worker_gives_its_job_one_gpu_and_cpu_workers_none(tmp_path: Path) -> None:
    script = ('import os, time\nimport flor\nk = flor.arg("k", 0)\ntime.sleep(0.5)\n'
              'flor.log("cuda", os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))\n')
    repo = make_repo(tmp_path / "gpus", {"train.py": script})
    flor.batch(flor.cross_prod(k=list(range(6))), path=str(repo))
    out = finish(serve(repo, "--gpus", "0,1", "--workers", "1"))
    assert "3 worker(s) (gpu0, gpu1, w0)" in out
    with florsql.connect(repo, replay="off") as conn:
        seen = conn.execute("SELECT j.worker, h.cuda FROM jobs j JOIN history h USING (tstamp)"
                            ).fetchall()
    assert len(seen) == 6
    assert {(w, c) for w, c in seen} <= {("gpu0", "0"), ("gpu1", "1"), ("w0", "")}
    assert len({w for w, _ in seen}) >= 2  # the workers ran at once


def test_jobs_record_into_flor_home_when_it_is_set(repo: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "shared-home"
    monkeypatch.setenv("FLOR_HOME", str(home))
    flor.batch([{"hidden": 3}], path=str(repo))
    finish(serve(repo))
    assert (home / QUEUE_FILE).exists() and not (repo / ".flor").exists()
    assert finished_runs(repo) == [(3, 0.1, 3, "finished")]
    with florsql.connect(repo, replay="off") as conn:
        assert conn.execute("SELECT run_dir FROM runs").fetchall()[0][0].startswith(str(home))


@pytest.mark.parametrize("source, names", [
    ('import flor\nlr = flor.arg("lr", 0.1)\n', {"lr"}),
    ('import flor as f\nlr = f.arg("lr", 0.1)\nh = f.arg(name="hidden", default=1)\n',
     {"lr", "hidden"}),
    ('from flor import arg as a\nlr = a("lr", 0.1)\n', {"lr"}),
    ('from flor import MTK as Flor\nlr = Flor.arg("lr", 0.1)\n', {"lr"}),
    ('import flor\nfor k in ("lr",):\n    flor.arg(k, 0.1)\n', None),  # not a literal
    ("import flor\nlr = (\n", None),  # does not parse
])
def test_the_args_a_script_reads_are_found_through_any_import_of_flor(source, names) -> None:
    from florsql.engine.jobs.submit import arg_names

    assert arg_names(source) == names
