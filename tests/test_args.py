"""Command-line values for `flor.arg`: `--kwargs k=v`, `--flor NAME`, FLOR_RUN, `--name value`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import florsql
from conftest import run_script
from flor import FlorArgError
from flor.args import (
    FlorArgv,
    cast_value,
    check_kwargs_syntax,
    describe_unread,
    strip_flor_argv,
    take_cli_value,
    unread_kwargs,
)

TINY_ARGS_SCRIPT = """\
import sys
import flor
hidden = flor.arg("hidden", 16)
lr = flor.arg("lr", 0.01)
print("hidden", repr(hidden), type(hidden).__name__)
print("lr", repr(lr), type(lr).__name__)
print("rest", sys.argv[1:])
for epoch in flor.loop("epoch", range(1)):
    flor.log("loss", 0.5)
"""


def _args_in_catalog(repo: Path) -> dict[str, tuple[str, float | None, str | None]]:
    """{name: (value_type, value_num, value_text)} of the kind='arg' rows of the only run."""
    with florsql.connect(repo) as conn:
        rows = conn.execute(
            "SELECT value_name, value_type, value_num, value_text FROM logs WHERE kind = 'arg'"
        ).fetchall()
    return {name: (vtype, num, text) for name, vtype, num, text in rows}


def _runs(repo: Path) -> list[tuple]:
    with florsql.connect(repo) as conn:
        return conn.execute("SELECT runid, status, argv FROM runs ORDER BY tstamp").fetchall()


# --- strip_flor_argv ---------------------------------------------------------------------------


def test_strip_removes_flor_name_and_kwargs_but_keeps_the_scripts_own_flags() -> None:
    argv = ["train.py", "--seed", "3", "--kwargs", "lr=0.1", "hidden=8", "--flor", "myRun", "x"]
    parsed = strip_flor_argv(argv)
    assert argv == ["train.py", "--seed", "3", "x"]
    assert parsed.runid == "myRun"
    assert parsed.kwargs == {"lr": "0.1", "hidden": "8"}
    assert parsed.original[3:] == ["--kwargs", "lr=0.1", "hidden=8", "--flor", "myRun", "x"]


def test_strip_edits_the_list_in_place_so_sys_argv_itself_changes() -> None:
    argv = ["t.py", "--flor", "r1", "--verbose"]
    alias = argv
    strip_flor_argv(argv)
    assert alias is argv and alias == ["t.py", "--verbose"]


def test_strip_accepts_the_flor_equals_name_form() -> None:
    argv = ["t.py", "--flor=nightly", "--epochs", "2"]
    assert strip_flor_argv(argv).runid == "nightly"
    assert argv == ["t.py", "--epochs", "2"]


def test_kwargs_end_at_the_next_double_dash_flag() -> None:
    argv = ["t.py", "--kwargs", "a=1", "b=x", "--seed", "3"]
    parsed = strip_flor_argv(argv)
    assert parsed.kwargs == {"a": "1", "b": "x"}
    assert argv == ["t.py", "--seed", "3"]


def test_a_kwargs_value_may_itself_contain_equals_signs_and_minus_signs() -> None:
    parsed = strip_flor_argv(["t.py", "--kwargs", "expr=a=b", "lr=-1e-3"])
    assert parsed.kwargs == {"expr": "a=b", "lr": "-1e-3"}


def test_a_token_without_a_value_after_kwargs_stays_in_argv_and_is_refused_at_run_start() -> None:
    # parsed as before (a replay of an older run must see the argv its run saw); the run
    # refuses it when it starts, naming the key and the key=value form
    argv = ["t.py", "--kwargs", "lr=1", "epochs", "more=2"]
    parsed = strip_flor_argv(argv)
    assert parsed.kwargs == {"lr": "1"} and argv == ["t.py", "epochs", "more=2"]
    with pytest.raises(FlorArgError, match=r"--kwargs epochs has no value; .*epochs=VALUE"):
        check_kwargs_syntax(parsed)


def test_a_short_flag_of_the_script_may_follow_the_kwargs() -> None:
    argv = ["t.py", "--kwargs", "lr=1", "-v"]
    parsed = strip_flor_argv(argv)
    check_kwargs_syntax(parsed)
    assert parsed.kwargs == {"lr": "1"} and argv == ["t.py", "-v"]


def test_argv_without_flor_flags_is_left_alone_and_has_no_runid() -> None:
    argv = ["t.py", "--seed", "3", "data.csv"]
    parsed = strip_flor_argv(argv)
    assert argv == ["t.py", "--seed", "3", "data.csv"]
    assert parsed.runid is None and parsed.kwargs == {}


def test_flor_run_env_names_the_run_when_no_flor_flag_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOR_RUN", "fromEnv")
    assert strip_flor_argv(["t.py"]).runid == "fromEnv"


def test_the_flor_flag_wins_over_the_flor_run_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOR_RUN", "fromEnv")
    assert strip_flor_argv(["t.py", "--flor", "fromFlag"]).runid == "fromFlag"


def test_an_empty_flor_run_env_means_no_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOR_RUN", "")
    assert strip_flor_argv(["t.py"]).runid is None


# --- cast_value --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("off", False)],
)
def test_bool_defaults_parse_the_usual_spellings(raw: str, expected: bool) -> None:
    assert cast_value("flag", raw, False) is expected


def test_int_float_and_str_defaults_cast_to_their_own_type() -> None:
    assert cast_value("hidden", "75", 16) == 75 and type(cast_value("hidden", "75", 16)) is int
    assert cast_value("lr", "3", 0.1) == 3.0 and type(cast_value("lr", "3", 0.1)) is float
    assert cast_value("lr", "1e-3", 0.1) == 0.001
    assert cast_value("opt", "0.1", "sgd") == "0.1"


def test_a_none_default_takes_a_python_literal_or_else_the_raw_string() -> None:
    assert cast_value("x", "3", None) == 3
    assert cast_value("x", "[1, 2]", None) == [1, 2]
    assert cast_value("x", "None", None) is None
    assert cast_value("x", "adam", None) == "adam"


@pytest.mark.parametrize(
    ("name", "raw", "default"),
    [("lr", "abc", 0.01), ("hidden", "7.5", 16), ("shuffle", "maybe", True)],
)
def test_a_bad_cast_raises_flor_arg_error_naming_the_arg_and_the_fix(
    name: str, raw: str, default: object
) -> None:
    with pytest.raises(FlorArgError) as info:
        cast_value(name, raw, default)
    message = str(info.value)
    assert f"flor.arg({name!r})" in message
    assert repr(raw) in message and type(default).__name__ in message
    assert f"--kwargs {name}=" in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


# --- take_cli_value (FlorDB 2 style) -----------------------------------------------------------


def test_flordb2_style_flag_is_read_and_removed_from_sys_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--hidden", "75", "--seed", "3"])
    flor_argv = FlorArgv(original=list(sys.argv))
    assert take_cli_value(flor_argv, "hidden") == "75"
    assert sys.argv == ["train.py", "--seed", "3"]
    assert "hidden" in flor_argv.read


def test_flordb2_style_flag_with_equals_is_read_and_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--hidden=75", "--seed", "3"])
    assert take_cli_value(FlorArgv(original=list(sys.argv)), "hidden") == "75"
    assert sys.argv == ["train.py", "--seed", "3"]


def test_an_arg_the_command_line_does_not_set_reads_none_and_leaves_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--hiddenx", "75"])
    assert take_cli_value(FlorArgv(original=list(sys.argv)), "hidden") is None
    assert sys.argv == ["train.py", "--hiddenx", "75"]


def test_kwargs_value_is_preferred_over_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    flor_argv = FlorArgv(original=["train.py"], kwargs={"lr": "0.5"})
    assert take_cli_value(flor_argv, "lr") == "0.5"
    assert unread_kwargs(flor_argv) == []


def test_unread_kwargs_are_described_with_the_closest_known_name() -> None:
    flor_argv = FlorArgv(original=[], kwargs={"hiden": "3", "lr": "1"}, read={"hidden", "lr"})
    assert unread_kwargs(flor_argv) == ["hiden"]
    message = describe_unread(flor_argv)
    assert "'hiden' (did you mean 'hidden'?)" in message and "\n" not in message


# --- through real scripts ----------------------------------------------------------------------


def test_the_example_scripts_own_seed_flag_works_beside_kwargs_and_flor(
    train_repo: Path,
) -> None:
    proc = run_script(train_repo, "train.py", "--seed", "3", "--kwargs", "lr=0.1", "epochs=1",
                      "--flor", "myRun")
    assert "epoch 0:" in proc.stdout
    [(runid, status, argv)] = _runs(train_repo)
    assert (runid, status) == ("myRun", "finished")
    assert argv == ["train.py", "--seed", "3", "--kwargs", "lr=0.1", "epochs=1", "--flor", "myRun"]
    args = _args_in_catalog(train_repo)
    assert args == {
        "hidden": ("int", 16.0, "16"),
        "lr": ("float", 0.1, None),
        "epochs": ("int", 1.0, "1"),
        "batch_size": ("int", 32.0, "32"),
    }


def test_flordb2_style_override_sets_the_arg_and_leaves_other_flags(
    script_repo: Callable[[str], Path],
) -> None:
    repo = script_repo(TINY_ARGS_SCRIPT)
    proc = run_script(repo, "train.py", "--hidden", "75", "--other", "x",
                      env={"FLOR_RUN": "envRun"})
    assert "hidden 75 int" in proc.stdout
    assert "rest ['--other', 'x']" in proc.stdout
    assert _args_in_catalog(repo)["hidden"] == ("int", 75.0, "75")
    assert _runs(repo)[0][:2] == ("envRun", "finished")


def test_flordb2_style_override_works_with_the_example_scripts_own_argparse(
    train_repo: Path,
) -> None:
    # flor.arg's docstring promises `python train.py --lr 0.01`; the example parses its own
    # flags with argparse before calling flor.arg, so argparse must not see `--hidden 75`.
    proc = run_script(train_repo, "train.py", "--hidden", "75", "--kwargs", "epochs=1",
                      check=False)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert _args_in_catalog(train_repo)["hidden"] == ("int", 75.0, "75")


def test_unknown_kwargs_key_fails_naming_the_closest_arg(train_repo: Path) -> None:
    proc = run_script(train_repo, "train.py", "--kwargs", "hiden=3", "epochs=1", check=False)
    assert proc.returncode != 0
    assert "epoch 0:" not in proc.stdout  # stopped before training
    last = proc.stderr.strip().splitlines()[-1]
    assert "FlorArgError" in last
    assert "'hiden'" in last and "did you mean 'hidden'?" in last
    assert [status for _, status, _ in _runs(train_repo)] == ["failed"]


def test_a_value_that_cannot_be_cast_exits_nonzero_naming_the_arg(
    script_repo: Callable[[str], Path],
) -> None:
    repo = script_repo(TINY_ARGS_SCRIPT)
    proc = run_script(repo, "train.py", "--kwargs", "lr=abc", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "FlorArgError" in last and "flor.arg('lr')" in last and "'abc'" in last
    assert "--kwargs lr=0.01" in last


def test_unread_kwargs_in_a_script_without_loops_only_warn_at_exit(
    script_repo: Callable[[str], Path],
) -> None:
    repo = script_repo('import flor\nflor.arg("hidden", 16)\nflor.log("acc", 0.9)\n')
    proc = run_script(repo, "train.py", "--kwargs", "hiden=3")
    assert proc.stderr.count("FlorWarning") == 1
    assert "'hiden' (did you mean 'hidden'?)" in proc.stderr
    assert _runs(repo)[0][1] == "finished"
