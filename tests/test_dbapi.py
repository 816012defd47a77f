"""The PEP 249 surface of `florsql` over a real recorded project (two runs of examples/train.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import florsql
from conftest import EXAMPLES, make_repo, run_script
from florsql import exceptions

ALL_ERRORS = ("Warning", "Error", "InterfaceError", "DatabaseError", "DataError",
              "OperationalError", "IntegrityError", "InternalError", "ProgrammingError",
              "NotSupportedError")
DATABASE_ERRORS = ("DataError", "OperationalError", "IntegrityError", "InternalError",
                   "ProgrammingError", "NotSupportedError")
ARG_QUERY = ("SELECT r.runid, l.value_name, l.value_num FROM logs l JOIN runs r USING (tstamp) "
             "WHERE l.kind = 'arg' ORDER BY r.runid, l.value_name")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs: runA (epochs=2, lr=0.1) and runB (epochs=1)."""
    repo = make_repo(tmp_path_factory.mktemp("dbapi") / "proj",
                     {"train.py": (EXAMPLES / "train.py").read_text()})
    run_script(repo, "train.py", "--flor", "runA", "--kwargs", "epochs=2", "lr=0.1")
    run_script(repo, "train.py", "--flor", "runB", "--kwargs", "epochs=1")
    return repo


@pytest.fixture
def conn(project: Path) -> Iterator[florsql.Connection]:
    with florsql.connect(project) as connection:
        yield connection


@pytest.fixture
def scratch(project: Path, tmp_path: Path) -> Path:
    """A private copy of the project, for statements that must not be able to harm it."""
    return shutil.copytree(project, tmp_path / "copy", symlinks=True)


def _counts(path: Path) -> dict[str, int]:
    with florsql.connect(path) as c:
        return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("runs", "logs", "loops", "contexts", "iterations")}


# --- module ------------------------------------------------------------------------------------


def test_module_globals_follow_pep_249() -> None:
    assert florsql.apilevel == "2.0"
    assert florsql.threadsafety in (0, 1, 2, 3)
    assert florsql.paramstyle == "qmark"


@pytest.mark.parametrize("name", ALL_ERRORS)
def test_every_pep_249_exception_is_exported_with_a_docstring(name: str) -> None:
    cls = getattr(florsql, name)
    assert cls is getattr(exceptions, name)
    assert issubclass(cls, Exception)
    assert cls.__doc__ and cls.__doc__.strip()


def test_the_exception_hierarchy_is_the_one_pep_249_specifies() -> None:
    assert not issubclass(florsql.Error, florsql.Warning)
    assert not issubclass(florsql.Warning, florsql.Error)
    assert issubclass(florsql.InterfaceError, florsql.Error)
    assert issubclass(florsql.DatabaseError, florsql.Error)
    assert not issubclass(florsql.InterfaceError, florsql.DatabaseError)
    for name in DATABASE_ERRORS:
        assert issubclass(getattr(florsql, name), florsql.DatabaseError), name


# --- connect -----------------------------------------------------------------------------------


def test_connect_on_a_directory_without_history_is_an_operational_error(tmp_path: Path) -> None:
    with pytest.raises(florsql.OperationalError) as info:
        florsql.connect(tmp_path)
    message = str(info.value)
    assert "no flor history" in message and str(tmp_path.resolve()) in message
    assert "\n" not in message


def test_connect_on_a_git_repo_that_never_ran_flor_is_an_operational_error(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "fresh", {"a.py": "print(1)\n"})
    with pytest.raises(florsql.OperationalError, match="no flor history"):
        florsql.connect(repo / ".")


def test_connect_from_a_subdirectory_finds_the_project(project: Path) -> None:
    sub = project / "sub"
    sub.mkdir(exist_ok=True)
    with florsql.connect(sub) as c:
        assert c.execute("SELECT count(*) FROM runs").fetchone() == (2,)


# --- cursor ------------------------------------------------------------------------------------


def test_description_names_and_types_the_result_columns(conn: florsql.Connection) -> None:
    cur = conn.execute("SELECT runid, tstamp, argv, value_num FROM runs JOIN logs USING (tstamp)")
    assert [d[0] for d in cur.description] == ["runid", "tstamp", "argv", "value_num"]
    assert [d[1] for d in cur.description] == ["VARCHAR", "TIMESTAMP", "VARCHAR[]", "DOUBLE"]
    assert all(len(d) == 7 for d in cur.description)


def test_a_new_cursor_has_no_description_and_rowcount_minus_one(
    conn: florsql.Connection,
) -> None:
    cur = conn.cursor()
    assert cur.description is None and cur.rowcount == -1
    cur.execute("SELECT runid FROM runs")
    assert cur.rowcount == -1  # PEP 249: -1 when the count is not known up front
    assert cur.connection is conn


def test_fetchone_fetchall_and_iteration_see_the_recorded_args(conn: florsql.Connection) -> None:
    expected = [("runA", "batch_size", 32.0), ("runA", "epochs", 2.0), ("runA", "hidden", 16.0),
                ("runA", "lr", 0.1), ("runB", "batch_size", 32.0), ("runB", "epochs", 1.0),
                ("runB", "hidden", 16.0), ("runB", "lr", 0.01)]
    assert conn.execute(ARG_QUERY).fetchall() == expected
    cur = conn.execute(ARG_QUERY)
    assert cur.fetchone() == expected[0]
    assert cur.fetchall() == expected[1:]
    assert cur.fetchone() is None and cur.fetchall() == []
    assert list(conn.execute(ARG_QUERY)) == expected


def test_arraysize_defaults_to_one_and_sets_fetchmany(conn: florsql.Connection) -> None:
    cur = conn.execute(ARG_QUERY)
    assert cur.arraysize == 1
    assert len(cur.fetchmany()) == 1
    assert len(cur.fetchmany(3)) == 3
    cur.arraysize = 2
    assert len(cur.fetchmany()) == 2
    assert len(cur.fetchmany(100)) == 2  # only 8 rows in all
    assert cur.fetchmany() == []


def test_executemany_runs_each_parameter_set_and_keeps_the_last_result(
    conn: florsql.Connection,
) -> None:
    cur = conn.cursor()
    cur.executemany("SELECT runid FROM runs WHERE runid = ?", [["runA"], ["runB"]])
    assert cur.fetchall() == [("runB",)]


def test_parameters_are_bound_not_interpolated(conn: florsql.Connection) -> None:
    query = "SELECT runid FROM runs WHERE runid = ?"
    assert conn.execute(query, ["runA"]).fetchall() == [("runA",)]
    assert conn.execute(query, ["x' OR '1'='1"]).fetchall() == []
    assert conn.execute(query, ["runA' --"]).fetchall() == []


def test_a_wrong_number_of_parameters_is_a_programming_error(conn: florsql.Connection) -> None:
    with pytest.raises(florsql.ProgrammingError):
        conn.execute("SELECT runid FROM runs WHERE runid = ?", [])


def test_df_and_arrow_return_the_rows_of_the_query(conn: florsql.Connection) -> None:
    expected = conn.execute(ARG_QUERY).fetchall()
    frame = conn.execute(ARG_QUERY).df()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["runid", "value_name", "value_num"]
    assert list(frame.itertuples(index=False, name=None)) == expected
    table = conn.execute(ARG_QUERY).arrow()
    assert isinstance(table, pa.Table)
    assert table.column_names == ["runid", "value_name", "value_num"]
    assert [tuple(r.values()) for r in table.to_pylist()] == expected


def test_loss_values_of_every_step_are_there(conn: florsql.Connection) -> None:
    # 448 training rows / batch 32 = 14 steps per epoch; runA has 2 epochs, runB 1.
    rows = conn.execute(
        "SELECT r.runid, count(*) FROM logs l JOIN runs r USING (tstamp) "
        "WHERE l.value_name = 'loss' GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("runA", 28), ("runB", 14)]


# --- errors ------------------------------------------------------------------------------------


def test_fetch_before_execute_is_a_programming_error(conn: florsql.Connection) -> None:
    cur = conn.cursor()
    for fetch in (cur.fetchone, cur.fetchall, cur.fetchmany, cur.df, cur.arrow):
        with pytest.raises(florsql.ProgrammingError, match="execute"):
            fetch()


def test_bad_sql_is_a_programming_error_with_a_one_line_message(
    conn: florsql.Connection,
) -> None:
    with pytest.raises(florsql.ProgrammingError) as info:
        conn.execute("SELEC runid FROM runs")
    assert "syntax error" in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_column_is_a_programming_error_naming_it(conn: florsql.Connection) -> None:
    with pytest.raises(florsql.ProgrammingError) as info:
        conn.execute("SELECT runidd FROM runs")
    message = str(info.value)
    assert "runidd" in message and "\n" not in message


def test_an_unknown_table_is_a_programming_error(conn: florsql.Connection) -> None:
    with pytest.raises(florsql.ProgrammingError, match="experiments"):
        conn.execute("SELECT * FROM experiments")


def test_a_failed_cast_is_a_data_error(conn: florsql.Connection) -> None:
    with pytest.raises(florsql.DataError):
        conn.execute("SELECT CAST(runid AS INTEGER) FROM runs").fetchall()


def test_an_empty_statement_is_a_programming_error(conn: florsql.Connection) -> None:
    with pytest.raises(florsql.ProgrammingError, match="empty statement"):
        conn.execute("   ")


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM logs",
        "INSERT INTO runs (runid) VALUES ('fake')",
        "UPDATE logs SET value_num = 0",
        "CREATE TABLE notes (x INTEGER)",
        "DROP TABLE logs",
        "SELECT 1; DELETE FROM logs",
    ],
)
def test_writes_are_not_supported_and_the_data_is_still_there(scratch: Path, sql: str) -> None:
    before = _counts(scratch)
    assert before["runs"] == 2 and before["logs"] > 0
    with florsql.connect(scratch) as c, pytest.raises(florsql.NotSupportedError) as info:
        c.execute(sql)
    assert "florsql answers queries only" in str(info.value)
    assert _counts(scratch) == before


def test_executemany_of_a_write_is_not_supported(scratch: Path) -> None:
    before = _counts(scratch)
    with florsql.connect(scratch) as c, pytest.raises(florsql.NotSupportedError):
        c.cursor().executemany("DELETE FROM logs WHERE value_name = ?", [["loss"], ["lr"]])
    assert _counts(scratch) == before


def test_explain_analyze_cannot_be_used_to_run_a_write(scratch: Path) -> None:
    # EXPLAIN ANALYZE executes its statement: it must not let a DELETE through.
    before = _counts(scratch)
    with florsql.connect(scratch) as c:
        with pytest.raises(florsql.NotSupportedError):
            c.execute("EXPLAIN ANALYZE DELETE FROM logs")
    assert _counts(scratch) == before


# --- closing -----------------------------------------------------------------------------------


def test_the_connection_context_manager_closes_it(project: Path) -> None:
    with florsql.connect(project) as c:
        cur = c.execute("SELECT 1")
        assert not c.closed
    assert c.closed
    with pytest.raises(florsql.InterfaceError, match="closed"):
        c.cursor()
    with pytest.raises(florsql.InterfaceError, match="closed"):
        c.execute("SELECT 1")
    with pytest.raises(florsql.InterfaceError, match="closed"):
        cur.fetchall()
    c.close()  # closing twice is harmless


def test_the_cursor_context_manager_closes_it(conn: florsql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT runid FROM runs")
    with pytest.raises(florsql.InterfaceError, match="closed"):
        cur.fetchone()
    with pytest.raises(florsql.InterfaceError, match="closed"):
        cur.execute("SELECT 1")
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (2,)


def test_commit_and_rollback_exist_and_fail_once_closed(project: Path) -> None:
    c = florsql.connect(project)
    c.commit()
    c.rollback()
    c.close()
    with pytest.raises(florsql.InterfaceError):
        c.commit()
    with pytest.raises(florsql.InterfaceError):
        c.rollback()
