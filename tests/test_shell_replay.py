"""Retroactive queries in the shell: `.explain`, `.replay` modes, asking, and progress."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import florsql
from conftest import make_repo, run_script
from florsql.shell import Shell, run_shell

SCRIPT = """\
import flor
lr = flor.arg("lr", 0.1)
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(2)):
        flor.log("loss", 1.0 / (epoch + step + 1))
    flor.log("accuracy", 0.5 + epoch / 10)
"""
TODAY = SCRIPT + "    flor.log(\"acc_sq\", (0.5 + epoch / 10) ** 2)\n"
QUERY = "SELECT runid, epoch, acc_sq FROM history WHERE lr > 0.15 ORDER BY epoch;"
SAFETY_SECONDS = 60


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("shell-replay") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "slow")
    run_script(repo, "train.py", "--flor", "fast", "--kwargs", "lr=0.2")
    (repo / "train.py").write_text(TODAY)
    return repo


@pytest.fixture
def project(recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLORSQL_HISTORY", str(tmp_path / "history"))
    copy = tmp_path / "proj"
    shutil.copytree(recorded, copy)
    shutil.rmtree(copy / ".flor" / "catalog", ignore_errors=True)
    return copy


def drive(project: Path, keys: str) -> str:
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        guard = threading.Timer(SAFETY_SECONDS, pipe.close)
        guard.start()
        assert run_shell(str(project), input=pipe, output=DummyOutput(), stdout=out) == 0
        guard.cancel()
    return out.getvalue()


def replays(project: Path) -> list[tuple]:
    with florsql.connect(project, replay="off") as conn:
        return conn.execute("SELECT r.runid FROM replays p JOIN runs r USING (tstamp)").fetchall()


def test_explain_shows_the_plan_and_its_cost_and_runs_nothing(project: Path) -> None:
    out = drive(project, ".explain " + QUERY + "\n.quit\n")
    assert "fast" in out and "slow" not in out and "acc_sq" in out
    assert "1 task(s) on" in out and "estimated" in out
    assert replays(project) == []


def test_ask_mode_shows_the_plan_and_a_no_answers_with_nulls(project: Path) -> None:
    out = drive(project, QUERY + "\nn\n.quit\n")
    assert "warning: the replay was declined" in out and "fast" in out
    assert "answer y, or .replay auto" in out and "--yes" not in out
    assert replays(project) == []


def test_ask_mode_replays_on_yes_with_a_progress_bar(project: Path) -> None:
    out = drive(project, QUERY + "\ny\n.quit\n")
    assert "1/1 fast ok" in out
    assert "0.25" in out and "0.36" in out and "0.49" in out  # (0.5 + epoch / 10) ** 2
    assert replays(project) == [("fast",)]


def test_replay_off_and_auto_switch_the_mode(project: Path) -> None:
    out = drive(project, ".replay\n.replay off\n" + QUERY + "\n.replay auto\n" + QUERY
                + "\n.replay bogus\n.quit\n")
    assert "replay: ask" in out and "warning: replay is off" in out
    assert "0.49" in out and "unknown replay mode 'bogus'" in out
    assert replays(project) == [("fast",)]


def test_explain_replay_typed_as_sql_also_works(project: Path) -> None:
    out = drive(project, "EXPLAIN REPLAY " + QUERY + "\n.quit\n")
    assert "1 task(s) on" in out and replays(project) == []


def test_completion_offers_names_todays_script_logs_before_any_run_has(project: Path) -> None:
    with florsql.connect(project, replay="off") as conn, create_pipe_input() as pipe:
        shell = Shell(conn, input=pipe, output=DummyOutput(), stdout=io.StringIO())
        assert "acc_sq" in shell._catalog[1] and "accuracy" in shell._catalog[1]
