"""Every git command flor and florsql run, in one place, with the user's git hooks turned off.

    from flor import gitrepo
    root = gitrepo.toplevel(Path.cwd())
    source = gitrepo.read_text(root, vid, "train.py")
    gitrepo.materialise(root, vid, Path(tmp) / "tree")

Two kinds of access, chosen by measurement (a project of 304 files, git 2.39, GitPython 3.2,
median of 7-21 runs on 2 shared cores):

- Plain `git` subprocesses (`run`) for what a fresh process does once: the snapshot at the start
  of every training run and finding a project's top level. `import git` costs 60-100 ms, as
  much as `import flor` itself: a snapshot in a fresh process takes 17-20 ms with subprocesses
  and 75-83 ms with GitPython (the same git commands, plus its import); once imported, both
  take 15-17 ms, so GitPython gains nothing there to pay for its import.
- GitPython (imported lazily, `open_repo`) for the engine's replay path, where one open
  repository answers many questions: 50 reads of (version, file) take 30-46 ms through one
  Repo against 100 ms for a `git show` each; a version's tree is as fast through it as
  through a subprocess (see materialise). Its price is the import, once per process: the
  first read in a fresh `florsql replay` costs ~120 ms (`import flor` and `import git`)
  against 3 ms for one `git show`; the shell pays it at its first replay only.

A Repo keeps `git cat-file --batch` processes alive until it is closed (GitPython is not made
for long-running processes), so each one here lives in a `with` and is closed before the
function returns: the shell and the replay threads collect no git processes or file handles.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import git

# A user's failing `reference-transaction`, `post-checkout` (or any other) hook must not break
# a training run or a replay: every command flor names runs with hooks pointed at nothing.
HOOKS_OFF = ("-c", "core.hooksPath=/dev/null")


class GitError(RuntimeError):
    """A git command failed or an object is missing; the message says which, with git's words."""


class GitNotFoundError(GitError):
    """The `git` program is not installed (or not on PATH)."""


def run(cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> str:
    """`git -c core.hooksPath=/dev/null <args>` in `cwd` (with `env` added to the environment);
    its stdout, stripped. Raises GitError with git's stderr."""
    try:
        proc = subprocess.run(
            ["git", *HOOKS_OFF, *args],
            cwd=cwd,
            env={**os.environ, **env} if env else None,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        if not Path(cwd).is_dir():
            raise GitError(f"{cwd} is not a folder") from None
        raise GitNotFoundError("git is not installed") from None
    if proc.returncode != 0:
        raise GitError(f"git {args[0]} failed: {proc.stderr.strip()[:300]}")
    return proc.stdout.strip()


def toplevel(start: Path) -> Path | None:
    """The top of the git work tree holding `start` (a file or folder); None outside one.

    A subprocess, not GitPython: this runs in every training run and florsql command, where
    GitPython's import (60-100 ms) would cost 40 times the `git rev-parse` (1.7 ms; 0.5 ms once
    GitPython is imported), and git applies GIT_CEILING_DIRECTORIES and safe.directory as the
    user's git does.
    """
    cwd = start if start.is_dir() else start.parent
    try:
        out = run(cwd, "rev-parse", "--show-toplevel")
    except GitError:
        return None
    return Path(out) if out else None


@contextlib.contextmanager
def open_repo(root: Path) -> Iterator[git.Repo]:
    """The GitPython Repo at `root`, closed (its cat-file processes ended) when the block ends."""
    import git

    try:
        repo = git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise GitError(f"{root} is not a git repository") from None
    try:
        # GitPython starts its own `git cat-file` processes; they run no hooks, but carry the
        # setting too, so that every git process flor starts has hooks off.
        repo.git.update_environment(**_hooks_off_env())
        yield repo
    finally:
        repo.close()


def read_text(root: Path, vid: str, path: str) -> str:
    """The text of `path` in commit `vid`, newlines read as Python's text mode reads them.
    Raises GitError naming what is missing."""
    with open_repo(root) as repo:
        return _blob_text(repo, vid, path)


def read_texts(root: Path, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The text of each (vid, path) of `pairs` that the repository holds, through one open Repo;
    the missing ones are left out (read_text says why)."""
    found: dict[tuple[str, str], str] = {}
    with contextlib.suppress(GitError), open_repo(root) as repo:
        for vid, path in pairs:
            with contextlib.suppress(GitError):
                found[(vid, path)] = _blob_text(repo, vid, path)
    return found


def folder_entries(root: Path, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """The names in each (vid, folder) of `keys` ("" or "." is the top); missing ones left out."""
    found: dict[tuple[str, str], list[str]] = {}
    with contextlib.suppress(GitError), open_repo(root) as repo:
        for vid, folder in keys:
            with contextlib.suppress(GitError):
                tree = _object(repo, vid, "" if folder in ("", ".") else folder)
                if tree.type == "tree":
                    found[(vid, folder)] = [item.name for item in tree]
    return found


def materialise(root: Path, vid: str, dest: Path) -> None:
    """Write commit `vid` into the new folder `dest` as a repository of its own (HEAD at `vid`,
    objects borrowed from `root`'s through alternates), which `root`'s repository never hears of.

    Replay used `git worktree add/remove/prune`: each registered the tree in the user's repo,
    and prune deleted the metadata of the user's own worktrees that had moved. `dest` being a
    repository keeps what a worktree gave the replayed script: flor finds its top there, and
    `git rev-parse HEAD` answers `vid`. One `read-tree -u` fills it, applying the user's
    filters and attributes as a checkout does; executable bits and symlinks come out as in a
    checkout. Measured on 304 files (ms, median of 21, interleaved): worktree add+remove 117,
    archive|tar 98, temporary index + checkout-index 102, read-tree -u 88 as a subprocess and
    85 through GitPython, GitPython tree traversal writing blobs 150. `git archive` is no
    faster and would leave out `export-ignore` files and rewrite `export-subst` ones.
    """
    import git

    with open_repo(root) as repo:
        index = _skeleton(dest, vid, Path(repo.common_dir).resolve() / "objects")
        try:
            repo.git(c=HOOKS_OFF[1], work_tree=str(dest)).read_tree(
                "--reset", "-u", "--no-sparse-checkout", "--no-recurse-submodules", vid,
                env={"GIT_INDEX_FILE": str(index)})
        except git.GitCommandError as e:
            raise GitError(f"git read-tree failed for {vid[:10]}: {_stderr(e)}") from None


def _blob_text(repo: git.Repo, vid: str, path: str) -> str:
    blob = _object(repo, vid, path)
    if blob.type != "blob":
        raise GitError(f"'{path}' is not a file in '{vid[:10]}'")
    try:
        text = blob.data_stream.read().decode()
    except UnicodeDecodeError:
        raise GitError(f"'{path}' in '{vid[:10]}' is not UTF-8 text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as `open(path).read()` gives it


def _object(repo: git.Repo, vid: str, path: str) -> git.Object:
    from git.exc import ODBError

    try:
        tree = repo.commit(vid).tree
    except (ValueError, ODBError):
        raise GitError(f"invalid object name '{vid[:10]}'") from None
    try:
        return tree / path if path else tree
    except KeyError:
        raise GitError(f"path '{path}' does not exist in '{vid[:10]}'") from None


def _skeleton(dest: Path, vid: str, objects: Path) -> Path:
    """The smallest repository git accepts at `dest`; returns the path of its index."""
    meta = dest / ".git"
    (meta / "objects" / "info").mkdir(parents=True)
    (meta / "refs").mkdir()
    (meta / "HEAD").write_text(vid + "\n")
    (meta / "objects" / "info" / "alternates").write_text(f"{objects}\n")
    return meta / "index"


def _hooks_off_env() -> dict[str, str]:
    """HOOKS_OFF as environment variables (git 2.31+), after any the user set the same way."""
    n = int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0)
    return {"GIT_CONFIG_COUNT": str(n + 1), f"GIT_CONFIG_KEY_{n}": "core.hooksPath",
            f"GIT_CONFIG_VALUE_{n}": "/dev/null"}


def _stderr(error: git.GitCommandError) -> str:
    """git's own words: GitPython keeps them as "\n  stderr: '<text>'"."""
    return str(error.stderr).strip().removeprefix("stderr: ").strip("'").strip()[:300]
