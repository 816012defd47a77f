"""The `florsql` command: -c/-f/stdin, the four output formats, exit codes and errors."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import florsql
from conftest import make_repo, run_script
from florsql.cli import build_parser, main

README = Path(__file__).resolve().parent.parent / "README.md"
FLORSQL = Path(sys.executable).parent / "florsql"
TINY_SCRIPT = """\
import flor
lr = flor.arg("lr", 0.5)
tag = flor.arg("tag", "tiny")
for epoch in flor.loop("epoch", range(2)):
    flor.log("loss", 1.0 / (epoch + 1))
    flor.log("note", "a,b|c")
"""
QUERY = "SELECT value_name, kind, value_num, value_text FROM logs ORDER BY kind, ord"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("cli") / "proj", {"train.py": TINY_SCRIPT})
    run_script(repo, "train.py", "--flor", "cliRun")
    return repo


def _dbapi(project: Path, sql: str = QUERY) -> tuple[list[str], list[tuple]]:
    with florsql.connect(project) as conn:
        cur = conn.execute(sql)
        return [d[0] for d in cur.description], cur.fetchall()


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLORSQL), *args], input=stdin, capture_output=True, text=True,
                          stdin=None if stdin is not None else subprocess.DEVNULL, timeout=60)


def test_csv_output_matches_the_dbapi_result(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["-c", QUERY, str(project), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    columns, rows = _dbapi(project)
    parsed = list(csv.reader(io.StringIO(out)))
    assert parsed[0] == columns
    assert parsed[1:] == [["" if v is None else str(v) for v in row] for row in rows]
    assert ["note", "log", "", "a,b|c"] in parsed  # quoting survives the round trip


def test_json_output_matches_the_dbapi_result(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--format", "json", "-c", QUERY, str(project)]) == 0
    columns, rows = _dbapi(project)
    expected = [dict(zip(columns, row, strict=True)) for row in rows]
    assert json.loads(capsys.readouterr().out) == expected


def test_json_output_writes_timestamps_and_lists_as_json(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--format", "json", "-c", "SELECT runid, tstamp, argv FROM runs",
                 str(project)]) == 0
    [run] = json.loads(capsys.readouterr().out)
    _, [(runid, tstamp, argv)] = _dbapi(project, "SELECT runid, tstamp, argv FROM runs")
    assert run == {"runid": runid, "tstamp": tstamp.isoformat(), "argv": argv}


def test_table_output_has_a_header_a_rule_every_row_and_a_count(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["-c", QUERY, str(project)]) == 0  # table is the default
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    _, rows = _dbapi(project)
    assert lines[0].split(" | ")[0].strip() == "value_name" and "value_text" in lines[0]
    assert set(lines[1]) <= {"-", "+"}
    assert len(lines) == len(rows) + 3
    assert lines[-1] == f"({len(rows)} rows)"
    assert any("NULL" in line and "a,b|c" in line for line in lines[2:-1])


def test_markdown_output_is_a_pipe_table_with_escaped_pipes(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["-c", QUERY, str(project), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    _, rows = _dbapi(project)
    assert lines[0] == "| value_name | kind | value_num | value_text |"
    assert lines[1] == "| --- | --- | --- | --- |"
    assert len(lines) == len(rows) + 2
    assert "| note | log | NULL | a,b\\|c |" in lines


def test_sql_from_a_file(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("-- runs so far\nSELECT runid, status\nFROM runs;\n")
    assert main(["-f", str(sql_file), str(project), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["runid,status", "cliRun,finished"]


def test_sql_from_stdin(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT count(*) AS n FROM runs"))
    assert main([str(project), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 1}]


def test_no_sql_at_all_exits_2_with_a_hint(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    assert main([str(project)]) == 2
    err = capsys.readouterr().err
    assert "-c SQL" in err and "-f FILE.sql" in err


@pytest.mark.parametrize(
    ("sql", "needle"),
    [("SELEC 1", "syntax error"), ("SELECT runidd FROM runs", "runidd"),
     ("DELETE FROM runs", "DELETE is not allowed")],
    ids=["bad-sql", "unknown-column", "write"],
)
def test_query_errors_exit_1_with_one_line_on_stderr(
    project: Path, capsys: pytest.CaptureFixture, sql: str, needle: str
) -> None:
    assert main(["-c", sql, str(project)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("florsql: error: ") and needle in lines[0]


def test_a_directory_without_history_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["-c", "SELECT 1", str(tmp_path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no flor history" in lines[0]


def test_a_missing_sql_file_exits_1_with_one_line(project: Path, tmp_path: Path) -> None:
    proc = _cli("-f", str(tmp_path / "missing.sql"), str(project))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.sql" in lines[0], proc.stderr


# --- the installed console script, as a user runs it --------------------------------------------


def test_the_console_script_prints_csv_matching_the_dbapi(project: Path) -> None:
    proc = _cli("-c", QUERY, str(project), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    columns, rows = _dbapi(project)
    parsed = list(csv.reader(io.StringIO(proc.stdout)))
    assert parsed == [columns] + [["" if v is None else str(v) for v in r] for r in rows]


def test_the_console_script_reads_sql_from_stdin(project: Path) -> None:
    proc = _cli(str(project), "--format", "json", stdin="SELECT runid FROM runs")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"runid": "cliRun"}]


def test_the_console_script_exits_2_without_sql_and_1_on_bad_sql(project: Path) -> None:
    assert _cli(str(project)).returncode == 2
    proc = _cli("-c", "SELECT nope FROM runs", str(project))
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


def test_python_dash_m_florsql_cli_works_too(project: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "florsql.cli", "-c", "SELECT 40 + 2 AS x",
                           str(project), "--format", "csv"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["x", "42"]


# --- documentation -----------------------------------------------------------------------------


def test_every_cli_option_and_command_is_documented_in_the_readme() -> None:
    import argparse

    readme = README.read_text()
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = [parser, *commands.choices.values()]
    options = {opt for p in parsers for action in p._actions for opt in action.option_strings
               if opt not in ("-h", "--help")}
    assert {"-c", "--command", "-f", "--file", "--format", "--output", "--version",
            "--project", "--where", "--dry-run"} <= options
    missing = [opt for opt in sorted(options)
               if not re.search(rf"(?<![\w-]){re.escape(opt)}\b", readme)]
    assert not missing, f"README.md does not mention {missing}"
    undocumented = [c for c in commands.choices if f"`{c}" not in readme]
    assert not undocumented, f"README.md does not document the commands {undocumented}"
