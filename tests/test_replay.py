"""Hindsight replay end to end: today's new log statements, recovered for past versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import flor
import florsql
from conftest import git, make_repo, run_script
from florsql.cli import main

V1 = """
import torch, flor
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
lr = flor.arg("lr", 0.05)
epochs = flor.arg("epochs", 3)
X = torch.randn(256, 10)
Y = (X[:, :2].sum(1, keepdim=True) > 0).float()
train = DataLoader(TensorDataset(X[:192], Y[:192]), batch_size=32, shuffle=True)
VX, VY = X[192:], Y[192:]
model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
crit = nn.BCEWithLogitsLoss()

with flor.checkpointing(model=model, optimizer=opt):
    for epoch in flor.loop("epoch", range(epochs)):
        for x, y in flor.loop("step", train):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())
        with torch.no_grad():
            acc = ((model(VX) > 0).float() == VY).float().mean().item()
        print("epoch", epoch, "acc", acc)
"""
V2 = V1.replace("model", "net")  # the same code, the model variable renamed
TODAY = V2.replace(
    "            loss.backward()\n",
    "            loss.backward()\n"
    "            flor.log(\"grad_norm\", sum(p.grad.norm().item() for p in net.parameters()))\n",
).replace(
    "        print(\"epoch\", epoch, \"acc\", acc)\n",
    "        print(\"epoch\", epoch, \"acc\", acc)\n        flor.log(\"val_acc\", acc)\n")
VALUES = (
    "SELECT r.runid, l.value_name, c.path, l.value_num FROM logs l JOIN runs r USING (tstamp) "
    "JOIN contexts c USING (tstamp, ctx_id) WHERE l.value_name IN ('val_acc', 'grad_norm') "
    "AND l.source = ? ORDER BY ALL")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("replay") / "proj", {"train.py": V1})
    run_script(repo, "train.py", "--flor", "a", "--kwargs", "lr=0.05")
    run_script(repo, "train.py", "--flor", "b", "--kwargs", "lr=0.1")
    (repo / "train.py").write_text(V2)
    git(repo, "commit", "-qam", "rename model to net")
    run_script(repo, "train.py", "--flor", "c", "--kwargs", "lr=0.02")
    (repo / "train.py").write_text(TODAY)  # today's edit, not committed
    return repo


@pytest.fixture(scope="module")
def replayed(history: Path) -> Path:
    """The history after `florsql replay`, plus a fresh run of today's script per old run."""
    assert main(["replay", "val_acc,grad_norm", "--workers", "2",
                 "--project", str(history)]) == 0
    for runid, lr in (("a", "0.05"), ("b", "0.1"), ("c", "0.02")):
        run_script(history, "train.py", "--flor", runid, "--kwargs", f"lr={lr}")
    return history


def test_replayed_values_equal_a_fresh_run_of_todays_script(replayed: Path) -> None:
    with florsql.connect(replayed) as conn:
        replayed = conn.execute(VALUES, ["replay"]).fetchall()
        fresh = conn.execute(VALUES, ["forward"]).fetchall()
        per_run = conn.execute(
            "SELECT r.runid, count(*) FROM logs l JOIN runs r USING (tstamp) "
            "WHERE l.source = 'replay' GROUP BY 1 ORDER BY 1").fetchall()
    assert len(replayed) == 3 * (3 + 3 * 6)  # 3 runs x (3 val_acc + 18 grad_norm)
    assert replayed == fresh  # bit for bit: DOUBLE equality
    assert per_run == [("a", 21), ("b", 21), ("c", 21)]  # only the asked-for names


def test_replayed_records_keep_the_name_statistics_exact(replayed: Path) -> None:
    from test_name_stats import assert_statistics_exact

    with florsql.connect(replayed, replay="off") as conn:
        assert conn.execute("SELECT count(*) FROM logs WHERE source = 'replay'").fetchone()[0]
        assert_statistics_exact(conn)  # replays add records to contexts already stored


def test_a_second_replay_has_nothing_left_to_do(replayed: Path) -> None:
    df = flor.replay(["val_acc", "grad_norm"], path=replayed, dry_run=True)
    assert df.empty or set(df.status) <= {"planned"} and not any(df.names)


def test_the_users_tree_and_branch_are_untouched_by_replay(replayed: Path) -> None:
    assert (replayed / "train.py").read_text() == TODAY
    assert git(replayed, "status", "--porcelain") == "M train.py"
    assert git(replayed, "worktree", "list").count("\n") == 0  # replay worktrees removed


FAILING = TODAY.replace(
    "        flor.log(\"val_acc\", acc)\n",
    "        flor.log(\"val_acc\", acc)\n"
    "        flor.log(\"boom\", acc / (epoch - 1) if lr > 0.04 else acc)\n")


def test_a_failing_replay_is_reported_and_leaves_nothing_behind(tmp_path: Path, capsys) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": V2})
    run_script(repo, "train.py", "--flor", "ok", "--kwargs", "lr=0.02", "epochs=2")
    run_script(repo, "train.py", "--flor", "bad", "--kwargs", "lr=0.05", "epochs=2")
    (repo / "train.py").write_text(FAILING.replace("acc / (epoch - 1)", "acc / (epoch - epoch)"))
    assert main(["replay", "boom", "--workers", "1", "--project", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "replay of bad" in err and "ZeroDivisionError" in err and "version" in err
    with florsql.connect(repo) as conn:
        rows = conn.execute(
            "SELECT r.runid, count(*) FROM logs l JOIN runs r USING (tstamp) "
            "WHERE l.value_name = 'boom' GROUP BY 1").fetchall()
    assert rows == [("ok", 2)]  # the failed run kept nothing, the other one finished
    assert not list((repo / ".flor" / "replays-staging").glob("*"))
    # a second replay redoes only what is missing: the failed run, which fails again
    plan = flor.replay("boom", path=repo, dry_run=True)
    assert plan.runid.tolist() == ["bad"]


def test_a_version_that_cannot_take_the_statement_is_refused_with_a_reason(
        tmp_path: Path, capsys) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": V2})
    run_script(repo, "train.py", "--flor", "old", "--kwargs", "epochs=1")
    (repo / "train.py").write_text(TODAY.replace(
        "        flor.log(\"val_acc\", acc)\n",
        "        flor.log(\"val_acc\", acc)\n        flor.log(\"f1\", f1_score(net, VX, VY))\n"))
    plan = flor.replay("f1", path=repo, dry_run=True)
    assert plan.status.tolist() == ["refused"] and "f1_score" in plan.error[0]
    assert main(["replay", "f1", "--project", str(repo)]) == 1
    assert "refused" in capsys.readouterr().out


def test_replayed_records_survive_a_rebuilt_catalog(replayed: Path) -> None:
    query = "SELECT count(*) FROM logs WHERE source = 'replay'"
    with florsql.connect(replayed) as conn:
        before = conn.execute(query).fetchone()
    shutil.rmtree(replayed / ".flor" / "catalog")
    with florsql.connect(replayed) as conn:
        assert conn.execute(query).fetchone() == before != (0,)


def test_the_where_clause_picks_the_runs_in_sql_or_pandas_style(replayed: Path) -> None:
    from florsql.engine.replay.plan import _candidate_runs

    with florsql.connect(replayed) as conn:
        by_sql = _candidate_runs(conn.session, "lr > 0.06 AND loss IS NOT NULL")
        by_pandas = _candidate_runs(conn.session,
                                    "lr.astype('float') > 0.06 and loss.notna()")
        everything = _candidate_runs(conn.session, None)
    assert by_sql == by_pandas
    assert {r.runid for r in by_sql} == {"b"} and len(by_sql) == 2  # the run and its fresh twin
    assert len(everything) == 6


def test_a_new_statements_random_draws_do_not_leak_into_later_epochs(tmp_path: Path) -> None:
    head = V2.replace("            opt.zero_grad()\n",
                      "            opt.zero_grad()\n"
                      "            flor.log(\"head\", x[0, 0].item())\n")
    noisy = head.replace("        print(\"epoch\", epoch, \"acc\", acc)\n",
                         "        print(\"epoch\", epoch, \"acc\", acc)\n"
                         "        flor.log(\"noise\", torch.rand(3).sum().item())\n")
    repo = make_repo(tmp_path / "proj", {"train.py": V2})
    run_script(repo, "train.py", "--flor", "orig", env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(noisy)
    assert main(["replay", "head,noise", "--workers", "1", "--project", str(repo)]) == 0
    (repo / "train.py").write_text(head)  # the original run's data order, observed directly
    run_script(repo, "train.py", "--flor", "witness")
    with florsql.connect(repo) as conn:
        def heads(source: str) -> list[tuple]:
            return conn.execute(
                "SELECT c.path, l.value_num FROM logs l JOIN contexts c USING (tstamp, ctx_id) "
                "WHERE l.value_name = 'head' AND l.source = ? ORDER BY 1", [source]).fetchall()

        replayed, witness = heads("replay"), heads("forward")
        noise = conn.execute("SELECT count(*) FROM logs WHERE value_name = 'noise'").fetchone()
    assert noise == (3,) and len(replayed) == 18
    assert replayed == witness  # epoch 1 and 2 shuffles unaffected by epoch 0's torch.rand
