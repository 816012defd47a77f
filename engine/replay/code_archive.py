"""A version's code as one self-contained archive, for hosts that cannot read the project's
repository (a Ray worker on another node):

    archive = archive_vid(project_root, vid)       # here, where the repository is
    extract_tree(archive, vid, Path(tmp) / "tree")  # there: the tree a task runs in

The archive is the folder gitrepo.materialise makes (the same `read-tree -u`, so the same
files: the user's filters and attributes applied, `export-ignore` files kept, executable bits
and symlinks as in a checkout), with the version's own git objects packed into its `.git`
instead of the alternates file that borrows the project's. The extracted tree is therefore a
small repository of its own, needing nothing of the project's: `git rev-parse --show-toplevel`
(how flor finds its root) answers the tree, `git rev-parse HEAD` answers `vid`, and `git
status`, `git show HEAD:file` and `git log -1` work, since the commit, its tree and its blobs
are there. The commit's parents are not (`.git/shallow` says so, as in a clone of depth 1);
flor's snapshots have none anyway.

What can differ from a materialised tree: files' stat data (the index is carried and refreshed
by git when it looks), group and other write bits (extraction keeps the owner's bits only, as
tarfile's "data" filter does), and a symlink pointing outside the tree, which extraction
refuses. Extraction refuses any member with an absolute path or a `..` component, devices and
links leaving the tree.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from flor import gitrepo

ALTERNATES = ".git/objects/info/alternates"
PACK_DIR = ".git/objects/pack"


class ArchiveError(RuntimeError):
    """An archive that is not a version's tree, or not safe to extract. A RuntimeError, so that
    perform_task reports the task as failed with this message, as it does a git error."""


def archive_vid(project_root: Path, vid: str) -> bytes:
    """The tree of commit `vid` of the repository at `project_root`, with its git objects, as
    an uncompressed tar archive (see the module's docstring for what it holds)."""
    full = gitrepo.run(project_root, "rev-parse", "--verify", "--end-of-options",
                       f"{vid}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="flor-archive-") as tmp:
        tree = Path(tmp) / "tree"
        gitrepo.materialise(project_root, full, tree)
        _pack_version(project_root, full, tree / PACK_DIR)
        (tree / ALTERNATES).unlink()
        (tree / ".git" / "shallow").write_text(full + "\n")  # its parents are not carried
        return _tar(tree)


def extract_tree(archive: bytes, vid: str, dest: Path) -> None:
    """Write the tree of `archive` (from archive_vid) into the new folder `dest`. Raises
    ArchiveError, leaving no `dest`, when a member is unsafe or the archive is of another
    version than `vid` (which may be abbreviated)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            _check_version(tar, vid)
            dest.mkdir(parents=True)
            try:
                tar.extractall(dest, members=members, filter="data")
            except BaseException:
                shutil.rmtree(dest, ignore_errors=True)  # no half tree for anyone to run
                raise
    except tarfile.TarError as e:
        raise ArchiveError(f"the archive of version {vid[:10]} cannot be extracted: {e}") from None


def _pack_version(root: Path, vid: str, pack_dir: Path) -> None:
    """Pack the commit `vid`, its trees and blobs (not its parents) into `pack_dir`."""
    listing = gitrepo.run(root, "rev-list", "--objects", "--no-walk", vid)
    pack_dir.mkdir(parents=True, exist_ok=True)
    gitrepo.run(root, "pack-objects", "-q", str(pack_dir / "pack"), stdin=listing + "\n")


def _tar(tree: Path) -> bytes:
    """`tree`'s contents as a tar archive with member names relative to it; no owner names."""
    buffer = io.BytesIO()

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(tree)):
            tar.add(tree / entry, arcname=entry, filter=anonymous)
    return buffer.getvalue()


def _check_member(member: tarfile.TarInfo) -> None:
    """Refuse what could write outside the tree, before the "data" filter's own checks."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(f"the archive holds an unsafe path {member.name!r}")
    if not (member.isfile() or member.isdir() or member.issym()):
        raise ArchiveError(f"the archive holds {member.name!r}, which is not a file, a folder "
                           "or a symlink")


def _check_version(tar: tarfile.TarFile, vid: str) -> None:
    """The archive's HEAD is `vid`: a task never runs another version's code."""
    try:
        head = tar.extractfile(".git/HEAD").read().decode().strip()  # type: ignore[union-attr]
    except (KeyError, AttributeError, UnicodeDecodeError):
        head = ""
    if not vid or not head or not head.startswith(vid.strip().lower()):
        raise ArchiveError(f"the archive holds version {head[:10] or '(none)'}, not {vid[:10]}")
