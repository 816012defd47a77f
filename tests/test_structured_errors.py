"""An unknown name keeps its structure from the engine to every surface: the DB-API error
carries the name, its closest matches, its kind and its position, and the shell reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

import florsql
from conftest import make_repo, run_script
from florsql.translate import locate_name

SCRIPT = """import flor
for epoch in flor.loop("epoch", range(2)):
    flor.log("accuracy", 0.5 + epoch / 10)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("errors") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    return repo


def test_an_unknown_history_column_carries_its_name_matches_and_position(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.UnknownNameError) as caught:
        conn.execute("SELECT epoch,\n       acuracy FROM history")
    error = caught.value
    assert isinstance(error, florsql.ProgrammingError)
    assert (error.name, error.kind, error.closest) == ("acuracy", "column", ["accuracy"])
    assert error.position == florsql.Position(line=2, column=8, offset=21)
    assert "did you mean accuracy" in str(error)


def test_an_unknown_column_of_another_table_is_structured_too(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.UnknownNameError) as caught:
        conn.execute("SELECT runidd FROM runs")
    assert (caught.value.name, caught.value.kind) == ("runidd", "column")
    assert "runid" in caught.value.closest and caught.value.position.column == 8


def test_a_column_two_joined_tables_share_is_ambiguous_not_unknown(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.ProgrammingError) as caught:
        conn.execute("SELECT projid FROM history JOIN runs USING (tstamp)")
    assert not isinstance(caught.value, florsql.UnknownNameError)
    assert "Ambiguous reference" in str(caught.value) and "runs.projid" in str(caught.value)


def test_an_unknown_table_names_the_closest_tables(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.UnknownNameError) as caught:
        conn.execute("SELECT * FROM rnus")
    assert (caught.value.name, caught.value.kind) == ("rnus", "table")
    assert caught.value.closest[0] == "runs" and caught.value.position.column == 15


def test_explain_replay_keeps_the_structure(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.UnknownNameError) as caught:
        conn.execute("EXPLAIN REPLAY SELECT acuracy FROM history")
    assert caught.value.name == "acuracy" and caught.value.position.column == 23


def test_a_name_is_located_as_a_name_never_inside_a_string_or_a_comment() -> None:
    sql = "SELECT 'acuracy', -- acuracy\n  acuracy2, \"Acuracy\" FROM history"
    assert locate_name(sql, "acuracy") == florsql.Position(2, 14, 42)
    assert locate_name(sql, "missing") is None
    assert locate_name(None, "acuracy") is None
