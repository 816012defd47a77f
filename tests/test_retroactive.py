"""Retroactive SQL end to end: a SELECT that names a value today's script logs replays the
past runs that lack it (only those its WHERE allows), then answers from the catalog."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import pytest

import florsql
from conftest import git, record_then_edit, run_script

OLD = """
import torch, flor
from torch import nn

torch.manual_seed(0)
lr = flor.arg("lr", 0.05)
X = torch.randn(96, 6)
Y = (X[:, :2].sum(1, keepdim=True) > 0).float()
VX, VY = X[64:], Y[64:]
model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=lr)
crit = nn.BCEWithLogitsLoss()

with flor.checkpointing(model=model, optimizer=opt):
    for epoch in flor.loop("epoch", range(3)):
        for i in flor.loop("step", range(4)):
            idx = torch.randperm(64)[:16]
            opt.zero_grad()
            loss = crit(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())
        with torch.no_grad():
            acc = ((model(VX) > 0).float() == VY).float().mean().item()
        if epoch == 2:
            final = acc
"""
TODAY = OLD + "        flor.log(\"val_acc\", acc)\n"
RUNS = (("a", "0.02"), ("b", "0.1"), ("c", "0.2"))
QUERY = "SELECT runid, epoch, val_acc FROM history WHERE lr > 0.05 ORDER BY runid, epoch"
REPLAYS = ("SELECT r.runid, p.start_iter, p.stop_iter FROM replays p JOIN runs r USING (tstamp) "
           "ORDER BY ALL")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three finished runs of the old script; today's script (uncommitted) logs val_acc."""
    # a checkpoint at every epoch: any epoch can be replayed alone
    return record_then_edit(tmp_path_factory.mktemp("retro") / "proj", OLD, TODAY, RUNS)


@pytest.fixture
def project(recorded: Path, tmp_path: Path) -> Path:
    """A private copy of the recorded history, so each test starts with nothing replayed."""
    copy = tmp_path / "proj"
    shutil.copytree(recorded, copy)
    shutil.rmtree(copy / ".flor" / "catalog", ignore_errors=True)
    return copy


def fresh_values(repo: Path) -> list[tuple]:
    """val_acc per (run, epoch) from running today's script afresh with the same args."""
    for runid, lr in RUNS:
        run_script(repo, "train.py", "--flor", f"fresh-{runid}", "--kwargs", f"lr={lr}")
    with florsql.connect(repo, replay="off") as conn:
        rows = conn.execute(
            "SELECT substr(runid, 7), epoch, val_acc FROM history WHERE runid LIKE 'fresh-%' "
            "AND lr > 0.05 ORDER BY ALL").fetchall()
    return rows


def test_a_query_naming_a_new_value_replays_only_the_runs_its_where_allows(
        project: Path) -> None:
    with florsql.connect(project, workers=2) as conn:
        rows = conn.execute(QUERY).fetchall()
        replays = conn.execute(REPLAYS).fetchall()
        again = conn.execute(QUERY)
        assert again.fetchall() == rows
        assert conn.execute(REPLAYS).fetchall() == replays  # the second call replayed nothing
        assert again.messages == []
    assert {r for r, _, _ in replays} == {"b", "c"}  # lr > 0.05 only; a (0.02) untouched
    assert all(v is not None for _, _, v in rows) and len(rows) == 6
    assert rows == fresh_values(project)  # bit for bit what a real run logs


def test_a_loop_dimension_filter_replays_only_that_iteration(project: Path) -> None:
    query = "SELECT runid, epoch, val_acc FROM history WHERE epoch = 1 AND runid = 'c'"
    with florsql.connect(project) as conn:
        rows = conn.execute(query).fetchall()
        replays = conn.execute(REPLAYS).fetchall()
        replayed = conn.execute(
            "SELECT c.path FROM logs l JOIN contexts c USING (tstamp, ctx_id) "
            "WHERE l.source = 'replay'").fetchall()
        rest = conn.execute("SELECT epoch, val_acc FROM history WHERE runid = 'c' ORDER BY 1")
        rest = [e for e, v in rest.fetchall() if v is not None]
    assert len(rows) == 1 and rows[0][:2] == ("c", 1) and rows[0][2] is not None
    assert replays == [("c", 1, 2)] and replayed == [("epoch=1",)]
    assert rest == [0, 1, 2]  # asking for all of c then replays the two epochs still missing


def test_replay_off_answers_with_nulls_and_a_warning_naming_the_runs(project: Path) -> None:
    with florsql.connect(project, replay="off") as conn:
        with pytest.warns(florsql.ReplayWarning, match="replay is off"):
            cur = conn.execute(QUERY)
        rows = cur.fetchall()
        assert conn.execute("SELECT count(*) FROM replays").fetchone() == (0,)
    assert [v for _, _, v in rows] == [None] * 6
    kinds, texts = zip(*cur.messages, strict=True)
    assert kinds[0] is florsql.Warning and "b, c" in texts[0] and "val_acc" in texts[0]


def test_ask_mode_shows_the_plan_and_replays_nothing_when_declined(project: Path) -> None:
    shown = []

    def decline(plan) -> bool:
        shown.append(plan)
        return False

    with florsql.connect(project, replay="ask", confirm=decline) as conn:
        with pytest.warns(florsql.ReplayWarning, match="declined"):
            rows = conn.execute(QUERY).fetchall()
        assert conn.execute("SELECT count(*) FROM replays").fetchone() == (0,)
    assert [v for _, _, v in rows] == [None] * 6
    (plan,) = shown
    assert sorted(r.runid for r, _ in plan.tasks) == ["b", "c"] and plan.estimated_seconds > 0


def test_explain_replay_lists_the_plan_and_runs_nothing(project: Path) -> None:
    with florsql.connect(project) as conn:
        cur = conn.execute("EXPLAIN REPLAY " + QUERY)
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
        by_epoch = conn.execute(
            "EXPLAIN REPLAY SELECT val_acc FROM history WHERE epoch >= ? AND lr > ?",
            [2, 0.15]).fetchall()
        assert conn.execute("SELECT count(*) FROM replays").fetchone() == (0,)
    assert columns[:5] == ["runid", "tstamp", "vid", "names", "iterations"]
    assert [(r[0], r[3], r[4]) for r in rows] == [("b", "val_acc", "all"), ("c", "val_acc", "all")]
    assert all('flor.log("val_acc", acc)' in r[7] for r in rows)  # the inserted statement
    assert [(r[0], r[4]) for r in by_epoch] == [("c", "2")]  # parameters bound for the plan


def test_a_replay_over_budget_is_refused_with_the_estimate(project: Path) -> None:
    with florsql.connect(project, max_replay_seconds=0.01) as conn:
        with pytest.raises(florsql.OperationalError,
                           match=r"over the limit of 0.01 s.*max_replay_seconds"):
            conn.execute(QUERY)
        assert conn.execute("SELECT count(*) FROM replays").fetchone() == (0,)


def test_a_name_no_script_logs_is_an_error_naming_the_closest(project: Path) -> None:
    with florsql.connect(project) as conn:
        with pytest.raises(florsql.ProgrammingError, match="val_acc"):
            conn.execute("SELECT runid, val_accuracy FROM history")


def test_select_star_shows_the_columns_with_data_and_replays_nothing(project: Path) -> None:
    with florsql.connect(project) as conn:
        cur = conn.execute("SELECT * FROM history WHERE lr > 0.05")
        columns = {d[0] for d in cur.description}
        assert conn.execute("SELECT count(*) FROM replays").fetchone() == (0,)
    assert {"loss", "lr", "epoch", "step"} <= columns and "val_acc" not in columns


def test_concurrent_queries_replay_each_task_once(project: Path) -> None:
    answers, errors = [], []

    def ask() -> None:
        try:
            with warnings.catch_warnings(), florsql.connect(project, workers=1) as conn:
                warnings.simplefilter("ignore")
                answers.append(conn.execute(QUERY).fetchall())
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert answers[0] == answers[1] and all(v is not None for _, _, v in answers[0])
    with florsql.connect(project) as conn:
        replays = conn.execute(REPLAYS).fetchall()
    assert sorted(r for r, _, _ in replays) == ["b", "c"]  # one replay per run, not two


def test_the_users_tree_is_untouched_by_a_retroactive_query(project: Path) -> None:
    with florsql.connect(project) as conn:
        conn.execute(QUERY).fetchall()
    assert (project / "train.py").read_text() == TODAY
    assert git(project, "status", "--porcelain") == "M train.py"


def test_flor_dataframe_with_a_missing_name_replays_it_at_its_grain(project: Path) -> None:
    import flor
    from flor import history as flor_history

    try:
        frame = flor.dataframe("val_acc", path=project)
    finally:
        flor_history._release_all()
    assert list(frame.columns[-2:]) == ["epoch", "val_acc"]
    assert len(frame) == 9 and frame.val_acc.notna().all()


def test_the_cli_replays_with_yes_refuses_without_a_terminal_and_skips_with_no_replay(
        project: Path, capsys: pytest.CaptureFixture) -> None:
    from florsql.cli import main

    assert main([str(project), "-c", QUERY, "--no-replay", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:]
    assert "warning: replay is off" in err and len(rows) == 6
    assert "rerun with --yes" in err  # the CLI's words, not Python's or the shell's
    assert "replay='auto'" not in err and ".replay" not in err
    assert all(row.endswith(",") for row in rows)  # val_acc is NULL (empty in CSV)
    assert main([str(project), "-c", QUERY]) == 0  # ask, but stdin is not a terminal
    out, err = capsys.readouterr()
    assert "pass --yes to replay" in err and "1 task(s)" not in err and "2 task(s)" in err
    (project / "queries").mkdir()
    (project / "queries" / "val.sql").write_text(
        "-- name: val\n-- description: val_acc above a learning rate\n"
        "SELECT runid, epoch, val_acc FROM history WHERE lr > :lr ORDER BY runid, epoch\n")
    assert main(["run", "val", "--param", "lr=0.05", "--project", str(project), "--yes",
                 "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "2/2" in err and len(out.splitlines()) == 7
    assert all(line.split(",")[2] for line in out.splitlines()[1:])  # no NULLs left


def test_a_statement_that_logs_nothing_somewhere_is_not_replayed_again(project: Path) -> None:
    anchor = "            final = acc\n"
    (project / "train.py").write_text(
        OLD.replace(anchor, anchor + "            flor.log(\"last_acc\", final)\n"))
    query = "SELECT runid, epoch, last_acc FROM history WHERE runid = 'c' ORDER BY epoch"
    with florsql.connect(project) as conn:
        first = conn.execute(query).fetchall()
        replays = conn.execute(REPLAYS).fetchall()
        assert conn.execute(query).fetchall() == first
        assert conn.execute(REPLAYS).fetchall() == replays  # epochs 0 and 1 count as done
    assert [(r, e) for r, e, _ in first] == [("c", 2)] and first[0][2] is not None
    assert [r for r, _, _ in replays] == ["c"]


def test_editing_todays_script_changes_the_plan_of_the_same_query(project: Path) -> None:
    with florsql.connect(project) as conn:
        before = conn.execute("EXPLAIN REPLAY " + QUERY).fetchall()
        (project / "train.py").write_text(TODAY.replace(
            "        flor.log(\"val_acc\", acc)\n",
            "        report(acc)\n").replace(
            "torch.manual_seed(0)\n",
            "torch.manual_seed(0)\ndef report(acc):\n    flor.log(\"val_acc\", acc)\n"))
        after = conn.execute("EXPLAIN REPLAY " + QUERY).fetchall()
    assert [r[5].startswith("replay") for r in before] == [True, True]
    assert [r[5].startswith("refused") for r in after] == [True, True]
