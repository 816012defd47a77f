"""Replay progress: one bar for `florsql replay`, the shell, `--yes` queries and `flor.replay`.

The engine calls `progress(result, done, total)` once per finished replay task. A terminal gets
tqdm's in-place bar; a pipe or a file gets a plain line at most every `interval` seconds (and
always the last), so a log holds readable lines instead of `\\r` frames run together:

    >>> import io, types
    >>> out = io.StringIO()
    >>> show = replay_progress(out)
    >>> show(types.SimpleNamespace(ok=True, run=types.SimpleNamespace(runid="fast")), 1, 1)
    >>> out.getvalue().startswith("replay 1/1 fast ok, elapsed 0.0s, eta 0.0s |#####")
    True
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

# `desc` carries the last finished run; `postfix` the estimate (tqdm prefixes it with ", ").
# The bar comes last: a terminal too narrow for the line cuts the bar, not the numbers.
BAR_FORMAT = ("replay {n_fmt}/{total_fmt} {desc}, elapsed {elapsed_s:.1f}s, "
              "eta {remaining_s:.1f}s{postfix} |{bar:20}|")
PLAIN_INTERVAL = 5.0  # seconds between lines on a non-terminal stream


def replay_progress(stream: TextIO | None = None, estimate: float | None = None,
                    interval: float = PLAIN_INTERVAL) -> ReplayProgress:
    """A progress callback for the engine's replays; `stream` defaults to stderr at draw time.

    It may outlive one replay (a connection keeps one for its whole life): each replay gets a
    fresh bar whose clock starts with that replay, not with this call.
    """
    return ReplayProgress(stream, estimate, interval)


class ReplayProgress:
    """`progress(result, done, total)`: draws one bar per replay, restarting on a new one."""

    def __init__(self, stream: TextIO | None, estimate: float | None, interval: float) -> None:
        self.stream, self.estimate, self.interval = stream, estimate, interval
        self._since = time.monotonic()  # the next replay cannot have started before this
        self._started = self._since
        self._done = self._total = 0
        self._bar: tqdm | None = None
        self._printed_at: float | None = None

    def __call__(self, result: Any, done: int, total: int) -> None:
        if self._is_new_replay(done, total):
            self._begin(result, total)
        self._done, self._total = done, total
        state = _state(result)
        if self._bar is not None:
            self._draw_bar(state, done, total)
        else:
            self._print_line(state, done, total)
        if done >= total:
            self._finish()
        self._since = time.monotonic()

    def _is_new_replay(self, done: int, total: int) -> bool:
        # `done` counts up from 1 within one replay; anything else means another one began.
        return done == 1 or done <= self._done or total != self._total

    def _begin(self, result: Any, total: int) -> None:
        """Start the clock when the replay began: its first task's own run time ago, but not
        before this callable was made or last drew (it may be kept between replays)."""
        self._finish()
        now = time.monotonic()
        self._started = max(self._since, now - float(getattr(result, "seconds", 0.0)))
        self._printed_at = None
        out = self._out()
        if _is_terminal(out):
            # smoothing=0: the ETA from the mean time per task, not the last few
            self._bar = _Bar(total=total, file=out, desc=_state(result), postfix=self._postfix(),
                             bar_format=BAR_FORMAT, leave=True, mininterval=0, miniters=1,
                             smoothing=0, dynamic_ncols=True)

    def _draw_bar(self, state: str, done: int, total: int) -> None:
        bar = self._bar
        assert bar is not None
        # tqdm's clock runs on time.time(); move its start to this replay's.
        bar.start_t = time.time() - (time.monotonic() - self._started)
        bar.n = done
        bar.set_description_str(state, refresh=False)
        if done < total:  # the last frame is drawn by close(), with its newline
            bar.refresh()

    def _print_line(self, state: str, done: int, total: int) -> None:
        now = time.monotonic()
        due = self._printed_at is None or now - self._printed_at >= self.interval
        if not (due or done >= total):
            return
        self._printed_at = now
        line = tqdm.format_meter(done, total, now - self._started, prefix=state, ascii=True,
                                 bar_format=BAR_FORMAT, postfix=self._postfix())
        out = self._out()
        out.write(line + "\n")
        out.flush()

    def _finish(self) -> None:
        if self._bar is not None:
            self._bar.close()  # draws the final frame and ends its line
            self._bar = None
        self._done = self._total = 0

    def _postfix(self) -> str | None:
        return None if self.estimate is None else f"estimated {self.estimate:.1f}s"

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr


class _Bar(tqdm):
    # Frames are drawn only when a task ends; tqdm's monitor thread would add nothing.
    monitor_interval = 0


def _state(result: Any) -> str:
    return f"{result.task.runid} {'ok' if result.ok else 'FAILED'}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
