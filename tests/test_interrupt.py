"""A running query stops when asked (Ctrl-C in the CLI and the shell, connection.interrupt()
in Python), and the query engine runs under a memory limit with a one-line error past it.

The long query is a cross join of 10^10 rows: about a minute here, so a stop that never comes
fails the test instead of hanging it. Margins are wide: a stop within 5 s, where today none
comes before the query ends."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import florsql
from conftest import make_repo, run_script
from florsql.shell import run_shell

FLORSQL = Path(sys.executable).parent / "florsql"
SCRIPT = """\
import flor
for epoch in flor.loop("epoch", range(2)):
    flor.log("loss", 1.0 / (epoch + 1))
"""
LONG = ("SELECT count(*) AS n FROM range(100000) AS a, range(100000) AS b "
        "WHERE a.range + b.range = -1")
HUNGRY = "SELECT list(md5(range::VARCHAR)) AS l FROM range(5000000)"  # ~300 MB in one list
STOP_SECONDS = 5


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("interrupt") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "only")
    return repo


def _when_query_runs(action: callable) -> threading.Thread:
    """Call `action` once florsql's query thread is running (see sandbox.run_interruptible)."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(t.name == "florsql-query" for t in threading.enumerate()):
                time.sleep(0.3)  # let DuckDB get well into the join
                action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_connection_interrupt_from_another_thread_stops_the_query(project: Path) -> None:
    with florsql.connect(project) as conn:
        asked: list[float] = []
        stopper = threading.Timer(1.0, lambda: (asked.append(time.monotonic()),
                                                conn.interrupt()))
        stopper.start()
        with pytest.raises(florsql.OperationalError, match="interrupted") as info:
            conn.execute(LONG)
        assert time.monotonic() - asked[0] < STOP_SECONDS
        assert "\n" not in str(info.value)
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # still usable


def test_interrupt_with_nothing_running_leaves_the_next_query_alone(project: Path) -> None:
    with florsql.connect(project) as conn:
        cur = conn.execute("SELECT runid FROM runs")
        conn.interrupt()
        assert cur.fetchall() == [("only",)]
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_ctrl_c_stops_florsql_c_with_exit_130_and_one_line(project: Path) -> None:
    proc = subprocess.Popen([str(FLORSQL), "-c", f"SELECT 'ready' AS state; {LONG}",
                             str(project)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        while "(1 row)" not in proc.stdout.readline():  # the first result: the join started
            assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.5)
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - asked
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "florsql: interrupted\n", err
    assert stopped < STOP_SECONDS


def test_ctrl_c_in_the_shell_stops_the_query_and_the_shell_goes_on(project: Path,
                                                                  tmp_path: Path) -> None:
    out = io.StringIO()
    asked: list[float] = []
    with create_pipe_input() as pipe:
        pipe.send_text(f"{LONG};\nSELECT 'still here' AS after;\n.quit\n")
        _when_query_runs(lambda: (asked.append(time.monotonic()),
                                  os.kill(os.getpid(), signal.SIGINT)))
        code = run_shell(str(project), input=pipe, output=DummyOutput(), stdout=out,
                         history_file=str(tmp_path / "history"))
        stopped = time.monotonic() - asked[0]
    text = out.getvalue()
    assert code == 0 and "error: interrupted" in text and "still here" in text, text
    assert stopped < STOP_SECONDS + 1  # the next statement ran too


def test_a_query_over_the_memory_limit_is_one_line_naming_the_limit(project: Path) -> None:
    with florsql.connect(project, memory_limit="64MB") as conn:
        with pytest.raises(florsql.OperationalError) as info:
            conn.execute(HUNGRY)
        message = str(info.value)
        assert message.startswith("out of memory") and "\n" not in message
        assert "MiB" in message and "FLORSQL_MEMORY_LIMIT" in message
        assert "memory_limit=" in message
        assert conn.execute("SELECT count(loss) FROM history").fetchone() == (2,)


def test_florsql_memory_limit_sets_the_cli_limit_and_a_bad_one_is_one_line(
        project: Path) -> None:
    env = {**os.environ, "FLORSQL_MEMORY_LIMIT": "64MB"}
    over = subprocess.run([str(FLORSQL), "-c", HUNGRY, str(project)], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert over.returncode == 1 and over.stderr.startswith("florsql: error: out of memory")
    assert over.stderr.count("\n") == 1 and "FLORSQL_MEMORY_LIMIT" in over.stderr
    bad = subprocess.run([str(FLORSQL), "-c", "SELECT 1", str(project)],
                         env={**env, "FLORSQL_MEMORY_LIMIT": "lots"}, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "memory limit 'lots' is not a size" in bad.stderr


def test_the_default_memory_limit_is_half_the_ram_and_cannot_be_set_from_sql(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLORSQL_MEMORY_LIMIT", raising=False)
    half = duckdb.connect(":memory:")
    half.execute("SET memory_limit = '50%'")
    expected = half.execute("SELECT current_setting('memory_limit')").fetchone()
    with florsql.connect(project) as conn:
        assert conn.execute("SELECT current_setting('memory_limit')").fetchone() == expected
        with pytest.raises(florsql.NotSupportedError, match="FLORSQL_MEMORY_LIMIT"):
            conn.execute("SET memory_limit = '100GB'")
        # each connection has its own in-memory instance, and so its own limit
        with florsql.connect(project, memory_limit="64MB") as small:
            assert small.execute("SELECT current_setting('memory_limit')").fetchone() != expected
        assert conn.execute("SELECT current_setting('memory_limit')").fetchone() == expected
