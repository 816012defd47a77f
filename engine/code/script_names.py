"""What today's scripts log: the `flor.log("name", ...)` literals of each script on disk.

A query may name a value that no run has logged yet, as long as today's version of a script
logs it: such a name is a `history` column (NULL until replayed). Scans are cached per file by
modification time and size, so a query pays for a re-parse only after the script changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .propagate import log_sites
from .propagate_match import flor_loop_name


@dataclass(frozen=True)
class ScriptName:
    """A name one script logs, and whether every place that logs it is inside a `flor.loop`."""

    name: str
    in_loop: bool


_CACHE: dict[Path, tuple[tuple[int, int], dict[str, ScriptName]]] = {}
_GUARD = threading.Lock()


def script_names(root: Path, filenames: Iterable[str]) -> dict[str, dict[str, ScriptName]]:
    """filename -> lower-cased name -> ScriptName, for each script that exists and parses."""
    out = {}
    for filename in filenames:
        names = _names_of(root / filename)
        if names is not None:
            out[filename] = names
    return out


def scripts_stamp(root: Path, filenames: Iterable[str]) -> tuple:
    """Modification time and size of each script: changes whenever one is edited."""
    stamps = []
    for filename in sorted(filenames):
        try:
            stat = (root / filename).stat()
            stamps.append((filename, stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((filename, None, None))
    return tuple(stamps)


def _names_of(path: Path) -> dict[str, ScriptName] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    with _GUARD:
        cached = _CACHE.get(path)
    if cached and cached[0] == key:
        return cached[1]
    try:
        sites = log_sites(path.read_text())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None  # a script that does not parse logs nothing we could replay
    names = {}
    for name, places in sites.items():
        in_loop = all(any(flor_loop_name(level.owner, 0) for level in site.chain)
                      for site in places)
        names[name.lower()] = ScriptName(name, in_loop)
    with _GUARD:
        _CACHE[path] = (key, names)
    return names
