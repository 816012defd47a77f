"""The published catalog: many processes read at once, kill -9 never loses or doubles a record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pexpect
import pyarrow as pa
import pytest

import florsql
from conftest import make_repo, run_script
from florsql.engine.errors import IngestWarning

SCRIPT = """
import flor
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(20)):
        flor.log("loss", epoch * 100 + step + 0.5)
    flor.log("acc", float(epoch))
"""
LOSSES_PER_RUN = 60
SLOW = SCRIPT.replace("+ 0.5)", "+ 0.5)\n        __import__('time').sleep(0.02)")
COUNTS = "SELECT count(*) FROM logs WHERE value_name = 'loss'"
DUPLICATES = ("SELECT count(*) FROM (SELECT tstamp, ctx_id, value_name, ord, source FROM logs "
              "GROUP BY ALL HAVING count(*) > 1)")
ANSWER_SECONDS = 30  # wide: a 2-core CI machine under load; waiting on a lock would be forever


def _query(repo: Path, sql: str, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "florsql.cli", "-c", sql, str(repo),
                           "--format", "csv"], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=ANSWER_SECONDS * 4)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _manifest(repo: Path) -> dict:
    return json.loads((repo / ".flor" / "catalog" / "manifest.json").read_text())


def _one(repo: Path, sql: str) -> int:
    with florsql.connect(repo) as conn:
        return conn.execute(sql).fetchone()[0]


def test_a_shell_a_connection_in_another_process_a_cli_query_and_a_run_all_answer_at_once(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "first")
    held = florsql.connect(repo)  # held open all along, as a notebook would
    assert held.execute(COUNTS).fetchone()[0] == LOSSES_PER_RUN
    shell = pexpect.spawn(sys.executable, ["-m", "florsql.cli", str(repo)], encoding="utf-8",
                          timeout=ANSWER_SECONDS, env={**os.environ, "TERM": "dumb"})
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, florsql
            conn = florsql.connect({str(repo)!r})
            print(conn.execute("{COUNTS}").fetchone()[0], flush=True)
            sys.stdin.readline()  # stays open until told
            print(conn.execute("{COUNTS}").fetchone()[0], flush=True)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        shell.sendline("SELECT count(*) AS n_runs FROM runs;")
        shell.expect(r"n_runs")
        shell.expect(r"\b1\b")
        assert other.stdout.readline().strip() == str(LOSSES_PER_RUN)
        start = time.monotonic()
        assert _query(repo, COUNTS).stdout.splitlines()[1] == str(LOSSES_PER_RUN)
        run_script(repo, "train.py", "--flor", "second")  # records while all of them are open
        assert time.monotonic() - start < ANSWER_SECONDS * 3
        # every reader sees the new run at its next query (read your writes)
        assert held.execute(COUNTS).fetchone()[0] == 2 * LOSSES_PER_RUN
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == str(2 * LOSSES_PER_RUN)
        shell.sendline("SELECT count(*) AS n_runs FROM runs;")
        shell.expect(r"n_runs")
        shell.expect(r"\b2\b")
    finally:
        shell.sendline(".quit")
        shell.close(force=True)
        other.kill()
        other.wait()
        held.close()


READER = """
import json, sys, time, florsql
repo, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
conn = florsql.connect(repo)
seen, errors, answers = {}, [], 0
def check():
    global answers
    rows = conn.execute("SELECT runid, count(*) FROM logs JOIN runs USING (tstamp) "
                        "WHERE value_name = 'loss' GROUP BY runid").fetchall()
    dupes = conn.execute(sys.argv[4]).fetchone()[0]
    answers += 1
    if dupes:
        errors.append(f"{dupes} duplicated records")
    for runid, n in rows:
        if n < seen.get(runid, 0):
            errors.append(f"{runid}: {n} records after {seen[runid]}")
        seen[runid] = n
while True:
    done = __import__("os").path.exists(stop)
    try:
        check()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    if done:
        break
    open(out + ".ready", "w").close()
    time.sleep(0.05)
json.dump({"seen": seen, "errors": errors, "answers": answers}, open(out, "w"))
"""


def test_eight_readers_while_four_runs_record_see_consistent_counts_and_end_exact(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SLOW.replace("0.02", "0.05")})
    (tmp_path / "reader.py").write_text(READER)
    stop = tmp_path / "stop"
    env = {**os.environ, "FLOR_FLUSH_SECONDS": "0.2"}
    run_script(repo, "train.py", "--flor", "r0")  # readers start on a project with a run
    readers = [subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(repo),
                                 str(stop), str(tmp_path / f"reader{i}.json"), DUPLICATES],
                                env=env) for i in range(8)]
    _wait_until(lambda: all((tmp_path / f"reader{i}.json.ready").exists() for i in range(8)))
    runs = [subprocess.Popen([sys.executable, "train.py", "--flor", f"r{i}"], cwd=repo, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(1, 5)]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    stop.touch()  # each reader answers once more after every run has ended, then stops
    for reader in readers:
        assert reader.wait(timeout=300) == 0
    for i in range(8):
        result = json.loads((tmp_path / f"reader{i}.json").read_text())
        assert result["errors"] == []
        assert result["answers"] >= 3  # before, while and after the runs record
        assert result["seen"] == {f"r{k}": LOSSES_PER_RUN for k in range(5)}


@pytest.mark.parametrize("point", ["segments-written", "state-written", "published"])
def test_kill_9_while_publishing_loses_and_doubles_nothing(tmp_path: Path, point: str) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a")
    assert _one(repo, COUNTS) == LOSSES_PER_RUN
    run_script(repo, "train.py", "--flor", "b")
    crashed = _query(repo, COUNTS, env={"FLORSQL_CRASH_AT": point}, check=False)
    assert crashed.returncode == -9
    _assert_whole(repo, runs=2)


def test_kill_9_during_compaction_loses_and_doubles_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    for name in "abc":
        run_script(repo, "train.py", "--flor", name)
        _query(repo, COUNTS)  # one publish per run: one segment each
    held = florsql.connect(repo)  # loaded the three segments, and must follow the merge
    assert held.execute(COUNTS).fetchone()[0] == 3 * LOSSES_PER_RUN
    run_script(repo, "train.py", "--flor", "d")
    crashed = _query(repo, COUNTS, env={"FLORSQL_CRASH_AT": "compacted",
                                        "FLORSQL_COMPACT_AT": "3"}, check=False)
    assert crashed.returncode == -9
    # run d was published before the merge began; the merge itself left nothing behind
    assert len(_manifest(repo)["segments"]["_logs"]) == 4
    _assert_whole(repo, runs=4)
    _query(repo, COUNTS, env={"FLORSQL_COMPACT_AT": "3"})
    run_script(repo, "train.py", "--flor", "e")
    _query(repo, COUNTS, env={"FLORSQL_COMPACT_AT": "3", "FLORSQL_GC_GRACE": "0"})
    assert len(_manifest(repo)["segments"]["_logs"]) < 5  # merged this time
    _assert_whole(repo, runs=5)
    with held:
        assert held.execute(COUNTS).fetchone()[0] == 5 * LOSSES_PER_RUN
        assert held.execute(DUPLICATES).fetchone()[0] == 0


def _wait_until(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _assert_whole(repo: Path, runs: int) -> None:
    """The next query works, every record is there once, and every named file is whole."""
    with florsql.connect(repo) as conn:
        assert conn.execute(COUNTS).fetchone()[0] == runs * LOSSES_PER_RUN
        assert conn.execute(DUPLICATES).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == runs
    catalog = repo / ".flor" / "catalog"
    manifest = _manifest(repo)
    for segments in manifest["segments"].values():
        for _, name, rows in segments:
            with pa.ipc.open_stream(catalog / name) as stream:  # an Arrow IPC stream, whole
                assert sum(batch.num_rows for batch in stream) == rows
    assert not list(catalog.glob(".*.tmp")) or all(
        p.name not in json.dumps(manifest) for p in catalog.glob(".*.tmp"))


def test_a_deleted_run_leaves_a_connection_opened_before(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "keep")
    run_script(repo, "train.py", "--flor", "gone")
    with florsql.connect(repo) as held:
        assert held.execute(COUNTS).fetchone()[0] == 2 * LOSSES_PER_RUN
        run_dir = held.execute("SELECT run_dir FROM runs WHERE runid = 'gone'").fetchone()[0]
        shutil.rmtree(run_dir)
        _query(repo, COUNTS)  # another process ingests the deletion and publishes a tombstone
        assert held.execute(COUNTS).fetchone()[0] == LOSSES_PER_RUN
        assert held.execute("SELECT runid FROM runs").fetchall() == [("keep",)]
    assert _manifest(repo)["tombstones"]


def test_a_removed_part_takes_its_rows_from_every_reader(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SLOW})  # a part per epoch
    run_script(repo, "train.py")
    with florsql.connect(repo) as held:
        assert held.execute(COUNTS).fetchone()[0] == LOSSES_PER_RUN
        parts = sorted((repo / ".flor" / "runs").glob("*/parts/*.part"))
        parts[0].unlink()  # its rows must leave; the rest of the run is rebuilt once
        assert _one(repo, DUPLICATES) == 0
        remaining = held.execute(COUNTS).fetchone()[0]
        assert 0 < remaining < LOSSES_PER_RUN
        assert held.execute(DUPLICATES).fetchone()[0] == 0


def test_an_old_single_file_catalog_is_removed_with_a_notice(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    old = repo / ".flor" / "catalog.duckdb"
    old.write_bytes(b"a catalog of florsql 0.5")
    (repo / ".flor" / "catalog.duckdb.wal").write_bytes(b"wal")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _one(repo, COUNTS) == LOSSES_PER_RUN
    assert any(issubclass(w.category, IngestWarning) and "removed the old single-file catalog"
               in str(w.message) for w in caught)
    assert not old.exists() and not (repo / ".flor" / "catalog.duckdb.wal").exists()


def test_a_catalog_that_cannot_be_written_is_still_queried(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    (repo / ".flor" / "catalog").write_text("not a directory")  # publishing fails, even as root
    with pytest.warns(IngestWarning, match="ingests the record files for itself"):
        assert _one(repo, COUNTS) == LOSSES_PER_RUN
    with pytest.warns(IngestWarning):  # and again, by a new connection
        assert _one(repo, COUNTS) == LOSSES_PER_RUN


BIG = """
import flor
for epoch in flor.loop("epoch", range(4)):
    for step in flor.loop("step", range(25_000)):
        flor.log("loss", step * 0.5)
"""


def test_kill_9_at_random_moments_of_a_large_ingest_keeps_the_catalog_whole(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": BIG})
    run_script(repo, "train.py", "--flor", "big")
    ingest = [sys.executable, "-m", "florsql.cli", "-c", COUNTS, str(repo)]
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5):  # from interpreter start to inside the publish
        proc = subprocess.Popen(ingest, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        with florsql.connect(repo) as conn:  # whatever the kill left, the next query is right
            assert conn.execute(COUNTS).fetchone()[0] == 100_000
            assert conn.execute(DUPLICATES).fetchone()[0] == 0
        shutil.rmtree(repo / ".flor" / "catalog")  # the next kill meets an ingest again


def test_a_damaged_segment_is_left_out_and_the_catalog_rebuilt_from_the_records(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    assert _one(repo, COUNTS) == LOSSES_PER_RUN
    before = _manifest(repo)
    damaged = before["segments"]["_logs"][0][1]
    (repo / ".flor" / "catalog" / damaged).write_bytes(b"PAR1 not really parquet PAR1")
    with pytest.warns(IngestWarning, match="catalog in .* is unreadable .*rebuilding"):
        with florsql.connect(repo) as conn:
            assert conn.execute(COUNTS).fetchone()[0] == LOSSES_PER_RUN
            assert conn.execute(DUPLICATES).fetchone()[0] == 0
    after = _manifest(repo)
    assert after["version"] > before["version"]
    assert damaged not in json.dumps(after["segments"])
    assert _one(repo, COUNTS) == LOSSES_PER_RUN  # and a new connection reads the new one


def test_an_ingest_stopped_part_way_never_doubles_what_another_process_publishes(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    for name in "ab":
        run_script(repo, "train.py", "--flor", name)
    conn = florsql.connect(repo)
    try:
        def ctrl_c_after_the_first_run(rows: int) -> None:
            raise KeyboardInterrupt

        conn.session.mirror.added = ctrl_c_after_the_first_run  # run a committed, b not yet
        with pytest.raises(KeyboardInterrupt):
            conn.execute(COUNTS)
        del conn.session.mirror.added
        assert _query(repo, COUNTS).stdout.splitlines()[1] == str(2 * LOSSES_PER_RUN)
        assert conn.execute(COUNTS).fetchone()[0] == 2 * LOSSES_PER_RUN
        assert conn.execute(DUPLICATES).fetchone()[0] == 0
    finally:
        conn.close()


ALL_ROWS = {t: f"SELECT * FROM {t} ORDER BY ALL" for t in ("logs", "contexts", "iterations")}


def _rows(conn: florsql.Connection) -> dict[str, list[tuple]]:
    return {table: conn.execute(sql).fetchall() for table, sql in ALL_ROWS.items()}


def _leftovers(repo: Path) -> list[str]:
    """Temporary files in the catalog directory (a sink or a publish that kept its litter)."""
    return [p.name for p in (repo / ".flor" / "catalog").iterdir() if p.name.startswith(".")
            and p.name != ".gitignore"]


def test_published_segments_hold_exactly_the_rows_the_ingest_inserted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a")
    run_script(repo, "train.py", "--flor", "b")
    with florsql.connect(repo) as ingested:  # writes the segments as it inserts (sink.py)
        mine = _rows(ingested)
    segments = [p.name for p in (repo / ".flor" / "catalog").glob("seg-*")]
    assert len(segments) == 3 and all(name.endswith(".arrow") for name in segments)
    with florsql.connect(repo) as loaded:  # from the segments alone
        assert _rows(loaded) == mine
    assert len(mine["logs"]) == 2 * (LOSSES_PER_RUN + 3) and _leftovers(repo) == []


def test_rows_an_ingest_drops_again_stay_out_of_its_segment(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a")
    original = next((repo / ".flor" / "runs").iterdir())
    # a copy that sorts first is ingested, then gives the tstamp back to the original, which
    # is named after it: its rows are inserted and removed within one ingest
    shutil.copytree(original, original.parent / "00000000-copy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with florsql.connect(repo) as ingested:
            mine = _rows(ingested)
    assert any("00000000-copy" in str(w.message) for w in caught)
    with florsql.connect(repo) as loaded:
        assert _rows(loaded) == mine
    assert len(mine["logs"]) == LOSSES_PER_RUN + 3 and _leftovers(repo) == []


def _as_parquet(segment: Path, rows: pa.Table) -> str:
    import pyarrow.parquet as pq

    pq.write_table(rows, segment.with_suffix(".parquet"))
    segment.unlink()
    return segment.with_suffix(".parquet").name


def _as_plain_stream(segment: Path, rows: pa.Table) -> str:
    with pa.ipc.new_stream(segment, rows.schema) as stream:
        stream.write_table(rows)
    return segment.name


@pytest.mark.parametrize("write", [_as_parquet, _as_plain_stream], ids=["parquet", "arrow"])
def test_segments_an_older_version_wrote_with_plain_values_still_load(
        tmp_path: Path, write) -> None:
    """Catalogs of format 1: Parquet segments, or Arrow streams with BIGINTs as they are."""
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a")
    with florsql.connect(repo) as ingested:
        mine = _rows(ingested)
    catalog = repo / ".flor" / "catalog"
    manifest = _manifest(repo)
    for table, segments in manifest["segments"].items():
        for segment in segments:
            stored = pa.ipc.open_stream(catalog / segment[1]).read_all()
            plain = _plain_rows(catalog / segment[1])
            if table == "_logs":  # the file held steps, not the values
                assert plain.column("ord").to_pylist() != stored.column("ord").to_pylist()
            segment[1] = write(catalog / segment[1], plain)
    manifest["format"] = "florsql-catalog/1"
    (catalog / "manifest.json").write_text(json.dumps(manifest))
    with florsql.connect(repo) as loaded:
        assert _rows(loaded) == mine
    assert _manifest(repo)["format"] == "florsql-catalog/1"  # read, not rebuilt


def _plain_rows(segment: Path) -> pa.Table:
    """A segment's rows as an older version stored them: BIGINT columns as they are."""
    from florsql.engine.catalog.codec import decode_batch

    with pa.ipc.open_stream(segment) as stream:
        return pa.Table.from_batches([decode_batch(b) for b in stream])


def test_a_segment_writer_that_fails_leaves_the_rows_to_the_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from florsql.engine.catalog import sink

    def broken(self, table, rows):
        raise ValueError("a fault injected into the segment writer")

    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a")
    monkeypatch.setattr(sink.SegmentSink, "_append", broken)
    with florsql.connect(repo) as ingested:
        mine = _rows(ingested)
    monkeypatch.undo()
    with florsql.connect(repo) as loaded:  # what the export published instead
        assert _rows(loaded) == mine
    assert len(mine["logs"]) == LOSSES_PER_RUN + 3 and _leftovers(repo) == []


def test_an_ingest_of_a_row_group_or_more_leaves_its_rows_compressed(tmp_path: Path) -> None:
    # compressed rows take ~20x less memory and are quicker to filter by name
    big = ("import flor\nfor step in flor.loop('step', range(130_000)):\n"
           "    flor.log('loss', step * 0.5)\n")
    small = big.replace("130_000", "1_000")
    repo = make_repo(tmp_path / "proj", {"train.py": small, "big.py": big})
    run_script(repo, "train.py")
    sql = ("SELECT DISTINCT compression FROM pragma_storage_info('_log_rows') "
           "WHERE column_name = 'value_name' AND segment_type = 'VARCHAR'")
    with florsql.connect(repo) as conn:
        conn.refresh()
        assert ("Uncompressed",) in conn.session.con.execute(sql).fetchall()  # a few rows wait
        run_script(repo, "big.py")
        conn.refresh()
        assert conn.execute(COUNTS).fetchone()[0] == 131_000  # at once, from the tail or not
        conn.session.mirror.quiesce()  # the fold into DuckDB's table, and its compression
        assert ("Uncompressed",) not in conn.session.con.execute(sql).fetchall()
        assert conn.execute(COUNTS).fetchone()[0] == 131_000
