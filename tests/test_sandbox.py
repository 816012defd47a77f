"""User SQL can neither write nor read a file, load an extension or unlock DuckDB's settings:
every attempt, from every surface (DB-API, `florsql -c`, the shell, a saved query), is refused
with one line and leaves every file as it was; the same connection keeps answering after."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

import florsql
from conftest import make_repo, run_script
from florsql.cli import main
from florsql.engine import CatalogSession
from florsql.shell import run_shell

FLORSQL = Path(sys.executable).parent / "florsql"
SCRIPT = """\
import flor
lr = flor.arg("lr", 0.1)
for epoch in flor.loop("epoch", range(2)):
    flor.log("loss", 1.0 / (epoch + 1))
"""
TODAY = SCRIPT + '    flor.log("double_loss", 2.0 / (epoch + 1))\n'
PAYLOAD = "(SELECT 'echo PWNED' AS x) TO '{target}' (HEADER false, QUOTE '')"
EXPORT = "export a result with `florsql -c SQL --output FILE`"
READ = "florsql's SQL cannot read files"
LOCKED = "is not allowed: florsql locks DuckDB's settings"
EXTENSION = "installing or loading DuckDB extensions is not allowed"
WRITES = "is not allowed: the catalog is rebuilt from the record files"
# (id, SQL with {outside}/{project}/{parts}/{secret} holes, what its one line must say)
ATTEMPTS = [
    ("copy-outside", "COPY " + PAYLOAD.format(target="{outside}/p.sh"), EXPORT),
    ("copy-inside", "COPY " + PAYLOAD.format(target="{project}/p.sh"), EXPORT),
    ("copy-git-hook", "COPY " + PAYLOAD.format(target="{project}/.git/hooks/post-checkout"),
     EXPORT),
    ("copy-catalog", "COPY (SELECT 1 AS x) TO '{project}/.flor/catalog.duckdb'", EXPORT),
    ("copy-manifest", "COPY (SELECT 1 AS x) TO '{project}/.flor/catalog/manifest.json'", EXPORT),
    ("copy-segment", "COPY runs TO '{project}/.flor/catalog/seg-00000001-0-logs.parquet' "
     "(FORMAT parquet)", EXPORT),
    ("read-segment", "SELECT * FROM read_parquet('{project}/.flor/catalog/*.parquet')", READ),
    ("copy-parts", "COPY runs TO '{parts}/999999.part' (FORMAT parquet)", EXPORT),
    ("explain-outside", "EXPLAIN ANALYZE COPY " + PAYLOAD.format(target="{outside}/p.sh"),
     EXPORT),
    ("explain-inside", "EXPLAIN ANALYZE COPY " + PAYLOAD.format(target="{project}/p.sh"),
     EXPORT),
    ("explain-git-hook",
     "EXPLAIN ANALYZE COPY " + PAYLOAD.format(target="{project}/.git/hooks/pre-commit"), EXPORT),
    ("explain-parts", "EXPLAIN ANALYZE COPY runs TO '{parts}/999999.part' (FORMAT parquet)",
     EXPORT),
    ("export-database", "EXPORT DATABASE '{outside}/dump'", EXPORT),
    ("attach-file", "ATTACH '{outside}/other.duckdb' AS other", "ATTACH is not allowed"),
    ("attach-memory", "ATTACH ':memory:' AS scratch", "ATTACH is not allowed"),
    ("install", "INSTALL httpfs", EXTENSION),
    ("load", "LOAD httpfs", EXTENSION),
    ("explain-load", "EXPLAIN ANALYZE LOAD httpfs", EXTENSION),
    ("read-csv", "SELECT * FROM read_csv('{secret}.csv')", READ),
    ("read-text", "SELECT * FROM read_text('{secret}.csv')", READ),
    ("read-parquet", "SELECT * FROM read_parquet('{secret}.parquet')", READ),
    ("glob-flor", "SELECT * FROM glob('{project}/.flor/*')", READ),
    ("set-access", "SET enable_external_access = true", LOCKED),
    ("set-global-access", "SET GLOBAL enable_external_access = true", LOCKED),
    ("pragma-access", "PRAGMA enable_external_access = true", LOCKED),
    ("unlock", "SET lock_configuration = false", LOCKED),
    ("reset-access", "RESET enable_external_access", LOCKED),
    ("reset-lock", "RESET lock_configuration", LOCKED),
    ("allow-dirs", "SET allowed_directories = ['/']", LOCKED),
    ("create-table", "CREATE TABLE notes AS SELECT 1 AS x", "CREATE " + WRITES),
    ("insert", "INSERT INTO runs (runid) VALUES ('ghost')", "INSERT " + WRITES),
    ("delete", "DELETE FROM _log_rows", "DELETE " + WRITES),  # the table under `_logs`
    ("delete-tail", "DELETE FROM _tail_pieces", "DELETE " + WRITES),  # which tail rows count
    ("temp-table", "CREATE TEMP TABLE scratch AS SELECT 1 AS x", "CREATE " + WRITES),
    ("explain-temp", "EXPLAIN ANALYZE CREATE TEMP TABLE scratch AS SELECT 1", "CREATE " + WRITES),
    ("explain-delete", "EXPLAIN ANALYZE DELETE FROM _log_rows", "DELETE " + WRITES),
    ("commit-then-write", "COMMIT; CREATE TABLE evil AS SELECT 1", "TRANSACTION is not allowed"),
    ("checkpoint", "CHECKPOINT", "CALL " + WRITES),
]
IDS = [a[0] for a in ATTEMPTS]
# sqlglot, which reads saved queries for their :params, cannot parse this one: it is refused
# before it runs, and kept out of the project's queries/ since such a file stops the lookup.
UNPARSED = {"export-database": "not valid SQL"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project with one run and a saved query per attempt, and a directory outside it."""
    base = tmp_path_factory.mktemp("sandbox")
    project = make_repo(base / "proj", {"train.py": SCRIPT})
    run_script(project, "train.py", "--flor", "first")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("user,password\nroot,hunter2\n")
    pq.write_table(pa.table({"password": ["hunter2"]}), outside / "secret.parquet")
    holes = _holes(project, outside)
    (project / "queries").mkdir()
    (base / "unparsed").mkdir()
    for name, sql, _ in ATTEMPTS:
        folder = base / "unparsed" if name in UNPARSED else project / "queries"
        (folder / f"{name}.sql").write_text(f"-- name: {name}\n{sql.format(**holes)}")
    with florsql.connect(project) as conn:  # ingest once: later surfaces only read
        conn.execute("SELECT count(*) FROM history").fetchall()
    return {**holes, "base": base}


def _holes(project: Path, outside: Path) -> dict[str, Path]:
    return {"outside": outside, "project": project, "secret": outside / "secret",
            "parts": next((project / ".flor" / "runs").glob("*/parts"))}


def fingerprint(world: dict[str, Path]) -> dict[str, str]:
    """Every file of the project (its .flor and .git included) and outside it, hashed."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in (world["project"], world["outside"]) for p in sorted(root.rglob("*"))
            if p.is_file()}


def _sql(world: dict[str, Path], template: str) -> str:
    return template.format(**world)


@pytest.mark.parametrize(("name", "template", "says"), ATTEMPTS, ids=IDS)
def test_the_dbapi_refuses_each_attempt_with_one_line(world: dict[str, Path], name: str,
                                                      template: str, says: str) -> None:
    before = fingerprint(world)
    with florsql.connect(world["project"]) as conn:
        with pytest.raises(florsql.NotSupportedError) as info:
            conn.execute(_sql(world, template))
        assert says in str(info.value) and "\n" not in str(info.value)
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # still answers
    assert fingerprint(world) == before


@pytest.mark.parametrize(("name", "template", "says"), ATTEMPTS, ids=IDS)
def test_florsql_c_refuses_each_attempt_with_one_line_and_exit_1(
        world: dict[str, Path], capsys: pytest.CaptureFixture, name: str, template: str,
        says: str) -> None:
    before = fingerprint(world)
    assert main(["-c", _sql(world, template), str(world["project"])]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured
    assert lines[0].startswith("florsql: error: ") and says in lines[0]
    assert fingerprint(world) == before


@pytest.mark.parametrize(("name", "template", "says"), ATTEMPTS, ids=IDS)
def test_a_saved_query_refuses_each_attempt_with_one_line(
        world: dict[str, Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        name: str, template: str, says: str) -> None:
    if name in UNPARSED:
        monkeypatch.setenv("FLORSQL_QUERIES", str(world["base"] / "unparsed"))
        says = UNPARSED[name]
    before = fingerprint(world)
    assert main(["run", name, str(world["project"])]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("florsql: error: ") and says in lines[0]
    assert fingerprint(world) == before


def test_the_shell_refuses_every_attempt_one_error_each_and_goes_on(
        world: dict[str, Path]) -> None:
    before = fingerprint(world)
    typed = "".join(_sql(world, sql) + ";\n" for _, sql, _ in ATTEMPTS)
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(typed + "SELECT runid AS alive FROM runs;\n.quit\n")
        safety = threading.Timer(120, pipe.close)
        safety.start()
        code = run_shell(str(world["project"]), input=pipe, output=DummyOutput(), stdout=out,
                         history_file=str(world["base"] / "shell-history"))
        safety.cancel()
    errors = [ln for ln in out.getvalue().splitlines() if ln.startswith("error: ")]
    assert code == 0 and len(errors) == len(ATTEMPTS), out.getvalue()
    for line, (name, _, says) in zip(errors, ATTEMPTS, strict=True):
        assert says in line, (name, line)
    assert re.search(r"alive\s*\n-+\n\s*first", out.getvalue())
    assert fingerprint(world) == before


def test_the_installed_command_and_florsql_run_cannot_plant_a_git_hook(
        world: dict[str, Path]) -> None:
    hook = world["project"] / ".git" / "hooks" / "post-checkout"
    before = fingerprint(world)
    explain = _sql(world, "EXPLAIN ANALYZE COPY " + PAYLOAD.format(target=str(hook)))
    for args in (["-c", explain, str(world["project"])],
                 ["run", "copy-git-hook", str(world["project"])]):
        proc = subprocess.run([str(FLORSQL), *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and EXPORT in proc.stderr, proc.stderr
    assert not hook.exists() and fingerprint(world) == before


def test_duckdb_itself_refuses_files_extensions_settings_and_catalog_writes(
        world: dict[str, Path]) -> None:
    """Below florsql's statement-kind check: the bare locked DuckDB, in a read-only
    transaction, refuses each attempt on its own (the check only adds friendlier words)."""
    session = CatalogSession(world["project"])
    try:
        for name, template, _ in ATTEMPTS:
            if name in ("attach-memory", "temp-table", "explain-temp", "commit-then-write",
                        "checkpoint"):
                continue  # not files, extensions or settings: the kind check's own cases
            cursor = session.cursor()
            cursor.execute("BEGIN TRANSACTION READ ONLY")
            with pytest.raises(duckdb.Error) as info:
                cursor.execute(_sql(world, template))
            assert re.search(r"Permission Error|configuration has been locked|read-only mode|"
                             r"belongs to an attached database", str(info.value)), name
            cursor.execute("ROLLBACK")
            cursor.close()
    finally:
        session.close()


def test_after_every_attempt_the_same_connection_queries_ingests_and_replays(
        world: dict[str, Path], tmp_path: Path) -> None:
    project = tmp_path / "proj"  # a copy: this test adds a run and a replay
    shutil.copytree(world["project"], project)
    holes = _holes(project, world["outside"])
    with florsql.connect(project, replay="auto") as conn:
        for _, template, _ in ATTEMPTS:
            with pytest.raises(florsql.NotSupportedError):
                conn.execute(_sql(holes, template))
        assert conn.execute("SELECT max(loss) FROM history").fetchone() == (1.0,)
        run_script(project, "train.py", "--flor", "second", "--kwargs", "lr=0.2")
        rows = conn.execute("SELECT runid, lr FROM history ORDER BY lr").fetchall()
        assert rows == [("first", 0.1), ("second", 0.2)]  # ingested under the lock
        (project / "train.py").write_text(TODAY)  # today's script logs a new name
        try:
            got = conn.execute("SELECT runid, epoch, double_loss FROM history "
                               "WHERE runid = 'first' ORDER BY epoch").fetchall()
        finally:
            (project / "train.py").write_text(SCRIPT)
        assert got == [("first", 0, 2.0), ("first", 1, 1.0)]  # replayed under the lock
