"""The name statistics kept batch by batch equal a recount over every record, whatever the
batches: a live run ingested part by part, a context whose records of a name span parts, a
run rebuilt from its files, a deleted run, ints beyond 64 and 128 bits.

`history` trusts these counts: a name no context holds twice is read without ranking its
records, so an overcounted context would let the wrong record win (checked below through
`history` itself, not only through the statistics).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import florsql
from conftest import make_repo, run_script

SCRIPT = """
import flor
lr = flor.arg("lr", 3)
tag = flor.arg("tag", "x")
flor.log("start", None)
for epoch in flor.loop("epoch", range(3)):
    flor.log("acc", epoch / 3)
    flor.commit()
    for step in flor.loop("step", range(4)):
        flor.log("loss", epoch + step / 10)
        flor.log("big", 2 ** 70 + step)
        if step == 1:
            flor.commit()
    flor.log("acc", epoch / 2)  # the epoch's second acc, in a later part than its first
    flor.log("huge", 2 ** 130)
    flor.log("flag", epoch % 2 == 0)
    for a in flor.loop("a", range(1)):
        for b in flor.loop("b", range(1)):
            for c in flor.loop("c", range(2)):
                flor.log("deep", c)
"""
# what the statistics were computed by before they were kept batch by batch: the oracle
RECOUNT = """
SELECT tstamp, lower(value_name), value_name, depth, kind, count(*), count(DISTINCT ctx_id),
       list_sort(list(DISTINCT value_type)),
       count(*) FILTER (WHERE value_type = 'int' AND abs(value_num) >= 9.2e18
                        AND TRY_CAST(value_text AS BIGINT) IS NULL),
       count(*) FILTER (WHERE value_type = 'int' AND abs(value_num) >= 1.7e38
                        AND TRY_CAST(value_text AS HUGEINT) IS NULL)
FROM _logs GROUP BY ALL ORDER BY ALL
"""
KEPT = ("SELECT tstamp, name_key, value_name, depth, kind, records, contexts, list_sort(types), "
        "over_int64, over_int128 FROM _name_stats ORDER BY ALL")
LOOPS_RECOUNT = """
SELECT DISTINCT * FROM (
    SELECT tstamp, loop_1 AS loop_name, 1 AS depth FROM _logs WHERE depth >= 1
    UNION ALL SELECT tstamp, loop_2, 2 FROM _logs WHERE depth >= 2
    UNION ALL SELECT tstamp, loop_3, 3 FROM _logs WHERE depth >= 3
    UNION ALL SELECT tstamp, loop_name, depth FROM _contexts WHERE depth > 3) ORDER BY ALL
"""


def assert_statistics_exact(conn: florsql.Connection) -> None:
    catalog = conn.session.con
    assert catalog.execute(KEPT).fetchall() == catalog.execute(RECOUNT).fetchall()
    assert (catalog.execute("SELECT * FROM _loop_stats ORDER BY ALL").fetchall()
            == catalog.execute(LOOPS_RECOUNT).fetchall())


def _run_dir(repo: Path) -> Path:
    return next((repo / ".flor" / "runs").iterdir())


def test_a_live_run_ingested_part_by_part_keeps_exact_statistics(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    run_dir = _run_dir(repo)
    aside = tmp_path / "aside"
    aside.mkdir()
    parts = sorted((run_dir / "parts").iterdir())
    assert len(parts) >= 6  # a context's records of `acc` span parts
    for path in [*parts, run_dir / "end.json"]:
        shutil.move(path, aside / path.name)
    with florsql.connect(repo, replay="off") as conn:
        for part in parts:  # as a live run's refreshes find them
            shutil.move(aside / part.name, part)
            conn.refresh()
            assert_statistics_exact(conn)
        shutil.move(aside / "end.json", run_dir / "end.json")
        conn.refresh()
        assert_statistics_exact(conn)
        stats = dict(conn.execute(
            "SELECT name, value_types FROM names WHERE name IN ('big', 'huge', 'acc')"
        ).fetchall())
        types = conn.execute("SELECT typeof(big), typeof(huge), typeof(acc) FROM history "
                             "WHERE big IS NOT NULL LIMIT 1").fetchone()
        acc = conn.execute("SELECT epoch, acc FROM history ORDER BY epoch").fetchall()
    assert stats == {"big": ["int"], "huge": ["int"], "acc": ["float"]}
    assert types == ("HUGEINT", "DOUBLE", "DOUBLE")
    assert acc == [(0, 0.0), (1, 0.5), (2, 1.0)]  # the later of each epoch's two records


def test_a_rebuilt_run_and_a_deleted_run_keep_exact_statistics(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "kept")
    with florsql.connect(repo, replay="off") as conn:
        conn.refresh()
        run_script(repo, "train.py", "--flor", "gone")
        conn.refresh()
        assert_statistics_exact(conn)
        kept = conn.execute("SELECT run_dir FROM runs WHERE runid = 'kept'").fetchone()[0]
        gone = conn.execute("SELECT run_dir FROM runs WHERE runid = 'gone'").fetchone()[0]
        first = sorted((Path(kept) / "parts").iterdir())[0]
        first.write_bytes(first.read_bytes())  # a part rewritten: the run is rebuilt
        shutil.rmtree(gone)
        conn.refresh()
        assert_statistics_exact(conn)
        assert conn.execute("SELECT count(DISTINCT tstamp) FROM _name_stats").fetchone() == (1,)
    with florsql.connect(repo, replay="off") as other:  # loaded from the published catalog
        assert_statistics_exact(other)


def test_distinct_contexts_per_group_equal_a_set_count_whichever_way_they_are_counted(
        monkeypatch) -> None:
    import numpy as np

    from florsql.engine.catalog import name_stats

    rng = np.random.default_rng(3)
    for groups in (1, 2, 5):
        ctx_row = rng.integers(0, 300, 2_000).astype(np.int64)
        group = rng.integers(0, groups, 2_000).astype(np.int8)
        expected = [len({c for c, g in zip(ctx_row.tolist(), group.tolist(), strict=True)
                         if g == k}) for k in range(groups)]
        marked = name_stats._contexts_per_group([ctx_row[:900], ctx_row[900:]],
                                                [group[:900], group[900:]], groups)
        with monkeypatch.context() as patched:
            patched.setattr(name_stats, "_MARK_LIMIT", 10)  # too large to mark: sorted
            ordered = name_stats._contexts_per_group([ctx_row], [group], groups)
        assert marked.tolist() == ordered.tolist() == expected


def test_the_loops_present_are_those_some_record_sits_in() -> None:
    import numpy as np

    from florsql.engine.catalog.name_stats import _loops_present

    assert _loops_present(np.full(5, 3, np.int32)) == [3]
    assert _loops_present(np.full(5, -1, np.int32)) == []
    assert _loops_present(np.array([-1, 4, 2, 4, -1], np.int32)) == [2, 4]
    assert _loops_present(np.empty(0, np.int32)) == []
