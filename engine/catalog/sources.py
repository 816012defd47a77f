"""What the record files of one source say now, against what the catalog last took from them.

A *source* is a run directory (`runs/<key>`) or a replay directory (`runs/<key>/replays/<id>`).
`scan_source` reads its identity and end.json (checked by validate.py) and lists its parts and
checkpoint entries with their size and mtime; `FileState` rows (the catalog's `_ingested`)
say what ingest did with each file it saw, so a later scan can tell new, changed, gone and
still-quarantined files apart. A source's *signature* (the mtimes of its directories and small
files) lets ingest skip a sealed run without listing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from flor import protocol

from .validate import (
    RecordFileError,
    clean_text,
    end_status,
    load_json,
    replay_identity,
    run_identity,
)

PART_SUFFIXES = (protocol.PART_SUFFIX, protocol.LEGACY_PART_SUFFIX)
_SIGNED = ("", protocol.RUN_IDENT_FILE, protocol.REPLAY_IDENT_FILE, protocol.END_FILE,
           protocol.PARTS_DIR, protocol.CKPT_DIR, protocol.REPLAYS_DIR)


@dataclass(frozen=True)
class FileState:
    """One row of `_ingested`: a file ingest has seen, and what came of it."""

    kind: str  # ident, end, part, ckpt
    size: int | None
    mtime: int | None
    status: str  # ok, quarantined
    message: str | None = None


@dataclass(frozen=True)
class Listed:
    path: Path
    size: int
    mtime: int


@dataclass
class Scan:
    """One source as its files are now (`known`: as the catalog last saw them)."""

    src: Path
    rel: str
    run_rel: str  # the run it belongs to (itself, for a run's own directory)
    replay: bool
    signature: str
    ident: dict | None = None
    ident_problem: str | None = None
    end: dict | None = None
    end_problem: str | None = None
    parts: dict[str, Listed] = field(default_factory=dict)
    ckpts: dict[str, Listed] = field(default_factory=dict)
    known: dict[str, FileState] = field(default_factory=dict)

    @property
    def ident_rel(self) -> str:
        return f"{self.rel}/{'replay.json' if self.replay else 'run.json'}"

    def stale(self) -> list[str]:
        """Parts ingested before that are gone or changed: their rows no longer hold."""
        return sorted(rel for rel, state in self.known.items()
                      if state.kind == "part" and state.status == "ok"
                      and _differs(self.parts.get(rel), state))

    def new_parts(self) -> list[str]:
        """Parts never ingested, and quarantined ones that changed since (perhaps restored)."""
        return sorted(rel for rel, item in self.parts.items()
                      if rel not in self.known or (self.known[rel].status != "ok"
                                                   and _differs(item, self.known[rel])))

    def checkpoints_changed(self) -> bool:
        seen = {rel: s for rel, s in self.known.items() if s.kind == "ckpt"}
        return seen.keys() != self.ckpts.keys() or any(
            _differs(item, seen[rel]) for rel, item in self.ckpts.items())


def scan_source(home: Path, src: Path, replay: bool, known: dict[str, FileState]) -> Scan:
    """List `src` now. The signature is taken first and end.json read before the parts are
    listed, so a change made while scanning shows at the next scan, and a source whose
    end.json was seen has all its parts listed."""
    run_rel = relative(src.parent.parent if replay else src, home)
    scan = Scan(src, relative(src, home), run_rel, replay, signature(src), known=known)
    check = replay_identity if replay else run_identity
    ident = protocol.REPLAY_IDENT_FILE if replay else protocol.RUN_IDENT_FILE
    scan.ident, scan.ident_problem = _read(src / ident, check)
    scan.end, scan.end_problem = _read(src / protocol.END_FILE, end_status)
    scan.parts = _listing(home, src / protocol.PARTS_DIR, lambda n: n[:1].isdigit()
                          and os.path.splitext(n)[1] in PART_SUFFIXES)
    if not replay:
        scan.ckpts = _listing(home, src / protocol.CKPT_DIR,
                              lambda n: n.endswith(protocol.CKPT_ENTRY_SUFFIX))
    return scan


def signature(src: Path) -> str:
    """The mtimes that change when a file of `src` is added, removed or rewritten by rename."""
    stamps = []
    for name in _SIGNED:
        try:
            stamps.append(os.stat(src / name).st_mtime_ns)
        except OSError:
            stamps.append(-1)
    return ",".join(map(str, stamps))


def relative(path: Path, home: Path) -> str:
    """The catalog's key for a path under the flor home (text, surrogates escaped)."""
    return clean_text(path.relative_to(home).as_posix())


def load_file_states(con: duckdb.DuckDBPyConnection, rel: str) -> dict[str, FileState]:
    rows = con.execute("SELECT path, kind, size, mtime, status, message FROM _ingested "
                       "WHERE dir = ?", [rel]).fetchall()
    return {path: FileState(*rest) for path, *rest in rows}


def listed_state(item: Listed | None) -> tuple[int | None, int | None]:
    return (item.size, item.mtime) if item is not None else (None, None)


def _differs(item: Listed | None, state: FileState) -> bool:
    return item is None or (item.size, item.mtime) != (state.size, state.mtime)


def _read(path: Path, check: Callable[[Any], dict]) -> tuple[dict | None, str | None]:
    """(document, None), (None, why it is unusable), or (None, None) while it does not exist."""
    try:
        return check(load_json(path)), None
    except FileNotFoundError:
        return None, None
    except RecordFileError as exc:
        return None, str(exc)


def _listing(home: Path, folder: Path, wanted: Callable[[str], bool]) -> dict[str, Listed]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        # A file where the folder should be (a failed checkpoint writer's, say) holds no
        # records: the run keeps everything else rather than being quarantined whole.
        return {}
    except OSError as exc:
        raise RecordFileError(f"cannot list {folder.name}/: {exc.strerror}") from None
    out = {}
    for entry in entries:
        if wanted(entry.name):
            try:
                stat = entry.stat()
            except OSError:
                continue  # removed while listing
            path = Path(entry.path)
            out[relative(path, home)] = Listed(path, stat.st_size, stat.st_mtime_ns)
    return out
