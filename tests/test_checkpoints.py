"""Checkpoint registration, the adaptive schedule, and durable listing."""

from __future__ import annotations

import json
from pathlib import Path

import florsql
from conftest import run_script

ADAPTIVE = """
import time, torch, flor
torch.manual_seed(0)
big = torch.nn.Linear(2000, 2500)  # 20 MB of state: each checkpoint costs milliseconds
opt = torch.optim.SGD(big.parameters(), lr=0.1)
with flor.checkpointing(model=big, optimizer=opt):
    for epoch in flor.loop("epoch", range(30)):
        time.sleep(0.004)
        flor.log("w", big.weight[0, 0].item())
"""


def test_checkpoint_cost_stays_within_budget_and_first_last_end_are_kept(script_repo) -> None:
    repo = script_repo(ADAPTIVE)
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        saved = [i for (i,) in conn.execute(
            "SELECT iteration FROM checkpoints ORDER BY 1").fetchall()]
        loop_secs = conn.execute("SELECT sum(seconds) FROM iterations").fetchone()[0]
        cost = conn.execute(
            "SELECT sum(seconds + blocked_seconds) FROM checkpoints "
            "WHERE iteration NOT IN (0, 29, 30)").fetchone()[0] or 0.0
        sizes = conn.execute("SELECT min(bytes) FROM checkpoints").fetchone()[0]
    assert saved[0] == 0 and saved[-2:] == [29, 30]
    assert len(saved) < 31  # adaptive: not every iteration
    assert cost <= loop_secs / 15 * 1.5  # within the 1/15 budget (slack for timer noise)
    assert sizes > 20_000_000


def test_every_listed_checkpoint_file_is_complete(script_repo) -> None:
    repo = script_repo(ADAPTIVE.replace("range(30)", "range(4)"))
    run_script(repo, "train.py", env={"FLOR_CHECKPOINT_EVERY": "1"})
    entries = sorted((repo / ".flor" / "runs").glob("*/ckpt/*.json"))
    assert len(entries) == 5
    for entry in entries:
        doc = json.loads(entry.read_text())
        assert (entry.parent / doc["file"]).stat().st_size == doc["bytes"]
    assert not list((repo / ".flor" / "runs").glob("*/ckpt/.*.tmp"))


def test_objects_without_state_dict_are_all_named_in_one_error(script_repo) -> None:
    repo = script_repo(
        "import torch, flor\n"
        "net = torch.nn.Linear(2, 2)\n"
        "flor.checkpoints(net, [1, 2], model=net, data=object())\n")
    proc = run_script(repo, "train.py", check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "obj1 (list)" in last and "data (object)" in last and "state_dict" in last
    assert "model" not in last.split("cannot checkpoint")[1].split(":")[0]


def test_mtk_alias_registers_and_checkpoints(script_repo) -> None:
    repo = script_repo(
        "import torch\nfrom flor import MTK as Flor\n"
        "net = torch.nn.Linear(3, 1)\nopt = torch.optim.Adam(net.parameters())\n"
        "Flor.checkpoints(net, opt)\n"
        "for e in Flor.loop(range(3)):\n"
        "    opt.zero_grad(); net(torch.ones(1, 3)).sum().backward(); opt.step()\n")
    run_script(repo, "train.py")
    ckpt = sorted((repo / ".flor" / "runs").glob("*/ckpt/*.pt"))
    names = [p.name for p in ckpt]
    assert {"epoch-000000.pt", "epoch-000002.pt", "epoch-000003.pt"} <= set(names)  # first,
    assert names[-1] == "epoch-000003.pt"  # last, and end always; epoch 1 as the budget allows
    import torch

    state = torch.load(ckpt[-1], weights_only=False)
    assert set(state["objects"]) == {"obj0", "obj1"}
    assert state["objects"]["obj1"]["state"][0]["step"].item() == 3.0
    assert {"python", "torch"} <= set(state["rng"])


def test_checkpoint_survives_the_model_changing_afterwards(script_repo, tmp_path: Path) -> None:
    repo = script_repo(
        "import torch, flor\n"
        "net = torch.nn.Linear(1, 1, bias=False)\n"
        "torch.nn.init.constant_(net.weight, 1.0)\n"
        "flor.checkpoints(model=net)\n"
        "for e in flor.loop('epoch', range(2)):\n"
        "    with torch.no_grad():\n"
        "        net.weight.add_(10.0)  # mutate right after the boundary snapshot\n")
    run_script(repo, "train.py", env={"FLOR_CHECKPOINT_EVERY": "1"})
    import torch

    weights = {p.name: torch.load(p, weights_only=False)["objects"]["model"]["weight"].item()
               for p in (repo / ".flor" / "runs").glob("*/ckpt/*.pt")}
    assert weights == {"epoch-000000.pt": 1.0, "epoch-000001.pt": 11.0, "epoch-000002.pt": 21.0}


def test_module_version_metadata_survives_in_the_checkpoint(script_repo) -> None:
    repo = script_repo(
        "import torch, flor\n"
        "bn = torch.nn.BatchNorm1d(3)\n"
        "flor.checkpoints(model=bn)\n"
        "for e in flor.loop('epoch', range(2)):\n"
        "    bn(torch.randn(4, 3))\n")
    run_script(repo, "train.py")
    import torch

    last = sorted((repo / ".flor" / "runs").glob("*/ckpt/*.pt"))[-1]
    state = torch.load(last, weights_only=False)["objects"]["model"]
    assert state._metadata[""]["version"] == torch.nn.BatchNorm1d._version
