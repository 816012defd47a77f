"""A DB-API 2.0 (PEP 249) compliance suite in the spirit of Stuart Bishop's dbapi20.py.

dbapi20 creates tables and inserts rows to have something to fetch. florsql refuses writes (its
catalog is rebuilt from the record files), so the fetch tests read VALUES lists, range() and the
catalog of real recorded runs, and every dbapi20 test that writes has a counterpart here that
asserts the write is refused with NotSupportedError and nothing changed. tests/test_dbapi.py
holds the florsql-specific DB-API tests; this file does not repeat them.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import florsql
from conftest import make_repo, run_script
from florsql.engine import IngestWarning

SCRIPT = """\
import flor

scale = flor.arg("scale", 1)
for step in flor.loop("step", range(6)):
    flor.log("value", step * scale)
flor.log("note", None)
"""
# dbapi20's six sample beers, as a read-only VALUES list instead of an inserted table.
SAMPLES = ["Carlton Cold", "Carlton Draft", "Mountain Goat", "Redback", "Victoria Bitter", "XXXX"]
BOOZE = ("SELECT name FROM (VALUES " + ", ".join(f"('{s}')" for s in SAMPLES)
         + ") AS booze(name) ORDER BY name")
EMPTY = "SELECT name FROM (VALUES ('none')) AS barflys(name) WHERE false"
RUN_A_VALUES = ("SELECT l.value_num FROM logs l JOIN runs r USING (tstamp) "
                "WHERE r.runid = 'runA' AND l.value_name = 'value' ORDER BY l.value_num")
NO_ROWS = "SET enable_progress_bar = false"
TABLES = ("runs", "logs", "loops", "contexts", "iterations")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs of SCRIPT: runA logs value 0..5, runB (scale=10) logs 0..50."""
    repo = make_repo(tmp_path_factory.mktemp("compliance") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "runA")
    run_script(repo, "train.py", "--flor", "runB", "--kwargs", "scale=10")
    return repo


@pytest.fixture
def conn(project: Path) -> Iterator[florsql.Connection]:
    with florsql.connect(project) as connection:
        yield connection


@pytest.fixture
def fresh(script_repo: Callable[[str], Path]) -> Path:
    """A private project with one run (runA), for statements that must not be able to harm it."""
    repo = script_repo(SCRIPT)
    run_script(repo, "train.py", "--flor", "runA")
    return repo


def _counts(path: Path) -> dict[str, int]:
    with florsql.connect(path) as c:
        return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _assert_refused(path: Path, sql: str, parameters: list | None = None) -> florsql.Cursor:
    """`sql` raises NotSupportedError and the catalog holds the same rows after; the cursor."""
    before = _counts(path)
    assert before["runs"] == 1 and before["logs"] == 8
    with florsql.connect(path) as c:
        cur = c.cursor()
        with pytest.raises(florsql.NotSupportedError, match="answers queries only"):
            cur.execute(sql, parameters)
        assert cur.rowcount == -1 and cur.description is None
        with pytest.raises(florsql.Error):
            cur.fetchone()
        assert c.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # still usable
    assert _counts(path) == before
    return cur


# --- module globals ----------------------------------------------------------------------------


def test_module_globals_have_the_types_and_values_pep_249_allows() -> None:
    assert isinstance(florsql.apilevel, str) and florsql.apilevel in ("1.0", "2.0")
    assert isinstance(florsql.threadsafety, int) and florsql.threadsafety in (0, 1, 2, 3)
    assert florsql.paramstyle in ("qmark", "numeric", "named", "format", "pyformat")


def test_the_declared_qmark_paramstyle_binds_positional_parameters(
    conn: florsql.Connection,
) -> None:
    assert florsql.paramstyle == "qmark"
    assert conn.execute("SELECT ? + 1, ?", (41, "x")).fetchall() == [(42, "x")]
    assert conn.execute("SELECT '?', ?", [1]).fetchall() == [("?", 1)]  # no marker in a literal


def test_threads_can_open_their_own_connections_at_the_same_time(fresh: Path) -> None:
    """threadsafety 1: threads may share the module, each with its own connection."""
    assert florsql.threadsafety >= 1
    start = threading.Barrier(4)
    results: list[tuple] = []
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            with florsql.connect(fresh) as c:
                results.append(c.execute("SELECT count(*) FROM runs").fetchone())
        except BaseException as e:  # noqa: BLE001  (collected and asserted below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [repr(e) for e in errors] == []
    assert results == [(1,)] * 4


def test_threads_can_query_their_own_connections_at_the_same_time(fresh: Path) -> None:
    """threadsafety 1: connections opened one by one, then used by one thread each at once
    (the first statements of each ingest the new records)."""
    connections = [florsql.connect(fresh) for _ in range(4)]
    start = threading.Barrier(4)
    results: list[tuple] = []
    errors: list[BaseException] = []

    def worker(c: florsql.Connection) -> None:
        start.wait()
        try:
            for _ in range(10):
                results.append(c.execute("SELECT count(*) FROM logs").fetchone())
        except BaseException as e:  # noqa: BLE001  (collected and asserted below)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in connections]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for c in connections:
            c.close()
    assert [repr(e) for e in errors] == []
    assert results == [(8,)] * 40


# --- exceptions --------------------------------------------------------------------------------


def test_the_errors_florsql_raises_are_caught_by_the_pep_249_base_classes(
    project: Path,
) -> None:
    c = florsql.connect(project)
    with pytest.raises(florsql.DatabaseError) as bad_sql:
        c.execute("SELEC 1")
    assert isinstance(bad_sql.value, florsql.Error) and isinstance(bad_sql.value, Exception)
    c.close()
    with pytest.raises(florsql.Error) as closed:
        c.cursor()
    assert isinstance(closed.value, florsql.InterfaceError)
    assert not isinstance(closed.value, florsql.DatabaseError)
    assert not isinstance(closed.value, florsql.Warning)


# --- connect, cursor, close --------------------------------------------------------------------


def test_connect_with_a_string_path_returns_a_connection_whose_cursor_executes(
    project: Path,
) -> None:
    c = florsql.connect(str(project))
    try:
        assert isinstance(c, florsql.Connection) and not c.closed
        cur = c.cursor()
        assert isinstance(cur, florsql.Cursor)
        assert cur.execute("SELECT 1").fetchone() == (1,)
    finally:
        c.close()


def test_a_cursor_made_before_the_connection_closed_cannot_execute_after(project: Path) -> None:
    """dbapi20 test_close: execute and commit on a closed connection raise Error."""
    c = florsql.connect(project)
    cur = c.cursor()
    c.close()
    with pytest.raises(florsql.InterfaceError):
        cur.execute("SELECT 1")
    with pytest.raises(florsql.InterfaceError):
        cur.executemany("SELECT ?", [[1]])
    with pytest.raises(florsql.Error):
        c.commit()


def test_a_closed_cursor_raises_an_error_for_every_fetch_and_execute(
    conn: florsql.Connection,
) -> None:
    cur = conn.execute(BOOZE)
    cur.close()
    attempts: list[Callable[[], object]] = [
        lambda: cur.executemany("SELECT ?", [[1]]), cur.fetchone, cur.fetchmany,
        lambda: cur.fetchmany(2), cur.fetchall, cur.df, cur.arrow, lambda: list(cur)]
    for attempt in attempts:
        with pytest.raises(florsql.InterfaceError, match="cursor is closed"):
            attempt()


def test_closing_a_cursor_twice_or_after_its_connection_closed_is_harmless(
    project: Path,
) -> None:
    c = florsql.connect(project)
    first, second = c.execute(BOOZE), c.execute(BOOZE)
    first.close()
    first.close()
    c.close()
    second.close()
    with pytest.raises(florsql.InterfaceError):
        second.fetchone()


def test_closing_one_connection_leaves_another_to_the_same_project_working(
    project: Path,
) -> None:
    with florsql.connect(project) as other:
        florsql.connect(project).close()
        assert other.execute("SELECT count(*) FROM runs").fetchone() == (2,)


# --- commit and rollback -----------------------------------------------------------------------


def test_commit_and_rollback_without_a_transaction_leave_a_pending_result_intact(
    conn: florsql.Connection,
) -> None:
    """dbapi20 test_commit / test_rollback: both work even when there is nothing to do."""
    cur = conn.execute(BOOZE)
    assert cur.fetchone() == (SAMPLES[0],)
    assert conn.commit() is None
    assert conn.rollback() is None
    assert cur.fetchall() == [(s,) for s in SAMPLES[1:]]


def test_rollback_has_nothing_to_undo_because_the_insert_was_refused(fresh: Path) -> None:
    """Not applicable: dbapi20 rolls back an uncommitted insert; florsql is read-only because
    its catalog is rebuilt from the record files, so the insert is refused and rollback is a
    no-op that leaves every recorded row in place."""
    before = _counts(fresh)
    with florsql.connect(fresh) as c:
        with pytest.raises(florsql.NotSupportedError):
            c.execute("INSERT INTO runs (runid) VALUES ('ghost')")
        c.rollback()
        assert c.execute("SELECT runid FROM runs").fetchall() == [("runA",)]
    assert _counts(fresh) == before


# --- cursors -----------------------------------------------------------------------------------


def test_cursors_of_one_connection_fetch_their_results_independently(
    conn: florsql.Connection,
) -> None:
    a, b = conn.cursor(), conn.cursor()
    a.execute(BOOZE)
    b.execute("SELECT * FROM range(3)")
    assert a.fetchone() == (SAMPLES[0],)
    assert b.fetchone() == (0,)
    assert a.fetchone() == (SAMPLES[1],)
    assert b.fetchall() == [(1,), (2,)]
    assert len(a.fetchall()) == 4


def test_a_new_statement_sees_a_run_recorded_after_the_connection_opened(fresh: Path) -> None:
    """Not applicable: dbapi20 test_cursor_isolation inserts through one cursor and reads it
    through another; florsql is read-only because its catalog is rebuilt from the record files.
    The replacement: a run recorded meanwhile is ingested before the next statement."""
    with florsql.connect(fresh) as c:
        first = c.execute("SELECT runid FROM runs")
        assert first.fetchall() == [("runA",)]
        run_script(fresh, "train.py", "--flor", "runB")
        second = c.cursor().execute("SELECT runid FROM runs ORDER BY runid")
        assert second.fetchall() == [("runA",), ("runB",)]


def test_connection_execute_returns_a_new_executed_cursor_each_time(
    conn: florsql.Connection,
) -> None:
    a = conn.execute(BOOZE)
    b = conn.execute("SELECT ? * 2", [21])
    assert isinstance(a, florsql.Cursor) and a is not b
    assert a.connection is conn and b.connection is conn
    assert b.fetchall() == [(42,)]
    assert a.fetchone() == (SAMPLES[0],)


# --- description -------------------------------------------------------------------------------


def test_description_has_a_seven_item_sequence_with_name_and_type_per_column(
    conn: florsql.Connection,
) -> None:
    for sql in (BOOZE, EMPTY):  # an empty result is described all the same
        cur = conn.execute(sql.replace("SELECT name", "SELECT name, 4.5 AS abv, 1 + 1"))
        assert len(cur.description) == 3
        assert all(len(column) == 7 for column in cur.description)
        assert [column[0] for column in cur.description] == ["name", "abv", "(1 + 1)"]
        assert all(column[1] is not None for column in cur.description)


def test_description_is_none_for_a_statement_that_returns_no_rows(
    conn: florsql.Connection,
) -> None:
    """dbapi20 test_description: None after a statement with no result (DDL there, SET here)."""
    cur = conn.execute(BOOZE)
    assert cur.description is not None
    cur.execute(NO_ROWS)
    assert cur.description is None


def test_description_is_replaced_by_each_execute(conn: florsql.Connection) -> None:
    cur = conn.execute("SELECT 1 AS a, 2 AS b")
    assert [d[0] for d in cur.description] == ["a", "b"]
    cur.execute("SELECT * FROM range(2)")
    assert [d[0] for d in cur.description] == ["range"]


def test_description_type_codes_compare_equal_to_the_module_type_objects(
    conn: florsql.Connection,
) -> None:
    """dbapi20 test_description, test_STRING, test_NUMBER, test_DATETIME, test_BINARY,
    test_ROWID: PEP 249 requires the type objects, each equal to the matching type codes."""
    cur = conn.execute("SELECT runid, pid, tstamp, 'x'::BLOB AS b FROM runs")
    string, number, dt, binary = (d[1] for d in cur.description)
    assert string == florsql.STRING
    assert number == florsql.NUMBER and number != florsql.STRING
    assert dt == florsql.DATETIME
    assert binary == florsql.BINARY
    assert florsql.ROWID is not None


# --- rowcount ----------------------------------------------------------------------------------


def test_rowcount_is_minus_one_or_the_number_of_rows_for_a_select(
    conn: florsql.Connection,
) -> None:
    cur = conn.execute(BOOZE)
    assert cur.rowcount in (-1, 6)
    cur.execute(EMPTY)
    assert cur.rowcount in (-1, 0)
    cur.execute(RUN_A_VALUES)
    assert cur.rowcount in (-1, 6)
    assert len(cur.fetchall()) == 6


def test_an_insert_is_refused_so_rowcount_stays_minus_one(fresh: Path) -> None:
    """Not applicable: dbapi20 test_rowcount checks rowcount after an insert; florsql is
    read-only because its catalog is rebuilt from the record files."""
    cur = _assert_refused(fresh, "INSERT INTO logs (value_name) VALUES ('Victoria Bitter')")
    assert cur.rowcount == -1


# --- execute and executemany -------------------------------------------------------------------


def test_creating_a_table_is_refused_and_no_table_appears(fresh: Path) -> None:
    """Not applicable: dbapi20 test_execute (and every fetch test) starts by creating the booze
    table; florsql is read-only because its catalog is rebuilt from the record files."""
    _assert_refused(fresh, "CREATE TABLE booze (name varchar(20))")
    with florsql.connect(fresh) as c, pytest.raises(florsql.ProgrammingError, match="booze"):
        c.execute("SELECT name FROM booze")


def test_a_qmark_insert_is_refused_and_nothing_changes(fresh: Path) -> None:
    """Not applicable: dbapi20 _paraminsert inserts with the module's paramstyle; florsql is
    read-only because its catalog is rebuilt from the record files (flor.log records values)."""
    _assert_refused(fresh, "INSERT INTO logs (value_name, value_text) VALUES (?, ?)",
                    ["beer", "Cooper's"])


def test_qmark_parameters_round_trip_quotes_and_the_basic_types(
    conn: florsql.Connection,
) -> None:
    """The read half of dbapi20 _paraminsert: a quote in a literal and in a parameter."""
    assert conn.execute("SELECT 'Cooper''s'").fetchone() == ("Cooper's",)
    row = conn.execute("SELECT ?, ?, ?, ?, ?, ?", ["Cooper's", "Victoria Bitter", 42, 2.5,
                                                    True, b"\x00\xff"]).fetchone()
    assert row == ("Cooper's", "Victoria Bitter", 42, 2.5, True, b"\x00\xff")


def test_parameters_may_be_any_sequence(conn: florsql.Connection) -> None:
    sql = "SELECT value_num FROM logs JOIN runs USING (tstamp) WHERE runid = ? AND value_num = ?"
    assert conn.execute(sql, ["runB", 50]).fetchall() == [(50.0,)]
    assert conn.execute(sql, ("runB", 50)).fetchall() == [(50.0,)]


def test_executemany_of_an_insert_is_refused_and_nothing_changes(fresh: Path) -> None:
    """Not applicable: dbapi20 test_executemany inserts two rows; florsql is read-only because
    its catalog is rebuilt from the record files."""
    before = _counts(fresh)
    with florsql.connect(fresh) as c:
        cur = c.cursor()
        with pytest.raises(florsql.NotSupportedError):
            cur.executemany("INSERT INTO runs (runid) VALUES (?)", [["Cooper's"], ["Boag's"]])
        assert cur.rowcount == -1
    assert _counts(fresh) == before


def test_executemany_binds_each_parameter_set_in_turn(conn: florsql.Connection) -> None:
    cur = conn.cursor()
    assert cur.executemany("SELECT ? * 2", [(1,), (2,), (3,)]) is cur
    assert cur.fetchall() == [(6,)]
    with pytest.raises(florsql.ProgrammingError):  # the second set has one value too many
        cur.executemany("SELECT ?", [[1], [1, 2]])


def test_executemany_with_no_parameter_sets_leaves_nothing_to_fetch(
    conn: florsql.Connection,
) -> None:
    cur = conn.cursor()
    cur.executemany("SELECT ?", [])
    assert cur.description is None
    with pytest.raises(florsql.Error):
        cur.fetchone()


# --- fetchone ----------------------------------------------------------------------------------


def test_fetchone_returns_none_for_an_empty_result_and_after_the_last_row(
    conn: florsql.Connection,
) -> None:
    cur = conn.execute(EMPTY)
    assert cur.fetchone() is None
    assert cur.rowcount in (-1, 0)
    cur.execute("SELECT name FROM (VALUES ('Victoria Bitter')) AS booze(name)")
    assert cur.fetchone() == ("Victoria Bitter",)
    assert cur.fetchone() is None
    assert cur.rowcount in (-1, 1)


def test_every_fetch_after_a_statement_that_returns_no_rows_raises_an_error(
    conn: florsql.Connection,
) -> None:
    """dbapi20 test_fetchone/fetchall: fetching after DDL raises Error (SET here)."""
    cur = conn.execute(NO_ROWS)
    for fetch in (cur.fetchone, cur.fetchmany, cur.fetchall):
        with pytest.raises(florsql.Error):
            fetch()


# --- fetchmany and arraysize -------------------------------------------------------------------


def test_fetchmany_honours_its_size_and_arraysize_as_dbapi20_checks(
    conn: florsql.Connection,
) -> None:
    cur = conn.execute(BOOZE)
    assert len(cur.fetchmany()) == 1  # arraysize defaults to one
    cur.arraysize = 10
    assert len(cur.fetchmany(3)) == 3
    assert len(cur.fetchmany(4)) == 2  # only two left
    assert cur.fetchmany(4) == []
    assert cur.rowcount in (-1, 6)
    cur.arraysize = 4
    cur.execute(BOOZE)
    assert [len(cur.fetchmany()) for _ in range(3)] == [4, 2, 0]
    cur.arraysize = 6
    cur.execute(BOOZE)
    assert sorted(name for (name,) in cur.fetchmany()) == SAMPLES
    assert cur.fetchmany() == []
    assert cur.rowcount in (-1, 6)


def test_fetchmany_of_an_empty_result_returns_an_empty_list(conn: florsql.Connection) -> None:
    cur = conn.cursor()
    cur.arraysize = 10
    cur.execute(EMPTY)
    assert cur.fetchmany() == []
    assert cur.rowcount in (-1, 0)


def test_fetchmany_of_zero_rows_returns_an_empty_list(conn: florsql.Connection) -> None:
    """PEP 249: the size parameter is the number of rows to fetch; only an absent size means
    arraysize."""
    cur = conn.execute(BOOZE)
    assert cur.fetchmany(0) == []
    assert cur.fetchone() == (SAMPLES[0],)


def test_arraysize_belongs_to_the_cursor_and_survives_each_execute(
    conn: florsql.Connection,
) -> None:
    a, b = conn.cursor(), conn.cursor()
    a.arraysize = 5
    assert b.arraysize == 1 and conn.cursor().arraysize == 1
    for _ in range(2):
        a.execute(BOOZE)
        assert len(a.fetchmany()) == 5
    assert len(b.execute(BOOZE).fetchmany()) == 1


# --- fetchall and mixed fetches ----------------------------------------------------------------


def test_fetchall_returns_every_row_then_an_empty_list(conn: florsql.Connection) -> None:
    cur = conn.execute(BOOZE)
    rows = cur.fetchall()
    assert [name for (name,) in rows] == SAMPLES
    assert cur.rowcount in (-1, 6)
    assert cur.fetchall() == []
    cur.execute(EMPTY)
    assert cur.fetchall() == []
    assert cur.rowcount in (-1, 0)


def test_fetchall_reads_every_column_of_every_log_row(conn: florsql.Connection) -> None:
    cur = conn.execute("SELECT * FROM logs")
    rows = cur.fetchall()
    assert len(rows) == 16  # per run: one arg, six values, one note
    assert {len(row) for row in rows} == {len(cur.description)}


def test_fetchall_reads_every_column_of_every_run(conn: florsql.Connection) -> None:
    cur = conn.execute("SELECT * FROM runs ORDER BY runid")
    rows = cur.fetchall()
    names = [d[0] for d in cur.description]
    assert [row[names.index("runid")] for row in rows] == ["runA", "runB"]
    assert all(isinstance(row[names.index("start_time")], datetime.datetime) for row in rows)


def test_fetchone_fetchmany_and_fetchall_mixed_return_each_row_once_in_order(
    conn: florsql.Connection,
) -> None:
    """dbapi20 test_mixedfetch, over the values runA recorded instead of an inserted table."""
    cur = conn.execute(RUN_A_VALUES)
    first = cur.fetchone()
    second_third = cur.fetchmany(2)
    fourth = cur.fetchone()
    rest = cur.fetchall()
    assert [first, *second_third, fourth, *rest] == [(float(v),) for v in range(6)]


# --- iteration ---------------------------------------------------------------------------------


def test_a_cursor_is_iterable_and_iteration_resumes_after_a_partial_fetch(
    conn: florsql.Connection,
) -> None:
    cur = conn.execute("SELECT * FROM range(5)")
    assert cur.fetchmany(2) == [(0,), (1,)]
    assert [row for row in cur] == [(2,), (3,), (4,)]
    assert list(cur) == []


def test_iter_of_a_cursor_is_the_cursor_and_next_returns_the_next_row(
    conn: florsql.Connection,
) -> None:
    """PEP 249 optional extension: Cursor.__iter__() returns self (as in sqlite3)."""
    cur = conn.execute("SELECT * FROM range(2)")
    assert iter(cur) is cur
    assert next(cur) == (0,)
    assert cur.fetchone() == (1,)


def test_iterating_a_cursor_before_execute_raises_an_error(conn: florsql.Connection) -> None:
    with pytest.raises(florsql.Error, match="execute"):
        list(conn.cursor())


# --- setinputsizes and setoutputsize -----------------------------------------------------------


def test_setinputsizes_is_a_no_op_and_parameters_still_bind(conn: florsql.Connection) -> None:
    cur = conn.cursor()
    assert cur.setinputsizes((25,)) is None
    assert cur.setinputsizes([None, 10]) is None
    assert cur.execute("SELECT ?, ?", ["Cooper's", 7]).fetchall() == [("Cooper's", 7)]


def test_setoutputsize_is_a_no_op_and_long_values_come_back_whole(
    conn: florsql.Connection,
) -> None:
    cur = conn.cursor()
    assert cur.setoutputsize(1000) is None
    assert cur.setoutputsize(2000, 0) is None
    assert cur.execute("SELECT repeat('x', 5000)").fetchone() == ("x" * 5000,)


# --- NULL and None -----------------------------------------------------------------------------


def test_none_as_a_parameter_is_bound_as_null(conn: florsql.Connection) -> None:
    assert conn.execute("SELECT ? IS NULL, ?", [None, None]).fetchall() == [(True, None)]
    assert conn.execute("SELECT count(*) FROM runs WHERE runid = ?", [None]).fetchone() == (0,)


def test_null_in_a_result_comes_back_as_none(conn: florsql.Connection) -> None:
    values = conn.execute("SELECT * FROM (VALUES (1, NULL), (NULL, 'a')) AS t(n, s)")
    assert values.fetchall() == [(1, None), (None, "a")]
    logged = conn.execute("SELECT value_type, value_num, value_text FROM logs "
                          "WHERE value_name = 'note'").fetchall()
    assert logged == [("null", None, None)] * 2  # flor.log("note", None) in both runs


def test_a_null_cannot_be_inserted_because_writes_are_refused(fresh: Path) -> None:
    """Not applicable: dbapi20 test_None inserts a NULL and reads it back; florsql is read-only
    because its catalog is rebuilt from the record files (see the two tests above instead)."""
    _assert_refused(fresh, "INSERT INTO logs (value_name) VALUES (NULL)")


def test_dropping_the_dbapi20_tables_is_refused_and_the_catalog_tables_stay(fresh: Path) -> None:
    """Not applicable: dbapi20 tearDown drops the tables it created; florsql is read-only
    because its catalog is rebuilt from the record files, and there is nothing to drop."""
    _assert_refused(fresh, "DROP TABLE IF EXISTS booze")
    _assert_refused(fresh, "DROP TABLE logs")


# --- optional extension: messages --------------------------------------------------------------


def test_cursor_messages_hold_an_ingest_warning_until_the_next_execute(fresh: Path) -> None:
    """PEP 249 optional extension: Cursor.messages, (exception class, value) tuples."""
    parts = next((fresh / ".flor" / "runs").iterdir()) / "parts"
    (parts / "999999.json").write_text("{not json")
    with florsql.connect(fresh) as c:
        with pytest.warns(IngestWarning, match="corrupt record part"):
            cur = c.execute("SELECT count(*) FROM runs")
        assert cur.fetchone() == (1,)
        assert len(cur.messages) == 1
        kind, text = cur.messages[0]
        assert kind is florsql.Warning and "999999.json" in text
        cur.execute("SELECT 1")
        assert cur.messages == []
        assert c.execute("SELECT 1").messages == []


# --- type constructors -------------------------------------------------------------------------


def test_date_time_and_timestamp_constructors_bind_as_parameters(
    conn: florsql.Connection,
) -> None:
    """dbapi20 test_Date, test_Time, test_Timestamp: PEP 249 requires these constructors."""
    row = conn.execute("SELECT ?, ?, ?", [florsql.Date(2002, 12, 25),
                                          florsql.Time(13, 45, 30),
                                          florsql.Timestamp(2002, 12, 25, 13, 45, 30)]).fetchone()
    assert row == (datetime.date(2002, 12, 25), datetime.time(13, 45, 30),
                   datetime.datetime(2002, 12, 25, 13, 45, 30))


def test_the_ticks_constructors_build_values_from_seconds_since_the_epoch() -> None:
    """dbapi20 test_DateFromTicks, test_TimeFromTicks, test_TimestampFromTicks."""
    ticks = time.mktime((2002, 12, 25, 13, 45, 30, 0, 0, -1))
    assert florsql.DateFromTicks(ticks) == datetime.date(2002, 12, 25)
    assert florsql.TimeFromTicks(ticks) == datetime.time(13, 45, 30)
    assert florsql.TimestampFromTicks(ticks) == datetime.datetime(2002, 12, 25, 13, 45, 30)


def test_binary_builds_a_value_that_round_trips_as_bytes(conn: florsql.Connection) -> None:
    """dbapi20 test_Binary: PEP 249 requires Binary(string)."""
    value = florsql.Binary(b"Something")
    assert conn.execute("SELECT ?", [value]).fetchone() == (b"Something",)
    assert conn.execute("SELECT ?", [florsql.Binary(b"")]).fetchone() == (b"",)
