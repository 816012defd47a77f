"""pyproject.toml lists every package folder of the checkout, so a non-editable install (which
copies only listed packages) never drops one silently. tests/test_fresh_install.py checks the
same on a real install."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setuptools = _config()["tool"]["setuptools"]
    folders = {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}
    folders.setdefault("florsql", ROOT / "florsql")
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    assert any(p.startswith("florsql.engine.") for p in found)
    assert set(setuptools["packages"]) == found


def test_the_engine_folder_is_installed_under_florsql() -> None:
    package_dir = _config()["tool"]["setuptools"]["package-dir"]
    assert package_dir == {"flor": "instrument", "florsql.engine": "engine"}
