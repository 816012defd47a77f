"""Smaller query points: `* EXCLUDE`, `COLUMNS(...)`, logged names that look like parameters
(`$1`, `:lr`) as quoted identifiers, and `.read` of a file that is not a SQL script."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import florsql
from conftest import make_repo, run_script
from florsql.shell import run_shell

FLORSQL = Path(sys.executable).parent / "florsql"
SCRIPT = """\
import flor
lr = flor.arg("lr", 0.1)
for epoch in flor.loop("epoch", range(2)):
    for step in flor.loop("step", range(2)):
        flor.log("step_loss", epoch + step / 10)
    flor.log("loss", 1.0 / (epoch + 1))
    flor.log("lower", epoch * 2)
    flor.log("acc", 0.5 + epoch / 10)
    flor.log("$1", epoch + 10)
    flor.log(":lr", epoch + 20)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("names") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "odd")
    return repo


def _query(project: Path, sql: str, params: list | None = None) -> tuple[list[str], list[tuple]]:
    with florsql.connect(project) as conn:
        cur = conn.execute(sql, params)
        return [d[0] for d in cur.description], cur.fetchall()


def test_star_exclude_keeps_every_other_column_and_the_rows_of_star(project: Path) -> None:
    all_cols, all_rows = _query(project, "SELECT * FROM history ORDER BY ALL")
    for gone in ("loss", "step_loss"):
        cols, rows = _query(project, f"SELECT * EXCLUDE ({gone}) FROM history ORDER BY ALL")
        keep = [i for i, c in enumerate(all_cols) if c != gone]
        assert cols == [all_cols[i] for i in keep]
        assert sorted(rows) == sorted(tuple(r[i] for i in keep) for r in all_rows)
    cols, _ = _query(project, "SELECT h.* EXCLUDE (lr) RENAME (acc AS accuracy) FROM history h")
    assert "lr" not in cols and "accuracy" in cols and "acc" not in cols


def test_columns_selects_the_logged_names_its_pattern_matches(project: Path) -> None:
    cols, rows = _query(project, "SELECT epoch, COLUMNS('^lo') FROM history ORDER BY epoch")
    assert cols == ["epoch", "loss", "lower"]
    assert rows == [(0, 1.0, 0), (1, 0.5, 2)]  # a row per epoch: step_loss is not selected
    cols, rows = _query(project, "SELECT COLUMNS('lo.*') FROM history")  # a partial match
    assert cols == ["loss", "lower", "step_loss"] and len(rows) == 4  # a row per step
    cols, rows = _query(project, "SELECT max(COLUMNS(['acc', 'step_loss'])) FROM history")
    assert cols == ["acc", "step_loss"] and rows == [(0.6, 1.1)]


def test_names_that_look_like_parameters_are_columns_when_quoted(project: Path) -> None:
    cols, rows = _query(project, 'SELECT epoch, "$1", ":lr" FROM history ORDER BY epoch')
    assert cols == ["epoch", "$1", ":lr"] and rows == [(0, 10, 20), (1, 11, 21)]
    # The quoted name next to real parameters: `?`, `$1` and `$name` still bind values.
    assert _query(project, 'SELECT ":lr" FROM history WHERE "$1" > ?', [10])[1] == [(21,)]
    assert _query(project, 'SELECT "$1" FROM history WHERE ":lr" < $1', [21])[1] == [(10,)]
    assert _query(project, 'SELECT "$1" FROM history WHERE "$1" = $lr', {"lr": 11})[1] == [(11,)]
    names, _ = _query(project, "SELECT * FROM history")
    assert {"$1", ":lr"} <= set(names)
    proc = subprocess.run([str(FLORSQL), "-c", 'SELECT sum(":lr") AS s FROM history',
                           str(project), "--format", "csv"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "s\n41\n", proc.stderr


def test_read_of_dev_zero_a_huge_or_a_binary_file_is_one_error_and_the_shell_goes_on(
        project: Path, tmp_path: Path) -> None:
    huge = tmp_path / "huge.sql"
    huge.write_text("-- padding\n" * 1_000_000)  # 11 MB of comments
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00\xff\xfe" * 64)
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(f".read /dev/zero\n.read {huge}\n.read {binary}\n"
                       "SELECT 'alive' AS still;\n.quit\n")
        safety = threading.Timer(60, pipe.close)
        safety.start()
        code = run_shell(str(project), input=pipe, output=DummyOutput(), stdout=out,
                         history_file=str(tmp_path / "history"))
        safety.cancel()
    lines = out.getvalue().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code == 0 and len(errors) == 3, out.getvalue()
    assert "/dev/zero: over 10 MB" in errors[0] and "huge.sql: over 10 MB" in errors[1]
    assert "model.pt: not a SQL script" in errors[2]
    assert "alive" in lines
