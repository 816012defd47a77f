"""Statement propagation: today's `flor.log` statements inserted into yesterday's script.

Each case under fixtures/propagate/ holds old.py, new.py, names (one per line) and either
expected.py (the patched old script) or refusal.txt (a substring of the refusal's reason).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from florsql.engine.code.propagate import Patched, Refusal, find_log_statements, propagate

FIXTURES = Path(__file__).parent / "fixtures" / "propagate"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
PATCHES = [c for c in CASES if (FIXTURES / c / "expected.py").exists()]
REFUSALS = [c for c in CASES if (FIXTURES / c / "refusal.txt").exists()]
# cases where the patched old script computes the same values as today's script
SAME_VALUES = ["same_code", "renamed_variables", "comments_and_blank_lines", "nested_in_print",
               "epoch_level", "checkpointing_added", "conditional_expression"]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train.py"


def load(case: str) -> tuple[str, str, list[str]]:
    d = FIXTURES / case
    return (d / "old.py").read_text(), (d / "new.py").read_text(), (d / "names").read_text().split()


def stub_flor() -> types.ModuleType:
    """A real `flor` module that records `(loop context, name, value)` for every log call."""
    flor = types.ModuleType("flor")
    flor.records, context = [], []

    def loop(name: Any, iterable: Iterable | None = None) -> Iterator:
        if iterable is None:
            name, iterable = ("epoch", "step")[len(context)], name
        context.append([name, -1])
        try:
            for item in iterable:
                context[-1][1] += 1
                yield item
        finally:
            context.pop()

    def log(name: str, value: Any) -> Any:
        flor.records.append((tuple(map(tuple, context)), name, value))
        return value

    flor.loop, flor.log = loop, log
    flor.checkpointing = lambda **objs: _NullContext()
    return flor


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run_with_stub(source: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    flor = stub_flor()
    monkeypatch.setitem(sys.modules, "flor", flor)
    exec(compile(source, "<script>", "exec"), {"__name__": "__main__"})
    return flor.records


def test_every_case_has_an_expected_outcome():
    assert len(CASES) >= 14
    assert set(PATCHES) | set(REFUSALS) == set(CASES)
    assert not set(PATCHES) & set(REFUSALS)


@pytest.mark.parametrize("case", PATCHES)
def test_the_patch_matches_the_golden_file(case):
    old, new, names = load(case)
    result = propagate(old, new, names)
    assert isinstance(result, Patched), result
    assert result.source == (FIXTURES / case / "expected.py").read_text()
    compile(result.source, "<patched>", "exec")


@pytest.mark.parametrize("case", PATCHES)
def test_each_insertion_names_its_line_in_the_patched_source(case):
    old, new, names = load(case)
    result = propagate(old, new, names)
    lines = result.source.splitlines()
    for ins in result.inserted:
        assert lines[ins.line - 1].strip() == ins.text
        assert f"flor.log({ins.name!r}".replace("'", '"') in ins.text


@pytest.mark.parametrize("case", REFUSALS)
def test_the_refusal_says_why(case):
    old, new, names = load(case)
    result = propagate(old, new, names)
    assert isinstance(result, Refusal), result
    assert result.name in names
    assert (FIXTURES / case / "refusal.txt").read_text().strip() in result.reason
    assert "\n" not in result.reason


@pytest.mark.parametrize("case", SAME_VALUES)
def test_the_patched_old_script_logs_what_todays_script_logs(case, monkeypatch, capsys):
    old, new, names = load(case)
    patched = propagate(old, new, names).source
    wanted = [r for r in run_with_stub(new, monkeypatch) if r[1] in names]
    got = [r for r in run_with_stub(patched, monkeypatch) if r[1] in names]
    assert got == wanted and got


def test_a_step_level_statement_runs_once_per_step_with_that_steps_values(monkeypatch, capsys):
    old, new, names = load("step_level")
    records = run_with_stub(propagate(old, new, names).source, monkeypatch)
    steps = [r for r in records if r[1] == "abs_error"]
    assert [ctx for ctx, _, _ in steps] == [
        (("epoch", e), ("step", s)) for e in range(2) for s in range(3)]
    assert steps[0][2] == 2.0  # |0 + 0 * 1 - 2| at the first step, before the update
    assert [r[0] for r in records if r[1] == "total"] == [(("epoch", 0),), (("epoch", 1),)]


def test_the_renamed_variable_is_read_under_its_old_name():
    old, new, names = load("renamed_variables")
    (insertion,) = propagate(old, new, names).inserted
    assert insertion.text == 'flor.log("slope", net[1])'


def test_the_example_script_gets_both_its_statements_back_under_old_names():
    new = EXAMPLE.read_text()
    old = new.replace('            flor.log("loss", loss.item())\n', "")
    old = old.replace('        flor.log("accuracy", accuracy)\n', "").replace("model", "net")
    result = propagate(old, new, ["loss", "accuracy"])
    assert result.source == new.replace("model", "net")
    assert [i.name for i in result.inserted] == ["loss", "accuracy"]


def test_a_reordered_eval_block_gets_the_statement_right_after_it(monkeypatch, capsys):
    old, new, names = load("reordered_blocks")
    patched = propagate(old, new, names).source
    lines = patched.splitlines()
    at = lines.index('    flor.log("accuracy", accuracy)')
    assert lines[at - 1].strip().startswith("accuracy = ")
    records = run_with_stub(patched, monkeypatch)
    assert [ctx for ctx, _, _ in records] == [(("epoch", e),) for e in range(3)]


def test_an_already_logged_name_leaves_the_old_script_unchanged():
    old, new, names = load("already_logged")
    assert propagate(old, new, names) == Patched(old, [])


def test_a_nested_call_is_found_and_becomes_a_standalone_statement():
    _, new, _ = load("nested_in_print")
    found = find_log_statements(new, ["slope", "mean_loss", "missing"])
    assert set(found) == {"slope", "mean_loss"}
    assert found["slope"].text == 'flor.log("slope", weights[1])'
    assert found["slope"].nested and found["slope"].lineno == 18


def test_a_name_logged_in_two_places_today_is_refused():
    new = "import flor\nx = 1\nflor.log('a', x)\nflor.log('a', x + 1)\n"
    result = propagate("import flor\nx = 1\n", new, ["a"])
    assert isinstance(result, Refusal) and "2 places" in result.reason


def test_a_one_line_block_in_the_old_script_is_refused():
    new = "import flor\nfor i in flor.loop('epoch', range(2)):\n    x = i\n    flor.log('x', x)\n"
    old = "import flor\nfor i in flor.loop('epoch', range(2)): x = i\n"
    result = propagate(old, new, ["x"])
    assert isinstance(result, Refusal) and "one-line block" in result.reason


def test_no_names_give_the_old_script_back():
    assert propagate("x = 1\n", "y = 2\n", []) == Patched("x = 1\n", [])


def test_a_call_under_a_condition_keeps_its_condition(monkeypatch, capsys):
    old, new, names = load("conditional_expression")
    texts = {i.name: i.text for i in propagate(old, new, names).inserted}
    assert texts == {"even_loss": 'flor.log("even_loss", total) if epoch % 2 == 0 else None',
                     "later_slope": 'epoch > 0 and flor.log("later_slope", weights[1])'}
    records = run_with_stub(propagate(old, new, names).source, monkeypatch)
    assert [r[0] for r in records if r[1] == "even_loss"] == [(("epoch", 0),), (("epoch", 2),)]
