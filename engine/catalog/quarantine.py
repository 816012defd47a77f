"""The catalog's record of the files it took rows from, and of the ones it quarantined.

Every file ingest uses or skips has a row in `_ingested` (its size and mtime as seen): a
quarantined file is warned about once, when it is first seen in that state, and read again
only when it changes. `drop_run` removes a run's rows so they can be rebuilt from its files.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa

from flor import protocol

from .rows import insert_arrow
from .sources import FileState, Listed, Scan, load_file_states, relative
from .validate import RecordFileError, checkpoint_entry, clean_text, load_json

# `_log_rows` and the live pieces of the tail (tail.py) hold `_logs`
_RUN_TABLES = ("runs", "_log_rows", "_tail_pieces", "_contexts", "checkpoints", "_iterations",
               "replays", "_name_stats", "_loop_stats")
_INGESTED = ("path", "dir", "run_dir", "kind", "size", "mtime", "status", "message")


class Quarantine:
    """Quarantines the bad files of one run (`run_rel`) and collects the new warnings."""

    def __init__(self, con: duckdb.DuckDBPyConnection, home: Path, run_rel: str) -> None:
        self.con, self.home, self.run_rel = con, home, run_rel
        self.new_warnings: list[str] = []
        self._touched: set[str] = set()  # sources with a quarantine record written

    def source(self, run_dir: Path, problem: str | None, previous: str | None) -> None:
        """run.json is unusable (`problem`) or not written yet (None): the run has no rows."""
        drop_run(self.con, self.run_rel, previous, keep_quarantined=True)
        if problem is None:
            self.con.execute("DELETE FROM _ingested WHERE path = ?", [f"{self.run_rel}/run.json"])
        else:
            self._put_file(run_dir / protocol.RUN_IDENT_FILE, "ident", problem,
                           f"skipped run {self.run_rel}: {self.run_rel}/run.json is unusable "
                           f"({problem}); the other runs are unaffected: fix or restore that "
                           "file, or delete the run directory")
        self._unsealed(self.run_rel, None, None)

    def duplicate(self, loser: Path, winner: str, tstamp: str, previous: str | None) -> None:
        """Run directory `loser` claims the tstamp `winner` keeps: it is left out."""
        rel = relative(loser, self.home)
        drop_run(self.con, rel, previous, keep_quarantined=True)
        message = f"has the tstamp {tstamp} of run {winner}"
        self._put_file(loser / protocol.RUN_IDENT_FILE, "ident", message,
                       f"skipped run {rel}: {rel}/run.json {message}, and two runs never merge; "
                       f"{winner} keeps it: give {rel}/run.json its own tstamp (its directory "
                       "name) or delete that directory", run_rel=rel)
        self._unsealed(rel, None, None, run_rel=rel)

    def replay(self, scan: Scan, tstamp: str) -> None:
        """replay.json is unusable or not written yet: that replay has no rows."""
        if scan.ident_problem is not None:
            self._put(scan, f"{scan.rel}/{protocol.REPLAY_IDENT_FILE}", "ident",
                      _stat(scan.src / protocol.REPLAY_IDENT_FILE),
                      scan.ident_problem,
                      f"skipped replay {scan.rel}: {scan.rel}/replay.json is unusable "
                      f"({scan.ident_problem}); the run's other records are unaffected: "
                      "delete that replay directory")
        self._unsealed(scan.rel, tstamp, scan.signature)

    def settle_files(self, scan: Scan) -> None:
        """Forget quarantined files that are fine or gone now; quarantine a bad end.json (left
        out: the run's status then comes from its process, as if it had none)."""
        fixed = [rel for rel, s in scan.known.items() if s.status != "ok" and (
            (s.kind == "ident") or (s.kind == "end" and scan.end_problem is None)
            or (s.kind == "part" and rel not in scan.parts))]
        for rel in fixed:
            self.con.execute("DELETE FROM _ingested WHERE path = ?", [rel])
        rel = f"{scan.rel}/end.json"
        if scan.end_problem is None:
            return
        self._put(scan, rel, "end", _stat(scan.src / protocol.END_FILE), scan.end_problem,
                  f"skipped {rel}: unusable ({scan.end_problem}); the run shows as running or "
                  "killed instead of its end status: fix or delete that file")

    def part(self, scan: Scan, rel: str, item: Listed, reason: str) -> None:
        self._put(scan, rel, "part", (item.size, item.mtime), reason,
                  f"skipped corrupt record part {rel} ({reason}); other records are "
                  "unaffected: restore or delete that file")

    def checkpoint(self, scan: Scan, rel: str, item: Listed, reason: str) -> None:
        self._put(scan, rel, "ckpt", (item.size, item.mtime), reason,
                  f"skipped checkpoint entry {rel} ({reason}); replays start from another "
                  "checkpoint: fix or delete that file")

    def run_failed(self, run_dir: Path, reason: str) -> None:
        """Last resort, after a rollback: a run whose files passed every check but could not
        be stored. Its earlier rows stay; it is tried again at every ingest."""
        self.new_warnings.clear()  # those files' records were rolled back with the run
        self._put_file(run_dir / protocol.RUN_IDENT_FILE, "ident", reason,
                       f"skipped run {self.run_rel}: could not ingest it ({reason}); the other "
                       "runs are unaffected: please report this with that run directory")
        self.con.execute("UPDATE _sources SET sealed = false WHERE run_dir = ?", [self.run_rel])
        if not self.con.execute("SELECT count(*) FROM _sources WHERE dir = ?",
                                [self.run_rel]).fetchone()[0]:
            self._unsealed(self.run_rel, None, None)

    def holds(self, scan: Scan) -> bool:
        """Whether a file of that source is quarantined (then it is never sealed)."""
        if scan.rel not in self._touched and all(s.status == "ok" for s in scan.known.values()):
            return False  # the common case, without a query
        return bool(self.con.execute("SELECT count(*) FROM _ingested WHERE dir = ? AND "
                                     "status <> 'ok'", [scan.rel]).fetchone()[0])

    def _put_file(self, path: Path, kind: str, message: str, warning: str,
                  run_rel: str | None = None) -> None:
        dir_rel = relative(path.parent, self.home)
        rel = relative(path, self.home)
        known = load_file_states(self.con, dir_rel).get(rel)
        self._record(dir_rel, rel, kind, _stat(path), message, known, warning,
                     run_rel or self.run_rel)

    def _put(self, scan: Scan, rel: str, kind: str, stat: tuple, message: str,
             warning: str) -> None:
        self._record(scan.rel, rel, kind, stat, message, scan.known.get(rel), warning,
                     scan.run_rel)

    def _record(self, dir_rel: str, rel: str, kind: str, stat: tuple, message: str,
                known: FileState | None, warning: str, run_rel: str) -> None:
        self._touched.add(dir_rel)
        if known != FileState(kind, *stat, "quarantined", message):
            self.new_warnings.append(warning)  # first seen in this state: warn once
        self.con.execute("INSERT OR REPLACE INTO _ingested VALUES (?, ?, ?, ?, ?, ?, "
                         "'quarantined', ?)", [rel, dir_rel, run_rel, kind, *stat, message])

    def _unsealed(self, dir_rel: str, tstamp: str | None, sig: str | None,
                  run_rel: str | None = None) -> None:
        self.con.execute("INSERT OR REPLACE INTO _sources VALUES (?, ?, CAST(? AS TIMESTAMP), "
                         "false, ?)", [dir_rel, run_rel or self.run_rel, tstamp, sig])


def sync_checkpoints(con: duckdb.DuckDBPyConnection, scan: Scan, tstamp: str,
                     quarantine: Quarantine) -> bool:
    """Make the run's checkpoint rows equal its entries in ckpt/; whether any entry changed."""
    if not scan.checkpoints_changed():
        return False
    con.execute("DELETE FROM checkpoints WHERE tstamp = CAST(? AS TIMESTAMP)", [tstamp])
    con.execute("DELETE FROM _ingested WHERE dir = ? AND kind = 'ckpt'", [scan.rel])
    rows, ok = [], []
    for rel, item in sorted(scan.ckpts.items()):
        try:
            entry = checkpoint_entry(load_json(item.path))
        except FileNotFoundError:
            continue  # pruned (FLOR_CHECKPOINT_KEEP) since the listing
        except RecordFileError as exc:
            quarantine.checkpoint(scan, rel, item, str(exc))
            continue
        path = clean_text(str(item.path.parent / entry["file"]))
        rows.append([tstamp, entry["loop"], entry["iteration"], path, entry["bytes"],
                     entry["seconds"], entry["blocked_seconds"], entry["time"]])
        ok.append((rel, item))
    if rows:
        con.executemany("INSERT INTO checkpoints VALUES (CAST(? AS TIMESTAMP), ?, ?, ?, ?, ?, "
                        "?, to_timestamp(?))", rows)
    record_ok(con, scan, "ckpt", ok)
    return True


def record_ok(con: duckdb.DuckDBPyConnection, scan: Scan, kind: str,
              items: list[tuple[str, Listed]]) -> None:
    """Record files whose rows were stored, in one statement."""
    if not items:
        return
    n = len(items)
    again = [rel for rel, _ in items if rel in scan.known]  # quarantined before, fixed now
    if again:
        con.execute("DELETE FROM _ingested WHERE list_contains(?, path)", [again])
    batch = pa.table({"path": [rel for rel, _ in items], "dir": [scan.rel] * n,
                      "run_dir": [scan.run_rel] * n, "kind": [kind] * n,
                      "size": [i.size for _, i in items], "mtime": [i.mtime for _, i in items],
                      "status": ["ok"] * n, "message": pa.nulls(n, pa.string())})
    insert_arrow(con, batch, f"INSERT INTO _ingested SELECT {', '.join(_INGESTED)} FROM {{}}",
                 [])


def drop_run(con: duckdb.DuckDBPyConnection, run_rel: str, tstamp: str | None,
             keep_quarantined: bool) -> None:
    """Remove a run's rows (of every source under it), to rebuild them or because it is gone.
    Quarantine records may stay, so that files still bad are not warned about again."""
    if tstamp is not None:
        for table in _RUN_TABLES:
            con.execute(f"DELETE FROM {table} WHERE tstamp = CAST(? AS TIMESTAMP)", [tstamp])
        # published segments still hold its rows: the next publish tombstones them (store.py);
        # its statistics start again from the rows ingested anew (name_stats.py)
        con.execute("INSERT INTO _dropped VALUES (CAST(? AS TIMESTAMP))", [tstamp])
    keep = " AND status = 'ok'" if keep_quarantined else ""
    con.execute(f"DELETE FROM _ingested WHERE run_dir = ?{keep}", [run_rel])
    con.execute("DELETE FROM _sources WHERE run_dir = ?", [run_rel])


def _stat(path: Path) -> tuple[int | None, int | None]:
    try:
        stat = os.stat(path)
    except OSError:
        return None, None
    return stat.st_size, stat.st_mtime_ns
