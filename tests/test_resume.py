"""Exact resume: restoring epoch k's checkpoint and running epoch k gives bit-identical values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import florsql
from conftest import run_script

STEP_LOSSES = (
    "SELECT lp.iteration AS epoch, st.iteration AS step, l.value_num FROM logs l "
    "JOIN loops lp ON lp.tstamp = l.tstamp AND lp.ctx_id = l.ctx_id AND lp.depth = 0 "
    "JOIN loops st ON st.tstamp = l.tstamp AND st.ctx_id = l.ctx_id AND st.depth = 1 "
    "WHERE l.value_name = 'loss' AND l.source = ? ORDER BY 1, 2"
)


def _replay(repo: Path, run_dir: str, replay_id: str, start: int, stop: int | None) -> None:
    spec = {"run_dir": run_dir, "replay_id": replay_id, "loop": "epoch",
            "start": start, "stop": stop}
    run_script(repo, "train.py", "--kwargs", "epochs=5", "lr=0.05", "--seed", "7",
               env={"FLOR_REPLAY": json.dumps(spec)})


@pytest.mark.parametrize("epoch", [1, 3])
def test_restoring_epoch_k_and_running_it_gives_bit_identical_losses(
        train_repo: Path, epoch: int) -> None:
    run_script(train_repo, "train.py", "--kwargs", "epochs=5", "lr=0.05", "--seed", "7",
               env={"FLOR_CHECKPOINT_EVERY": "1"})
    with florsql.connect(train_repo) as conn:
        run_dir, = conn.execute("SELECT run_dir FROM runs").fetchone()
        saved = conn.execute("SELECT iteration FROM checkpoints ORDER BY 1").fetchall()
        assert saved == [(i,) for i in range(6)]  # each epoch's start, and the end state
    _replay(train_repo, run_dir, "r1", epoch, epoch + 1)
    with florsql.connect(train_repo) as conn:
        forward = [r for r in conn.execute(STEP_LOSSES, ["forward"]).fetchall() if r[0] == epoch]
        replayed = conn.execute(STEP_LOSSES, ["replay"]).fetchall()
        tstamps = conn.execute(
            "SELECT count(DISTINCT tstamp), count(*) FROM logs WHERE source = 'replay' "
            "AND kind = 'arg'").fetchone()
    assert len(forward) == 14
    assert replayed == forward  # DOUBLE equality of finite floats is bit equality
    assert tstamps == (0, 0)  # replays attach to the original run and re-record no args


def test_replay_without_a_checkpoint_at_that_epoch_fails_clearly(train_repo: Path) -> None:
    run_script(train_repo, "train.py", "--kwargs", "epochs=5", env={"FLOR_CHECKPOINT_EVERY": "2"})
    with florsql.connect(train_repo) as conn:
        run_dir, = conn.execute("SELECT run_dir FROM runs").fetchone()
        saved = {i for (i,) in conn.execute("SELECT iteration FROM checkpoints").fetchall()}
    assert saved == {0, 2, 4, 5}  # every 2nd, plus first, last and end
    missing = 3
    spec = {"run_dir": run_dir, "replay_id": "r2", "loop": "epoch", "start": missing,
            "stop": missing + 1}
    proc = run_script(train_repo, "train.py", "--kwargs", "epochs=5",
                      env={"FLOR_REPLAY": json.dumps(spec)}, check=False)
    assert proc.returncode != 0
    assert f"no durable checkpoint for epoch={missing}" in proc.stderr
