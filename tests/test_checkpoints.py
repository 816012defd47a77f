"""Checkpoint registration, the adaptive schedule, and durable listing."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest

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


# --- RNG capture: raw bytes on the training thread, decoded on the writer ---------------------


def _same_states(a: dict, b: dict) -> bool:
    import torch

    from flor.rng import _same_state

    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if k == "torch" else _same_state(a[k], b[k]) for k in a)


def test_fast_rng_capture_equals_the_libraries_getters_in_every_state() -> None:
    import random

    import numpy as np

    from flor.rng import RngCapture, capture_rng, decode_rng

    if sys.implementation.name != "cpython":
        pytest.skip("the raw reader is CPython-only; elsewhere the getters are used")
    saved = capture_rng()
    try:
        fast = RngCapture()
        fast.capture()
        assert fast._python is not None and fast._numpy is not None  # calibrated here
        random.seed(1)
        np.random.seed(2)
        for _ in range(5):  # cached gaussians come and go; the twisters wrap past 624 words
            random.gauss(0.0, 1.0)
            np.random.standard_normal()
            assert _same_states(decode_rng(fast.capture()), capture_rng())
            random.random()
            np.random.random_sample(700)
            assert _same_states(decode_rng(fast.capture()), capture_rng())
        odd = ("MT19937", np.arange(624, dtype=np.uint32), 17, 1, -0.25)
        np.random.set_state(odd)  # an explicit state with a cached gaussian
        random.setstate((3, tuple(range(624)) + (5,), 0.5))
        state = decode_rng(fast.capture())
        assert _same_states(state, capture_rng())
        assert state["numpy"][2:] == (17, 1, -0.25) and state["python"][2] == 0.5
    finally:
        from flor.rng import restore_rng

        restore_rng(saved)


def test_a_generator_the_reader_cannot_verify_falls_back_to_the_getter(monkeypatch) -> None:
    import flor.rng as rng

    monkeypatch.setattr(rng, "_numpy_gauss_offset", lambda rs: None)
    monkeypatch.setattr(rng, "_python_offset", lambda gen: None)
    fast = rng.RngCapture()
    state = fast.capture()
    assert fast._numpy is None and fast._python is None
    assert isinstance(state["numpy"], tuple) and isinstance(state["python"], tuple)
    assert _same_states(rng.decode_rng(state), rng.capture_rng())


# --- retention: FLOR_CHECKPOINT_KEEP -----------------------------------------------------------


def test_thinning_keeps_the_first_the_newest_and_an_even_stride() -> None:
    from flor.checkpoints import thin

    for keep in (2, 3, 4, 7, 10):
        kept, stride = [], 1
        for number in range(300):
            kept.append((number, number * 3))  # iterations need not equal numbers
            stride, kept = thin(kept, stride, keep)
            numbers = [n for n, _ in kept]
            assert len(kept) <= keep and numbers[0] == 0 and numbers[-1] == number
            assert all(n % stride == 0 for n in numbers[:-1])
            assert len(kept) >= min(keep // 2, number + 1)  # thinned, not emptied
    assert thin([(n, n) for n in range(11)], 1, 3) == (8, [(0, 0), (8, 8), (10, 10)])


def test_checkpoint_keep_prunes_entries_and_files_together(script_repo) -> None:
    repo = script_repo(ADAPTIVE.replace("range(30)", "range(20)").replace(
        "nn.Linear(2000, 2500)", "nn.Linear(20, 25)"))
    run_script(repo, "train.py", env={"FLOR_CHECKPOINT_EVERY": "1", "FLOR_CHECKPOINT_KEEP": "5"})
    ckpt = next((repo / ".flor" / "runs").glob("*/ckpt"))
    listed = sorted(json.loads(p.read_text())["iteration"] for p in ckpt.glob("*.json"))
    files = sorted(p.name for p in ckpt.glob("*.pt"))
    assert listed == [0, 8, 16, 20]  # checkpoints 0..20: first, newest, every 8th
    assert files == [f"epoch-{i:06d}.pt" for i in listed]
    assert not list(ckpt.glob(".*"))  # no temp files left
    with florsql.connect(repo) as conn:
        assert [i for (i,) in conn.execute(
            "SELECT iteration FROM checkpoints ORDER BY 1").fetchall()] == listed


@pytest.mark.parametrize("value", ["1", "0", "-3", "some"])
def test_a_bad_checkpoint_keep_value_fails_the_run_clearly(script_repo, value: str) -> None:
    repo = script_repo(ADAPTIVE.replace("range(30)", "range(2)"))
    proc = run_script(repo, "train.py", env={"FLOR_CHECKPOINT_KEEP": value}, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert f"FLOR_CHECKPOINT_KEEP={value!r}" in last and ">= 2" in last


# --- robustness of the writer and the staging -------------------------------------------------


def test_a_checkpoint_that_cannot_be_written_warns_once_and_training_goes_on(
        script_repo) -> None:
    repo = script_repo(
        "import torch, flor\n"
        "flor.arg('x', 0)\n"
        "(flor.api._session.run_dir / 'ckpt').write_text('not a directory')\n"
        "net = torch.nn.Linear(2, 2)\n"
        "with flor.checkpointing(model=net):\n"
        "    for e in flor.loop('epoch', range(4)):\n"
        "        flor.log('e', e)\n"
        "print('done')\n")
    proc = run_script(repo, "train.py", env={"FLOR_CHECKPOINT_EVERY": "1"}, timeout=60)
    assert "done" in proc.stdout
    assert proc.stderr.count("FlorWarning: flor: could not write checkpoint epoch=0") == 1
    assert proc.stderr.count("FlorWarning:") == 1
    with florsql.connect(repo) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone() == ("finished",)
        assert conn.execute("SELECT count(*) FROM logs WHERE value_name = 'e'").fetchone() == (4,)


def test_state_that_requires_grad_or_changes_shape_is_saved_as_plain_values(
        script_repo) -> None:
    repo = script_repo(
        "import torch, flor\n"
        "class Grows:\n"
        "    def __init__(self):\n"
        "        self.w = torch.ones(1, requires_grad=True)\n"
        "    def state_dict(self):\n"
        "        return {'w': self.w, 'shape': list(self.w.shape)}\n"
        "    def load_state_dict(self, sd):\n"
        "        self.w = sd['w']\n"
        "g = Grows()\n"
        "flor.checkpoints(g=g)\n"
        "for e in flor.loop('epoch', range(3)):\n"
        "    g.w = torch.full((e + 2,), float(e), requires_grad=True)\n")
    run_script(repo, "train.py", env={"FLOR_CHECKPOINT_EVERY": "1"})
    import torch

    got = {}
    for p in sorted((repo / ".flor" / "runs").glob("*/ckpt/*.pt")):
        state = torch.load(p, weights_only=False)["objects"]["g"]
        assert not state["w"].requires_grad and state["shape"] == list(state["w"].shape)
        got[p.name] = state["w"].tolist()
    assert got == {"epoch-000000.pt": [1.0], "epoch-000001.pt": [0.0, 0.0],
                   "epoch-000002.pt": [1.0, 1.0, 1.0], "epoch-000003.pt": [2.0, 2.0, 2.0, 2.0]}


Pair = collections.namedtuple("Pair", "tensor count")


class _Custom:
    """State in containers modules and optimizers do not use."""

    def __init__(self) -> None:
        import torch

        self.table = collections.defaultdict(list, {"a": torch.ones(2)})
        self.pair = Pair(torch.zeros(1), 3)

    def state_dict(self) -> dict:
        return {"table": self.table, "pair": self.pair, "notes": ["x"]}

    def load_state_dict(self, state: dict) -> None:
        self.table, self.pair = state["table"], state["pair"]


def test_defaultdicts_and_namedtuples_keep_their_types_in_a_snapshot(tmp_path: Path) -> None:
    from flor.checkpoints import Checkpointer, _load, checkpoint_path

    obj = _Custom()
    ckpt = Checkpointer(tmp_path)
    ckpt.register({"obj": obj})
    ckpt.save("epoch", 0)
    obj.table["a"].add_(5)  # after the boundary: not in the checkpoint
    obj.pair.tensor.add_(1)
    ckpt.wait()
    state = _load(checkpoint_path(tmp_path, "epoch", 0))["objects"]["obj"]
    assert type(state["table"]) is collections.defaultdict
    assert state["table"].default_factory is list and state["table"]["a"].tolist() == [1.0, 1.0]
    assert type(state["pair"]) is Pair and state["pair"].tensor.tolist() == [0.0]
    assert state["pair"].count == 3 and state["notes"] == ["x"]
