"""Saved queries in queries/: each shipped one answers correctly over the demo's history."""

from __future__ import annotations

from pathlib import Path

import pytest

import florsql
from conftest import EXAMPLES, make_repo, run_script
from florsql.cli import main
from florsql.saved import SavedQueryError, find_query, list_queries, load_query_file

SHIPPED = ["args_vs_final_metric", "best_epoch", "code_changes", "learning_curve",
           "runs_above_lr"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's history, smaller: three runs, then a code change and a fourth run."""
    source = (EXAMPLES / "train.py").read_text()
    repo = make_repo(tmp_path_factory.mktemp("demo") / "proj", {"train.py": source})
    for runid, lr, hidden in (("base", "0.01", "16"), ("fast", "0.05", "16"),
                              ("small", "0.05", "4")):
        run_script(repo, "train.py", "--flor", runid, "--kwargs", "epochs=3", f"lr={lr}",
                   f"hidden={hidden}")
    (repo / "train.py").write_text(source.replace("momentum=0.9", "momentum=0.5"))
    run_script(repo, "train.py", "--flor", "lowmom", "--kwargs", "epochs=3", "lr=0.05")
    return repo


def _run(demo: Path, name: str, **params: str) -> list[tuple]:
    query = find_query(name, demo)
    sql, values = query.bind(params)
    with florsql.connect(demo) as conn:
        return conn.execute(sql, values or None).fetchall()


def _accuracy(demo: Path) -> dict[tuple[str, int], float]:
    with florsql.connect(demo) as conn:
        rows = conn.execute(
            "SELECT r.runid, c.iteration, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "JOIN contexts c USING (tstamp, ctx_id) WHERE l.value_name = 'accuracy'").fetchall()
    return {(runid, epoch): acc for runid, epoch, acc in rows}


def test_every_shipped_query_has_a_name_and_description() -> None:
    queries = {q.name: q for q in list_queries(None)}
    assert sorted(queries) == SHIPPED
    assert all(q.description for q in queries.values())


def test_best_epoch_finds_each_runs_highest_accuracy(demo: Path) -> None:
    acc = _accuracy(demo)
    rows = _run(demo, "best_epoch")
    assert len(rows) == 4
    for runid, _tstamp, _vid, best_epoch, best in rows:
        mine = {e: a for (r, e), a in acc.items() if r == runid}
        assert best == max(mine.values()) and mine[best_epoch] == best
    assert [r[4] for r in rows] == sorted((r[4] for r in rows), reverse=True)


def test_learning_curve_averages_the_loss_per_epoch(demo: Path) -> None:
    rows = _run(demo, "learning_curve", runid="fast")
    with florsql.connect(demo) as conn:
        losses = conn.execute(
            "SELECT p.iteration, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "JOIN contexts c USING (tstamp, ctx_id) JOIN contexts p "
            "ON p.tstamp = c.tstamp AND p.ctx_id = c.parent_id "
            "WHERE r.runid = 'fast' AND l.value_name = 'loss'").fetchall()
    assert [r[2] for r in rows] == [0, 1, 2]
    for _runid, _ts, epoch, mean, low, high, steps in rows:
        mine = [v for e, v in losses if e == epoch]
        assert steps == len(mine) == 14
        assert mean == pytest.approx(sum(mine) / len(mine)) and (low, high) == (min(mine),
                                                                                 max(mine))


def test_args_vs_final_metric_pairs_args_with_the_last_epochs_accuracy(demo: Path) -> None:
    acc = _accuracy(demo)
    rows = {r[0]: r for r in _run(demo, "args_vs_final_metric")}
    assert rows["small"][2:6] == (0.05, 4, 32, 3)
    assert rows["base"][2] == 0.01
    assert all(rows[r][6] == acc[(r, 2)] for r in rows)


def test_code_changes_lists_the_first_run_and_the_run_after_the_edit(demo: Path) -> None:
    rows = _run(demo, "code_changes")
    assert [(r[0], r[5]) for r in rows] == [("base", None), ("lowmom", "small")]
    assert rows[1][3] != rows[1][4]


def test_runs_above_lr_binds_its_parameter(demo: Path) -> None:
    assert sorted(r[0] for r in _run(demo, "runs_above_lr", lr="0.02")) == ["fast", "lowmom",
                                                                           "small"]
    assert _run(demo, "runs_above_lr", lr="1") == []


def test_a_missing_or_unknown_parameter_is_a_clear_error(demo: Path) -> None:
    query = find_query("runs_above_lr", demo)
    with pytest.raises(SavedQueryError, match="missing lr; it takes --param lr="):
        query.bind({})
    with pytest.raises(SavedQueryError, match="unknown lrr"):
        query.bind({"lr": "1", "lrr": "2"})


def test_an_unknown_query_name_suggests_the_closest(demo: Path) -> None:
    with pytest.raises(SavedQueryError, match="did you mean best_epoch"):
        find_query("best_epok", demo)


def test_the_projects_own_queries_come_first_and_header_is_optional(demo: Path) -> None:
    own = demo / "queries"
    own.mkdir(exist_ok=True)
    (own / "best_epoch.sql").write_text("-- name: best_epoch\nSELECT 1 AS mine\n")
    (own / "tiny.sql").write_text("SELECT count(*) FROM runs WHERE runid = :who\n")
    try:
        assert _run(demo, "best_epoch") == [(1,)]
        tiny = load_query_file(own / "tiny.sql")
        assert (tiny.name, tiny.params, tiny.description) == ("tiny", ["who"], "")
        assert _run(demo, "tiny", who="base") == [(1,)]
    finally:
        for f in own.iterdir():
            f.unlink()
        own.rmdir()


def test_florsql_run_prints_a_saved_query_and_queries_lists_them(demo: Path, capsys) -> None:
    assert main(["run", "runs_above_lr", "--param", "lr=0.02", "--project", str(demo),
                 "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "runid,tstamp,lr,hidden,best_accuracy" and len(out) == 4
    assert main(["queries", "--project", str(demo)]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in SHIPPED) and ":lr" in listing
    assert main(["run", "runs_above_lr", "--project", str(demo)]) == 1
    assert "missing lr" in capsys.readouterr().err


def test_one_bad_saved_query_file_is_skipped_with_a_warning_and_the_others_still_run(
        demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import warnings

    from florsql.saved import SavedQueryWarning

    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "good.sql").write_text("-- name: good\nSELECT 41 + 1 AS answer\n")
    (queries / "broken.sql").write_text("SELECT (((\n")
    (queries / "binary.sql").write_bytes(b"SELECT '\xff'\n")
    monkeypatch.setenv("FLORSQL_QUERIES", str(queries))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [q.name for q in list_queries(demo)]
    assert "good" in names and "best_epoch" in names and "broken" not in names
    skipped = sorted(str(w.message) for w in caught if w.category is SavedQueryWarning)
    assert len(skipped) == 2 and "binary.sql: cannot read it (not UTF-8 text)" in skipped[0]
    assert main(["run", "good", str(demo), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["answer", "42"]
    assert main(["run", "broken", str(demo)]) == 1  # asked for by name: its own error
    assert "broken.sql: not valid SQL" in capsys.readouterr().err
