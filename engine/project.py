"""Find a project's flor home (where runs record) from a directory inside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flor import protocol

from .errors import ProjectNotFoundError, ProjectUnreadableError


@dataclass(frozen=True)
class Project:
    root: Path  # top of the git work tree (or the directory given, outside git)
    home: Path  # the flor home: FLOR_HOME, else <root>/.flor

    @property
    def catalog_path(self) -> Path:
        return self.home / protocol.CATALOG_FILE

    @property
    def runs_dir(self) -> Path:
        return self.home / protocol.RUNS_DIR


def locate_project(path: str | os.PathLike = ".") -> Project:
    """The project at `path`: FLOR_HOME wins; else the git top-level's `.flor`."""
    start = Path(path).expanduser().resolve()
    if not start.exists():
        raise ProjectNotFoundError(str(start))
    root = _git_toplevel(start) or start
    env = os.environ.get(protocol.HOME_ENV)
    home = Path(env).expanduser().resolve() if env else root / protocol.HOME_DIRNAME
    if not home.is_dir():
        raise ProjectNotFoundError(str(root))
    _check_readable(home)
    return Project(root=root, home=home)


def _check_readable(home: Path) -> None:
    """Ingest must list every run: an unreadable `runs/` would look like a project whose
    runs were all deleted, so refuse it up front."""
    for folder in (home, home / protocol.RUNS_DIR):
        if not os.path.lexists(folder):
            continue
        try:  # list it for real: os.access says yes to root, and a link loop is no folder
            with os.scandir(folder):
                pass
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ProjectUnreadableError(str(folder), exc.strerror or str(exc)) from None


def _git_toplevel(start: Path) -> Path | None:
    from flor import gitrepo  # lazily: the engine imports flor only when it needs git

    return gitrepo.toplevel(start)
