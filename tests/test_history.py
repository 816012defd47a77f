"""The `history` view: grain follows the query, typed columns, usable like any table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import florsql
from conftest import make_repo, run_script
from history_oracle import expected_history, load_raw

FIXTURES = Path(__file__).parent / "fixtures" / "history" / "queries.sql"
SCRIPT_V1 = """
import flor
lr = flor.arg("lr", 0.1)
hidden = flor.arg("hidden", 8)
tag = flor.arg("tag", "a")
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(4)):
        flor.log("loss", lr * (epoch * 4 + step) + hidden / 100)
        if step % 2 == 0:
            flor.log("grad_norm", step * 0.5 + epoch)
    flor.log("accuracy", 0.5 + epoch * lr)
    if epoch == 1:
        flor.log("accuracy", 0.25 + lr)  # logged twice in one context: the last wins
flor.log("note", "done-" + tag)
flor.log("ok", hidden > 4)
flor.log("mixed", 1 if tag == "a" else "one")
"""
# v2 adds a validation loop with its own dimension and drops grad_norm
SCRIPT_V2 = SCRIPT_V1.replace(
    "    flor.log(\"accuracy\", 0.5 + epoch * lr)\n",
    "    for vstep in flor.loop(\"vstep\", range(2)):\n"
    "        flor.log(\"vloss\", epoch + vstep / 10)\n"
    "    flor.log(\"accuracy\", 0.5 + epoch * lr)\n").replace(
    "        if step % 2 == 0:\n            flor.log(\"grad_norm\", step * 0.5 + epoch)\n", "")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("hist") / "proj", {"train.py": SCRIPT_V1})
    settings = [("first", ["lr=0.1", "hidden=8"]), ("second", ["lr=0.01", "hidden=2", "tag=b"]),
                ("third", ["lr=0.3"])]
    for runid, kwargs in settings:
        run_script(repo, "train.py", "--flor", runid, "--kwargs", *kwargs)
    (repo / "train.py").write_text(SCRIPT_V2)
    run_script(repo, "train.py", "--flor", "fourth", "--kwargs", "lr=0.05", "tag=b")
    return repo


def _golden_cases() -> list[tuple[list[str], str]]:
    text = FIXTURES.read_text()
    cases = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        meta = [ln for ln in lines if ln.startswith("# columns:")]
        if meta:
            sql = "\n".join(ln for ln in lines if not ln.startswith("#")).rstrip(";")
            cases.append(([c.strip() for c in meta[0].split(":", 1)[1].split(",")], sql))
    return cases


@pytest.mark.parametrize(("columns", "sql"), _golden_cases(), ids=lambda x: str(x)[:60])
def test_golden_queries_mean_the_same_as_the_grain_rule(project: Path, columns, sql) -> None:
    import duckdb

    with florsql.connect(project) as conn:
        got = conn.execute(sql).df()
        raw = load_raw(conn)
        runs = conn.execute("SELECT * FROM runs").df()
    oracle = duckdb.connect()
    oracle.register("history", expected_history(raw, columns))
    oracle.register("runs", runs)
    want = oracle.execute(sql).df()
    assert len(got) > 0
    assert _normalise(got).equals(_normalise(want)), f"\n{got}\n!=\n{want}"


def test_a_run_level_query_has_one_row_per_run(project: Path) -> None:
    with florsql.connect(project) as conn:
        rows = conn.execute("SELECT runid, lr, note FROM history ORDER BY lr").fetchall()
    assert [r[1] for r in rows] == [0.01, 0.05, 0.1, 0.3]
    assert {r[2] for r in rows} == {"done-a", "done-b"}


def test_a_step_level_query_repeats_run_and_epoch_values(project: Path) -> None:
    with florsql.connect(project) as conn:
        rows = conn.execute(
            "SELECT epoch, step, loss, accuracy, lr FROM history WHERE lr = 0.3 "
            "ORDER BY epoch, step").fetchall()
    assert len(rows) == 12
    assert all(r[4] == 0.3 for r in rows)
    assert [r[3] for r in rows if r[0] == 1] == [0.25 + 0.3] * 4  # last value of epoch 1
    assert rows[5][2] == pytest.approx(0.3 * 5 + 8 / 100)


def test_columns_are_typed_so_filters_need_no_casts(project: Path) -> None:
    with florsql.connect(project) as conn:
        cur = conn.execute("SELECT lr, hidden, note, ok, mixed, loss FROM history LIMIT 1")
        types = [d[1] for d in cur.description]
        n = conn.execute("SELECT count(*) FROM history WHERE lr > 0.05 AND hidden >= 8")
        assert n.fetchone() == (2,)
    assert types == ["DOUBLE", "BIGINT", "VARCHAR", "BOOLEAN", "VARCHAR", "DOUBLE"]


def test_select_star_gives_every_column_at_the_deepest_grain(project: Path) -> None:
    with florsql.connect(project) as conn:
        cur = conn.execute("SELECT * FROM history")
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    assert names[:8] == ["projid", "runid", "tstamp", "vid", "filename", "epoch", "step", "vstep"]
    assert {"loss", "vloss", "accuracy", "lr", "grad_norm", "note"} <= set(names)
    assert len(rows) == 3 * 12 + (12 + 6)  # v2's grain holds its step and its vstep contexts


def test_the_raw_tables_stay_available_beside_history(project: Path) -> None:
    with florsql.connect(project) as conn:
        n_logs = conn.execute("SELECT count(*) FROM logs WHERE value_name = 'loss'").fetchone()
        joined = conn.execute(
            "SELECT count(*) FROM history h JOIN runs r USING (tstamp) WHERE r.status = "
            "'finished' AND h.loss IS NOT NULL").fetchone()
    assert n_logs == joined == (48,)


def test_a_cte_named_history_in_the_query_is_left_alone(project: Path) -> None:
    with florsql.connect(project) as conn:
        rows = conn.execute("WITH history AS (SELECT 42 AS x) SELECT x FROM history").fetchall()
    assert rows == [(42,)]


def test_parameters_bind_inside_history_queries(project: Path) -> None:
    with florsql.connect(project) as conn:
        rows = conn.execute("SELECT runid FROM history WHERE lr = ? AND tag = ?",
                            [0.01, "b"]).fetchall()
        none = conn.execute("SELECT count(*) FROM history WHERE tag = ?",
                            ["b' OR '1'='1"]).fetchone()
    assert len(rows) == 1 and none == (0,)


def test_an_unknown_column_names_the_closest_logged_names(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.ProgrammingError) as err:
        conn.execute("SELECT runid, acuracy FROM history")
    assert str(err.value) == "unknown column 'acuracy'; did you mean accuracy?"


def test_an_unknown_table_names_the_closest_tables(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.ProgrammingError) as err:
        conn.execute("SELECT * FROM histroy")
    assert "unknown table 'histroy'; did you mean history" in str(err.value)
    assert "\n" not in str(err.value)


def test_describe_history_lists_the_typed_columns(project: Path) -> None:
    with florsql.connect(project) as conn:
        described = dict(conn.execute("DESCRIBE history").fetchall()[i][:2] for i in range(3))
        cols = {r[0]: r[1] for r in conn.execute("DESCRIBE history").fetchall()}
    assert described["runid"] == "VARCHAR"
    assert cols["loss"] == "DOUBLE" and cols["ok"] == "BOOLEAN" and cols["epoch"] == "BIGINT"


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype(object).where(df.notna(), None)
    df = df.map(lambda v: round(float(v), 9)
                if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
    cols = list(df.columns)
    return df.sort_values(cols, key=lambda s: s.astype(str)).reset_index(drop=True)
