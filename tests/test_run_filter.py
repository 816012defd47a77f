"""A filter on a run's identity (`WHERE runid = 'b'`) is applied to the catalog tables before
`history`'s joins, so one run's curve reads one run's records; results never change."""

from __future__ import annotations

from pathlib import Path

import pytest

import florsql
from conftest import make_repo, run_script
from florsql.engine.query import analyze

SCRIPT = """import flor
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(4)):
        flor.log("loss", epoch + step / 10)
    flor.log("acc", epoch / 10)
"""
PUSHED = "FROM (SELECT * FROM runs WHERE"
QUERIES = {  # query -> whether the filter goes into history
    "SELECT epoch, step, loss FROM history WHERE runid = 'b' ORDER BY ALL": True,
    "SELECT runid, epoch, avg(loss) FROM history WHERE runid IN ('a', 'c') "
    "GROUP BY ALL ORDER BY ALL": True,
    "SELECT epoch, acc FROM history WHERE runid <> 'a' AND epoch > 0 ORDER BY ALL": True,
    "SELECT count(*) FROM history h WHERE h.runid = 'a' OR h.runid = 'b'": True,
    # an outer join's IS NULL would see the runs a filter took out of history: not pushed
    "SELECT r.runid, h.loss FROM runs r LEFT JOIN history h ON h.runid = r.runid "
    "AND h.epoch = 0 AND h.step = 0 WHERE h.runid = 'b' OR h.runid IS NULL ORDER BY ALL": False,
    # two reads of history, one without a filter: it must see every run
    "SELECT (SELECT count(*) FROM history WHERE runid = 'a'), count(*) FROM history": False,
    "SELECT count(*) FROM history WHERE NOT (runid = 'a')": False,
    "SELECT count(*) FROM history WHERE runid = 'a' OR loss > 1": False,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("runfilter") / "proj", {"train.py": SCRIPT})
    for runid in ("a", "b", "c"):
        run_script(repo, "train.py", "--flor", runid)
    return repo


@pytest.mark.parametrize("sql", list(QUERIES))
def test_a_run_filter_goes_into_history_only_where_it_cannot_change_the_answer(
        project: Path, sql: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with florsql.connect(project, replay="off") as conn:
        got = conn.execute(sql).fetchall()
        assert (PUSHED in conn.session.prepare(sql).sql) == QUERIES[sql]
    # the same query with no filter pushed: every run's records joined, then filtered
    monkeypatch.setattr(analyze, "_identity_filter", lambda scope, alias: None)
    with florsql.connect(project, replay="off") as conn:
        assert PUSHED not in conn.session.prepare(sql).sql
        expected = conn.execute(sql).fetchall()
    assert got == expected and got


def test_a_parameter_is_never_pasted_into_the_pushed_filter(project: Path) -> None:
    sql = "SELECT count(*) FROM history WHERE runid = ?"
    with florsql.connect(project, replay="off") as conn:
        assert conn.execute(sql, ["b"]).fetchall() == [(1,)]
        assert PUSHED not in conn.session.prepare(sql, ["b"]).sql
