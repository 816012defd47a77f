"""`contexts` lists every context of every run once, with its path, parent, loop and iteration,
although a context with records of its own at depth 1..3 has no row in `_contexts`: its first
record stands for it (`defines_ctx`). Checked against the contexts decoded from the record
parts themselves, for a run ingested whole and for a live run ingested part by part.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
from test_name_stats import SCRIPT

import florsql
from conftest import make_repo, run_script
from florsql.engine.catalog import pieces
from florsql.engine.catalog.parts import read_part
from florsql.engine.catalog.rows import RowBatch, rows_of_part

# SCRIPT has contexts of every kind: with records of their own (steps), with records only below
# them (the loops `a` and `b`), defined again by a later part (an epoch spanning parts), deeper
# than the ancestor columns (`c`)
CONTEXTS = ("SELECT ctx_id, depth, path, parent_id, loop_name, iteration FROM contexts "
            "WHERE tstamp = ? ORDER BY ALL")


def decoded_contexts(run_dir: Path) -> list[tuple]:
    """The run's contexts as its parts define them, each once."""
    found = set()
    for part in sorted((run_dir / "parts").iterdir()):
        batch = RowBatch(tstamp="2026-01-01T00:00:00.000000", paths=True)
        rows_of_part(read_part(part), batch)
        found |= {row[:6] for row in batch.contexts}
    return sorted(found, key=lambda row: tuple((v is None, v) for v in row))


def listed(conn: florsql.Connection, tstamp) -> list[tuple]:
    rows = conn.execute(CONTEXTS, [tstamp]).fetchall()
    return sorted(rows, key=lambda row: tuple((v is None, v) for v in row))


def test_contexts_a_record_stands_for_are_listed_once_with_their_columns(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    run_dir = next((repo / ".flor" / "runs").iterdir())
    with florsql.connect(repo, replay="off") as conn:
        tstamp = conn.execute("SELECT tstamp FROM runs").fetchone()[0]
        assert listed(conn, tstamp) == decoded_contexts(run_dir)
        stored = conn.session.con.execute("SELECT count(*) FROM _contexts").fetchone()[0]
        total = conn.execute("SELECT count(*), count(DISTINCT ctx_id) FROM contexts").fetchone()
        outer = conn.execute("SELECT count(*) FROM contexts WHERE loop_name IN ('a', 'b')"
                             ).fetchone()
    assert total[0] == total[1] and stored < total[0] / 2  # steps cost no second row
    assert outer == (6,)  # contexts with records only below them are listed too


def test_a_live_run_ingested_part_by_part_lists_each_context_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    run_dir = next((repo / ".flor" / "runs").iterdir())
    aside = tmp_path / "aside"
    aside.mkdir()
    parts = sorted((run_dir / "parts").iterdir())
    for path in [*parts, run_dir / "end.json"]:
        shutil.move(path, aside / path.name)
    with florsql.connect(repo, replay="off") as conn:
        for part in parts:
            shutil.move(aside / part.name, part)
            conn.refresh()
        shutil.move(aside / "end.json", run_dir / "end.json")
        tstamp = conn.execute("SELECT tstamp FROM runs").fetchone()[0]
        assert listed(conn, tstamp) == decoded_contexts(run_dir)
        loops = conn.execute("SELECT ctx_id, depth, loop_name, iteration FROM loops "
                             "ORDER BY ALL").fetchall()
    with florsql.connect(repo, replay="off") as other:  # from the published segments
        assert listed(other, tstamp) == decoded_contexts(run_dir)
    # each context's enclosing loops, outermost first, as its path spells them
    assert loops == sorted((ctx, level, *_loop_and_iteration(step))
                           for ctx, _, path, *_ in decoded_contexts(run_dir) if path
                           for level, step in enumerate(path.split("/")))


def _loop_and_iteration(step: str) -> tuple[str, int]:
    loop, iteration = step.rsplit("=", 1)
    return loop, int(iteration)


def test_rows_built_in_chunks_on_several_threads_equal_those_built_in_one_piece(
        tmp_path: Path, monkeypatch) -> None:
    """A batch's records are cut into chunks built on a thread each (pieces.py): the table,
    which records stand for their contexts, and the statistics keys do not depend on it, even
    where a context's records span chunks (an epoch's two `acc` records)."""
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    run_dir = next((repo / ".flor" / "runs").iterdir())
    built = []
    for chunk, threshold in ((10**9, 10**12), (3, 0)):  # one piece a part; chunks of 3 records
        monkeypatch.setattr(pieces, "CHUNK_RECORDS", chunk)
        monkeypatch.setattr(pieces, "_PARALLEL_RECORDS", threshold)
        batch = RowBatch(tstamp="2026-01-01T00:00:00.000000")
        for part in sorted((run_dir / "parts").iterdir()):
            rows_of_part(read_part(part), batch)
        definitions = batch._definitions()
        claims = pieces.ContextClaims(definitions.rows)
        chunks = list(pieces.build_chunks(batch._records, pieces.BatchShape(
            definitions, list(batch._names), list(batch._loops), batch.tstamp, batch.source,
            np.empty(0, np.int64))))
        table = pa.concat_tables([claims.settle(chunk) for chunk in chunks])
        built.append((table, sorted(np.concatenate(claims.claimed).tolist()),
                      np.concatenate([c.keys.ctx_row for c in chunks])))
    (one, one_claimed, one_rows), (many, many_claimed, many_rows) = built
    assert one.num_rows > 0 and one.column("defines_ctx").to_pylist().count(True) > 0
    assert len(many.column("ord").chunks) > len(one.column("ord").chunks)
    assert many.equals(one) and many_claimed == one_claimed
    assert np.array_equal(many_rows, one_rows)
