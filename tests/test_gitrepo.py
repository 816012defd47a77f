"""flor.gitrepo in real git repos: no leaked git processes, hooks off, replay trees of their own."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import flor
import florsql
from conftest import TINY_MLP_LOSS_LINE, git, make_repo, run_script, tiny_mlp_script
from flor import gitrepo
from flor.snapshot import SNAPSHOT_REF_PREFIX, snapshot_worktree
from florsql.engine.errors import EngineError
from florsql.engine.replay.plan import _source_at

FAILING_HOOK = "#!/bin/sh\necho 'hook says no' >&2\nexit 1\n"
SCRIPT = tiny_mlp_script(epochs=2)
TODAY = SCRIPT.replace(
    TINY_MLP_LOSS_LINE,
    TINY_MLP_LOSS_LINE +
    "            flor.log(\"w\", model[0].weight.sum().item())\n"
    "        flor.log(\"val_acc\", accuracy(model, VX, VY))\n")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "proj", {"train.py": "print('v1')\n", "util.py": "X = 1\n"})
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "latest.py").symlink_to("train.py")
    return repo


def _fail_hooks(repo: Path) -> None:
    """Point the repo's hooks at a folder whose reference-transaction and post-checkout fail."""
    hooks = repo.parent / "hooks"
    hooks.mkdir()
    for name in ("reference-transaction", "post-checkout"):
        (hooks / name).write_text(FAILING_HOOK)
        (hooks / name).chmod(0o755)
    git(repo, "config", "core.hooksPath", str(hooks))


def _git_children() -> list[str]:
    """This process's child processes whose name starts with git (zombies included)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            name, rest = stat.split("(", 1)[1].rsplit(")", 1)
            if int(rest.split()[1]) == os.getpid() and name.startswith("git"):
                found.append(f"{pid} {name} {rest.split()[0]}")
    return found


def _worktrees(repo: Path) -> list[str]:
    listing = git(repo, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("worktree ")]


# --- long-lived processes -----------------------------------------------------------------------


def test_many_snapshots_reads_and_trees_leave_no_git_process_or_open_file(
        repo: Path, tmp_path: Path) -> None:
    def work(i: int) -> None:
        (repo / "train.py").write_text(f"print({i})\n")
        vid = snapshot_worktree(repo)
        assert gitrepo.read_text(repo, vid, "train.py") == f"print({i})\n"
        assert gitrepo.read_texts(repo, [(vid, "util.py"), (vid, "gone.py")]) == {
            (vid, "util.py"): "X = 1\n"}
        assert "run.sh" in gitrepo.folder_entries(repo, [(vid, ".")])[(vid, ".")]
        with pytest.raises(gitrepo.GitError):
            gitrepo.read_text(repo, vid, "gone.py")
        if i % 10 == 0:
            gitrepo.materialise(repo, vid, tmp_path / f"tree{i}")

    work(0)  # GitPython's import and first use may open what stays open for the process
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(1, 51):
        work(i)
    assert _git_children() == []
    assert len(os.listdir("/proc/self/fd")) == fds


# --- hooks --------------------------------------------------------------------------------------


def test_a_snapshot_works_when_the_users_hooks_fail(repo: Path) -> None:
    _fail_hooks(repo)
    refused = subprocess.run(["git", "update-ref", "refs/heads/probe", "HEAD"], cwd=repo,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "hook says no" in refused.stderr  # the hooks are live
    vid = snapshot_worktree(repo)
    assert git(repo, "rev-parse", SNAPSHOT_REF_PREFIX + vid) == vid


def test_materialising_a_version_works_when_the_users_hooks_fail(
        repo: Path, tmp_path: Path) -> None:
    vid = snapshot_worktree(repo)
    _fail_hooks(repo)
    gitrepo.materialise(repo, vid, tmp_path / "tree")
    assert (tmp_path / "tree" / "train.py").read_text() == "print('v1')\n"


# --- materialised trees -------------------------------------------------------------------------


def test_a_materialised_tree_keeps_executable_bits_and_symlinks(
        repo: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    gitrepo.materialise(repo, snapshot_worktree(repo), tree)
    assert os.access(tree / "run.sh", os.X_OK) and not os.access(tree / "util.py", os.X_OK)
    assert (tree / "latest.py").is_symlink() and os.readlink(tree / "latest.py") == "train.py"


def test_a_materialised_tree_is_a_repository_at_the_version_the_user_never_hears_of(
        repo: Path, tmp_path: Path) -> None:
    (repo / "train.py").write_text("print('edited')\n")
    vid = snapshot_worktree(repo)
    before = sorted(p for p in (repo / ".git").rglob("*"))
    tree = tmp_path / "tree"
    gitrepo.materialise(repo, vid, tree)
    assert gitrepo.toplevel(tree) == tree and git(tree, "rev-parse", "HEAD") == vid
    assert git(tree, "status", "--porcelain") == ""  # a clean checkout of the version
    assert _worktrees(repo) == [str(repo)] and not (repo / ".git" / "worktrees").exists()
    shutil.rmtree(tree)
    assert sorted(p for p in (repo / ".git").rglob("*")) == before


def test_files_marked_export_ignore_or_export_subst_come_out_as_committed(
        repo: Path, tmp_path: Path) -> None:
    # `git archive` would drop data.py and rewrite version.txt: a replay would run other code.
    (repo / ".gitattributes").write_text("data.py export-ignore\nversion.txt export-subst\n")
    (repo / "data.py").write_text("ROWS = 3\n")
    (repo / "version.txt").write_text("$Format:%H$\n")
    gitrepo.materialise(repo, snapshot_worktree(repo), tmp_path / "tree")
    assert (tmp_path / "tree" / "data.py").read_text() == "ROWS = 3\n"
    assert (tmp_path / "tree" / "version.txt").read_text() == "$Format:%H$\n"


def test_a_missing_version_names_the_fetch_that_brings_it(repo: Path) -> None:
    with pytest.raises(EngineError) as info:
        _source_at(repo, "0" * 40, "train.py")
    assert "is not in this repository" in str(info.value)
    assert "fetch refs/flor/snapshots/*" in str(info.value)


# --- a real replay ------------------------------------------------------------------------------


@dataclass
class Replayed:
    repo: Path
    statuses: list[list[str]]  # per replay: the status of each run
    worktrees_after_first: list[str]
    worktrees_dir_after_first: bool
    moved_metadata_after_second: list[str]  # what .git/worktrees holds after the second


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    """A run recorded and replayed twice under failing hooks; before the second replay the user
    adds a worktree and moves its folder away without telling git."""
    repo = make_repo(tmp_path_factory.mktemp("hooks") / "proj", {"train.py": SCRIPT})
    _fail_hooks(repo)
    run_script(repo, "train.py", "--flor", "a", env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(TODAY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOR_REPLAY_POOL", "0")
        first = flor.replay("w", path=repo).status.tolist()
        after_first = _worktrees(repo), (repo / ".git" / "worktrees").exists()
        feature = repo.parent / "feature"
        git(repo, "-c", "core.hooksPath=/dev/null", "worktree", "add", "-q", str(feature))
        feature.rename(repo.parent / "feature-moved")
        second = flor.replay("val_acc", path=repo).status.tolist()
    return Replayed(repo, [first, second], *after_first,
                    sorted(os.listdir(repo / ".git" / "worktrees")))


def test_a_replay_under_failing_hooks_records_the_values(replayed: Replayed) -> None:
    assert replayed.statuses == [["replayed"], ["replayed"]]
    with florsql.connect(replayed.repo) as conn:
        counts = conn.execute(
            "SELECT value_name, count(*) FROM logs WHERE source = 'replay' GROUP BY 1 "
            "ORDER BY 1").fetchall()
    assert counts == [("val_acc", 2), ("w", 12)]


def test_a_replay_registers_no_worktree_in_the_users_repository(replayed: Replayed) -> None:
    assert replayed.worktrees_after_first == [str(replayed.repo)]
    assert not replayed.worktrees_dir_after_first


def test_a_users_moved_worktree_keeps_its_metadata_after_a_replay(replayed: Replayed) -> None:
    assert replayed.moved_metadata_after_second == ["feature"]
    assert len(_worktrees(replayed.repo)) == 2  # git still lists it, so `git worktree repair` can
