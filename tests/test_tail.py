"""The tail: an ingest's `_logs` rows are answered from its Arrow tables until a fold moves them
into DuckDB's table (engine/catalog/tail.py). Every statement sees each record exactly once,
before, during and after the fold, on connections made at any of those moments."""

from __future__ import annotations

import warnings
from pathlib import Path

import duckdb
import pytest

import florsql
from conftest import make_repo, run_script
from florsql.engine.catalog import ingest, mirror, tail
from florsql.engine.errors import IngestWarning

SCRIPT = """
import flor
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(40)):
        flor.log("loss", epoch * 100 + step + 0.5)
    flor.log("acc", float(epoch))
"""
RECORDS = 3 * 40 + 3  # per run
COUNT = "SELECT count(*) FROM logs"
CURVE = "SELECT runid, epoch, step, loss, acc FROM history ORDER BY runid, epoch, step"
IN_ROWS = "SELECT count(*) FROM _log_rows"
VIEW = "SELECT sql FROM duckdb_views() WHERE view_name = '_logs'"
STORAGE = ("SELECT DISTINCT compression FROM pragma_storage_info('_log_rows') "
           "WHERE column_name = 'value_name' AND segment_type = 'VARCHAR'")


@pytest.fixture
def held_folds(monkeypatch: pytest.MonkeyPatch) -> list[tail.Fold]:
    """Folds the mirror starts are kept here, not started: the test starts them."""
    held: list[tail.Fold] = []
    monkeypatch.setattr(tail.Fold, "start", lambda fold: held.append(fold))
    monkeypatch.setattr(mirror, "SETTLE_ROWS", 1)  # fold these small runs in a thread too
    return held


START = tail.Fold.start  # the real one, which held_folds replaces


def _run_fold(fold: tail.Fold) -> None:
    START(fold)
    fold.wait()


def _two_runs(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    for name in ("first", "second"):
        run_script(repo, "train.py", "--flor", name)
    return repo


def _oracle(repo: Path) -> list[tuple]:
    """What a connection that never held a tail answers: it loads the published segments."""
    with florsql.connect(repo) as conn:
        return conn.execute(CURVE).fetchall()


def test_an_ingest_answers_from_its_tail_before_duckdb_holds_a_row_of_it(
        tmp_path: Path, held_folds: list[tail.Fold]) -> None:
    repo = _two_runs(tmp_path)
    with florsql.connect(repo) as conn:
        conn.refresh()
        session = conn.session
        assert len(held_folds) == 1 and session.mirror.tail.rows == 2 * RECORDS
        assert session.con.execute(IN_ROWS).fetchone()[0] == 0
        assert "_log_tail" in session.con.execute(VIEW).fetchone()[0]
        answer = conn.execute(CURVE).fetchall()
        assert conn.execute(COUNT).fetchone()[0] == 2 * RECORDS
        assert answer == _oracle(repo) and len(answer) == 2 * 3 * 40
        _run_fold(held_folds[0])
        assert held_folds[0].error is None and held_folds[0].compressed
        assert conn.execute(CURVE).fetchall() == answer  # its next statement reaps the fold
        assert session.mirror.tail.rows == 0
        assert session.con.execute(IN_ROWS).fetchone()[0] == 2 * RECORDS
        assert "_log_tail" not in session.con.execute(VIEW).fetchone()[0]  # no union left


def test_a_connection_made_before_the_fold_counts_each_record_once_after_it(
        tmp_path: Path, held_folds: list[tail.Fold]) -> None:
    repo = _two_runs(tmp_path)
    with florsql.connect(repo) as conn:
        conn.refresh()
        early = conn.session.cursor()  # reads the tail registered on it
        assert early.execute("SELECT count(*) FROM _log_tail").fetchone()[0] == 2 * RECORDS
        _run_fold(held_folds[0])
        # its tail still holds the rows, now in `_log_rows` too: after the fold `_logs` is
        # `_log_rows` alone (and `_tail_pieces` would leave them out anyway)
        assert early.execute("SELECT count(*) FROM _log_tail").fetchone()[0] == 2 * RECORDS
        assert early.execute(COUNT).fetchone()[0] == 2 * RECORDS
        assert early.execute(IN_ROWS).fetchone()[0] == 2 * RECORDS
        assert conn.execute(COUNT).fetchone()[0] == 2 * RECORDS


def test_queries_while_a_fold_runs_count_every_record_once(
        tmp_path: Path, held_folds: list[tail.Fold]) -> None:
    repo = _two_runs(tmp_path)
    with florsql.connect(repo) as conn:
        conn.refresh()
        session = conn.session
        cursors = [session.cursor() for _ in range(3)]
        fold = held_folds[0]
        START(fold)
        counts = []
        while not fold.done():
            cursors.append(session.mirror._new_cursor())  # made at any moment of the fold
            counts += [c.execute(COUNT).fetchone()[0] for c in cursors[-4:]]
        counts += [c.execute(COUNT).fetchone()[0] for c in cursors]
        assert counts and set(counts) == {2 * RECORDS}


def test_a_run_rolled_back_after_its_rows_reached_the_tail_leaves_none_of_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _two_runs(tmp_path)
    real = ingest.sync_checkpoints
    calls = []

    def second_run_fails(con, scan, tstamp, quarantine):
        calls.append(tstamp)
        if tstamp != calls[0]:  # after its parts were ingested, before its transaction commits
            raise RuntimeError("injected")  # (a failed run is tried again at every ingest)
        return real(con, scan, tstamp, quarantine)

    monkeypatch.setattr(ingest, "sync_checkpoints", second_run_fails)
    with florsql.connect(repo) as conn, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn.refresh()
        assert any(issubclass(w.category, IngestWarning) and "injected" in str(w.message)
                   for w in caught)
        assert conn.execute("SELECT count(DISTINCT tstamp) FROM logs").fetchone()[0] == 1
        assert conn.execute(COUNT).fetchone()[0] == RECORDS
        conn.session.mirror.quiesce()
        assert conn.execute(COUNT).fetchone()[0] == RECORDS
    with florsql.connect(repo) as other:  # the published segment lacks them too
        assert other.session.con.execute(IN_ROWS).fetchone()[0] == RECORDS


def test_a_backlog_longer_than_the_tail_goes_into_duckdb_as_it_is_ingested(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _two_runs(tmp_path)
    run_script(repo, "train.py", "--flor", "third")
    monkeypatch.setattr(tail, "TAIL_ROWS", RECORDS + 1)  # the second run fills it
    with florsql.connect(repo) as conn:
        conn.refresh()
        session = conn.session
        assert session.mirror.tail.rows == 0  # folded between runs; the third went straight in
        assert session.con.execute(IN_ROWS).fetchone()[0] == 3 * RECORDS
        answer = conn.execute(CURVE).fetchall()
    assert answer == _oracle(repo) and len(answer) == 3 * 3 * 40


def test_runs_ingested_one_refresh_after_another_count_each_record_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror, "SETTLE_ROWS", 1)  # each increment folds in a thread
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "first")
    with florsql.connect(repo) as conn:
        counts = [conn.execute(COUNT).fetchone()[0]]
        for name in ("second", "third"):
            run_script(repo, "train.py", "--flor", name)
            counts.append(conn.execute(COUNT).fetchone()[0])  # a fold may still run
        conn.session.mirror.quiesce()
        counts.append(conn.execute(COUNT).fetchone()[0])
        assert counts == [RECORDS, 2 * RECORDS, 3 * RECORDS, 3 * RECORDS]
        assert conn.execute(CURVE).fetchall() == _oracle(repo)


def test_closing_a_connection_stops_its_fold_and_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _two_runs(tmp_path)
    started: list[tail.Fold] = []

    def start(fold: tail.Fold) -> None:
        started.append(fold)
        START(fold)

    monkeypatch.setattr(tail.Fold, "start", start)
    monkeypatch.setattr(tail, "FOLD_DELAY_S", 60.0)  # still waiting when the connection closes
    monkeypatch.setattr(mirror, "SETTLE_ROWS", 1)
    conn = florsql.connect(repo)
    conn.refresh()
    conn.close()  # a fold is pointless now: its rows are published, the copy goes away
    assert len(started) == 1 and started[0].done() and not started[0].compressed
    assert isinstance(started[0].error, duckdb.InterruptException)
    with florsql.connect(repo) as other:
        assert other.execute(CURVE).fetchall() == _oracle(repo)
        assert other.execute(COUNT).fetchone()[0] == 2 * RECORDS


def test_a_segment_is_published_from_the_ingest_s_own_files_when_the_tail_holds_its_rows(
        tmp_path: Path, held_folds: list[tail.Fold], monkeypatch: pytest.MonkeyPatch) -> None:
    """The publish counts the rows the mirror holds for the segment (the tail's from
    `_tail_pieces`) and, when they equal what the sink wrote, never exports them again."""
    from florsql.engine.catalog import store

    def exported(*args: object) -> None:
        raise AssertionError("the rows were exported, not taken from the sink's files")

    repo = _two_runs(tmp_path)
    monkeypatch.setattr(store.Store, "_write_segment", exported)
    with florsql.connect(repo) as conn:
        conn.refresh()
        assert conn.session.mirror.tail.rows == 2 * RECORDS  # still in the tail
        assert conn.execute(COUNT).fetchone()[0] == 2 * RECORDS
    monkeypatch.undo()
    with florsql.connect(repo) as loaded:  # from the published segments alone
        assert loaded.execute(COUNT).fetchone()[0] == 2 * RECORDS


def test_a_new_connection_answers_before_the_rows_it_loaded_are_compressed(
        tmp_path: Path, held_folds: list[tail.Fold]) -> None:
    """A load appends the published rows to DuckDB's table; a fold of no tail piece compresses
    them on a thread while the connection already answers (~1 s per 1M records sooner)."""
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT.replace("range(40)", "range(50_000)")})
    run_script(repo, "train.py", "--flor", "big")
    records = 3 * 50_000 + 3
    with florsql.connect(repo) as first:  # ingests and publishes
        first.refresh()
    held_folds.clear()
    with florsql.connect(repo) as conn:  # loads the published segments
        conn.refresh()
        assert len(held_folds) == 1 and held_folds[0].pieces == []
        con = conn.session.con
        assert ("Uncompressed",) in con.execute(STORAGE).fetchall()
        assert conn.execute(COUNT).fetchone()[0] == records  # answers meanwhile
        _run_fold(held_folds[0])
        assert held_folds[0].error is None and held_folds[0].compressed
        assert ("Uncompressed",) not in con.execute(STORAGE).fetchall()
        assert conn.execute(COUNT).fetchone()[0] == records
