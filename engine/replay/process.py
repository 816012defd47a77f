"""One replay task's process: in a warm worker or as an interpreter of its own, with its output
streamed into bounded logs, a time limit, and cancellation.

    limit = task_limit(resolve_task_timeout(None), segment_estimate)
    done = run_process(Launch(argv, tree, env, staging, threads, limit), cancel)
    done.rc, done.stopped, done.stderr   # 0, None, "" - or -9, "timeout", its last lines

The output of a task never sits in memory: its stdout and stderr go through pipes into
`stdout.log` and `stderr.log` in the task's staging folder, each keeping its last LOG_CAP
bytes (replay_zygote.BoundedLog), and they are kept with the replay's records when it
succeeds. A failure's message shows the last lines of stderr.

The time limit of a task is max(TIMEOUT_FLOOR, TIMEOUT_FACTOR x its estimated seconds): the
estimate comes from the run's recorded timings and can be off by a few times (a busy machine,
another device), never by ten on a floor of two minutes, while a hung statement is caught in
minutes, not never. `--task-timeout S` (FLOR_REPLAY_TASK_TIMEOUT=S, task_timeout=S) sets a
fixed limit of S seconds instead; 0 means none. A task over its limit, or one whose replay is
interrupted, is killed with its whole process group (what it started goes too).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from flor import protocol

from ..errors import EngineError
from .pool import Task, Zygote
from .zygote import LOG_CAP, BoundedLog, kill_group, watch_child

TASK_TIMEOUT_ENV = "FLOR_REPLAY_TASK_TIMEOUT"
TIMEOUT_FLOOR = 120.0  # seconds: no task is stopped sooner by the default limit
TIMEOUT_FACTOR = 10.0  # times the task's estimate
CANCEL_TICK = 0.05  # seconds between looks at the cancel event of a process of its own


@dataclass
class Launch:
    """What one process of a task runs."""

    argv: list[str]  # the script, relative to cwd, then its arguments
    cwd: Path
    env: dict[str, str]
    logs: Path  # the folder that gets stdout.log and stderr.log
    threads: int
    limit: float | None  # seconds; None: no limit


@dataclass(frozen=True)
class Exit:
    """How a task's process ended."""

    rc: int  # negative: killed by that signal
    stopped: str | None  # "timeout" or "cancelled" when flor stopped it
    stderr: str  # the tail of its stderr
    limit: float | None  # the time limit it ran under


def resolve_task_timeout(value: float | None) -> float | None:
    """The time limit setting: `value`, else FLOR_REPLAY_TASK_TIMEOUT; None: from each task's
    estimate; math.inf: none (0 or a negative number given)."""
    if value is None:
        raw = os.environ.get(TASK_TIMEOUT_ENV, "").strip()
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise EngineError(f"{TASK_TIMEOUT_ENV} must be a number of seconds (0: no limit), "
                              f"not {raw!r}") from None
    if math.isnan(value):
        raise EngineError("the task timeout must be a number of seconds (0: no limit)")
    return math.inf if value <= 0 else float(value)


def task_limit(setting: float | None, estimate: float) -> float | None:
    """The seconds a task estimated at `estimate` may run under `setting`; None: no limit."""
    if setting is None:
        return max(TIMEOUT_FLOOR, TIMEOUT_FACTOR * estimate)
    return None if math.isinf(setting) else setting


def timeout_message(limit: float, setting: float | None, estimate: float) -> str:
    """One line: what the limit was and how to raise it."""
    why = (f"the default limit, max({TIMEOUT_FLOOR:g} s, {TIMEOUT_FACTOR:g} x its "
           f"{estimate:.1f} s estimate)" if setting is None else "the limit set")
    return (f"timed out after {limit:g} s ({why}); raise it with --task-timeout S, "
            f"{TASK_TIMEOUT_ENV}=S or task_timeout=S (0: no limit)")


def run_pooled(zygote: Zygote, launch: Launch, cancel: threading.Event) -> Exit:
    """Run `launch` in a child of a warm worker."""
    out, err = launch.logs / protocol.STDOUT_LOG, launch.logs / protocol.STDERR_LOG
    done = zygote.run_task(Task(cwd=str(launch.cwd), argv=launch.argv, env=launch.env,
                                stdout=str(out), stderr=str(err), threads=launch.threads,
                                timeout=launch.limit, log_cap=LOG_CAP), cancel)
    return Exit(done.rc, done.stopped, read_tail(err), launch.limit)


def run_process(launch: Launch, cancel: threading.Event) -> Exit:
    """Run `launch` as a new interpreter, in a process group of its own (a new session, so a
    terminal's Ctrl-C reaches florsql, which stops it, and not the task behind its back)."""
    out, err = launch.logs / protocol.STDOUT_LOG, launch.logs / protocol.STDERR_LOG
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, *launch.argv], cwd=launch.cwd, env=launch.env,
                                stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                start_new_session=True)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w):
            os.close(fd)
    pipes = {out_r: BoundedLog(str(out), LOG_CAP), err_r: BoundedLog(str(err), LOG_CAP)}
    try:
        rc, stopped = watch_child(proc.pid, pipes, launch.limit, [],
                                  lambda _: "cancelled" if cancel.is_set() else None,
                                  tick=CANCEL_TICK)
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    proc.returncode = rc  # watch_child reaped it: Popen must not wait for it again
    return Exit(rc, stopped, read_tail(err), launch.limit)


def read_tail(path: Path, limit: int = 20000) -> str:
    """The last `limit` bytes of a log, as text."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""
