"""Exact resume: restoring epoch k's checkpoint and running epoch k gives bit-identical values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import florsql
from conftest import run_script
from flor.protocol import EXIT_BAD_TASK, PROTOCOL_VERSION, REPLAY_ENV, ReplaySpec

STEP_LOSSES = (
    "SELECT lp.iteration AS epoch, st.iteration AS step, l.value_num FROM logs l "
    "JOIN loops lp ON lp.tstamp = l.tstamp AND lp.ctx_id = l.ctx_id AND lp.depth = 0 "
    "JOIN loops st ON st.tstamp = l.tstamp AND st.ctx_id = l.ctx_id AND st.depth = 1 "
    "WHERE l.value_name = 'loss' AND l.source = ? ORDER BY 1, 2"
)


def _replay(repo: Path, run_dir: str, replay_id: str, start: int, stop: int | None) -> None:
    spec = ReplaySpec(Path(run_dir), replay_id, "epoch", start, stop)
    run_script(repo, "train.py", "--kwargs", "epochs=5", "lr=0.05", "--seed", "7",
               env={REPLAY_ENV: spec.to_json()})


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
    spec = ReplaySpec(Path(run_dir), "r2", "epoch", missing, missing + 1)
    proc = run_script(train_repo, "train.py", "--kwargs", "epochs=5",
                      env={REPLAY_ENV: spec.to_json()}, check=False)
    assert proc.returncode != 0
    assert f"no durable checkpoint for epoch={missing}" in proc.stderr



def test_a_replay_task_of_another_protocol_version_is_refused_before_anything_runs(
        train_repo: Path) -> None:
    run_script(train_repo, "train.py", "--kwargs", "epochs=2", env={"FLOR_CHECKPOINT_EVERY": "1"})
    with florsql.connect(train_repo) as conn:
        run_dir, = conn.execute("SELECT run_dir FROM runs").fetchone()
    doc = json.loads(ReplaySpec(Path(run_dir), "r9", "epoch", 1, 2).to_json())
    doc["protocol"] = PROTOCOL_VERSION + 1  # a florsql of a later version asked for it
    proc = run_script(train_repo, "train.py", "--kwargs", "epochs=2",
                      env={REPLAY_ENV: json.dumps(doc)}, check=False)
    assert proc.returncode == EXIT_BAD_TASK
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"flor: this replay task speaks protocol {PROTOCOL_VERSION + 1}, this flor "
                     f"speaks {PROTOCOL_VERSION}: install the same florsql version where the "
                     "replay runs as where it was asked for"]
    assert not (Path(run_dir) / "replays").exists()  # nothing was recorded
    broken = run_script(train_repo, "train.py", env={REPLAY_ENV: "{not json"}, check=False)
    assert broken.returncode == EXIT_BAD_TASK and "is not a valid replay spec" in broken.stderr


def test_the_replay_spec_round_trips_through_json() -> None:
    spec = ReplaySpec(Path("/r"), "id", "epoch", 2, None, frozenset({"a", "b"}), Path("/s"),
                      True, 42)
    assert ReplaySpec.from_json(spec.to_json()) == spec
    assert spec.out_dir == Path("/s") and spec.window("epoch") == (2, None)
    assert spec.window("other") == (0, None)

# Every generator checkpoints cover, drawn so that their cached values matter: numpy's
# standard_normal and python's gauss cache a second value, so one draw per epoch alternates
# between advancing the Mersenne Twister and only consuming the cache (its state is then
# unchanged but for the has_gauss flag).
RNG_SCRIPT = """
import random
import numpy as np
import torch
import flor

random.seed(1); np.random.seed(2); torch.manual_seed(3)
net = torch.nn.Linear(2, 1)
with flor.checkpointing(model=net):
    for epoch in flor.loop("epoch", range(flor.arg("epochs", 6))):
        for step in flor.loop("step", range(2)):
            flor.log("np_normal", float(np.random.standard_normal()))
            flor.log("py_gauss", random.gauss(0.0, 1.0))
        flor.log("np_uniform", float(np.random.random_sample()))
        flor.log("py_random", random.random())
        flor.log("torch_normal", torch.randn(1).item())
"""

VALUES = (
    "SELECT lp.iteration, l.value_name, l.ord, l.value_num FROM logs l "
    "JOIN loops lp ON lp.tstamp = l.tstamp AND lp.ctx_id = l.ctx_id AND lp.depth = 0 "
    "WHERE l.source = ? ORDER BY 1, 3"
)


def _values_by_epoch(repo: Path, source: str) -> dict[int, list[tuple]]:
    with florsql.connect(repo) as conn:
        rows = conn.execute(VALUES, [source]).fetchall()
    out: dict[int, list[tuple]] = {}
    for epoch, name, _, value in rows:
        out.setdefault(epoch, []).append((name, value))
    return out


@pytest.mark.parametrize("keep", [None, "3"])
def test_every_rng_is_restored_exactly_and_pruned_runs_replay_from_kept_checkpoints(
        script_repo, keep: str | None) -> None:
    repo = script_repo(RNG_SCRIPT)
    env = {"FLOR_CHECKPOINT_EVERY": "1", **({"FLOR_CHECKPOINT_KEEP": keep} if keep else {})}
    run_script(repo, "train.py", env=env)
    with florsql.connect(repo) as conn:
        run_dir, = conn.execute("SELECT run_dir FROM runs").fetchone()
        saved = [i for (i,) in conn.execute(
            "SELECT iteration FROM checkpoints ORDER BY 1").fetchall()]
    # keep=3 of checkpoints 0..6: the first, the newest, and every 4th
    assert saved == ([0, 4, 6] if keep else list(range(7)))
    forward = _values_by_epoch(repo, "forward")
    for start in ([1, 2, 3, 4, 5] if keep is None else [4]):
        spec = ReplaySpec(Path(run_dir), f"r{start}", "epoch", start, start + 1)
        run_script(repo, "train.py", env={REPLAY_ENV: spec.to_json()})
    replayed = _values_by_epoch(repo, "replay")
    assert replayed and all(replayed[k] == forward[k] for k in replayed)
    assert sorted(replayed) == ([1, 2, 3, 4, 5] if keep is None else [4])
