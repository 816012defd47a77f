"""The command-line tree: subcommands in --help, one project rule, --version, `python -m`,
several statements per run, and exports written by florsql (never by SQL)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import florsql
from conftest import make_repo, run_script
from florsql.cli import main, with_default_command
from florsql.statements import split_statements

FLORSQL = Path(sys.executable).parent / "florsql"
SCRIPT = """\
import flor
lr = flor.arg("lr", 0.5)
for epoch in flor.loop("epoch", range(3)):
    flor.log("loss", 1.0 / (epoch + 1))
    flor.log("note", "line one\\nline two")
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("tree") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "treeRun")
    (repo / "queries").mkdir()  # a directory named like a subcommand
    (repo / "queries" / "losses.sql").write_text(
        "-- name: losses\n-- description: loss per epoch above :floor\n"
        "SELECT epoch, loss FROM history WHERE loss > :floor ORDER BY epoch;\n"
        "SELECT count(*) AS n FROM runs;\n")
    return repo


def _cli(*args: str, cwd: Path | None = None, stdin: str | None = None
         ) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLORSQL), *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, stdin=None if stdin is not None else subprocess.DEVNULL,
                          timeout=120)


# --- the tree ----------------------------------------------------------------------------------


def test_every_subcommand_is_listed_in_the_top_level_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("query", "run", "queries", "replay"):
        assert f"\n    {command}" in out, out
    assert "recognised only as the first word" in " ".join(out.split())  # a dir named so


@pytest.mark.parametrize("command", ["query", "run", "queries", "replay"])
def test_each_subcommand_has_its_own_help_with_the_project_rule(
    command: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "PROJECT" in out and "--project DIR" in out


def test_version_names_florsql_and_its_engines() -> None:
    proc = _cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"florsql {florsql.__version__} (duckdb {duckdb.__version__}")


def test_a_word_that_is_no_command_is_the_project_of_the_default_query_command() -> None:
    assert with_default_command(["proj", "-c", "SELECT 1"]) == ["query", "proj", "-c", "SELECT 1"]
    assert with_default_command(["queries"]) == ["queries"]
    assert with_default_command([]) == ["query"]
    assert with_default_command(["--version"]) == ["--version"]


def test_a_subcommand_wins_over_a_directory_of_the_same_name(project: Path) -> None:
    listed = _cli("queries", cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert "losses" in listed.stdout and ":floor" in listed.stdout
    # The directory itself opens with a path or --project (it has no history: a clear error).
    for args in (["./queries", "-c", "SELECT 1"], ["--project", "queries", "-c", "SELECT 1"]):
        opened = _cli(*args, cwd=project)
        assert opened.returncode == 0, opened.stderr  # inside the repo: the same project
        assert opened.stdout.splitlines()[0].strip() == "1"


def test_the_project_is_a_word_or_an_option_for_every_subcommand(project: Path) -> None:
    for args in (["run", "losses", str(project), "-p", "floor=0.4", "--format", "csv"],
                 ["run", "losses", "--project", str(project), "-p", "floor=0.4",
                  "--format", "csv"]):
        proc = _cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[:3] == ["epoch,loss", "0,1.0", "1,0.5"]
    assert _cli("queries", str(project)).returncode == 0
    assert _cli("replay", "loss", str(project), "--dry-run").returncode == 0


def test_two_different_projects_are_refused(project: Path, tmp_path: Path) -> None:
    proc = _cli("queries", str(project), "--project", str(tmp_path))
    assert proc.returncode == 2 and "two projects" in proc.stderr


@pytest.mark.parametrize("module", ["florsql", "florsql.cli"])
def test_python_dash_m_florsql_is_the_florsql_command(project: Path, module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, str(project), "-c", "SELECT 6 * 7 AS x",
                           "--format", "csv"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["x", "42"]


def test_python_dash_m_flor_prints_its_usage_and_version() -> None:
    usage = subprocess.run([sys.executable, "-m", "flor"], capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python -m flor")
    version = subprocess.run([sys.executable, "-m", "flor", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.strip() == f"flor {florsql.__version__}"


# --- several statements ------------------------------------------------------------------------


def test_split_statements_keeps_semicolons_in_strings_and_comments() -> None:
    text = "SELECT ';' AS a; -- x;\n/* ; */ SELECT \"b;c\" FROM t;;\n EXPLAIN REPLAY SELECT 1"
    got = split_statements(text)
    assert [s.number for s in got] == [1, 2, 3]
    assert got[0].sql == "SELECT ';' AS a"
    assert got[1].sql.endswith('SELECT "b;c" FROM t') and got[1].line == 1
    assert got[2].sql == "EXPLAIN REPLAY SELECT 1" and got[2].line == 3
    assert split_statements(" ;; -- nothing\n") == []


def test_every_result_of_a_command_prints_in_order(project: Path) -> None:
    proc = _cli("-c", "SELECT 1 AS a; SET VARIABLE x = 1; SELECT 2 AS b", str(project),
                "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n\n") == ["a\n1", "b\n2\n"]


def test_every_result_of_a_file_and_of_stdin_prints_in_order(project: Path, tmp_path: Path
                                                              ) -> None:
    sql = "SELECT 'x' AS first;\nSELECT runid FROM runs;\nSELECT 3 AS third;\n"
    (tmp_path / "three.sql").write_text(sql)
    for proc in (_cli("-f", str(tmp_path / "three.sql"), str(project), "--format", "json"),
                 _cli(str(project), "--format", "json", stdin=sql)):
        assert proc.returncode == 0, proc.stderr
        docs = [json.loads(chunk) for chunk in proc.stdout.split("\n\n")]
        assert docs == [[{"first": "x"}], [{"runid": "treeRun"}], [{"third": 3}]]


def test_an_error_in_statement_k_names_k_and_stops(project: Path) -> None:
    proc = _cli("-c", "SELECT 1 AS a;\nSELECT nope FROM runs;\nSELECT 3 AS c", str(project),
                "--format", "csv")
    assert proc.returncode == 1
    assert proc.stdout == "a\n1\n"  # the first ran, the third did not
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("florsql: error: statement 2 (line 2): ") and "nope" in line


def test_a_saved_query_of_two_statements_prints_both_and_binds_only_what_each_uses(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", "losses", str(project), "--param", "floor=0.6", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split("\n\n") == ["epoch,loss\n0,1.0", "n\n1\n"]


# --- export ------------------------------------------------------------------------------------


def test_a_parquet_export_reads_back_with_duckdb_as_the_query_answers(
    project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "h.parquet"
    sql = "SELECT runid, epoch, loss, note, lr FROM history ORDER BY epoch"
    proc = _cli("-c", sql, str(project), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "wrote 3 row(s)" in proc.stderr
    with florsql.connect(project) as conn:
        expected = conn.execute(sql).fetchall()
        types = [d[1] for d in conn.execute(sql).description]
    back = duckdb.connect()
    assert back.execute(f"SELECT * FROM read_parquet('{out}')").fetchall() == expected
    got_types = [t for _, t, *_ in back.execute(f"SELECT * FROM '{out}'").description]
    assert [str(t) for t in got_types] == types


@pytest.mark.parametrize(("fmt", "suffix"), [("csv", ".csv"), ("tsv", ".tsv"),
                                             ("json", ".json")])
def test_text_exports_take_their_format_from_the_extension(
    project: Path, tmp_path: Path, fmt: str, suffix: str
) -> None:
    out = tmp_path / f"r{suffix}"
    assert main(["-c", "SELECT epoch, note FROM history ORDER BY epoch", str(project),
                 "-o", str(out)]) == 0
    text = out.read_text()
    if fmt == "json":
        assert json.loads(text)[0] == {"epoch": 0, "note": "line one\nline two"}
    else:
        sep = "," if fmt == "csv" else "\t"
        assert text.splitlines()[0] == f"epoch{sep}note"
        back = duckdb.read_csv(str(out), sep=sep).fetchall()
        assert back[0] == (0, "line one\nline two")  # values round-trip exactly


def test_an_export_with_an_unknown_extension_or_to_a_missing_dir_is_one_line(
    project: Path, tmp_path: Path
) -> None:
    unknown = _cli("-c", "SELECT 1", str(project), "-o", str(tmp_path / "x.xlsx"))
    assert unknown.returncode == 2 and "--format" in unknown.stderr
    missing = _cli("-c", "SELECT 1", str(project), "-o", str(tmp_path / "no" / "x.csv"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    binary = _cli("-c", "SELECT 1", str(project), "--format", "parquet")
    assert binary.returncode == 2 and "--output" in binary.stderr


def test_copy_to_is_refused_with_a_line_naming_the_ways_to_export(
    project: Path, tmp_path: Path
) -> None:
    target = tmp_path / "p.csv"
    proc = _cli("-c", f"COPY (SELECT 1) TO '{target}'", str(project))
    assert proc.returncode == 1 and not target.exists()
    [line] = proc.stderr.strip().splitlines()
    assert "--output" in line and ".export" in line and "cursor.df()" in line


def test_the_demo_ends_with_an_activate_line_and_a_full_path_that_work(tmp_path: Path) -> None:
    from florsql.demo import next_steps

    lines = next_steps(tmp_path).splitlines()
    activate = next(line for line in lines if line.startswith("source "))
    assert Path(activate.split()[1]).is_file()
    full = lines[-1].split()
    assert full[1] == str(tmp_path) and Path(full[0]).is_absolute()
    proc = subprocess.run([full[0], "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("florsql ")
    shell = subprocess.run(["bash", "-c", f"{activate} && command -v florsql"],
                           capture_output=True, text=True, timeout=60)
    assert shell.stdout.strip() == full[0]


def test_an_unknown_saved_query_points_at_the_cli_command_that_lists_them(project: Path) -> None:
    proc = _cli("run", "losess", str(project))
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "did you mean losses?" in line and "`florsql queries`" in line


def test_a_huge_or_binary_sql_file_or_stdin_is_one_line_not_a_traceback(
        project: Path, tmp_path: Path) -> None:
    binary = tmp_path / "q.sql"
    binary.write_bytes(b"SELECT '\xff'")
    for proc in (_cli("-f", "/dev/zero", str(project)), _cli("-f", str(binary), str(project))):
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("florsql: error: cannot read ")
    piped = subprocess.run([str(FLORSQL), str(project)], input=b"SELECT '\xff'",
                           capture_output=True, timeout=60)
    assert piped.returncode == 1 and b"standard input: not a SQL script" in piped.stderr
