"""docs/architecture.md stays true: every file it names exists, and every engine module is
named there or sits in a stage whose folder it names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _named_files() -> set[str]:
    """`a/b.py` paths, and `x.py` names that continue a row after a full path (same folder)."""
    named = set()
    for line in DOC.splitlines():
        folder = None
        for path in re.findall(r"`([\w/.]+\.py)`", line):
            if "/" in path:
                folder = path.rsplit("/", 1)[0]
                named.add(path)
            elif folder:
                named.add(f"{folder}/{path}")
    return named


def test_every_file_the_architecture_names_exists() -> None:
    named = _named_files()
    assert len(named) > 30
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_query_replay_and_jobs_module_has_its_step() -> None:
    named = _named_files()
    for stage in ("query", "replay", "jobs"):
        for path in (ROOT / "engine" / stage).glob("*.py"):
            rel = f"engine/{stage}/{path.name}"
            assert path.name == "__init__.py" or rel in named, f"{rel} has no step in the doc"
