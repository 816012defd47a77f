"""The interactive shell, driven through prompt_toolkit's pipe input over a recorded project."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from conftest import make_repo, run_script
from florsql import Connection
from florsql.commands import COMMANDS
from florsql.shell import Shell, history_path, run_shell

README = Path(__file__).resolve().parent.parent / "README.md"
SCRIPT = """\
import flor
lr = flor.arg("lr", 0.1)
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(2)):
        flor.log("loss", 1.0 / (epoch + step + 1))
    flor.log("accuracy", 0.5 + epoch / 10)
"""
SAVED = """\
-- name: final_accuracy
-- description: The last accuracy of runs trained above a learning rate
SELECT runid, arg_max(accuracy, epoch) AS final_acc FROM history WHERE lr > :lr GROUP BY ALL
"""
SAFETY_SECONDS = 20  # close the input if a test forgets to quit, so it fails instead of hanging


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("shell") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "slow")
    run_script(repo, "train.py", "--flor", "fast", "--kwargs", "lr=0.2")
    (repo / "queries").mkdir()
    (repo / "queries" / "final_accuracy.sql").write_text(SAVED)
    return repo


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state" / "history"
    monkeypatch.setenv("FLORSQL_HISTORY", str(path))
    return path


def drive(project: Path, keys: str, later: str = "", history: Path | None = None) -> tuple[int,
                                                                                          str]:
    """Type `keys` (and `later`, half a second on) into a real shell; its exit code and output."""
    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        timers = [threading.Timer(0.5, pipe.send_text, [later]),
                  threading.Timer(SAFETY_SECONDS, pipe.close)]
        for timer in timers[0 if later else 1:]:
            timer.start()
        code = run_shell(str(project), input=pipe, output=DummyOutput(), stdout=out,
                         history_file=str(history) if history else None)
        for timer in timers:
            timer.cancel()
    return code, out.getvalue()


def test_tab_completes_a_logged_name_and_the_query_runs(project: Path, history: Path) -> None:
    code, out = drive(project, "SELECT max(acc\t) AS best FROM history;\n.quit\n")
    assert code == 0
    assert re.search(r"best\s*\n-+\n\s*0\.7\n", out)
    assert "SELECT max(accuracy) AS best FROM history;" in history.read_text()


def test_the_shell_completer_offers_logged_names_tables_and_saved_queries(
        project: Path, history: Path) -> None:
    with Connection(str(project)) as conn:
        completer = Shell(conn, input=None, output=DummyOutput()).completer

        def offered(text: str, cursor: int | None = None) -> list[str]:
            found = completer.get_completions(Document(text, cursor), CompleteEvent())
            return [c.text for c in found]

        assert offered("SELECT lo")[0] == "loss"
        assert offered("SELECT lo FROM history", cursor=len("SELECT lo")) == ["loss"]
        assert offered("SELECT * FROM history WHERE ac") == ["accuracy"]
        assert "names" in offered("SELECT * FROM ")
        assert offered(".run final_a") == ["final_accuracy"]


def test_a_bad_query_prints_one_error_and_the_next_query_still_runs(project: Path,
                                                                    history: Path) -> None:
    code, out = drive(project, "SELECT acuracy FROM history;\nSELECT 6 * 7 AS answer;\n.quit\n")
    assert code == 0
    assert "error: unknown column 'acuracy'; did you mean accuracy?" in out
    assert "  SELECT acuracy FROM history\n         ^^^^^^^\n" in out
    assert re.search(r"answer\n-+\n\s*42\n", out)


def test_a_syntax_error_is_underlined_where_duckdb_found_it(project: Path, history: Path) -> None:
    code, out = drive(project, "SELECT runid FROM runs WHERE ORDER BY 1;\n.quit\n")
    assert 'error: Parser Error: syntax error at or near "ORDER"' in out
    caret = " " * len("SELECT runid FROM runs WHERE ") + "^^^^^"
    assert f"  SELECT runid FROM runs WHERE ORDER BY 1\n  {caret}\n" in out


def test_read_runs_every_statement_in_a_file(project: Path, history: Path,
                                             tmp_path: Path) -> None:
    script = tmp_path / "report.sql"
    script.write_text("SELECT count(*) AS n_runs FROM runs;\n-- a comment\n"
                      "SELECT runid FROM runs ORDER BY runid;\n")
    code, out = drive(project, f".read {script}\n.quit\n")
    assert re.search(r"n_runs\n-+\n\s*2\n", out)
    assert re.search(r"runid\n-+\nfast\s*\nslow\s*\n", out)


def test_multi_line_input_runs_only_at_the_semicolon(project: Path, history: Path) -> None:
    code, out = drive(project, "SELECT 40\n+ 2\nAS total\n;\n.quit\n")
    assert re.search(r"total\n-+\n\s*42\n\(1 row\)", out)
    assert "error" not in out
    assert "+SELECT 40\n++ 2\n+AS total\n+;\n" in history.read_text()  # one multi-line entry


def test_mode_csv_changes_the_output_format(project: Path, history: Path) -> None:
    code, out = drive(project, ".mode csv\nSELECT runid, lr FROM history GROUP BY ALL "
                               "ORDER BY lr;\n.quit\n")
    assert "runid,lr\nslow,0.1\nfast,0.2\n" in out


def test_output_sends_results_to_a_file_until_output_without_a_file(
        project: Path, history: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    drive(project, f".output {target}\nSELECT 'to file' AS x;\n.output\n"
                   "SELECT 'to screen' AS y;\n.quit\n")
    written = target.read_text()
    assert "to file" in written and "to screen" not in written


def test_once_sends_only_the_next_result_to_a_file(project: Path, history: Path,
                                                   tmp_path: Path) -> None:
    target = tmp_path / "once.csv"
    code, out = drive(project, f".mode csv\n.once {target}\nSELECT 1 AS one;\n"
                               "SELECT 2 AS two;\n.quit\n")
    assert target.read_text() == "one\n1\n"
    assert "two\n2\n" in out and "one\n1" not in out


def test_help_lists_every_registered_command(project: Path, history: Path) -> None:
    code, out = drive(project, ".help\n.quit\n")
    listed = {line.split()[0] for line in out.splitlines() if line.startswith(".")}
    assert listed == set(COMMANDS)


def test_readme_documents_every_dot_command() -> None:
    readme = README.read_text()
    missing = [name for name in COMMANDS if f"`{name}" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_quit_and_ctrl_d_both_exit_with_status_zero(project: Path, history: Path) -> None:
    assert drive(project, ".quit\n")[0] == 0
    assert drive(project, ".exit\n")[0] == 0
    code, out = drive(project, "\x04")
    assert code == 0 and "Type .help" in out


def test_ctrl_c_drops_the_current_input_and_the_shell_goes_on(project: Path,
                                                              history: Path) -> None:
    code, out = drive(project, "SELECT 'dropped' AS d\x03SELECT 'kept' AS k;\n.quit\n")
    assert "kept" in out and "dropped" not in out


def test_history_persists_across_sessions(project: Path, history: Path) -> None:
    drive(project, "SELECT 'remember me' AS r;\n.quit\n")
    assert history_path() == history and history.is_file()
    with Connection(str(project)) as conn:
        shell = Shell(conn, output=DummyOutput())
        assert "SELECT 'remember me' AS r;" in shell.session.history.load_history_strings()


def test_a_result_wider_than_the_screen_is_shown_vertically(project: Path,
                                                            history: Path) -> None:
    code, out = drive(project, "SELECT * FROM runs ORDER BY runid;\n.quit\n")  # 80 columns
    assert "-[ RECORD 1 ]-" in out and "-[ RECORD 2 ]-" in out
    assert re.search(r"^runid +\| fast$", out, re.MULTILINE)


def test_bad_dot_command_arguments_give_one_line_each(project: Path, history: Path) -> None:
    keys = ".mode xml\n.timer maybe\n.schema nosuch\n.run nosuch\n.run final_accuracy\n" \
           ".frobnicate\n.mode\n.quit\n"
    code, out = drive(project, keys)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 6
    assert "error: unknown table 'nosuch'" in out
    assert "error: query 'final_accuracy': missing lr" in out
    assert "mode: table" in out


def test_saved_queries_are_listed_and_run_with_parameters(project: Path,
                                                          history: Path) -> None:
    code, out = drive(project, ".queries\n.run final_accuracy lr=0.15\n.quit\n")
    listing = out.split("runid | final_acc")[0]  # shown vertically: wider than 80 columns
    assert re.search(r"^name +\| final_accuracy\nparams +\| lr=\.\.\.\n"
                     r"description \| The last accuracy of runs", listing, re.MULTILINE)
    assert re.search(r"runid \| final_acc\n-+\+-+\nfast  \| +0\.7\n\(1 row\)", out)


def test_catalog_commands_show_runs_names_tables_and_schema(project: Path,
                                                            history: Path) -> None:
    code, out = drive(project, ".runs 1\n.names\n.tables\n.schema history\n.quit\n")
    assert re.search(r"^fast +\| \S+ \S+ \| \w{10} \| finished$", out, re.MULTILINE)
    assert "slow" not in out.split("(1 row)")[0]
    assert re.search(r"^loss +\| log +\| +2 \| +12 \|", out, re.MULTILINE)
    assert re.search(r"^history +\| +\d+$", out, re.MULTILINE)
    assert "duckdb_" not in out
    assert re.search(r"^history \| accuracy +\| DOUBLE$", out, re.MULTILINE)


def test_timer_on_prints_the_time_of_each_statement(project: Path, history: Path) -> None:
    code, out = drive(project, ".timer on\nSELECT 1;\n.timer off\nSELECT 2;\n.quit\n")
    assert len(re.findall(r"^Time: \d+\.\d{3}s$", out, re.MULTILINE)) == 1


def test_a_directory_without_history_gives_an_error_and_status_one(tmp_path: Path,
                                                                   history: Path) -> None:
    code, out = drive(tmp_path, "")
    assert code == 1 and "no flor history" in out


def test_ctrl_r_finds_an_earlier_statement_in_the_history(project: Path, history: Path) -> None:
    drive(project, "SELECT 'needle' AS found;\nSELECT 'other' AS x;\n.quit\n")
    code, out = drive(project, "\x12needle\r\r.quit\n")
    assert re.search(r"found\n-+\nneedle\n", out)


def test_export_writes_the_last_result_without_running_it_again(
        project: Path, history: Path, tmp_path: Path) -> None:
    import duckdb

    target = tmp_path / "acc.parquet"
    sql = "SELECT runid, epoch, accuracy, random() AS r FROM history ORDER BY runid, epoch;"
    code, out = drive(project, f"{sql}\n.export {target}\n.export {tmp_path / 'acc.csv'}\n"
                      ".quit\n")
    assert code == 0 and f"wrote 6 row(s) to {target} (parquet)" in out
    back = duckdb.connect().execute(f"SELECT * FROM '{target}'").fetchall()
    assert [r[:3] for r in back] == [("fast", 0, 0.5), ("fast", 1, 0.6), ("fast", 2, 0.7),
                                     ("slow", 0, 0.5), ("slow", 1, 0.6), ("slow", 2, 0.7)]
    shown = re.findall(r"\|\s+(0\.\d+)\s*$", out, re.MULTILINE)  # random() as shown
    assert [f"{r[3]:.6g}" for r in back] == shown  # the same rows: it did not run again
    csv_rows = (tmp_path / "acc.csv").read_text().splitlines()
    assert csv_rows[0] == "runid,epoch,accuracy,r" and len(csv_rows) == 7


def test_export_before_any_result_or_to_an_unknown_format_is_one_line(
        project: Path, history: Path, tmp_path: Path) -> None:
    code, out = drive(project, f".export {tmp_path / 'x.csv'}\nSELECT 1 AS one;\n"
                      f".export {tmp_path / 'x.xyz'}\n.quit\n")
    assert code == 0
    assert "error: no result to export yet" in out
    assert "error: cannot tell the format" in out and not (tmp_path / "x.xyz").exists()


def test_several_statements_on_one_line_each_print_and_an_error_stops_the_rest(
        project: Path, history: Path) -> None:
    code, out = drive(project, "SELECT 1 AS a; SELECT nope FROM runs; SELECT 3 AS c;\n.quit\n")
    assert code == 0
    assert re.search(r"^a\n-\n1\n", out, re.MULTILINE)
    assert "nope" in out
    assert "(statement 2 of 3, line 1; the statements after it did not run)" in out
    assert not re.search(r"^c$", out, re.MULTILINE)
