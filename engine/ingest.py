"""Ingest record files into the catalog: incrementally, idempotently, one transaction per source.

A *source* is a run directory (`runs/<key>`) or a replay directory (`runs/<key>/replays/<id>`).
Each new part is ingested exactly once (its path goes into `_ingested` in the same transaction
as its rows), so an interrupted ingest leaves nothing half done. A source is *sealed* once its
end.json was seen before its parts were listed; sealed runs are skipped unless a new replay
appears under them.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from .errors import IngestWarning
from .parts import PART_SUFFIXES, PartError, RowBatch, mark_ingested, read_part, rows_of_part
from .project import Project
from .status import derive_status, read_json


@dataclass
class IngestReport:
    parts: int = 0
    records: int = 0
    sources: int = 0  # run and replay directories whose catalog rows were (re)written
    warnings: list[str] = field(default_factory=list)


def ingest_project(con: duckdb.DuckDBPyConnection, project: Project) -> IngestReport:
    """Bring the catalog up to date with the record files of `project`."""
    report = IngestReport()
    if not project.runs_dir.is_dir():
        return report
    sources = {d: (s, m) for d, s, m in con.execute(
        "SELECT dir, sealed, replays_mtime FROM _sources").fetchall()}
    done = {p for (p,) in con.execute("SELECT path FROM _ingested").fetchall()}
    home = project.home
    for run_dir in sorted(p for p in project.runs_dir.iterdir() if p.is_dir()):
        rel = run_dir.relative_to(home).as_posix()
        sealed, seen_mtime = sources.get(rel, (False, None))
        replays_mtime = _mtime(run_dir / "replays")
        if not sealed:
            _ingest_source(con, home, run_dir, done, report, replay=False)
        if replays_mtime != seen_mtime:
            for rdir in sorted((run_dir / "replays").iterdir()):
                rrel = rdir.relative_to(home).as_posix()
                if rdir.is_dir() and not sources.get(rrel, (False, None))[0]:
                    _ingest_source(con, home, rdir, done, report, replay=True)
            con.execute("UPDATE _sources SET replays_mtime = ? WHERE dir = ?",
                        [replays_mtime, rel])
    for rrel, (sealed, _) in sources.items():
        if "/replays/" in rrel and not sealed and (home / rrel).is_dir():
            _ingest_source(con, home, home / rrel, done, report, replay=True)
    if report.sources:  # what derived facts are keyed on (CatalogSession.derived)
        con.execute("INSERT OR REPLACE INTO _meta SELECT 'data_version', CAST(coalesce(max("
                    "CAST(value AS BIGINT)), 0) + 1 AS VARCHAR) FROM _meta "
                    "WHERE key = 'data_version'")
    return report


def _ingest_source(con, home: Path, src: Path, done: set[str], report: IngestReport,
                   replay: bool) -> None:
    ident_file = src / ("replay.json" if replay else "run.json")
    run_dir = src.parent.parent if replay else src
    try:
        ident = read_json(ident_file)
        run = ident if not replay else read_json(run_dir / "run.json")
    except FileNotFoundError:
        return  # still being created
    except (OSError, ValueError) as exc:
        _warn(report, f"skipped {ident_file}: unreadable ({exc}); fix or remove that directory")
        return
    end = _read_optional(src / "end.json")  # read before listing parts: see module docstring
    tstamp = run["tstamp"]
    con.execute("BEGIN")
    try:
        if not replay:
            _upsert_run(con, run, src, end)
        else:
            _upsert_replay(con, tstamp, ident, src, end)
        _ingest_parts(con, home, src, tstamp, done, report, "replay" if replay else "forward")
        if not replay:
            _ingest_checkpoints(con, home, src, tstamp, done)
        con.execute(
            "INSERT OR REPLACE INTO _sources VALUES (?, ?, ?, "
            "(SELECT replays_mtime FROM _sources WHERE dir = ?))",
            [src.relative_to(home).as_posix(), tstamp, end is not None,
             src.relative_to(home).as_posix()],
        )
        con.execute("COMMIT")
        report.sources += 1
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _upsert_run(con, run: dict, src: Path, end: dict | None) -> None:
    status, _, error = derive_status(run, end, src / "heartbeat")
    end_time = end.get("end_time") if end else None
    con.execute(
        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run["projid"], run["runid"], run["tstamp"], run["vid"], run["filename"],
         run.get("argv", []), status, run.get("start_time"), end_time, error,
         run.get("pid"), run.get("hostname"), str(src)],
    )


def _upsert_replay(con, tstamp: str, ident: dict, src: Path, end: dict | None) -> None:
    status = end.get("status") if end else derive_status(ident, None, src / "heartbeat")[0]
    con.execute("DELETE FROM replays WHERE replay_id = ? AND tstamp = ?",
                [ident["replay_id"], tstamp])
    con.execute("INSERT INTO replays VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [tstamp, ident["replay_id"], status, end and end.get("end_time"),
                 end and end.get("error"), ident.get("names"), ident.get("loop"),
                 ident.get("start"), ident.get("stop")])


def _ingest_parts(con, home: Path, src: Path, tstamp: str, done: set[str],
                  report: IngestReport, source: str) -> None:
    parts_dir = src / "parts"
    if not parts_dir.is_dir():
        return
    new = sorted(p for p in parts_dir.glob("[0-9]*.*") if p.suffix in PART_SUFFIXES
                 and p.relative_to(home).as_posix() not in done)
    if not new:
        return
    ctx_map = dict(con.execute(
        "SELECT path, ctx_id FROM contexts WHERE tstamp = ?", [tstamp]).fetchall())
    batch = RowBatch(tstamp=tstamp, source=source)
    ingested: list[tuple] = []
    for part in new:
        rel = part.relative_to(home).as_posix()
        stat = part.stat()
        try:
            rows_of_part(read_part(part), batch, ctx_map)
        except PartError as exc:
            _warn(report, f"skipped corrupt record part {rel} ({exc}); other parts are "
                          "unaffected: restore or delete that file")
            ingested.append((rel, stat.st_size, stat.st_mtime, "corrupt", str(exc)))
        else:
            report.parts += 1
            ingested.append((rel, stat.st_size, stat.st_mtime, "ok", None))
        done.add(rel)
    report.records += batch.count
    batch.insert_into(con)
    mark_ingested(con, ingested)


def _ingest_checkpoints(con, home: Path, src: Path, tstamp: str, done: set[str]) -> None:
    ckpt_dir = src / "ckpt"
    if not ckpt_dir.is_dir():
        return
    for (path,) in con.execute("SELECT path FROM checkpoints WHERE tstamp = ?",
                               [tstamp]).fetchall():
        if not (ckpt_dir / (Path(path).stem + ".json")).exists():  # FLOR_CHECKPOINT_KEEP
            con.execute("DELETE FROM checkpoints WHERE tstamp = ? AND path = ?", [tstamp, path])
    for entry in sorted(ckpt_dir.glob("*.json")):
        rel = entry.relative_to(home).as_posix()
        if rel in done:
            continue
        try:
            doc = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue  # entries are written atomically; a bad one is retried next time
        con.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, to_timestamp(?))",
            [tstamp, doc["loop"], doc["iteration"], str(ckpt_dir / doc["file"]), doc["bytes"],
             doc["seconds"], doc["blocked_seconds"], doc["time"]],
        )
        mark_ingested(con, [(rel, None, None, "ok", None)])
        done.add(rel)


def _read_optional(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _warn(report: IngestReport, message: str) -> None:
    report.warnings.append(message)
    warnings.warn(message, IngestWarning, stacklevel=4)
