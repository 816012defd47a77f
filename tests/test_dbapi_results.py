"""Results in Python beyond PEP 249: polars frames and streamed Arrow record batches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import florsql
from conftest import make_repo, run_script

SCRIPT = """\
import flor
for epoch in flor.loop("epoch", range(5)):
    for step in flor.loop("step", range(40)):
        flor.log("loss", 1.0 / (epoch * 40 + step + 1))
"""
SQL = "SELECT epoch, step, loss FROM history ORDER BY epoch, step"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("results") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "resultsRun")
    return repo


def test_pl_returns_a_polars_frame_equal_to_the_rows(project: Path) -> None:
    polars = pytest.importorskip("polars")  # installed by the test extras
    with florsql.connect(project) as conn:
        rows = conn.execute(SQL).fetchall()
        frame = conn.execute(SQL).pl()
    assert isinstance(frame, polars.DataFrame)
    assert frame.columns == ["epoch", "step", "loss"]
    assert frame.rows() == rows and len(rows) == 200


def test_pl_without_polars_names_the_package_to_install(project: Path) -> None:
    code = ("import sys; sys.modules['polars'] = None\n"  # as if it were not installed
            "import florsql\n"
            f"cur = florsql.connect({str(project)!r}).execute('SELECT 1 AS x')\n"
            "try:\n    cur.pl()\nexcept florsql.NotSupportedError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pip install polars" in proc.stdout


def test_fetch_record_batch_streams_the_rows_in_batches(project: Path) -> None:
    with florsql.connect(project) as conn:
        expected = conn.execute(SQL).fetchall()
        reader = conn.execute(SQL).fetch_record_batch(64)
        assert isinstance(reader, pa.RecordBatchReader)
        batches = list(reader)
    assert [b.num_rows for b in batches] == [64, 64, 64, 8]
    table = pa.Table.from_batches(batches)
    assert list(zip(*(c.to_pylist() for c in table.columns), strict=True)) == expected


def test_fetch_record_batch_continues_after_fetchone(project: Path) -> None:
    with florsql.connect(project) as conn:
        cur = conn.execute(SQL)
        first = cur.fetchone()
        rest = cur.fetch_record_batch(1000).read_all()
    assert first == (0, 0, 1.0) and rest.num_rows == 199


def test_fetch_record_batch_refuses_a_batch_size_below_one(project: Path) -> None:
    with florsql.connect(project) as conn, pytest.raises(florsql.ProgrammingError):
        conn.execute(SQL).fetch_record_batch(0)
