"""FlorDB's read-side helpers in flor: dataframe, query, log_records, full_pivot, DATA_PREP."""

from __future__ import annotations

from pathlib import Path

import pytest

import flor
from conftest import make_repo, run_script

SCRIPT = """
import flor
lr = flor.arg("lr", 0.1)
for epoch in flor.loop("epoch", range(2)):
    for step in flor.loop("step", range(3)):
        flor.log("loss", lr * 10 + epoch * 3 + step)
    flor.log("acc", epoch / 2 + lr)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("fh") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a", "--kwargs", "lr=0.1")
    run_script(repo, "train.py", "--flor", "b", "--kwargs", "lr=0.2")
    return repo


def test_data_prep_names_the_identity_columns() -> None:
    assert flor.DATA_PREP == ("projid", "runid", "tstamp", "vid")


def test_dataframe_of_a_step_metric_has_a_row_per_step_with_dims(project: Path) -> None:
    df = flor.dataframe("loss", path=project)
    assert list(df.columns) == [*flor.DATA_PREP, "filename", "epoch", "step", "loss"]
    assert len(df) == 12
    b = df[df.runid == "b"]
    assert b.loss.tolist() == [2.0 + 3 * e + s for e in range(2) for s in range(3)]
    assert df.loss.dtype == "float64"  # typed, not strings as in FlorDB


def test_dataframe_of_run_and_epoch_names_follows_their_grain(project: Path) -> None:
    df = flor.dataframe("lr", "acc", path=project)
    assert list(df.columns) == [*flor.DATA_PREP, "filename", "epoch", "lr", "acc"]
    assert df[["runid", "epoch", "lr", "acc"]].values.tolist() == [
        ["a", 0, 0.1, 0.1], ["a", 1, 0.1, 0.6], ["b", 0, 0.2, 0.2], ["b", 1, 0.2, 0.7]]
    assert len(flor.dataframe("lr", path=project)) == 2


def test_dataframe_of_an_unknown_name_is_a_clear_error(project: Path) -> None:
    import florsql

    with pytest.raises(florsql.ProgrammingError, match="did you mean loss"):
        flor.dataframe("loss2", path=project)
    with pytest.raises(ValueError, match="name at least one"):
        flor.dataframe(path=project)


def test_query_returns_a_dataframe_with_bound_parameters(project: Path) -> None:
    df = flor.query("SELECT runid, max(acc) AS best FROM history WHERE lr > ? GROUP BY runid",
                    [0.15], path=project)
    assert df.values.tolist() == [["b", 0.7]]


def test_full_pivot_of_log_records_matches_the_step_level_history(project: Path) -> None:
    records = flor.log_records(path=project)
    assert {"value_name", "value", "epoch", "step"} <= set(records.columns)
    assert len(records) == 2 * (6 + 2 + 1)  # loss per step, acc per epoch, lr per run
    pivot = flor.full_pivot(records)
    assert len(pivot) == 12
    row = pivot[(pivot.runid == "b") & (pivot.epoch == 1) & (pivot.step == 2)].iloc[0]
    assert (float(row.loss), float(row.acc), float(row.lr)) == (7.0, 0.7, 0.2)


def test_repeated_calls_see_new_runs_and_release_the_catalog_when_idle(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    import time

    monkeypatch.setenv("FLOR_CATALOG_IDLE", "0.3")
    before = len(flor.dataframe("lr", path=project))
    run_script(project, "train.py", "--flor", "c", "--kwargs", "lr=0.3")
    assert len(flor.dataframe("lr", path=project)) == before + 1  # same connection, new run
    time.sleep(0.8)
    other = subprocess.run(
        [sys.executable, "-m", "florsql.cli", "-c", "SELECT count(*) FROM runs", str(project),
         "--format", "csv"], capture_output=True, text=True,
        env={**__import__("os").environ, "FLOR_CATALOG_TIMEOUT": "2"})
    assert other.returncode == 0, other.stderr
    assert other.stdout.splitlines()[1] == str(before + 1)
