"""Snapshot the working tree into a hidden git ref, without touching the user's branch or index.

The vid of a run is the id of a commit made from a *temporary* index: a copy of the user's index
plus tracked changes, untracked-not-ignored files and the running script even when git ignores
it (a replay needs it). Author, dates and message are fixed and the commit has no parent, so the
same code always gives the same vid.

Plain `git` subprocesses through gitrepo.run, not GitPython: this runs at the start of every
training run, in a fresh process, where GitPython's import alone (60-100 ms) is 3-4 times the
whole snapshot (20 ms for 304 files; 83 ms through GitPython, median of 11; see gitrepo.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

from . import gitrepo, protocol
from .errors import FlorRepoError, FlorWarning

SNAPSHOT_REF_PREFIX = protocol.SNAPSHOT_REF_PREFIX
# Untracked files bigger than this (logs, datasets) are left out of the snapshot with a warning.
MAX_UNTRACKED_BYTES = int(os.environ.get("FLOR_SNAPSHOT_MAX_BYTES", 5 * 1024 * 1024))
_FIXED_IDENTITY = {
    "GIT_AUTHOR_NAME": "flor",
    "GIT_AUTHOR_EMAIL": "flor@localhost",
    "GIT_COMMITTER_NAME": "flor",
    "GIT_COMMITTER_EMAIL": "flor@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}


def find_repo_root(start: Path) -> Path:
    """Return the top of the git work tree containing `start`, or raise FlorRepoError."""
    root = gitrepo.toplevel(start)
    if root is None:
        raise FlorRepoError(
            f"flor: {start} is not inside a git repository; run `git init` there first "
            "(flor versions your code with git)"
        )
    return root


def exclude_from_git(repo_root: Path, pattern: str) -> None:
    """Add `pattern` to .git/info/exclude (never the user's .gitignore) if it is not there."""
    common = Path(_git(["rev-parse", "--git-common-dir"], cwd=repo_root))
    if not common.is_absolute():
        common = repo_root / common
    exclude = common / "info" / "exclude"
    try:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        if pattern not in lines:
            with exclude.open("a") as fh:
                fh.write(("\n" if lines and lines[-1] else "") + pattern + "\n")
    except OSError as exc:
        raise FlorRepoError(
            f"flor: cannot write {exclude} ({exc.strerror or exc}); flor keeps each run's code "
            "snapshot in the repository's git objects, so the repository must be writable"
        ) from None


def snapshot_worktree(repo_root: Path, script: str | None = None) -> str:
    """Commit the working tree to a hidden ref and return the commit id (the vid).

    `script` (the running script, relative to `repo_root`) is included even when git ignores
    it: a replay runs the vid's copy of it, so a snapshot without it could never be replayed.
    """
    git_dir = Path(_git(["rev-parse", "--absolute-git-dir"], cwd=repo_root))
    with tempfile.TemporaryDirectory(prefix="flor-index-") as tmp:
        index = Path(tmp) / "index"
        if (git_dir / "index").exists():
            # copy2 keeps the index's mtime: git trusts an entry whose stat is unchanged unless
            # the file is as new as the index ("racy git"), so a copy stamped now would hide a
            # tracked file rewritten, at the same size, within the clock tick of the user's
            # last `git add` or commit (seen once: a vid with util.py's committed content)
            shutil.copy2(git_dir / "index", index)
        env = {"GIT_INDEX_FILE": str(index)}
        _git(["add", "-u", "--", "."], cwd=repo_root, env=env)
        _add_untracked(repo_root, env, script)
        tree = _git(["write-tree"], cwd=repo_root, env=env)
    vid = _git(["commit-tree", tree, "-m", "flor snapshot"], cwd=repo_root, env=_FIXED_IDENTITY)
    _git(["update-ref", SNAPSHOT_REF_PREFIX + vid, vid], cwd=repo_root)
    return vid


def _add_untracked(repo_root: Path, env: dict[str, str], script: str | None) -> None:
    listing = _git(["ls-files", "-z", "--others", "--exclude-standard"], cwd=repo_root, env=env)
    keep, skipped = [], []
    for rel in filter(None, listing.split("\0")):
        try:
            size = (repo_root / rel).stat().st_size
        except OSError:
            continue
        (keep if size <= MAX_UNTRACKED_BYTES else skipped).append(rel)
    if script and script not in keep and (repo_root / script).is_file():
        # ignored or not, whatever its size (--force below). Tracked, it is added again: a
        # subprocess more (5 ms) when nothing else is untracked, as git alone knows which
        keep.append(script)
    if skipped:
        warnings.warn(
            f"flor: left {len(skipped)} large untracked file(s) out of the code snapshot "
            f"(e.g. {skipped[0]}); add them to .gitignore or raise FLOR_SNAPSHOT_MAX_BYTES",
            FlorWarning,
            stacklevel=3,
        )
    if keep:
        _git(
            # --force adds the script when git ignores it; the other paths are not ignored
            ["--literal-pathspecs", "add", "--force", "--pathspec-from-file=-",
             "--pathspec-file-nul"],
            cwd=repo_root,
            env=env,
            stdin="\0".join(keep),
        )


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None, stdin: str = "") -> str:
    try:
        return gitrepo.run(cwd, *args, env=env, stdin=stdin)
    except gitrepo.GitNotFoundError:
        raise FlorRepoError("flor: git is not installed; install git to record runs") from None
    except gitrepo.GitError as e:
        raise FlorRepoError(f"flor: {e}") from None
