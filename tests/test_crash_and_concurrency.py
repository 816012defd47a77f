"""Crash safety (kill -9, SIGTERM) and many runs recording while queries run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import florsql
from conftest import make_repo

SLOW_SCRIPT = """
import sys, time
import flor
for epoch in flor.loop("epoch", range(5)):
    print("start", epoch, flush=True)
    for step in flor.loop("step", range(50)):
        flor.log("loss", epoch * 1000 + step)
        time.sleep(0.01)
    flor.log("acc", float(epoch))
"""


def _start(repo: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FLOR_FLUSH_SECONDS": "0.5"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, wanted: str) -> None:
    for line in proc.stdout:
        if line.strip() == wanted:
            return
    raise AssertionError(f"never printed {wanted!r}: {proc.stderr.read()[-2000:]}")


def test_kill_9_in_epoch_3_keeps_epochs_1_and_2_and_marks_the_run_killed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SLOW_SCRIPT})
    proc = _start(repo, "--flor", "doomed")
    _wait_for_line(proc, "start 2")  # third epoch (0-based 2) has begun
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with florsql.connect(repo) as conn:
        status = conn.execute("SELECT runid, status FROM runs").fetchall()
        epochs = conn.execute(
            "SELECT lp.iteration, count(*) FROM logs l JOIN loops lp USING (tstamp, ctx_id) "
            "WHERE l.value_name = 'loss' AND lp.depth = 0 GROUP BY 1 ORDER BY 1").fetchall()
        accs = conn.execute("SELECT value_num FROM logs WHERE value_name = 'acc' ORDER BY 1")
        assert accs.fetchall() == [(0.0,), (1.0,)]
    assert status == [("doomed", "killed")]
    assert epochs[:2] == [(0, 50), (1, 50)]
    # the catalog is intact: a second connection re-ingests nothing twice and still reads
    with florsql.connect(repo) as conn:
        total = conn.execute("SELECT count(*) FROM logs WHERE value_name = 'loss'").fetchone()[0]
        dupes = conn.execute(
            "SELECT count(*) FROM (SELECT tstamp, ctx_id, value_name, ord FROM logs "
            "GROUP BY ALL HAVING count(*) > 1)").fetchone()
    assert total >= 100 and dupes == (0,)


def test_sigterm_flushes_and_marks_the_run_killed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SLOW_SCRIPT})
    proc = _start(repo)
    _wait_for_line(proc, "start 1")
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    with florsql.connect(repo) as conn:
        status, error = conn.execute("SELECT status, error FROM runs").fetchone()
        n = conn.execute("SELECT count(*) FROM logs WHERE value_name = 'loss'").fetchone()[0]
    assert (status, error) == ("killed", "SIGTERM")
    assert n > 50  # the partial second epoch was flushed on the way out, not only epoch 0


def test_ctrl_c_flushes_and_marks_the_run_killed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SLOW_SCRIPT})
    proc = _start(repo)
    _wait_for_line(proc, "start 1")
    proc.send_signal(signal.SIGINT)
    proc.wait()
    assert "KeyboardInterrupt" in proc.stderr.read()
    with florsql.connect(repo) as conn:
        status, = conn.execute("SELECT status FROM runs").fetchone()
        n = conn.execute("SELECT count(*) FROM logs WHERE value_name = 'loss'").fetchone()[0]
    assert status == "killed" and n >= 50


def test_eight_runs_recording_while_queries_run_lose_nothing(tmp_path: Path) -> None:
    fast = SLOW_SCRIPT.replace("time.sleep(0.01)", "time.sleep(0.004)")
    repo = make_repo(tmp_path / "proj", {"train.py": fast})
    procs = [_start(repo, "--flor", f"r{i}") for i in range(8)]
    errors: list[BaseException] = []
    counts: list[int] = []
    stop = threading.Event()

    def query_loop() -> None:
        try:
            while not stop.is_set():
                counts.append(conn.execute("SELECT count(*) FROM logs").fetchone()[0])
        except BaseException as e:  # noqa: BLE001  (any error fails the test below)
            errors.append(e)

    _wait_until(lambda: (repo / ".flor" / "runs").is_dir())
    conn = florsql.connect(repo)  # held open all along, as a notebook holds it
    thread = threading.Thread(target=query_loop)
    thread.start()
    for p in procs:
        p.wait(timeout=120)
    stop.set()
    thread.join()
    assert not errors, errors
    assert [p.returncode for p in procs] == [0] * 8
    # queries answered while the runs recorded (how many depends on the machine's speed), never
    # went backwards, and the connection open all along sees every record at the end
    assert len(counts) >= 2 and counts == sorted(counts), counts
    assert conn.execute("SELECT count(*) FROM logs").fetchone()[0] == 2040
    conn.close()
    # and a query from another process after they all finish sees everything
    out = subprocess.run([sys.executable, "-m", "florsql.cli", "-c",
                          "SELECT count(DISTINCT tstamp), count(*) FILTER (value_name='loss'), "
                          "count(*) FILTER (value_name='acc'), min(status) FROM logs JOIN runs "
                          "USING (tstamp)", str(repo), "--format", "csv"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[1] == "8,2000,40,finished"


def _wait_until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)
