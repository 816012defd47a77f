"""Declared dependencies match the imports: what the code imports is declared, and what is
declared is imported (a plain `pip install .` must give a working shell, CLI and DB-API)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("florsql", "engine", "instrument")
OWN = {"florsql", "flor"}
# Declared but not imported by name, each for a reason that a test below checks.
USED_WITHOUT_IMPORT = {"pandas": "pyarrow's to_pandas() behind cursor.df() needs it"}


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Third-party top-level names -> files, split into module-level and deferred imports."""
    eager: dict[str, set[str]] = {}
    deferred: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            module_level = set(_module_level_nodes(tree))
            for node in ast.walk(tree):
                for name in _imported_names(node):
                    root = name.split(".")[0]
                    if root in sys.stdlib_module_names or root in OWN:
                        continue
                    target = eager if id(node) in module_level else deferred
                    target.setdefault(root, set()).add(f"{package}/{path.name}")
    return eager, deferred


def _module_level_nodes(tree: ast.Module) -> list[int]:
    """Imports run when the module is imported: its body, and try/if blocks in it."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(id(node))
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # never runs
        elif isinstance(node, (ast.Try, ast.If)):
            stack.extend([*node.body, *getattr(node, "orelse", []),
                          *[h for handler in getattr(node, "handlers", [])
                            for h in handler.body]])
    return found


def _imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def _declared() -> tuple[set[str], set[str]]:
    """Normalised distribution names: core dependencies, and those of any extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(specs: list[str]) -> set[str]:
        return {_normalise(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}

    extras = set().union(*map(names, project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(module: str) -> str:
    dists = metadata.packages_distributions().get(module)
    assert dists, f"no installed distribution provides the module {module!r}"
    return _normalise(dists[0])


def test_every_module_level_import_is_a_core_dependency() -> None:
    eager, _ = _imports()
    core, _ = _declared()
    missing = {m: sorted(files) for m, files in eager.items() if _distribution(m) not in core}
    assert not missing, f"imported at module level but not in [project] dependencies: {missing}"


def test_every_deferred_import_is_declared_in_core_or_an_extra() -> None:
    _, deferred = _imports()
    core, extras = _declared()
    missing = {m: sorted(files) for m, files in deferred.items()
               if _distribution(m) not in core | extras}
    assert not missing, f"imported but declared nowhere: {missing}"


def test_every_core_dependency_is_imported_or_needed_for_a_stated_reason() -> None:
    eager, deferred = _imports()
    imported = {_distribution(m) for m in {*eager, *deferred}}
    core, _ = _declared()
    unused = core - imported - set(USED_WITHOUT_IMPORT)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_pandas_is_what_cursor_df_needs() -> None:
    import pyarrow as pa

    frame = pa.table({"x": [1, 2]}).to_pandas()  # fails without pandas
    assert type(frame).__module__.startswith("pandas")
