"""One bad file or value never blocks the project, and the catalog always equals the files.

Behaviour-level: each test writes record files (or runs a script), then asks through SQL
(`florsql.connect` and the CLI), so these keep guarding a catalog stored another way.
After every malformed input, `runs` and `history` answer with every other record, each
warning is one line naming the file, and a catalog rebuilt from scratch gives the same counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import florsql
from conftest import make_repo, run_script
from florsql.engine import IngestWarning

SCRIPT = """\
import flor
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(4)):
        flor.log("loss", epoch + step / 10)
    flor.log("acc", epoch / 4)
    flor.commit()  # a part per epoch
"""
PER_RUN = {"logs": 15, "steps": 12}  # 3 x (4 losses + 1 acc); 3 x 4 step rows
COUNTS = {
    "runs": "SELECT count(*) FROM runs",
    "logs": "SELECT count(*) FROM logs",
    "steps": "SELECT count(*) FROM (SELECT * FROM history)",
    "loss": "SELECT count(loss) FROM history",
    "checkpoints": "SELECT count(*) FROM checkpoints",
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished runs of SCRIPT, never queried (no catalog yet)."""
    repo = make_repo(tmp_path_factory.mktemp("base") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py")
    run_script(repo, "train.py")
    return repo


@pytest.fixture
def repo(recorded: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(recorded, tmp_path / "proj", symlinks=True))


def runs_of(repo: Path) -> list[Path]:
    return sorted((repo / ".flor" / "runs").iterdir())


def counts(repo: Path) -> tuple[dict[str, int], list[str]]:
    """The counts of COUNTS, and the ingest warnings the queries gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with florsql.connect(repo, replay="off") as conn:
            out = {k: conn.execute(q).fetchone()[0] for k, q in COUNTS.items()}
    return out, [str(w.message) for w in caught if issubclass(w.category, IngestWarning)]


def rebuilt(repo: Path) -> dict[str, int]:
    shutil.rmtree(repo / ".flor" / "catalog")
    return counts(repo)[0]


def cli(repo: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "florsql.cli", "-c", sql, str(repo)],
                          capture_output=True, text=True, timeout=120)


def expected(runs: int) -> dict[str, int]:
    """COUNTS for `runs` whole runs of SCRIPT."""
    return {"runs": runs, "logs": runs * PER_RUN["logs"], "steps": runs * PER_RUN["steps"],
            "loss": runs * PER_RUN["steps"], "checkpoints": 0}


def binary_part(header: object, columns: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return b"FLORPART3\n" + struct.pack("<I", len(head)) + head + columns


def v2_part(**changes: object) -> str:
    doc = {"format": "flor-part/2", "source": "forward", "seq": 99,
           "contexts": [[1, 0, "epoch", 7]], "ctx": [1], "name": ["extra"], "value": [1.5],
           "args": [], "iterations": []}
    return json.dumps({**doc, **changes})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (what to write, relative to the second run's directory; the file's content; what is lost)
MALFORMED: dict[str, tuple[str, str | bytes, str]] = {
    "binary-part-with-a-list-header": ("parts/000099.part", binary_part([1, 2]), "none"),
    "binary-part-with-a-huge-count": ("parts/000099.part", binary_part(
        {"format": "flor-part/3", "seq": 99, "columns": [["ctx", "<u4", 2**40]]}), "none"),
    "binary-part-torn-in-its-header": ("parts/000002.part", b"FLORPART3\n\x40\0\0\0{\"for", "part"),
    "empty-part": ("parts/000002.part", b"", "part"),
    "part-name-is-a-number": ("parts/000099.json", v2_part(name=[5]), "none"),
    "part-name-is-null": ("parts/000099.json", v2_part(name=[None]), "none"),
    "part-loop-name-is-a-list": ("parts/000099.json",
                                 v2_part(contexts=[[1, 0, ["x"], 0]]), "none"),
    "part-seq-too-large": ("parts/000099.json", v2_part(seq=10**15), "none"),
    "part-seq-is-nan": ("parts/000099.json", v2_part(seq=float("nan")), "none"),
    "part-iteration-over-64-bits": ("parts/000099.json",
                                    v2_part(contexts=[[1, 0, "epoch", 10**20]]), "none"),
    "part-iteration-is-a-float": ("parts/000099.json",
                                  v2_part(contexts=[[1, 0, "epoch", 1.5]]), "none"),
    "part-record-in-an-undefined-context": ("parts/000099.json", v2_part(ctx=[5]), "none"),
    "part-columns-of-different-lengths": ("parts/000099.json", v2_part(name=[]), "none"),
    "part-nested-too-deeply": ("parts/000099.json", v2_part(value=["DEEP"]).replace(
        '"DEEP"', nested(100_000)), "none"),
    "part-args-of-the-wrong-shape": ("parts/000099.json", v2_part(args=[["lr"]]), "none"),
    "part-int-of-5000-digits": ("parts/000099.json", v2_part(value=["BIG"]).replace(
        '"BIG"', "9" * 5000), "none"),
    "part-is-a-directory": ("parts/000099.part", "", "none"),
    "run-json-is-a-list": ("run.json", "[]", "run"),
    "run-json-nested-too-deeply": ("run.json", '{"tstamp": ' + nested(100_000) + "}", "run"),
    "run-json-without-tstamp": ("run.json", '{"runid": "x"}', "run"),
    "run-json-tstamp-yesterday": ("run.json", '{"tstamp": "yesterday"}', "run"),
    "run-json-not-utf8": ("run.json", b'{"tstamp": "2026-01-01T00:00:00\xff"}', "run"),
    "run-json-argv-of-numbers": ("run.json", '{"tstamp": "2026-01-01T00:00:00", "argv": [1]}',
                                 "run"),
    "run-json-pid-too-large": ("run.json", '{"tstamp": "2026-01-01T00:00:00", "pid": 1e400}',
                               "run"),
    "end-json-is-a-list": ("end.json", "[]", "none"),
    "end-json-end-time-yesterday": ("end.json", '{"status": "finished", "end_time": '
                                                '"yesterday"}', "none"),
    "checkpoint-loop-is-a-number": ("ckpt/epoch-000001.json", '{"loop": 1}', "none"),
    "checkpoint-is-a-list": ("ckpt/epoch-000001.json", "[]", "none"),
    "replay-json-is-a-list": ("replays/r1/replay.json", "[]", "none"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_file_is_skipped_with_one_warning_and_the_rest_answers(
        repo: Path, case: str) -> None:
    target, content, lost = MALFORMED[case]
    run = runs_of(repo)[1]
    path = _write(run / target, content)
    if target.startswith("replays/"):  # a replay of real records, beside its bad identity
        shutil.copytree(run / "parts", path.parent / "parts")
    got, warned = counts(repo)
    if lost == "run":
        assert got == expected(1)
    elif lost == "part":
        assert got["runs"] == 2 and PER_RUN["logs"] < got["logs"] < 2 * PER_RUN["logs"]
    else:
        assert got == expected(2)
    rel = path.relative_to(repo / ".flor").as_posix()
    assert len(warned) == 1 and rel in warned[0] and "\n" not in warned[0], warned
    assert counts(repo) == (got, [])  # warned once, not at every query
    assert rebuilt(repo) == got


@pytest.mark.parametrize("case", ["part-name-is-a-number", "run-json-is-a-list"])
def test_the_cli_prints_one_warning_line_and_answers(repo: Path, case: str) -> None:
    target, content, _ = MALFORMED[case]
    path = _write(runs_of(repo)[1] / target, content)
    out = cli(repo, "SELECT count(*) AS n FROM history; SELECT count(*) AS r FROM runs")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("florsql: warning: skipped")
    assert path.relative_to(repo / ".flor").as_posix() in lines[0]
    assert "Traceback" not in out.stderr


def test_a_good_checkpoint_entry_beside_a_bad_one_is_listed(repo: Path) -> None:
    ckpt = runs_of(repo)[0] / "ckpt"
    entry = {"loop": "epoch", "iteration": 1, "file": "epoch-000001.pt", "bytes": 10,
             "seconds": 0.1, "blocked_seconds": 0.01, "time": 1_800_000_000.0}
    _write(ckpt / "epoch-000001.json", json.dumps(entry))
    _write(ckpt / "epoch-000002.json", json.dumps({**entry, "time": "yesterday"}))
    got, warned = counts(repo)
    assert got == {**expected(2), "checkpoints": 1}
    assert len(warned) == 1 and "epoch-000002.json" in warned[0]


# --- text that is not UTF-8 --------------------------------------------------------------------

TEXT_SCRIPT = """\
import flor
flor.log("f", b"x\\xff".decode("utf-8", "surrogateescape"))
flor.log("n\\udcfe", 1.0)
flor.log("ok", "fine")
"""


def test_text_that_is_not_utf8_is_stored_with_escaped_bytes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": TEXT_SCRIPT})
    run_script(repo, "train.py", "--data=/tmp/d\udcff")
    with florsql.connect(repo) as conn:
        argv = conn.execute("SELECT argv FROM runs").fetchone()[0]
        row = conn.execute('SELECT f, "n\\xfe", ok FROM history').fetchone()
    assert argv[-1] == "--data=/tmp/d\\xff"  # the byte 0xff as the four characters \xff
    assert row == ("x\\xff", 1.0, "fine")
    out = cli(repo, "SELECT f FROM history")
    assert out.returncode == 0 and "x\\xff" in out.stdout and not out.stderr


# --- integers beyond 64 bits -------------------------------------------------------------------

BIG_SCRIPT = """\
import flor
epochs = flor.arg("epochs", 5)
flor.log("big", 2**64)
flor.log("huge", 10**50)
flor.log("edge", 2**63 - 1)
flor.log("odd", 2**53 + 1)
"""


def test_integers_beyond_64_bits_keep_every_query_working(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": BIG_SCRIPT})
    run_script(repo, "train.py", "--kwargs", "epochs=99999999999999999999999")
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        rows = conn.execute("SELECT epochs, big, huge, edge, odd FROM history "
                            "ORDER BY tstamp").fetchall()
        star = conn.execute("SELECT * FROM history").fetchall()
        over = conn.execute("SELECT count(*) FROM history WHERE epochs > 5").fetchone()[0]
        types = conn.execute("SELECT typeof(epochs), typeof(big), typeof(huge), typeof(edge) "
                             "FROM history LIMIT 1").fetchone()
        text = conn.execute("SELECT value_text FROM logs WHERE value_name = 'huge'").fetchone()
    assert rows[0] == (99999999999999999999999, 2**64, pytest.approx(1e50), 2**63 - 1, 2**53 + 1)
    assert rows[1][0] == 5 and len(star) == 2 and over == 1
    assert types == ("HUGEINT", "HUGEINT", "DOUBLE", "BIGINT")
    assert text == (str(10**50),)  # exact in the long form
    assert cli(repo, "SELECT runid, epochs FROM history").returncode == 0


# --- names that collide with identity, loop or internal columns --------------------------------

NAMES_SCRIPT = """\
import flor
for epoch in flor.loop("epoch", range(3)):
    flor.log("ctx_id", 7.5)
    flor.log("Runid", 9.5)
    flor.log("Source", 9.5)
    flor.log("ord", epoch * 2)
    flor.log("epoch", 100 + epoch)
    flor.log("loss", 1.0)
"""


def test_logged_names_never_mix_with_identity_loop_or_internal_columns(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": NAMES_SCRIPT})
    run_script(repo, "train.py")
    with florsql.connect(repo) as conn:
        rows = conn.execute("SELECT epoch, ctx_id, runid, Runid_value, Source, ord, "
                            "epoch_value FROM history ORDER BY epoch").fetchall()
        columns = [d[0] for d in conn.execute("SELECT * FROM history").description]
        run = conn.execute("SELECT runid FROM runs").fetchone()[0]
    assert rows == [(e, 7.5, run, 9.5, 9.5, e * 2, 100 + e) for e in range(3)]
    assert columns == ["projid", "runid", "tstamp", "vid", "filename", "epoch", "ctx_id",
                       "epoch_value", "loss", "ord", "Runid_value", "Source"]


def test_identity_names_in_records_are_renamed_not_refused(repo: Path) -> None:
    """As FlorDB scripts log them: `runid`, `tstamp`, and `epoch_value` beside `epoch`."""
    part = v2_part(name=["runid", "tstamp", "epoch", "epoch_value"], ctx=[0, 0, 1, 1],
                   value=["mine", 1.5, 100, 200])
    _write(runs_of(repo)[0] / "parts" / "000099.json", part)
    with florsql.connect(repo) as conn:
        row = conn.execute("SELECT runid, runid_value, tstamp_value, epoch_value, "
                           "epoch_value_value FROM history WHERE epoch = 7").fetchone()
        runid = conn.execute("SELECT runid FROM runs ORDER BY tstamp").fetchone()[0]
    assert row == (runid, "mine", 1.5, 200, 100)


# --- the catalog equals the files --------------------------------------------------------------


def test_a_restored_part_is_ingested_again(repo: Path) -> None:
    part = runs_of(repo)[1] / "parts" / "000002.part"
    good = part.read_bytes()
    part.write_bytes(good[:40])
    with pytest.warns(IngestWarning, match="000002.part"), florsql.connect(repo) as conn:
        damaged = conn.execute(COUNTS["logs"]).fetchone()[0]
        part.write_bytes(good)  # restored in place, as the warning says, while connected
        restored = conn.execute(COUNTS["logs"]).fetchone()[0]
    assert damaged < restored == expected(2)["logs"]
    assert counts(repo) == (expected(2), [])
    assert rebuilt(repo) == expected(2)


def test_a_deleted_run_or_part_leaves_the_catalog(repo: Path) -> None:
    first, second = runs_of(repo)
    with florsql.connect(repo, replay="off") as conn:
        assert conn.execute(COUNTS["runs"]).fetchone()[0] == 2
        shutil.rmtree(first)
        assert conn.execute(COUNTS["runs"]).fetchone()[0] == 1
    assert counts(repo)[0] == expected(1)
    (second / "parts" / "000001.part").unlink()
    after = counts(repo)[0]
    assert after["runs"] == 1 and 0 < after["logs"] < PER_RUN["logs"]
    assert rebuilt(repo) == after


def test_a_removed_replay_takes_its_records_along(repo: Path) -> None:
    run = runs_of(repo)[0]
    replay = run / "replays" / "r1"
    shutil.copytree(run / "parts", replay / "parts")
    _write(replay / "replay.json", '{"replay_id": "r1", "names": ["loss"]}')
    _write(replay / "end.json", '{"status": "finished"}')
    replayed = "SELECT count(*) FROM logs WHERE source = 'replay'"
    with florsql.connect(repo, replay="off") as conn:
        assert conn.execute(replayed).fetchone()[0] == PER_RUN["logs"]
    shutil.rmtree(replay)
    with florsql.connect(repo, replay="off") as conn:
        assert conn.execute(replayed).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM replays").fetchone()[0] == 0
    assert counts(repo) == (expected(2), [])


@pytest.mark.parametrize("first_seen", ["before", "after"])
def test_two_runs_with_one_tstamp_never_merge(repo: Path, first_seen: str) -> None:
    first, second = runs_of(repo)
    if first_seen == "before":
        counts(repo)  # the second run is in the catalog before it claims the first's tstamp
    ident = json.loads((second / "run.json").read_text())
    ident["tstamp"] = json.loads((first / "run.json").read_text())["tstamp"]
    (second / "run.json").write_text(json.dumps(ident))
    got, warned = counts(repo)
    assert got == expected(1)
    assert len(warned) == 1 and f"{second.name}/run.json" in warned[0]
    with florsql.connect(repo) as conn:
        assert conn.execute("SELECT run_dir FROM runs").fetchone()[0] == str(first)
    assert rebuilt(repo) == expected(1)


def test_a_copied_run_directory_is_left_out_and_its_original_kept(repo: Path) -> None:
    first = runs_of(repo)[0]
    counts(repo)
    shutil.copytree(first, first.parent / "copy-of-a-run")
    got, warned = counts(repo)
    assert got == expected(2)
    assert len(warned) == 1 and "copy-of-a-run/run.json" in warned[0]
    shutil.rmtree(first)  # now the copy holds the tstamp alone, and is a run
    assert counts(repo) == (expected(2), [])


# --- a project the catalog cannot be written in ------------------------------------------------


def test_a_read_only_project_is_still_queried_after_one_warning_naming_it(repo: Path) -> None:
    home = repo / ".flor"
    shutil.rmtree(home / "catalog", ignore_errors=True)  # nothing published: must ingest
    with _read_only(home):
        got, said = counts(repo)
        assert got == expected(2)
        assert said == [f"cannot write {home / 'catalog'}: this process ingests the record files "
                        "for itself (others do the same)"]
        out = cli(repo, "SELECT count(*) FROM runs")
    assert out.returncode == 0 and "2" in out.stdout.split()
    assert out.stderr.strip().count("\n") == 0 and str(home) in out.stderr
    assert "ingests the record files for itself" in out.stderr and "Traceback" not in out.stderr


def test_an_unreadable_runs_folder_is_an_error_not_an_empty_project(repo: Path) -> None:
    counts(repo)
    runs = repo / ".flor" / "runs"
    with _unreadable(runs):
        with pytest.raises(florsql.OperationalError, match=f"cannot read .*{runs}"):
            florsql.connect(repo)
    assert counts(repo) == (expected(2), [])


@contextlib.contextmanager
def _unreadable(folder: Path) -> Iterator[None]:
    """`folder` cannot be listed: by permissions, or (as root, whom permissions do not stop)
    by putting a symlink loop in its place, which fails to list with ELOOP."""
    if os.geteuid() != 0:
        folder.chmod(0)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.symlink_to(folder.name)  # runs -> runs: a loop
    try:
        yield
    finally:
        folder.unlink()
        aside.rename(folder)


def _read_only(folder: Path):
    """`folder` read-only for this process: by permissions, or (as root, whom permissions do
    not stop) by a read-only bind mount; skips where neither is possible."""

    @contextlib.contextmanager
    def chmod():
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)

    @contextlib.contextmanager
    def bind():
        if subprocess.run(["mount", "--bind", str(folder), str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("running as root without mount: cannot make a read-only directory")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)

    return chmod() if os.geteuid() != 0 else bind()


def _write(path: Path, content: str | bytes) -> Path:
    """Write `content` at `path`; empty content for a `.part` makes a directory there."""
    if content == "" and path.suffix == ".part":
        path.mkdir(parents=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path

