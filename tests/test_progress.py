"""The replay progress bar: a clock per replay, plain lines off a terminal, clean redraws on one."""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest

from florsql.progress import replay_progress

PAUSE = 0.3  # long enough to show up in "elapsed", short enough for the suite


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def task(runid: str, ok: bool = True, seconds: float = 0.0) -> SimpleNamespace:
    """What the engine passes: a TaskResult's `ok`, `task.runid` and `seconds`."""
    return SimpleNamespace(ok=ok, task=SimpleNamespace(runid=runid), seconds=seconds)


def elapsed(line: str) -> float:
    return float(re.search(r"elapsed (\d+\.\d)s", line).group(1))


def rendered(text: str) -> list[str]:
    """The screen lines a terminal would show: `\\r` returns to column 0 and overwrites."""
    screen = []
    for raw in text.split("\n"):
        line: list[str] = []
        for part in raw.split("\r"):
            line[:len(part)] = part
        screen.append("".join(line))
    return [s for s in screen if s]


def test_elapsed_starts_with_each_replay_not_when_the_callable_was_made() -> None:
    out = io.StringIO()
    progress = replay_progress(out)
    time.sleep(PAUSE)
    progress(task("a"), 1, 2)
    progress(task("b"), 2, 2)
    time.sleep(PAUSE)
    progress(task("c"), 1, 1)  # a second replay through the same callable, as the shell does
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "replay 1/2 a ok", "replay 2/2 b ok", "replay 1/1 c ok"]
    assert all(elapsed(line) < PAUSE / 2 for line in lines), lines


def test_the_first_tasks_own_run_time_counts_but_never_before_the_callable() -> None:
    out = io.StringIO()
    progress = replay_progress(out)
    time.sleep(PAUSE + 0.2)
    progress(task("slow", seconds=PAUSE), 1, 1)
    fresh = replay_progress(out)
    fresh(task("claims-an-hour", seconds=3600.0), 1, 1)
    first, second = out.getvalue().splitlines()
    assert elapsed(first) == pytest.approx(PAUSE, abs=0.11)
    assert elapsed(second) < PAUSE / 2


def test_a_pipe_gets_few_whole_lines_and_always_the_last_one() -> None:
    out = io.StringIO()
    progress = replay_progress(out)
    for done in range(1, 101):
        progress(task(f"run{done}"), done, 100)
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 2  # the first, then nothing for 5 s, then the last
    assert lines[0].startswith("replay 1/100 run1 ok")
    assert lines[-1].startswith("replay 100/100 run100 ok, elapsed")
    assert lines[-1].endswith("|####################|")


def test_a_pipe_gets_another_line_once_the_interval_has_passed() -> None:
    out = io.StringIO()
    progress = replay_progress(out, interval=0.1)
    progress(task("a"), 1, 4)
    time.sleep(0.15)
    progress(task("b"), 2, 4)
    progress(task("c"), 3, 4)  # too soon after b
    progress(task("d", ok=False), 4, 4)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "replay 1/4 a ok", "replay 2/4 b ok", "replay 4/4 d FAILED"]


def test_the_estimate_is_shown_when_given() -> None:
    out = io.StringIO()
    replay_progress(out, estimate=12.34)(task("a"), 1, 1)
    assert "eta 0.0s, estimated 12.3s |" in out.getvalue()


def test_a_terminal_redraws_in_place_without_stale_characters() -> None:
    out = FakeTerminal()
    progress = replay_progress(out)
    progress(task("a-rather-long-run-name"), 1, 3)
    progress(task("b"), 2, 3)
    progress(task("c", ok=False), 3, 3)
    text = out.getvalue()
    assert "\r" in text and text.endswith("\n") and text.count("\n") == 1
    [last] = rendered(text)
    assert re.fullmatch(r"replay 3/3 c FAILED, elapsed \d+\.\ds, eta 0\.0s \|#{20}\| *", last), last


def test_a_terminal_gets_one_finished_line_per_replay() -> None:
    out = FakeTerminal()
    progress = replay_progress(out)
    progress(task("a"), 1, 1)
    time.sleep(PAUSE)
    progress(task("b"), 1, 2)
    progress(task("c"), 2, 2)
    screen = rendered(out.getvalue())
    assert [line.split(",")[0] for line in screen] == ["replay 1/1 a ok", "replay 2/2 c ok"]
    assert elapsed(screen[1]) < PAUSE / 2


def test_an_abandoned_replay_is_closed_when_the_next_one_begins() -> None:
    out = FakeTerminal()
    progress = replay_progress(out)
    progress(task("a"), 1, 3)  # then the replay failed; the next query replays again
    progress(task("b"), 1, 1)
    screen = rendered(out.getvalue())
    assert [line.split(",")[0] for line in screen] == ["replay 1/3 a ok", "replay 1/1 b ok"]


def test_without_a_stream_it_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    replay_progress()(task("a"), 1, 1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("replay 1/1 a ok")
