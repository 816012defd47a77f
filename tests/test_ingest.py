"""Ingest is incremental, idempotent and all-or-nothing; bad files never poison the history."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import florsql
from conftest import run_script
from florsql.engine import IngestWarning
from florsql.engine.catalog.parts import read_part

SCRIPT = """
import flor
for epoch in flor.loop("epoch", range(4)):
    for step in flor.loop("step", range(5)):
        flor.log("loss", epoch + step / 10)
    flor.log("acc", epoch / 4)
    flor.commit()  # one part per epoch, so a test can damage exactly one
"""
SUMMARY = ("SELECT value_name, value_type, count(*), sum(value_num) FROM logs "
           "WHERE kind = 'log' GROUP BY ALL ORDER BY ALL")


def _parts(repo: Path) -> list[Path]:
    return sorted((repo / ".flor" / "runs").glob("*/parts/*.part"))


def _part_of_epoch(repo: Path, epoch: int) -> Path:
    """The part whose records are those of `epoch` (the script commits once per epoch)."""
    def epochs(part: Path) -> set[int]:
        return {it for _, _, loop, it in read_part(part)["contexts"] if loop == "epoch"}
    return next(p for p in _parts(repo) if epochs(p) == {epoch})


def test_querying_twice_ingests_nothing_twice(script_repo) -> None:
    repo = script_repo(SCRIPT)
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        first = conn.execute(SUMMARY).fetchall()
        report = conn.refresh()
        assert (report.parts, report.records) == (0, 0)
        assert conn.execute(SUMMARY).fetchall() == first
    assert first == [("acc", "float", 4, 1.5), ("loss", "float", 20, 34.0)]


def test_a_rebuilt_catalog_equals_the_incremental_one(script_repo) -> None:
    repo = script_repo(SCRIPT)
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        conn.execute("SELECT 1")  # ingest the first run
    run_script(repo, "train.py")
    tables = ["runs", "logs", "contexts", "loops", "checkpoints", "iterations"]
    queries = {t: f"SELECT * EXCLUDE (tstamp) FROM {t} ORDER BY ALL" for t in tables}
    queries["runs"] = "SELECT runid, vid, status FROM runs ORDER BY tstamp"
    with florsql.connect(repo) as conn:
        incremental = {t: conn.execute(q).fetchall() for t, q in queries.items()}
    shutil.rmtree(repo / ".flor" / "catalog")
    with florsql.connect(repo) as conn:
        rebuilt = {t: conn.execute(q).fetchall() for t, q in queries.items()}
    assert rebuilt == incremental
    assert len(incremental["logs"]) == 2 * 24


def test_a_corrupt_record_part_is_skipped_with_a_warning(script_repo) -> None:
    repo = script_repo(SCRIPT)
    run_script(repo, "train.py")
    epoch1 = _part_of_epoch(repo, 1)
    epoch1.write_bytes(epoch1.read_bytes()[:40])  # torn in the middle
    with pytest.warns(IngestWarning, match=f"corrupt record part .*{epoch1.name}"):
        conn = florsql.connect(repo)
        rows = conn.execute(SUMMARY).fetchall()
    assert rows == [("acc", "float", 3, 1.25), ("loss", "float", 15, 28.0)]  # epoch 1 lost only
    cur = conn.execute("SELECT count(*) FROM runs WHERE status = 'finished'")
    assert cur.fetchone() == (1,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every query
        conn.execute("SELECT 1")
    conn.close()


def test_a_part_in_a_foreign_format_is_skipped_and_the_cli_says_so(script_repo) -> None:
    repo = script_repo(SCRIPT)
    run_script(repo, "train.py")
    epoch0 = _part_of_epoch(repo, 0)
    epoch0.write_text('{"format": "something-else"}')
    out = subprocess.run([sys.executable, "-m", "florsql.cli", "-c",
                          "SELECT count(*) FROM logs WHERE kind='log'", str(repo)],
                         capture_output=True, text=True)
    assert out.returncode == 0
    assert "18" in out.stdout  # 3 epochs x (5 losses + 1 acc); epoch 0's part was replaced
    assert "warning: skipped corrupt record part" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_an_unreadable_manifest_is_rebuilt_from_the_record_files(script_repo) -> None:
    repo = script_repo(SCRIPT)
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        before = conn.execute(SUMMARY).fetchall()
    manifest = repo / ".flor" / "catalog" / "manifest.json"
    manifest.write_bytes(b"this is not a manifest" * 100)
    with pytest.warns(IngestWarning, match="unreadable"):
        conn = florsql.connect(repo)
        assert conn.execute(SUMMARY).fetchall() == before
    conn.close()
    assert manifest.read_text().startswith("{")  # published again


def test_a_run_directory_without_identity_is_ignored_until_complete(script_repo) -> None:
    repo = script_repo(SCRIPT)
    run_script(repo, "train.py")
    (repo / ".flor" / "runs" / "20990101T000000.000000").mkdir()  # a run being created
    with florsql.connect(repo) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


CKPT_SCRIPT = """
import flor, torch
model = torch.nn.Linear(2, 1)
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(4)):
        flor.log("w", float(model.weight.sum()))
"""


def test_checkpoints_pruned_after_an_ingest_leave_the_catalog_too(script_repo) -> None:
    """A run ingested while training, whose checkpoints FLOR_CHECKPOINT_KEEP thins later."""
    repo = script_repo(CKPT_SCRIPT)
    run_script(repo, "train.py", env={"FLOR_CHECKPOINT_EVERY": "1"})
    (run_dir,) = (repo / ".flor" / "runs").iterdir()
    end = run_dir / "end.json"
    saved = end.read_text()
    end.unlink()  # as seen by a query while the run was still training
    with florsql.connect(repo, replay="off") as conn:
        before = conn.execute("SELECT iteration FROM checkpoints ORDER BY 1").fetchall()
    entry = run_dir / "ckpt" / "epoch-000002.json"
    data = run_dir / "ckpt" / json.loads(entry.read_text())["file"]
    entry.unlink()  # pruning: the entry first, then the file
    data.unlink()
    end.write_text(saved)
    with florsql.connect(repo, replay="off") as conn:
        after = conn.execute("SELECT iteration FROM checkpoints ORDER BY 1").fetchall()
    assert [i for (i,) in before] == [0, 1, 2, 3, 4]
    assert [i for (i,) in after] == [0, 1, 3, 4]
