"""Query analysis for retroactive SQL: golden fixtures, parameters, errors, and a fuzz test."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from florsql.engine.catalog.mirror import new_catalog
from florsql.engine.catalog.names import HistorySchema, NameInfo
from florsql.engine.errors import EngineError, UnknownColumnError
from florsql.engine.query.analyze import Analysis, analyze_statement
from florsql.engine.query.rewrite import rewrite_query

FIXTURES = Path(__file__).parent / "fixtures" / "analyze" / "pushdown.sql"
SCRIPT_NAMES = {"val_acc": "val_acc", "grad_norm": "grad_norm", "loss": "loss", "acc": "acc"}


def load_fixtures() -> list[tuple[str, str, str]]:
    blocks = [b for b in FIXTURES.read_text().split("\n\n") if b.strip()]
    cases = []
    for block in blocks:
        lines = [ln for ln in block.splitlines() if ln and not ln.startswith("#")]
        if not lines:
            continue
        query, replay, where = lines
        cases.append((query, replay.removeprefix("replay: "), where.removeprefix("where: ")))
    return cases


@pytest.fixture(scope="module")
def tables() -> dict[str, dict[str, str]]:
    """The catalog's real tables, from a freshly created (empty, in-memory) catalog."""
    con = new_catalog()
    rows = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                       "WHERE schema_name = 'main' AND NOT internal").fetchall()
    con.close()
    out: dict[str, dict[str, str]] = {}
    for table, column, kind in rows:
        if not table.startswith("_"):
            out.setdefault(table, {})[column] = kind
    return out


def schema() -> HistorySchema:
    def info(name: str, depth: int, types: set[str], is_arg: bool = False) -> NameInfo:
        return NameInfo(column=name, variants={name}, types=types, depths={depth: (10, 10)},
                        is_arg=is_arg, runs=3)

    values = {"lr": info("lr", 0, {"float"}, True), "hidden": info("hidden", 0, {"int"}, True),
              "loss": info("loss", 2, {"float"}), "acc": info("acc", 1, {"float"})}
    return HistorySchema(dims={"epoch": 1, "step": 2}, values=values,
                         dim_depths={"epoch": {1}, "step": {2}})


def analyze(sql: str, tables: dict, params: object = None) -> Analysis:
    return analyze_statement(sqlglot.parse_one(sql, read="duckdb"), schema(), tables,
                             SCRIPT_NAMES, params)


def replayable_now(found: Analysis) -> set[str]:
    """Replayable names that no run has yet, or that some run lacks (all of them here)."""
    return found.replayable - {"loss", "acc"}


@pytest.mark.parametrize(("query", "replay", "where"), load_fixtures(),
                         ids=[q[:60] for q, _, _ in load_fixtures()])
def test_the_analysis_matches_the_golden_plan(query: str, replay: str, where: str,
                                              tables: dict) -> None:
    found = analyze(query, tables, params=[0.1, "b"] if "?" in query else None)
    assert (", ".join(sorted(replayable_now(found))) or "-") == replay
    if replay != "-":
        pushed = found.pushed
        assert (pushed.sql(dialect="duckdb") if pushed is not None else "*") == where


def test_positional_and_named_parameters_are_bound_for_the_pushed_filter(tables: dict) -> None:
    positional = analyze("SELECT val_acc FROM history WHERE lr > ? AND runid = ?", tables,
                         [0.1, "b"])
    named = analyze("SELECT val_acc FROM history WHERE lr > $low", tables, {"low": 0.2})
    assert positional.params == {"__p0": 0.1, "__p1": "b"}
    assert named.params == {"low": 0.2} and named.pushed.sql(dialect="duckdb") == "lr > $low"


def test_missing_parameters_widen_instead_of_failing(tables: dict) -> None:
    found = analyze("SELECT val_acc FROM history WHERE lr > ?", tables, None)
    assert found.replayable == {"val_acc"} and found.pushed is None


def test_a_name_known_nowhere_names_the_closest_known_names(tables: dict) -> None:
    with pytest.raises(UnknownColumnError, match="did you mean val_acc"):
        analyze("SELECT runid, val_accuracy FROM history", tables)


def test_a_script_name_no_run_has_reads_as_a_null_column(tables: dict) -> None:
    import duckdb

    rewrite = rewrite_query("SELECT runid, val_acc FROM history", schema(), tables, SCRIPT_NAMES)
    con = duckdb.connect()
    con.execute("CREATE TABLE runs (projid VARCHAR, runid VARCHAR, tstamp TIMESTAMP, "
                "vid VARCHAR, filename VARCHAR)")
    con.execute("INSERT INTO runs VALUES ('p', 'a', '2026-01-01', 'v', 'train.py')")
    assert con.execute(rewrite.sql).fetchall() == [("a", None)]
    assert rewrite.analysis.replayable == {"val_acc"}


# --- fuzz: generated SQL never crashes the analyzer, it answers or raises a clear error ---

COLUMNS = ["runid", "tstamp", "epoch", "step", "lr", "hidden", "loss", "acc", "val_acc",
           "grad_norm", "nope", "h.lr", "x.val_acc", "*"]
PREDICATES = ["{c} > 0.1", "{c} = ?", "{c} IS NULL", "{c} IN (SELECT lr FROM history)",
              "NOT {c} < 2", "{c} BETWEEN 1 AND 3", "random() < {c}", "{c} LIKE 'a%'",
              "coalesce({c}, 0) = 1", "({c} > 1 OR {c} < 0)"]
SHAPES = [
    "SELECT {sel} FROM history WHERE {pred}",
    "SELECT {sel} FROM history AS h WHERE {pred} ORDER BY 1",
    "WITH x AS (SELECT {sel} FROM history WHERE {pred}) SELECT * FROM x",
    "SELECT * FROM (SELECT {sel} FROM history) AS t WHERE {pred}",
    "SELECT {sel} FROM runs JOIN history USING (tstamp) WHERE {pred}",
    "SELECT {sel}, count(*) OVER (PARTITION BY runid) FROM history WHERE {pred} GROUP BY ALL",
    "SELECT {sel} FROM history WHERE {pred} UNION SELECT {sel} FROM history",
    "SELECT {sel} FROM history WHERE {pred} AND lr IN (SELECT lr FROM history WHERE {pred})",
    "SELECT {sel} FROM history h1 JOIN history h2 USING (runid) WHERE {pred}",
    "SELECT {sel} FROM history WHERE {pred} QUALIFY row_number() OVER () = 1",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(SHAPES), sel=st.lists(st.sampled_from(COLUMNS), min_size=1,
                                                     max_size=3),
       preds=st.lists(st.tuples(st.sampled_from(PREDICATES), st.sampled_from(COLUMNS)),
                      min_size=1, max_size=3),
       joiner=st.sampled_from([" AND ", " OR "]), noise=st.sampled_from(["", ";", " )", "(("]))
def test_generated_sql_gets_an_answer_or_a_clear_error(shape, sel, preds, joiner, noise,
                                                       tables) -> None:
    pred = joiner.join(p.format(c=c) for p, c in preds)
    sql = shape.format(sel=", ".join(sel), pred=pred) + noise
    try:
        rewrite = rewrite_query(sql, schema(), tables, SCRIPT_NAMES, params=[1] * 8)
    except EngineError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(rewrite.sql, str) and rewrite.sql
    found = rewrite.analysis
    assert found.replayable <= set(SCRIPT_NAMES)
    if found.pushed is not None:  # the pushed filter reads only run-level columns and dims
        cols = {c.name for c in found.pushed.find_all(sqlglot.exp.Column)}
        assert cols <= {"runid", "tstamp", "projid", "vid", "filename", "epoch", "step",
                        "lr", "hidden"}


FUZZ_SCRIPT = """\
import flor
lr = flor.arg("lr", 0.1)
hidden = flor.arg("hidden", 8)
for epoch in flor.loop("epoch", range(2)):
    for step in flor.loop("step", range(2)):
        flor.log("loss", 1.0 / (epoch + step + 1))
    flor.log("acc", 0.5 + epoch / 10)
"""


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_repo, run_script

    repo = make_repo(tmp_path_factory.mktemp("fuzz") / "proj", {"train.py": FUZZ_SCRIPT})
    run_script(repo, "train.py", "--flor", "a")
    run_script(repo, "train.py", "--flor", "b", "--kwargs", "lr=0.2")
    (repo / "train.py").write_text(FUZZ_SCRIPT + "    flor.log(\"val_acc\", 0.9)\n"
                                                 "    flor.log(\"grad_norm\", 1.0)\n")
    return repo


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(SHAPES), sel=st.lists(st.sampled_from(COLUMNS), min_size=1,
                                                     max_size=3),
       preds=st.lists(st.tuples(st.sampled_from(PREDICATES), st.sampled_from(COLUMNS)),
                      min_size=1, max_size=3),
       joiner=st.sampled_from([" AND ", " OR "]), noise=st.sampled_from(["", ";", " )"]))
def test_generated_sql_through_the_db_api_answers_or_raises_one_line(
        shape, sel, preds, joiner, noise, fuzz_project) -> None:
    import warnings

    import florsql

    pred = joiner.join(p.format(c=c) for p, c in preds)
    sql = shape.format(sel=", ".join(sel), pred=pred) + noise
    params = [0.1] * sql.count("?")
    with warnings.catch_warnings(), florsql.connect(fuzz_project, replay="off") as conn:
        warnings.simplefilter("ignore")
        try:
            cur = conn.execute(sql, params or None)
        except florsql.Error as e:
            assert str(e) and "\n" not in str(e)
            return
        assert cur.description is not None
        cur.fetchall()
