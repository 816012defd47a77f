"""Runs of a real torch script land in the catalog with the right identity, args and values."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import florsql
from conftest import git, run_script


def _user_state(repo: Path) -> dict[str, str]:
    """Everything flor must never change in the user's repo."""
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "branches": git(repo, "for-each-ref", "refs/heads", "refs/tags"),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "index": hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
        "staged": git(repo, "diff", "--cached"),
        "log": git(repo, "log", "--branches", "--tags", "--format=%H"),
    }


def test_three_runs_land_with_their_args_loop_dims_and_values(train_repo: Path) -> None:
    before = _user_state(train_repo)
    settings = [("lr=0.1", "hidden=8"), ("lr=0.01", "hidden=16"), ("lr=0.05", "hidden=4")]
    for i, kwargs in enumerate(settings):
        run_script(train_repo, "train.py", "--flor", f"run{i}", "--kwargs", "epochs=3", *kwargs)
    with florsql.connect(train_repo) as conn:
        runs = conn.execute("SELECT runid, status, filename, projid FROM runs ORDER BY tstamp")
        assert runs.fetchall() == [(f"run{i}", "finished", "train.py", "proj") for i in range(3)]
        args = conn.execute(
            "SELECT r.runid, l.value_name, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "WHERE l.kind = 'arg' AND l.value_name IN ('lr', 'hidden') ORDER BY 1, 2").fetchall()
        assert args == [("run0", "hidden", 8.0), ("run0", "lr", 0.1),
                        ("run1", "hidden", 16.0), ("run1", "lr", 0.01),
                        ("run2", "hidden", 4.0), ("run2", "lr", 0.05)]
        dims = conn.execute(
            "SELECT DISTINCT depth, loop_name FROM loops ORDER BY 1").fetchall()
        assert dims == [(0, "epoch"), (1, "step")]
        per_run = conn.execute(
            "SELECT r.runid, count(*) FILTER (WHERE value_name = 'loss'), "
            "count(*) FILTER (WHERE value_name = 'accuracy') FROM logs JOIN runs r USING (tstamp) "
            "GROUP BY 1 ORDER BY 1").fetchall()
        # 448 training rows / batch 32 = 14 steps per epoch, 3 epochs; accuracy once per epoch
        assert per_run == [(f"run{i}", 42, 3) for i in range(3)]
    assert _user_state(train_repo) == before


def test_logged_values_equal_what_the_script_printed(train_repo: Path) -> None:
    proc = run_script(train_repo, "train.py", "--kwargs", "epochs=2")
    printed = [float(line.split("accuracy ")[1]) for line in proc.stdout.splitlines()]
    with florsql.connect(train_repo) as conn:
        rows = conn.execute(
            "SELECT lp.iteration, l.value_num FROM logs l JOIN loops lp USING (tstamp, ctx_id) "
            "WHERE l.value_name = 'accuracy' AND lp.depth = 0 ORDER BY 1").fetchall()
    assert [it for it, _ in rows] == [0, 1]
    assert [round(v, 3) for _, v in rows] == printed


def test_a_code_change_gives_a_new_vid_and_same_code_the_same_vid(train_repo: Path) -> None:
    run_script(train_repo, "train.py", "--kwargs", "epochs=1")
    run_script(train_repo, "train.py", "--kwargs", "epochs=1")
    (train_repo / "train.py").write_text(
        (train_repo / "train.py").read_text().replace("momentum=0.9", "momentum=0.8"))
    before = _user_state(train_repo)
    run_script(train_repo, "train.py", "--kwargs", "epochs=1")
    with florsql.connect(train_repo) as conn:
        vids = [v for (v,) in conn.execute("SELECT vid FROM runs ORDER BY tstamp").fetchall()]
    assert vids[0] == vids[1] != vids[2]
    assert _user_state(train_repo) == before  # uncommitted edit stays uncommitted
    snapshot = git(train_repo, "show", f"{vids[2]}:train.py")
    assert "momentum=0.8" in snapshot
    assert git(train_repo, "rev-parse", f"refs/flor/snapshots/{vids[2]}") == vids[2]


def test_runid_comes_from_flor_flag_env_or_a_generated_name(train_repo: Path) -> None:
    run_script(train_repo, "train.py", "--kwargs", "epochs=1", env={"FLOR_RUN": "from-env"})
    run_script(train_repo, "train.py", "--kwargs", "epochs=1")
    run_script(train_repo, "train.py", "--kwargs", "epochs=1", "--flor", "from-env")
    with florsql.connect(train_repo) as conn:
        ids = [r for (r,) in conn.execute("SELECT runid FROM runs ORDER BY tstamp").fetchall()]
        tstamps = conn.execute("SELECT count(DISTINCT tstamp) FROM runs").fetchone()
    assert ids[0] == ids[2] == "from-env"  # names may repeat; tstamps tell runs apart
    assert ids[1] and "-" in ids[1]
    assert tstamps == (3,)


def test_a_script_that_only_imports_flor_is_not_a_run(script_repo) -> None:
    repo = script_repo("import flor\nprint('hello')\n")
    proc = run_script(repo, "train.py")
    assert proc.stdout == "hello\n"
    assert not (repo / ".flor").exists()


def test_an_exception_in_the_script_marks_the_run_failed(script_repo) -> None:
    repo = script_repo(
        "import flor\n"
        "for e in flor.loop('epoch', range(3)):\n"
        "    flor.log('x', e)\n"
        "    if e == 1:\n"
        "        raise RuntimeError('boom')\n")
    proc = run_script(repo, "train.py", check=False)
    assert proc.returncode == 1 and "RuntimeError: boom" in proc.stderr
    with florsql.connect(repo) as conn:
        status, error = conn.execute("SELECT status, error FROM runs").fetchone()
        xs = conn.execute("SELECT value_num FROM logs WHERE value_name='x' ORDER BY ord")
        assert xs.fetchall() == [(0.0,), (1.0,)]
    assert status == "failed" and "boom" in error


def test_unnamed_loops_are_named_by_depth(script_repo) -> None:
    repo = script_repo(
        "from flor import MTK as Flor\nimport flor\n"
        "def batches():\n"
        "    yield from 'ab'\n"
        "for e in Flor.loop(range(2)):\n"
        "    for s, b in Flor.loop(enumerate(batches())):\n"
        "        for k in Flor.loop(iter([7, 8])):\n"
        "            flor.log('v', k)\n")
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        names = conn.execute("SELECT DISTINCT depth, loop_name FROM loops ORDER BY 1").fetchall()
        paths = conn.execute("SELECT count(DISTINCT path) FROM contexts WHERE depth = 3").fetchone()
    assert names == [(0, "epoch"), (1, "step"), (2, "loop2")]
    assert paths == (8,)


def test_flor_home_moves_the_records_and_the_catalog_elsewhere(
        train_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "shared-flor-home"
    run_script(train_repo, "train.py", "--kwargs", "epochs=1", env={"FLOR_HOME": str(home)})
    assert not (train_repo / ".flor").exists()
    assert len(list((home / "runs").iterdir())) == 1
    monkeypatch.setenv("FLOR_HOME", str(home))
    with florsql.connect(train_repo) as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("finished",)]
    assert (home / "catalog" / "manifest.json").exists()


MANY_STEPS = '''\
import threading, flor
def watcher():  # another thread logging while the loops run
    for n in range(2000):
        flor.log("bg", float(n))
thread = threading.Thread(target=watcher)
for e in flor.loop("epoch", range(2)):
    flor.log("note", f"epoch {e}")
    if e == 0:
        thread.start()
    for s in flor.loop("step", range(20_000)):  # longer than one context segment
        flor.log("loss", float(s))
        if s % 7 == 0:
            flor.log("count", s)
        if s == 5:
            for m in flor.loop("micro", range(3)):
                flor.log("micro_loss", m / 10)
thread.join()
flor.log("done", True)
'''


def test_every_record_of_a_long_loop_lands_at_its_step(script_repo) -> None:
    repo = script_repo(MANY_STEPS)
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        at_step = conn.execute(
            "SELECT value_name, count(*), count(*) FILTER (WHERE lp.iteration = l.value_num), "
            "max(lp.iteration) FROM logs l JOIN loops lp USING (tstamp, ctx_id) "
            "WHERE lp.depth = 1 AND value_name IN ('loss', 'count') GROUP BY 1 ORDER BY 1")
        assert at_step.fetchall() == [("count", 5716, 5716, 19_999),
                                      ("loss", 40_000, 40_000, 19_999)]
        micro = conn.execute(
            "SELECT c.path, l.value_num FROM logs l JOIN contexts c USING (tstamp, ctx_id) "
            "WHERE value_name = 'micro_loss' ORDER BY c.path").fetchall()
        assert micro == [(f"epoch={e}/step=5/micro={m}", m / 10)
                         for e in range(2) for m in range(3)]
        others = conn.execute(
            "SELECT value_name, count(*), count(DISTINCT value_num) FROM logs "
            "WHERE value_name IN ('bg', 'note', 'done') GROUP BY 1 ORDER BY 1").fetchall()
        assert others == [("bg", 2000, 2000), ("done", 1, 1), ("note", 2, 0)]
