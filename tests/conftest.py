"""Shared fixtures: real git repos in tmp dirs, real training subprocesses, real catalogs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "user@example.com",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "user@example.com",
}


# A 3-epoch script without torch, and today's version of it, which also logs `double`: the
# executor tests' history to replay (a run takes a fraction of a second).
TOTAL_SCRIPT = """import flor
lr = flor.arg("lr", 0.1)
total = 0.0
for epoch in flor.loop("epoch", range(3)):
    total += lr * (epoch + 1) / 3
    flor.log("total", total)
"""
TOTAL_TODAY = TOTAL_SCRIPT.replace(
    '    flor.log("total", total)\n',
    '    flor.log("total", total)\n    flor.log("double", total * 2)\n')


TINY_MLP_LOSS_LINE = '            flor.log("loss", loss.item())\n'


def tiny_mlp_script(epochs: int) -> str:
    """A seeded 6-8-1 MLP trained for `epochs` x 6 steps with checkpoints: the replay tests'
    script. Tests add statements by replacing TINY_MLP_LOSS_LINE."""
    return f"""
import torch
from torch import nn

import flor

torch.manual_seed(0)
lr = flor.arg("lr", 0.05)
X = torch.randn(96, 6)
Y = (X[:, :2].sum(1, keepdim=True) > 0).float()
VX = torch.randn(64, 6)
VY = (VX[:, :2].sum(1, keepdim=True) > 0).float()
model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=lr)
crit = nn.BCEWithLogitsLoss()


@torch.no_grad()
def accuracy(net, x, y):
    return ((net(x) > 0).float() == y).float().mean().item()


with flor.checkpointing(model=model, optimizer=opt):
    for epoch in flor.loop("epoch", range({epochs})):
        order = torch.randperm(96)
        for step in flor.loop("step", range(6)):
            idx = order[step * 16:(step + 1) * 16]
            opt.zero_grad()
            loss = crit(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
{TINY_MLP_LOSS_LINE}print("final accuracy", accuracy(model, VX, VY))
"""


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie (Linux: reads /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, also between open and read
        return False


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                         env={**os.environ, **GIT_ENV})
    return out.stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> Path:
    """A git repo at `path` whose first commit holds `files`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


def record_then_edit(path: Path, old: str, today: str, runs: Sequence[tuple[str, str]],
                     env: dict[str, str] | None = None) -> Path:
    """A repo at `path` whose committed train.py is `old`, with one recorded run per
    (runid, lr) (checkpointed every epoch unless `env` says otherwise), then `today` written
    over train.py, uncommitted: a history to replay today's new statements into."""
    repo = make_repo(path, {"train.py": old})
    for runid, lr in runs:
        run_script(repo, "train.py", "--flor", runid, "--kwargs", f"lr={lr}",
                   env={"FLOR_CHECKPOINT_EVERY": "1", **(env or {})})
    (repo / "train.py").write_text(today)
    return repo


def total_history(path: Path) -> Path:
    """Two runs of TOTAL_SCRIPT (lr 0.1 and 0.3), then TOTAL_TODAY over train.py, uncommitted:
    the executors' small history to replay `double` into."""
    repo = make_repo(path, {"train.py": TOTAL_SCRIPT})
    for lr in ("0.1", "0.3"):
        run_script(repo, "train.py", "--kwargs", f"lr={lr}")
    (repo / "train.py").write_text(TOTAL_TODAY)
    return repo


def run_script(repo: Path, script: str, *args: str, env: dict[str, str] | None = None,
               check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `script` in `repo` with this interpreter (so `import flor` resolves)."""
    full_env = {**os.environ, "FLOR_FLUSH_SECONDS": "0.2", **(env or {})}
    proc = subprocess.run([sys.executable, script, *args], cwd=repo, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def train_repo(tmp_path: Path) -> Path:
    """A repo holding the example training script, committed on branch main."""
    return make_repo(tmp_path / "proj", {"train.py": (EXAMPLES / "train.py").read_text()})


@pytest.fixture
def script_repo(tmp_path: Path) -> Callable[[str], Path]:
    """Make a repo holding one script `train.py` with the given source."""

    def make(source: str) -> Path:
        return make_repo(tmp_path / "proj", {"train.py": source})

    return make


@pytest.fixture(autouse=True)
def _no_ambient_flor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FLOR_HOME", "FLOR_RUN", "FLOR_REPLAY", "FLOR_CHECKPOINT_EVERY"):
        monkeypatch.delenv(var, raising=False)


def copy_example(repo: Path, name: str = "train.py") -> None:
    shutil.copy(EXAMPLES / "train.py", repo / name)
