"""Ingest record files into the catalog, so that the catalog always equals what the files say.

A run and its replays are synced in one transaction (sources.py lists them), so an
interrupted ingest leaves nothing half done. Every file is checked before its rows are built
(validate.py); a bad one is *quarantined* alone: one `IngestWarning` naming it and the fix,
its rows left out, every other record kept. It is read again once it changes, so a restored
part is ingested then. New parts are appended; when an ingested part disappears or changes,
a replay directory is removed or run.json names another tstamp, the run is rebuilt from its
files, and a run whose directory is gone leaves the catalog. Two run directories claiming one
tstamp never merge (see `_claim`). A source is *sealed* once its end.json was read before its
parts were listed and none of its files is quarantined: a run whose sources are all sealed and
whose signatures are unchanged is not listed again.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from flor import protocol

from ..errors import IngestWarning, ProjectUnreadableError
from ..project import Project
from .decode import DECODERS, decode_parts, prepare_part, read_parts
from .parts import PartError
from .quarantine import Quarantine, drop_run, record_ok, sync_checkpoints
from .rows import Output, RowBatch
from .sources import Scan, load_file_states, relative, scan_source, signature
from .status import derive_status
from .validate import RecordFileError, clean_text, one_line


@dataclass
class IngestReport:
    parts: int = 0
    records: int = 0
    sources: int = 0  # run and replay directories whose catalog rows were (re)written
    warnings: list[str] = field(default_factory=list)


# Errors of the catalog or the process, not of a run's files: they stop the ingest.
_NOT_THE_FILES = (duckdb.OperationalError, duckdb.InterruptException, duckdb.PermissionException,
                  duckdb.FatalException, duckdb.InternalException, MemoryError)


@dataclass(frozen=True)
class _Source:
    """A row of `_sources`."""

    run_dir: str
    tstamp: str | None
    sealed: bool
    signature: str | None


def ingest_project(con: duckdb.DuckDBPyConnection, project: Project,
                   between_runs: Callable[[int], None] | None = None,
                   out: Output | None = None) -> IngestReport:
    """Bring the catalog up to date with the record files of `project`; `between_runs(n)`
    is told of the `n` records each run added, outside any transaction (the mirror may
    compress them then); `out` gets every table of rows inserted (rows.Output)."""
    known = _load_sources(con)
    by_run: dict[str, dict[str, _Source]] = {}
    for path, source in known.items():
        by_run.setdefault(source.run_dir, {})[path] = source
    on_disk = _run_dirs(project.runs_dir)
    ingest = _Pass(con, project.home, IngestReport(), _owners(known), out or Output())
    for rel in sorted(by_run.keys() - {relative(d, ingest.home) for d in on_disk}):  # deleted
        previous = _disown(ingest.owners, rel, _tstamp_of(known, rel))
        _in_transaction(con, lambda rel=rel, previous=previous: drop_run(
            con, rel, previous, keep_quarantined=False))
        ingest.report.sources += 1
    for run_dir in on_disk:
        mine = by_run.get(relative(run_dir, ingest.home), {})
        if not _settled(ingest.home, run_dir, mine):
            before = ingest.report.records
            _sync_run_safely(ingest, run_dir, mine)
            if between_runs is not None:
                between_runs(ingest.report.records - before)
    if ingest.report.sources:  # what derived facts are keyed on (CatalogSession.derived)
        con.execute("INSERT OR REPLACE INTO _meta SELECT 'data_version', CAST(coalesce(max("
                    "CAST(value AS BIGINT)), 0) + 1 AS VARCHAR) FROM _meta "
                    "WHERE key = 'data_version'")
    return ingest.report


def ingest_needed(con: duckdb.DuckDBPyConnection, project: Project) -> bool:
    """Whether `ingest_project` would find anything to do (a run deleted, or one not settled):
    a read of the catalog and a stat per run, so a reader takes no lock when nothing is new."""
    known = _load_sources(con)
    runs = {s.run_dir for s in known.values()}
    on_disk = _run_dirs(project.runs_dir)
    if runs - {relative(d, project.home) for d in on_disk}:
        return True
    by_run: dict[str, dict[str, _Source]] = {}
    for path, source in known.items():
        by_run.setdefault(source.run_dir, {})[path] = source
    return any(not _settled(project.home, d, by_run.get(relative(d, project.home), {}))
               for d in on_disk)


@dataclass
class _Pass:
    """One ingest: the catalog, the flor home, what it did, and which run holds each tstamp."""

    con: duckdb.DuckDBPyConnection
    home: Path
    report: IngestReport
    owners: dict[str, str]  # tstamp -> the run directory holding it, kept current in the pass
    out: Output


def _sync_run_safely(ingest: _Pass, run_dir: Path, mine: dict[str, _Source]) -> None:
    """Sync one run; whatever goes wrong with its files leaves the other runs unaffected."""
    con = ingest.con
    quarantine = Quarantine(con, ingest.home, relative(run_dir, ingest.home))
    try:
        _in_transaction(con, lambda: _sync_run(ingest, run_dir, mine, quarantine))
    except _NOT_THE_FILES:
        raise
    except Exception as exc:  # a file shape validate.py does not know yet: skip this run
        reason = f"{type(exc).__name__}: {one_line(exc, 100)}"
        _in_transaction(con, lambda: quarantine.run_failed(run_dir, reason))
        ingest.owners = _owners(_load_sources(con))  # as the rollback left them
    ingest.report.warnings.extend(quarantine.new_warnings)
    for message in quarantine.new_warnings:
        warnings.warn(message, IngestWarning, stacklevel=4)


def _sync_run(ingest: _Pass, run_dir: Path, mine: dict[str, _Source],
              quarantine: Quarantine) -> None:
    con, rel = ingest.con, quarantine.run_rel
    previous = _disown(ingest.owners, rel, _tstamp_of(mine, rel))
    try:
        scans = _scan_run(con, ingest.home, run_dir, fresh=not mine)
    except RecordFileError as exc:
        quarantine.source(run_dir, str(exc), previous)
        return
    run = scans[0]
    if run.ident is None:  # run.json missing (still being made) or unusable
        quarantine.source(run_dir, run.ident_problem, previous)
        return
    if not _claim(ingest, run, quarantine, previous):
        return
    if previous is not None and (previous != run.ident["tstamp"] or any(s.stale() for s in scans)
                                 or _replays_lost(mine, scans)):
        drop_run(con, rel, previous, keep_quarantined=True)  # rebuilt from its files
        scans, previous = _scan_run(con, ingest.home, run_dir, fresh=False), None
    _write_run(con, scans, mine, quarantine, ingest.report, ingest.out)


def _write_run(con, scans: list[Scan], mine: dict[str, _Source], quarantine: Quarantine,
               report: IngestReport, out: Output) -> None:
    run = scans[0]
    tstamp = run.ident["tstamp"]
    for scan in scans:
        if scan.replay and scan.ident is None:
            quarantine.replay(scan, tstamp)
            continue
        quarantine.settle_files(scan)
        _upsert_replay(con, tstamp, scan) if scan.replay else _upsert_run(con, scan)
        changed = _ingest_parts(con, scan, tstamp, quarantine, report, out)
        if not scan.replay:
            changed |= sync_checkpoints(con, scan, tstamp, quarantine)
        source = _Source(run.rel, tstamp, scan.end is not None and not quarantine.holds(scan),
                         scan.signature)
        con.execute("INSERT OR REPLACE INTO _sources VALUES (?, ?, CAST(? AS TIMESTAMP), ?, ?)",
                    [scan.rel, run.rel, tstamp, source.sealed, scan.signature])
        # a live source may change status with time alone; a quarantined one only by its files
        live = not source.sealed and not quarantine.holds(scan)
        if changed or live or mine.get(scan.rel) != source:
            report.sources += 1


# Records decoded before they are inserted: large inserts are fast, this bounds their memory.
_BATCH_RECORDS = 1_000_000


def _ingest_parts(con, scan: Scan, tstamp: str, quarantine: Quarantine,
                  report: IngestReport, out: Output) -> bool:
    """Add the rows of the source's new parts; whether there were any. Context ids are a
    function of the context's path (parts.py, rows.py), so no part needs the catalog's contexts.
    Parts are decoded a few at a time, on a thread each (decode.decode_parts)."""
    source = "replay" if scan.replay else "forward"
    batch = RowBatch(tstamp=tstamp, source=source)
    ok, new = [], scan.new_parts()
    for start in range(0, len(new), DECODERS):
        for rel, item, decoded in _decode(scan, new[start:start + DECODERS], batch, quarantine):
            batch.add(decoded)
            report.parts += 1
            ok.append((rel, item))
        if batch.count >= _BATCH_RECORDS:  # a long backlog goes in bounded steps
            report.records += batch.count
            batch.insert_into(con, out)
            batch = RowBatch(tstamp=tstamp, source=source)
    report.records += batch.count
    batch.insert_into(con, out)
    record_ok(con, scan, "part", ok)
    return bool(new)


def _decode(scan: Scan, rels: list[str], batch: RowBatch, quarantine: Quarantine) -> list:
    """(rel, item, decoded part) of the parts `rels` that are whole; the others quarantined."""
    prepared = []
    items = [scan.parts[rel] for rel in rels]
    for rel, item, part in zip(rels, items, read_parts([i.path for i in items]), strict=True):
        try:
            if isinstance(part, PartError):
                raise part
            prepared.append((rel, item, prepare_part(part, batch)))
        except PartError as exc:
            quarantine.part(scan, rel, item, str(exc))
    decoded = []
    for (rel, item, _), result in zip(prepared, decode_parts([p for *_, p in prepared]),
                                      strict=True):
        if isinstance(result, PartError):
            quarantine.part(scan, rel, item, str(result))
        else:
            decoded.append((rel, item, result))
    return decoded


def _scan_run(con, home: Path, run_dir: Path, fresh: bool) -> list[Scan]:
    """The run's own directory first, then its replays, each with what the catalog knows
    (nothing, for a run the catalog has no source of: `fresh`)."""
    dirs = [(run_dir, False)]
    replays = run_dir / protocol.REPLAYS_DIR
    if replays.is_dir():
        dirs += [(d, True) for d in sorted(replays.iterdir()) if d.is_dir()]
    return [scan_source(home, d, replay, {} if fresh else load_file_states(con, relative(d, home)))
            for d, replay in dirs]


def _claim(ingest: _Pass, run: Scan, quarantine: Quarantine, previous: str | None) -> bool:
    """Whether `run` may hold its tstamp. Two run directories never merge: the one named after
    the tstamp (flor names each run's directory so) keeps it, else the first by name; the
    other is quarantined, and ingested again once it has a tstamp of its own."""
    tstamp = run.ident["tstamp"]
    other = ingest.owners.get(tstamp)
    if other is not None and not _preferred(run.rel, other, tstamp):
        quarantine.duplicate(run.src, other, tstamp, previous=previous)
        return False
    if other is not None:
        quarantine.duplicate(ingest.home / other, run.rel, tstamp, previous=tstamp)
    ingest.owners[tstamp] = run.rel
    return True


def _preferred(rel: str, other: str, tstamp: str) -> bool:
    named = dt.datetime.fromisoformat(tstamp).strftime("%Y%m%dT%H%M%S.%f")
    mine, theirs = rel.rsplit("/", 1)[-1] == named, other.rsplit("/", 1)[-1] == named
    return mine if mine != theirs else rel < other


def _upsert_run(con, scan: Scan) -> None:
    run, end = scan.ident, scan.end
    status, error = derive_status(run, end, scan.src / protocol.HEARTBEAT_FILE)
    con.execute(
        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run["projid"], run["runid"], run["tstamp"], run["vid"], run["filename"], run["argv"],
         status, run["start_time"], end and end["end_time"], error, run["pid"],
         run["hostname"], clean_text(str(scan.src))],
    )


def _upsert_replay(con, tstamp: str, scan: Scan) -> None:
    ident, end = scan.ident, scan.end
    status = (end["status"] if end else
              derive_status(ident, None, scan.src / protocol.HEARTBEAT_FILE).status)
    con.execute("DELETE FROM replays WHERE replay_id = ? AND tstamp = CAST(? AS TIMESTAMP)",
                [ident["replay_id"], tstamp])
    con.execute("INSERT INTO replays VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [tstamp, ident["replay_id"], status, end and end["end_time"],
                 end and end["error"], ident["names"], ident["loop"], ident["start"],
                 ident["stop"]])


def _settled(home: Path, run_dir: Path, mine: dict[str, _Source]) -> bool:
    """A run nothing can have changed in: every source sealed, every signature the same."""
    rel = relative(run_dir, home)
    if rel not in mine or not all(s.sealed for s in mine.values()):
        return False
    if signature(run_dir) != mine[rel].signature:
        return False  # includes replays/: a replay directory added or removed
    return all(signature(home / d) == s.signature
               for d, s in mine.items() if d != rel)


def _replays_lost(mine: dict[str, _Source], scans: list[Scan]) -> bool:
    """A replay whose rows are in the catalog is gone, or its replay.json became unusable."""
    listed = {s.rel for s in scans}
    return any(d not in listed for d in mine) or any(
        s.replay and s.ident is None and any(f.status == "ok" for f in s.known.values())
        for s in scans)


def _load_sources(con) -> dict[str, _Source]:
    rows = con.execute("SELECT dir, run_dir, tstamp, sealed, signature FROM _sources").fetchall()
    return {d: _Source(run, t and t.isoformat(timespec="microseconds"), bool(sealed), sig)
            for d, run, t, sealed, sig in rows}


def _owners(known: dict[str, _Source]) -> dict[str, str]:
    return {s.tstamp: path for path, s in known.items() if path == s.run_dir and s.tstamp}


def _disown(owners: dict[str, str], rel: str, previous: str | None) -> str | None:
    """Forget the tstamp `rel` held (its run.json is read again, and may name another), and
    return it: the tstamp of the rows `rel` has in the catalog. None when a run that took
    that tstamp over earlier in this pass dropped them: those rows are the taker's now."""
    if previous is None or owners.get(previous, rel) != rel:
        return None
    owners.pop(previous, None)
    return previous


def _tstamp_of(sources: dict[str, _Source], rel: str) -> str | None:
    source = sources.get(rel)
    return source.tstamp if source else None


def _run_dirs(runs_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in runs_dir.iterdir() if not p.name.startswith(".") and p.is_dir())
    except FileNotFoundError:  # no runs yet, or runs/ was removed: no run is left
        return []
    except OSError as exc:  # never mistake an unreadable runs/ for one without runs
        raise ProjectUnreadableError(str(runs_dir), exc.strerror or str(exc)) from None


def _in_transaction(con, work) -> None:
    con.execute("BEGIN")
    try:
        work()
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")

