"""Replay faults: hanging tasks, Ctrl-C and SIGTERM, kill -9, replays cut short, floods of
output, and the user's repository through all of them.

Real tiny training runs in temporary repositories, replayed by `florsql replay` as a process,
so that signals reach it as they would from a terminal. A replayed statement hangs (it sleeps
for good) while the project holds a file `hang` whose condition holds for the run and epoch.
Prompt stops are asserted with wide margins (within 5 s, where before this they never came).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import florsql
from conftest import (
    TINY_MLP_LOSS_LINE,
    git,
    make_repo,
    process_alive,
    record_then_edit,
    run_script,
    tiny_mlp_script,
)
from florsql.engine.query.session import CatalogSession
from florsql.engine.replay.plan import plan_replay

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc, sends signals")

FLORSQL = str(Path(sys.executable).parent / "florsql")
HELPERS = '''import os, sys, time


def pause(epoch, lr):
    """Sleep for good while the project's `hang` file holds for this run and epoch."""
    flag = os.path.join(os.environ.get("FLOR_PROJECT_ROOT", "."), "hang")
    if os.path.exists(flag) and eval(open(flag).read(), {"epoch": epoch, "lr": lr}):
        open(f"{flag}.{os.getpid()}", "w").close()
        time.sleep(1000)
    return float(epoch)


def chatter(epoch, megabytes):
    """Print `megabytes` of text, then one last line."""
    line = "x" * 1023 + "\\n"
    for _ in range(megabytes * 1024):
        sys.stdout.write(line)
    print("last line of epoch", epoch, flush=True)
    return float(epoch)
'''
# 0.2 s per epoch: long enough that two workers split a run into two segments
OLD = tiny_mlp_script(6).replace("import flor\n", "import flor\n" + HELPERS).replace(
    "        order = torch.randperm(96)\n",
    "        order = torch.randperm(96)\n        time.sleep(0.2)\n")
HANGING = TINY_MLP_LOSS_LINE + "            flor.log(\"w\", pause(epoch, lr) + loss.item())\n"
TODAY = OLD.replace(TINY_MLP_LOSS_LINE, HANGING)
INTERRUPTED = re.compile(r"florsql: replay interrupted: (\d+) task\(s\) stopped, "
                         r"(\d+) finished and kept")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs a (lr 0.05) and b (lr 0.1) of OLD, checkpointed every epoch; TODAY on disk."""
    return record_then_edit(tmp_path_factory.mktemp("faults") / "proj", OLD, TODAY,
                            (("a", "0.05"), ("b", "0.1")))


@pytest.fixture
def project(recorded: Path, tmp_path: Path) -> Path:
    """A copy of the recorded project (its catalog is built afresh at the first query)."""
    (tmp_path / "tmp").mkdir()
    return shutil.copytree(recorded, tmp_path / "proj", symlinks=True)


def _env(project: Path, **extra: str) -> dict[str, str]:
    """florsql's environment: temporary folders under the test's own tmp, to count them."""
    return {**os.environ, "TMPDIR": str(project.parent / "tmp"), **extra}


def _florsql(project: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([FLORSQL, *args], env=_env(project, **env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _replay(project: Path, *args: str, names: str = "w",
            **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLORSQL, "replay", names, str(project), *args],
                          env=_env(project, **env), capture_output=True, text=True, timeout=600)


def _hang(project: Path, condition: str) -> None:
    (project / "hang").write_text(condition)


def _hung(project: Path) -> list[int]:
    """Pids of the replayed processes that reached the hanging statement."""
    return [int(p.suffix[1:]) for p in project.glob("hang.*")]


def _wait_for(condition: Callable[[], object], seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _gone(pids: list[int], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(process_alive(p) for p in pids)


def _leftovers(project: Path) -> list[str]:
    """Replay folders left: temporary trees and pool folders, staging folders."""
    tmp = [p.name for p in (project.parent / "tmp").glob("flor-replay-*")]
    staging = project / ".flor" / "replays-staging"
    return tmp + [p.name for p in staging.glob("*")] if staging.is_dir() else tmp


def _values(project: Path, source: str = "replay") -> dict[str, list[tuple]]:
    """runid -> [(context path, w)] of the `source` records of w."""
    with florsql.connect(project, replay="off") as conn:
        rows = conn.execute(
            "SELECT r.runid, c.path, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "JOIN contexts c USING (tstamp, ctx_id) WHERE l.value_name = 'w' "
            "AND l.source = ? ORDER BY ALL", [source]).fetchall()
    out: dict[str, list[tuple]] = {}
    for runid, path, value in rows:
        out.setdefault(runid, []).append((path, value))
    return out


def _replay_dirs(project: Path) -> list[Path]:
    return list((project / ".flor" / "runs").glob("*/replays/*"))


# ---------------------------------------------------------------------------------------------
# Time limits, and replays cut short.
# ---------------------------------------------------------------------------------------------


def test_a_hanging_task_is_stopped_at_its_time_limit_and_the_other_runs_go_on(
        project: Path) -> None:
    _hang(project, "lr > 0.07")  # run b hangs at its first step
    done = _replay(project, "--task-timeout", "3", "--workers", "2")
    assert done.returncode == 1
    failures = [line for line in done.stderr.splitlines() if "failed" in line]
    assert failures and all("replay of b" in line for line in failures)
    assert "timed out after 3 s" in failures[0] and "--task-timeout" in failures[0]
    assert len(failures[0].splitlines()) == 1
    assert _hung(project) and _gone(_hung(project))  # killed, not left sleeping
    values = _values(project)
    assert len(values["a"]) == 36 and "b" not in values
    assert _leftovers(project) == []


def test_a_replay_cut_short_is_completed_by_the_next_florsql_replay_as_by_sql(
        project: Path) -> None:
    _hang(project, "lr > 0.07 and epoch == 5")  # b's last segment hangs, its first finishes
    done = _replay(project, "--where", "lr > 0.07", "--task-timeout", "3", "--workers", "2")
    assert done.returncode == 1 and "timed out" in done.stderr
    stored = len(_values(project).get("b", []))
    assert 0 < stored < 36  # half stored, as when a worker is killed mid-replay
    session = CatalogSession(project)
    try:
        cli = plan_replay(session, ["w"], "lr > 0.07")
    finally:
        session.close()
    with florsql.connect(project, replay="off") as conn:
        sql = conn.execute("EXPLAIN REPLAY SELECT runid, w FROM history WHERE lr > 0.07"
                           ).fetchall()
    cli_iterations = {r.runid: {i for s in r.segments for i in range(s.start, s.stop)}
                      for r in cli.runs}
    sql_iterations = {row[0]: {int(i) for i in row[4].split(",")} for row in sql}
    assert cli_iterations == sql_iterations == {"b": set(range(stored // 6, 6))}
    (project / "hang").unlink()
    assert _replay(project).returncode == 0
    run_script(project, "train.py", "--flor", "b", "--kwargs", "lr=0.1")  # a fresh witness
    assert len(_values(project)["b"]) == 36
    assert _values(project)["b"] == _values(project, "forward")["b"]
    again = _replay(project, "--dry-run")
    assert "0 task(s)" in again.stdout


# ---------------------------------------------------------------------------------------------
# Signals.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code", "pool"), [
    (signal.SIGINT, 130, "1"), (signal.SIGTERM, 143, "1"), (signal.SIGINT, 130, "0")],
    ids=["sigint", "sigterm", "sigint-without-pool"])
def test_a_signal_stops_florsql_replay_within_seconds_and_keeps_what_finished(
        project: Path, signum: int, code: int, pool: str) -> None:
    _hang(project, "lr > 0.07")  # b's tasks hang; a's finish
    proc = _florsql(project, "replay", "w", str(project), "--workers", "4",
                    FLOR_REPLAY_POOL=pool)
    try:
        _wait_for(lambda: _hung(project) and _replay_dirs(project))
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    print(f"{signal.Signals(signum).name}, pool {pool}: stopped in {elapsed:.2f} s")
    assert proc.returncode == code and elapsed < 5, (elapsed, err)
    line = INTERRUPTED.search(err)
    assert line, err
    stopped, kept = int(line[1]), int(line[2])
    tasks = int(re.search(r"(\d+) task\(s\) on", out)[1])
    assert stopped >= 1 and kept == len(_replay_dirs(project)) >= 1
    assert stopped + kept == tasks
    assert _gone(_hung(project), 1) and _leftovers(project) == []
    assert "a" in _values(project) and "b" not in _values(project)


def test_a_replay_inside_a_sql_query_stops_on_sigint(project: Path) -> None:
    _hang(project, "lr > 0.07")
    proc = _florsql(project, "-c", "SELECT runid, w FROM history", "--yes", "--project",
                    str(project))
    try:
        _wait_for(lambda: _hung(project))
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    print(f"SQL query: stopped in {elapsed:.2f} s")
    assert proc.returncode == 130 and elapsed < 5 and "interrupted" in err, (elapsed, err)
    assert _gone(_hung(project), 1) and _leftovers(project) == []


def test_a_replay_inside_a_dbapi_query_stops_on_keyboard_interrupt(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    import threading

    monkeypatch.setattr(tempfile, "tempdir", str(project.parent / "tmp"))
    _hang(project, "lr > 0.07")

    def interrupt_when_hung() -> None:
        _wait_for(lambda: _hung(project))
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_hung, daemon=True).start()
    with florsql.connect(project, replay="auto") as conn:
        with pytest.raises(KeyboardInterrupt, match="replay interrupted"):
            conn.execute("SELECT runid, w FROM history")
        assert _gone(_hung(project), 5)
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    assert _leftovers(project) == []


def test_a_query_with_task_timeout_answers_with_the_runs_that_finished(project: Path) -> None:
    _hang(project, "lr > 0.07")
    proc = _florsql(project, "-c", "SELECT runid, count(w) AS n FROM history GROUP BY runid "
                    "ORDER BY runid", "--yes", "--task-timeout", "3", "--format", "csv",
                    str(project))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["runid,n", "a,36", "b,0"]
    assert "timed out after 3 s" in err and _gone(_hung(project))


def test_sigterm_stops_a_replay_inside_a_query_with_exit_143(project: Path) -> None:
    _hang(project, "lr > 0.07")
    proc = _florsql(project, "-c", "SELECT runid, w FROM history", "--yes", str(project))
    try:
        _wait_for(lambda: _hung(project))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143 and INTERRUPTED.search(err), err
    assert _gone(_hung(project), 5) and _leftovers(project) == []


def test_connection_interrupt_from_another_thread_stops_a_replay(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    import threading

    monkeypatch.setattr(tempfile, "tempdir", str(project.parent / "tmp"))
    _hang(project, "lr > 0.07")
    with florsql.connect(project, replay="auto") as conn:

        def interrupt_when_hung() -> None:
            _wait_for(lambda: _hung(project))
            conn.interrupt()

        threading.Thread(target=interrupt_when_hung, daemon=True).start()
        with pytest.raises(KeyboardInterrupt, match="replay interrupted"):
            conn.execute("SELECT runid, w FROM history")
        assert _gone(_hung(project), 5)
        (project / "hang").unlink()  # the next statement is not stopped by the old interrupt
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    assert _leftovers(project) == []


@pytest.mark.parametrize("pool", ["1", "0"], ids=["pool", "without-pool"])
def test_the_folders_of_a_killed_replay_are_removed_by_the_next_one(
        project: Path, pool: str) -> None:
    _hang(project, "lr > 0.07")
    proc = _florsql(project, "replay", "w", str(project), "--workers", "2",
                    FLOR_REPLAY_POOL=pool)
    try:
        _wait_for(lambda: _hung(project))
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert _gone(_hung(project))  # its tasks die with it
    assert _leftovers(project)  # what kill -9 cannot clean up
    (project / "hang").unlink()
    assert _replay(project, "--workers", "2", FLOR_REPLAY_POOL=pool).returncode == 0
    assert _leftovers(project) == []
    assert {k: len(v) for k, v in _values(project).items()} == {"a": 36, "b": 36}


def test_a_live_replays_folders_are_not_removed_by_another(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from florsql.engine.replay.leftovers import remove_leftovers

    monkeypatch.setattr(tempfile, "tempdir", str(project.parent / "tmp"))
    _hang(project, "lr > 0.07")
    first = _florsql(project, "replay", "w", str(project), "--where", "lr > 0.07")
    try:
        _wait_for(lambda: _hung(project))
        held = _leftovers(project)
        assert any("pool" in h for h in held) and len(held) >= 3  # pool, trees, staging
        assert remove_leftovers(project / ".flor") == {}  # as another replay starts
        assert _leftovers(project) == held and all(process_alive(p) for p in _hung(project))
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 130 and _leftovers(project) == []


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------


def _peak_rss_mb(proc: subprocess.Popen) -> float:
    """Wait for `proc`, reading its peak resident memory (VmHWM) until it exits."""
    peak = 0.0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024)
        except (OSError, TypeError):
            pass
        time.sleep(0.02)
    return peak


@pytest.mark.parametrize("pool", ["1", "0"], ids=["pool", "without-pool"])
def test_replay_output_goes_to_a_bounded_log_not_into_memory(project: Path, pool: str) -> None:
    noisy = TODAY.replace(HANGING, TINY_MLP_LOSS_LINE).replace(
        "print(\"final accuracy\"",
        "flor.log(\"noise\", chatter(6, 240))\nprint(\"final accuracy\"")
    (project / "train.py").write_text(noisy)  # 240 MB on stdout after the loop
    proc = _florsql(project, "replay", "noise", str(project), "--where", "lr < 0.07",
                    "--workers", "1", FLOR_REPLAY_POOL=pool)
    peak = _peak_rss_mb(proc)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    print(f"peak RSS of florsql: {peak:.0f} MB")
    assert peak < 600, peak  # was 1.1 GB for 240 MB without the pool
    (log,) = [d / "stdout.log" for d in _replay_dirs(project)]
    text = log.read_bytes()
    assert len(text) <= 10 * 1024 * 1024 + 200
    assert text.startswith(b"[florsql: ") and b"dropped" in text.splitlines()[0]
    assert text.endswith(b"last line of epoch 6\nfinal accuracy 0.4375\n")


def test_a_failing_task_still_reports_the_end_of_its_stderr(project: Path) -> None:
    failing = TODAY.replace(HANGING, TINY_MLP_LOSS_LINE).replace(
        "print(\"final accuracy\"",
        "flor.log(\"noise\", chatter(6, 20) / (lr - lr))\nprint(\"final accuracy\"")
    (project / "train.py").write_text(failing)
    done = _replay(project, "--where", "lr < 0.07", names="noise", FLOR_REPLAY_POOL="0")
    assert done.returncode == 1 and "ZeroDivisionError" in done.stderr
    assert _leftovers(project) == []


# ---------------------------------------------------------------------------------------------
# The user's repository.
# ---------------------------------------------------------------------------------------------


def _repo_state(repo: Path) -> dict[str, object]:
    """Everything of the user's repository a replay could disturb (flor's hidden refs and the
    `.git/info/exclude` line aside)."""
    meta = repo / ".git"
    hooks = {p.name: p.read_bytes() for p in (meta / "hooks").iterdir()}
    worktrees = {str(p.relative_to(meta)): p.read_bytes()
                 for p in (meta / "worktrees").rglob("*") if p.is_file()}
    refs = [line for line in git(repo, "for-each-ref").splitlines() if "refs/flor/" not in line]
    return {"HEAD": (meta / "HEAD").read_bytes(), "index": (meta / "index").read_bytes(),
            "config": (meta / "config").read_bytes(), "refs": refs, "hooks": hooks,
            "worktrees": worktrees, "worktree list": git(repo, "worktree", "list", "--porcelain"),
            "stash": git(repo, "stash", "list"),
            "status": git(repo, "--no-optional-locks", "status", "--porcelain=v2", "--branch",
                          "--untracked-files=all")}


def test_the_users_repository_is_unchanged_by_runs_replays_kills_and_interrupts(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": OLD, "notes.txt": "v1\n"})
    (tmp_path / "tmp").mkdir()
    git(repo, "branch", "feature")
    git(repo, "worktree", "add", "-q", str(tmp_path / "w"), "-b", "wt")
    (tmp_path / "w").rename(tmp_path / "w2")  # a worktree the user moved: prune would drop it
    (repo / "notes.txt").write_text("v2\n")
    git(repo, "stash", "-q")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    for runid, lr in (("a", "0.05"), ("b", "0.1")):
        run_script(repo, "train.py", "--flor", runid, "--kwargs", f"lr={lr}",
                   env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(TODAY)
    before = _repo_state(repo)

    _hang(repo, "lr > 0.07")
    for stop in ("interrupt", "kill florsql", "kill a worker"):
        proc = _florsql(repo, "replay", "w", str(repo), "--workers", "2")
        _wait_for(lambda: len(_hung(repo)) >= 1)
        (victim,) = _hung(repo)
        if stop == "interrupt":
            proc.send_signal(signal.SIGINT)
        elif stop == "kill florsql":
            proc.kill()
        else:  # the worker that forked the hung task
            os.kill(int(Path(f"/proc/{victim}/stat").read_text().rsplit(")", 1)[1].split()[1]),
                    signal.SIGKILL)
        proc.communicate(timeout=60)
        assert _gone([victim])
        (repo / f"hang.{victim}").unlink()
    (repo / "hang").unlink()
    assert _replay(repo).returncode == 0
    run_script(repo, "train.py", "--flor", "c", "--kwargs", "lr=0.02")
    assert _replay(repo).returncode == 0
    assert _repo_state(repo) == before
    assert (repo / ".git" / "worktrees" / "w").is_dir()
    assert _leftovers(repo) == []
