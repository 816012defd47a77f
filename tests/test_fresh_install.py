"""A plain `pip install .` into a fresh venv (no extras, so no torch) gives a working `flor`,
CLI and shell: a newcomer's first ten minutes, run as they would run them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pexpect
import pytest

from conftest import make_repo

CHECKOUT = Path(__file__).resolve().parent.parent
SCRIPT = """\
import flor
lr = flor.arg("lr", 0.1)
for epoch in flor.loop("epoch", range(3)):
    flor.log("acc", 0.5 + epoch / 10)
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding only `pip install <a copy of the checkout>` and what it pulls in."""
    base = tmp_path_factory.mktemp("fresh")
    source = base / "src"
    _copy_checkout(source)
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    proc = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", str(source)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env_dir


def _copy_checkout(dest: Path) -> None:
    """The files git would commit (tracked, and untracked but not ignored), nothing built."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=CHECKOUT, capture_output=True,
                             check=True).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = CHECKOUT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def recorded(fresh_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("fresh-proj") / "proj", {"train.py": SCRIPT})
    proc = subprocess.run([str(fresh_venv / "bin" / "python"), "train.py", "--flor", "freshRun"],
                          cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    return repo


def test_the_fresh_venv_has_no_torch_and_import_flor_records_without_it(
    fresh_venv: Path, recorded: Path
) -> None:
    probe = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", "import torch"],
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    assert list((recorded / ".flor" / "runs").iterdir())


def test_the_shell_runs_a_query_and_a_dot_command_in_a_terminal(
    fresh_venv: Path, recorded: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "FLORSQL_HISTORY": str(tmp_path / "history"), "TERM": "xterm",
           "PAGER": "cat"}
    shell = pexpect.spawn(str(fresh_venv / "bin" / "florsql"), [str(recorded)], env=env,
                          encoding="utf-8", timeout=60, dimensions=(40, 160))
    try:
        shell.expect("florsql>")
        shell.send("SELECT runid, max(acc) AS best FROM history GROUP BY runid;\r")
        shell.expect(r"freshRun\s*\|\s*0\.7")
        shell.expect("florsql>")
        shell.send(".tables\r")
        shell.expect("history")
        shell.expect("florsql>")
        shell.send(".quit\r")
        shell.expect(pexpect.EOF)
    finally:
        shell.close()
    assert shell.exitstatus == 0, shell.before


def test_the_console_scripts_and_python_dash_m_work(fresh_venv: Path, recorded: Path) -> None:
    bin_dir = fresh_venv / "bin"
    version = subprocess.run([str(bin_dir / "florsql"), "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("florsql ")
    csv = subprocess.run([str(bin_dir / "python"), "-m", "florsql", str(recorded), "-c",
                          "SELECT count(acc) AS n FROM history", "--format", "csv"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         cwd=recorded)  # not the checkout, whose florsql/ would shadow it
    assert csv.returncode == 0 and csv.stdout.splitlines() == ["n", "3"], csv.stderr
    usage = subprocess.run([str(bin_dir / "python"), "-m", "flor"], capture_output=True,
                           text=True, timeout=60, cwd=recorded)
    assert usage.returncode == 0 and "usage: python -m flor" in usage.stdout


def test_the_installed_package_holds_every_module_of_the_checkout(fresh_venv: Path) -> None:
    # walk_packages descends into subpackages: a folder left out of pyproject's list is missed
    code = ("import florsql, flor, pkgutil\n"
            "mods = [m.name for p in (florsql, flor) "
            "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
            "print(' '.join(sorted(mods)))")
    proc = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], capture_output=True,
                          text=True, timeout=60, cwd=fresh_venv)
    assert proc.returncode == 0, proc.stderr
    installed = set(proc.stdout.split())
    roots = {"florsql": "florsql", "engine": "florsql.engine", "instrument": "flor"}
    in_checkout = set()
    for folder, name in roots.items():
        for path in (CHECKOUT / folder).rglob("*.py"):
            parts = path.relative_to(CHECKOUT / folder).with_suffix("").parts
            if "__pycache__" not in parts and not (folder == "florsql" and parts[0] == "engine"):
                in_checkout.add(".".join((name, *parts)).removesuffix(".__init__"))
    in_checkout -= {"florsql", "flor", "florsql.engine"}
    assert any(m.startswith("florsql.engine.replay.") for m in in_checkout)
    assert in_checkout <= installed, in_checkout - installed
    assert sys.prefix != str(fresh_venv)  # the check ran in the fresh venv, not this one
