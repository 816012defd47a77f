"""Which modules a warm replay worker imports ahead: the heavy third-party imports of the
scripts a replay runs (found with ast), and what they import lazily at a script's first use.

    preload_modules(source, local_names(os.listdir(folder)))   # ["torch", "torch._dynamo"]
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ..query.session import CatalogSession

# Modules that training scripts import lazily, after their first flor call, and that cost
# seconds: torch's compiler stack, which the first optimizer a script creates pulls in.
ALSO_WARM = {"torch": ("torch._dynamo",)}
LAZY_MODULES = frozenset(m for extra in ALSO_WARM.values() for m in extra)
NEVER_PRELOAD = frozenset({"flor", "florsql", "__main__", "__future__"})




def script_imports(source: str) -> list[str]:
    """Absolute module names imported at module level (also under top-level if/try/with)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import):
                names.extend(alias.name for alias in stmt.names)
            elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                names.append(stmt.module)
            elif isinstance(stmt, (ast.If, ast.With, ast.Try, ast.TryStar)):
                visit(stmt.body)
                visit(getattr(stmt, "orelse", []))
                visit(getattr(stmt, "finalbody", []))
                for handler in getattr(stmt, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return list(dict.fromkeys(names))


def preload_modules(source: str, local: Iterable[str]) -> list[str]:
    """The modules of `source` worth importing in a zygote: third-party modules (not the
    standard library, not flor, not the script's own modules `local`, the names of the files
    and folders beside it), plus what they import lazily at a script's first use."""
    local = set(local)
    out: list[str] = []
    for name in script_imports(source):
        top = name.split(".")[0]
        if top in NEVER_PRELOAD or top in local or top in sys.stdlib_module_names:
            continue
        out.append(name)
        out.extend(ALSO_WARM.get(top, ()))
    return list(dict.fromkeys(out))


def local_names(entries: Iterable[str]) -> set[str]:
    """Importable names of the files and folders in a script's directory."""
    return {e[:-3] if e.endswith(".py") else e for e in entries}


def torch_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


class ScriptVersion(NamedTuple):
    """A script as a replay runs it: its version, its path in the project, its source."""

    vid: str
    filename: str
    source: str


def replay_modules(root: Path, scripts: Iterable[ScriptVersion]) -> list[str]:
    """What the pool's workers import ahead: the patched scripts' heavy imports."""
    unique = list({(s.vid, s.filename): s for s in scripts}.values())
    folders = {(s.vid, os.path.dirname(s.filename) or ".") for s in unique}
    entries = _entries_at(root, folders)
    modules: list[str] = []
    for s in unique:
        local = local_names(entries.get((s.vid, os.path.dirname(s.filename) or "."), []))
        modules.extend(preload_modules(s.source, local))
    return list(dict.fromkeys(modules))


def warm_modules(session: CatalogSession) -> list[str]:
    """What to import ahead before any plan: torch if installed, and the heavy imports of the
    working-tree version of every script the project's runs ran."""
    modules = ["torch", *ALSO_WARM["torch"]] if torch_installed() else []
    root = session.project.root
    rows = session.con.execute("SELECT DISTINCT filename FROM runs").fetchall()
    for (filename,) in rows:
        path = root / (filename or "")
        if not filename or not path.is_file():
            continue
        try:
            source = path.read_text()
            local = local_names(os.listdir(path.parent))
        except OSError:
            continue
        modules.extend(preload_modules(source, local))
    return list(dict.fromkeys(modules))


_ENTRIES: dict[tuple[Path, str, str], list[str]] = {}  # a commit's tree never changes


def _entries_at(root: Path, keys: set[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """(vid, folder) -> the names of the files and folders in `folder` of commit `vid`, read
    through one open repository; a key whose folder is missing is left out."""
    from flor import gitrepo

    missing = [k for k in keys if (root, *k) not in _ENTRIES]
    if missing:
        for (vid, folder), names in gitrepo.folder_entries(root, sorted(missing)).items():
            _ENTRIES[(root, vid, folder)] = names
    return {k: _ENTRIES[(root, *k)] for k in keys if (root, *k) in _ENTRIES}
