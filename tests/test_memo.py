"""Memoized replay: skip the inner loop only where it provably cannot change the answer."""

from __future__ import annotations

from pathlib import Path

from test_replay import V2

import flor
import florsql
from conftest import TINY_MLP_LOSS_LINE, make_repo, run_script, tiny_mlp_script
from florsql.engine.code.memo import is_memoizable

EPOCH_LEVEL = V2.replace(
    "        print(\"epoch\", epoch, \"acc\", acc)\n",
    "        print(\"epoch\", epoch, \"acc\", acc)\n        flor.log(\"val_acc\", acc)\n")


def _line_of(source: str, text: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


def test_an_epoch_level_statement_reading_only_checkpointed_state_is_memoizable() -> None:
    assert is_memoizable(EPOCH_LEVEL, [_line_of(EPOCH_LEVEL, "val_acc")])


def test_a_statement_reading_a_variable_of_the_inner_loop_is_not() -> None:
    src = EPOCH_LEVEL.replace("flor.log(\"val_acc\", acc)", "flor.log(\"val_acc\", loss.item())")
    assert not is_memoizable(src, [_line_of(src, "val_acc")])


def test_a_step_level_statement_or_a_training_call_after_the_loop_is_not() -> None:
    step = EPOCH_LEVEL.replace("            opt.step()\n",
                               "            opt.step()\n            flor.log(\"g\", 1.0)\n")
    assert not is_memoizable(step, [_line_of(step, "\"g\"")])
    trains = EPOCH_LEVEL.replace("        flor.log(\"val_acc\", acc)\n",
                                 "        flor.log(\"val_acc\", acc)\n        opt.step()\n")
    assert not is_memoizable(trains, [_line_of(trains, "val_acc")])


def _project(tmp_path: Path, today: str) -> Path:
    repo = make_repo(tmp_path / "proj", {"train.py": V2})
    # epochs this short get adaptive checkpoints only now and then: memoization needs each
    run_script(repo, "train.py", "--flor", "a", "--kwargs", "lr=0.05",
               env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(today)
    return repo


def _values(repo: Path, source: str) -> list[tuple]:
    with florsql.connect(repo) as conn:
        return conn.execute(
            "SELECT c.path, l.value_num FROM logs l JOIN contexts c USING (tstamp, ctx_id) "
            "WHERE l.value_name = 'val_acc' AND l.source = ? ORDER BY 1", [source]).fetchall()


def test_a_memoized_replay_gives_the_values_of_a_fresh_run(tmp_path: Path) -> None:
    repo = _project(tmp_path, EPOCH_LEVEL)
    plan = flor.replay("val_acc", path=repo, dry_run=True)
    assert plan.status.tolist() == ["planned"]
    from florsql.engine.replay.plan import plan_replay

    with florsql.connect(repo) as conn:
        assert plan_replay(conn.session, ["val_acc"]).runs[0].memoize
    result = flor.replay("val_acc", path=repo)
    assert result[["status", "memoized"]].values.tolist() == [["replayed", True]]
    run_script(repo, "train.py", "--flor", "fresh", "--kwargs", "lr=0.05")
    replayed = _values(repo, "replay")
    assert len(replayed) == 3 and replayed == _values(repo, "forward")


def test_code_after_the_loop_that_draws_random_numbers_falls_back_to_a_full_replay(
        tmp_path: Path) -> None:
    noisy = EPOCH_LEVEL.replace(
        "        flor.log(\"val_acc\", acc)\n",
        "        flor.log(\"val_acc\", acc + 0 * torch.rand(1).item())\n")
    repo = _project(tmp_path, noisy)
    result = flor.replay("val_acc", path=repo)
    assert result[["status", "memoized"]].values.tolist() == [["replayed", False]]
    # the draw must not leak into later epochs: the values are the original run's, which a
    # fresh run without the draw reproduces
    (repo / "train.py").write_text(EPOCH_LEVEL)
    run_script(repo, "train.py", "--flor", "witness", "--kwargs", "lr=0.05")
    assert _values(repo, "replay") == _values(repo, "forward")


def test_replaying_one_epoch_runs_only_that_epoch(tmp_path: Path) -> None:
    step_level = EPOCH_LEVEL.replace(
        "            loss.backward()\n",
        "            loss.backward()\n"
        "            flor.log(\"g\", net[0].weight.grad.sum().item())\n")
    repo = _project(tmp_path, step_level)
    epoch_only = flor.replay(["val_acc"], path=repo, iterations=[1])
    steps_only = flor.replay(["g"], path=repo, iterations=[2])
    assert epoch_only.memoized.tolist() == [True] and steps_only.memoized.tolist() == [False]
    run_script(repo, "train.py", "--flor", "fresh", "--kwargs", "lr=0.05")
    with florsql.connect(repo) as conn:
        def values(name: str, source: str) -> list[tuple]:
            return conn.execute(
                "SELECT c.path, l.value_num FROM logs l JOIN contexts c USING (tstamp, ctx_id) "
                "WHERE l.value_name = ? AND l.source = ? ORDER BY 1", [name, source]).fetchall()

        fresh_acc, fresh_g = values("val_acc", "forward"), values("g", "forward")
        assert values("val_acc", "replay") == [r for r in fresh_acc if r[0] == "epoch=1"]
        assert values("g", "replay") == [r for r in fresh_g if r[0].startswith("epoch=2/")]


# The benchmark's shape: the new statement calls a helper on the model after the inner loop,
# and the run's checkpoints do not cover every epoch (the adaptive schedule skips short ones).
BENCH_LIKE = tiny_mlp_script(epochs=4)
BENCH_TODAY = BENCH_LIKE.replace(
    TINY_MLP_LOSS_LINE,
    TINY_MLP_LOSS_LINE +
    "        flor.log(\"val_acc\", accuracy(model, VX, VY))\n")


def test_the_benchmarks_epoch_statement_is_memoized_where_checkpoints_allow(
        tmp_path: Path) -> None:
    assert is_memoizable(BENCH_TODAY, [_line_of(BENCH_TODAY, "val_acc")])
    repo = make_repo(tmp_path / "proj", {"train.py": BENCH_LIKE})
    # every 2nd epoch plus the last and the end: 0, 2, 3, 4; epoch 0's end state is missing
    run_script(repo, "train.py", "--flor", "a", "--kwargs", "lr=0.05",
               env={"FLOR_CHECKPOINT_EVERY": "2"})
    ckpts = sorted(p.name for p in (repo / ".flor" / "runs").glob("*/ckpt/*.json"))
    assert ckpts == [f"epoch-00000{i}.json" for i in (0, 2, 3, 4)]
    (repo / "train.py").write_text(BENCH_TODAY)
    from florsql.engine.replay.plan import plan_replay

    with florsql.connect(repo) as conn:
        plan = plan_replay(conn.session, ["val_acc"])
        assert plan.runs[0].memoize and len(plan.tasks) == 1
    result = flor.replay("val_acc", path=repo, workers=1)
    assert result[["status", "memoized"]].values.tolist() == [["replayed", True]]
    run_script(repo, "train.py", "--flor", "fresh", "--kwargs", "lr=0.05")
    replayed = _values(repo, "replay")
    assert len(replayed) == 4 and replayed == _values(repo, "forward")
