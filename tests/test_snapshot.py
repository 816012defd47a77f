"""Code snapshots in real git repos: what goes in, stable vids, and the user's repo untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import git, make_repo, run_script
from flor import FlorRepoError
from flor.snapshot import (
    SNAPSHOT_REF_PREFIX,
    exclude_from_git,
    find_repo_root,
    snapshot_worktree,
)

SNAPSHOT_CODE = (
    "import sys; from pathlib import Path; from flor.snapshot import snapshot_worktree; "
    "print(snapshot_worktree(Path(sys.argv[1])))"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "proj", {
        "train.py": "print('v1')\n",
        "util.py": "X = 1\n",
        ".gitignore": "*.log\ndata/\n",
    })


def _tree(repo: Path, vid: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", vid).splitlines())


def _show(repo: Path, vid: str, path: str) -> str:
    return git(repo, "show", f"{vid}:{path}")


def _user_state(repo: Path) -> dict[str, object]:
    """What flor must never change; `--no-optional-locks` keeps status from rewriting the index."""
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "refs": git(repo, "for-each-ref", "refs/heads", "refs/tags"),
        "staged": git(repo, "diff", "--cached"),
        "index": (repo / ".git" / "index").read_bytes(),
        "status": git(repo, "--no-optional-locks", "status", "--porcelain", "-uall"),
        "gitignore": (repo / ".gitignore").read_bytes(),
    }


def _outside_git_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}


# --- what goes into a snapshot ------------------------------------------------------------------


def test_snapshot_has_tracked_edits_and_untracked_files_but_not_ignored_ones(repo: Path) -> None:
    (repo / "train.py").write_text("print('v2, not committed')\n")
    (repo / "new_model.py").write_text("class Net: ...\n")
    (repo / "run.log").write_text("ignored by *.log\n")
    (repo / "data").mkdir()
    (repo / "data" / "train.csv").write_text("ignored by data/\n")
    vid = snapshot_worktree(repo)
    assert _tree(repo, vid) == {".gitignore", "train.py", "util.py", "new_model.py"}
    assert _show(repo, vid, "train.py") == "print('v2, not committed')"
    assert _show(repo, vid, "new_model.py") == "class Net: ..."


def test_the_worktree_version_wins_over_a_different_staged_version(repo: Path) -> None:
    (repo / "util.py").write_text("X = 2  # staged\n")
    git(repo, "add", "util.py")
    (repo / "util.py").write_text("X = 3  # in the worktree\n")
    vid = snapshot_worktree(repo)
    assert _show(repo, vid, "util.py") == "X = 3  # in the worktree"


def test_a_deleted_tracked_file_is_absent_from_the_snapshot(repo: Path) -> None:
    (repo / "util.py").unlink()
    assert "util.py" not in _tree(repo, snapshot_worktree(repo))


def test_file_names_with_spaces_and_non_ascii_letters_are_included(repo: Path) -> None:
    (repo / "my notes.md").write_text("notes\n")
    (repo / "modèle.py").write_text("M = 1\n")
    vid = snapshot_worktree(repo)
    tree = git(repo, "-c", "core.quotePath=false", "ls-tree", "-r", "--name-only", vid)
    assert {"my notes.md", "modèle.py"} <= set(tree.splitlines())
    assert _show(repo, vid, "modèle.py") == "M = 1"


def test_the_flor_home_is_left_out_once_flor_adds_it_to_info_exclude(repo: Path) -> None:
    exclude_from_git(repo, "/.flor/")
    exclude_from_git(repo, "/.flor/")  # idempotent
    runs = repo / ".flor" / "runs" / "20260101T000000.000000"
    runs.mkdir(parents=True)
    (runs / "run.json").write_text("{}")
    assert not any(p.startswith(".flor") for p in _tree(repo, snapshot_worktree(repo)))
    lines = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert lines.count("/.flor/") == 1
    assert (repo / ".gitignore").read_text() == "*.log\ndata/\n"


def test_exclude_starts_a_new_line_when_the_file_lacks_a_final_newline(repo: Path) -> None:
    exclude = repo / ".git" / "info" / "exclude"
    exclude.write_text("*.tmp")
    exclude_from_git(repo, "/.flor/")
    assert exclude.read_text() == "*.tmp\n/.flor/\n"


def test_large_untracked_files_are_left_out_with_a_flor_warning(repo: Path) -> None:
    (repo / "weights.bin").write_bytes(b"\0" * 4096)
    (repo / "small.py").write_text("S = 1\n")
    proc = subprocess.run([sys.executable, "-c", SNAPSHOT_CODE, str(repo)], capture_output=True,
                          text=True, env={**os.environ, "FLOR_SNAPSHOT_MAX_BYTES": "1000"})
    assert proc.returncode == 0, proc.stderr
    vid = proc.stdout.strip()
    assert "weights.bin" not in _tree(repo, vid) and "small.py" in _tree(repo, vid)
    assert proc.stderr.count("FlorWarning") == 1
    assert "weights.bin" in proc.stderr and "FLOR_SNAPSHOT_MAX_BYTES" in proc.stderr


def test_a_large_file_stays_out_even_when_another_untracked_name_globs_to_it(repo: Path) -> None:
    # Untracked names are handed to `git add` as pathspecs: `d[12].txt` must not match `d1.txt`.
    (repo / "d1.txt").write_bytes(b"x" * 4096)
    (repo / "d[12].txt").write_text("small\n")
    proc = subprocess.run([sys.executable, "-c", SNAPSHOT_CODE, str(repo)], capture_output=True,
                          text=True, env={**os.environ, "FLOR_SNAPSHOT_MAX_BYTES": "1000"})
    assert proc.returncode == 0, proc.stderr
    tree = _tree(repo, proc.stdout.strip())
    assert "d[12].txt" in tree
    assert "d1.txt" not in tree, "the warning said d1.txt was left out, but it is in the snapshot"


# --- vids ---------------------------------------------------------------------------------------


def test_same_content_gives_the_same_vid_and_changed_content_a_new_one(repo: Path) -> None:
    first = snapshot_worktree(repo)
    assert snapshot_worktree(repo) == first
    (repo / "train.py").write_text("print('v2')\n")
    second = snapshot_worktree(repo)
    assert second != first
    (repo / "train.py").write_text("print('v1')\n")
    assert snapshot_worktree(repo) == first


def test_the_same_files_give_the_vid_earlier_versions_of_flor_gave(tmp_path: Path) -> None:
    # The literal came from snapshot_worktree before git access moved to flor.gitrepo: runs
    # recorded then and now must share vids when their code is the same.
    repo = make_repo(tmp_path / "proj", {
        "train.py": "print('v1')\n", "util.py": "X = 1\n", ".gitignore": "*.log\n"})
    (repo / "util.py").write_text("X = 2\n")  # tracked, modified
    (repo / "model.py").write_text("class Net: ...\n")  # untracked
    (repo / "run.log").write_text("ignored\n")
    (repo / "scripts").mkdir()
    (repo / "scripts" / "go.sh").write_text("#!/bin/sh\necho go\n")  # untracked, executable
    (repo / "scripts" / "go.sh").chmod(0o755)
    assert snapshot_worktree(repo) == "7438e9b5a46689590d1f451477315ebe6ed3c237"


def test_a_users_commit_signing_setting_neither_signs_nor_changes_the_vid(repo: Path) -> None:
    unsigned = snapshot_worktree(repo)
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", "false")  # a gpg that cannot sign: signing would fail
    assert snapshot_worktree(repo) == unsigned


def test_an_untracked_file_changes_the_vid(repo: Path) -> None:
    first = snapshot_worktree(repo)
    (repo / "extra.py").write_text("E = 1\n")
    assert snapshot_worktree(repo) != first


def test_the_snapshot_is_a_parentless_commit_reachable_from_its_hidden_ref(repo: Path) -> None:
    (repo / "train.py").write_text("print('edited')\n")
    vid = snapshot_worktree(repo)
    assert git(repo, "rev-parse", f"{SNAPSHOT_REF_PREFIX}{vid}") == vid
    assert git(repo, "cat-file", "-t", vid) == "commit"
    assert git(repo, "rev-list", "--parents", "-n", "1", vid) == vid  # no parent
    assert vid not in git(repo, "log", "--branches", "--tags", "--format=%H")  # not on a branch
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/flor") == (
        f"{SNAPSHOT_REF_PREFIX}{vid}")


def test_snapshot_leaves_head_branch_index_status_and_gitignore_byte_identical(
    repo: Path,
) -> None:
    (repo / "util.py").write_text("X = 2  # staged\n")
    git(repo, "add", "util.py")
    (repo / "train.py").write_text("print('unstaged edit')\n")
    (repo / "scratch.py").write_text("untracked\n")
    (repo / "out.log").write_text("ignored\n")
    before = _user_state(repo)
    snapshot_worktree(repo)
    exclude_from_git(repo, "/.flor/")
    snapshot_worktree(repo)
    assert _user_state(repo) == before


def test_a_repo_with_no_commits_can_be_snapshot_and_head_stays_unborn(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print(1)\n")
    vid = snapshot_worktree(repo)
    assert _tree(repo, vid) == {"train.py"}
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo,
                          capture_output=True).returncode != 0
    assert not (repo / ".git" / "index").exists()


def test_a_linked_worktree_snapshots_its_own_files(repo: Path, tmp_path: Path) -> None:
    other = tmp_path / "feature"
    git(repo, "worktree", "add", "-q", str(other), "-b", "feature")
    (other / "train.py").write_text("print('feature')\n")
    assert find_repo_root(other) == other.resolve()
    vid = snapshot_worktree(other)
    assert _show(repo, vid, "train.py") == "print('feature')"
    assert (repo / "train.py").read_text() == "print('v1')\n"


# --- finding the repo ---------------------------------------------------------------------------


def test_find_repo_root_returns_the_top_from_a_subdirectory(repo: Path) -> None:
    sub = repo / "src" / "models"
    sub.mkdir(parents=True)
    assert find_repo_root(sub) == repo.resolve()


def test_find_repo_root_outside_a_repo_mentions_git_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(FlorRepoError) as info:
        find_repo_root(plain)
    assert "`git init`" in str(info.value) and str(plain) in str(info.value)


def test_a_script_outside_any_git_repo_exits_nonzero_with_the_git_init_message(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("import flor\nflor.log('loss', 0.5)\nprint('logged')\n")
    proc = subprocess.run([sys.executable, "train.py"], cwd=plain, capture_output=True, text=True,
                          env=_outside_git_env(tmp_path), timeout=60)
    assert proc.returncode != 0
    assert "logged" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert "FlorRepoError" in last and "not inside a git repository" in last
    assert "`git init`" in last
    assert not (plain / ".flor").exists()


# --- a real run ---------------------------------------------------------------------------------


def test_a_real_run_records_the_snapshot_vid_and_leaves_the_users_repo_as_it_was(
    repo: Path,
) -> None:
    (repo / "train.py").write_text(
        "import flor\nfor e in flor.loop('epoch', range(2)):\n    flor.log('loss', 1 / (e + 1))\n")
    (repo / "notes.txt").write_text("untracked\n")
    before = _user_state(repo)
    run_script(repo, "train.py")
    assert _user_state(repo) == before  # .flor/ exists now, but git does not see it
    assert "/.flor/" in (repo / ".git" / "info" / "exclude").read_text().splitlines()
    [run_dir] = (repo / ".flor" / "runs").iterdir()
    vid = json.loads((run_dir / "run.json").read_text())["vid"]
    assert vid == snapshot_worktree(repo)
    assert _show(repo, vid, "train.py").startswith("import flor")
    assert "notes.txt" in _tree(repo, vid)
