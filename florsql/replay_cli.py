"""`florsql replay NAME[,NAME] [PROJECT] [--where SQL] [--workers K] [--task-timeout S]
[--dry-run]`.

SIGINT and SIGTERM stop a running replay: every task is killed and its folders removed, the
tasks that finished keep their records, one line says how many of each, and the exit status
is 130 (SIGINT) or 143 (SIGTERM), as a shell reports a process ended by that signal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from . import exceptions
from .dbapi import Connection
from .engine import EngineError, ReplayInterrupted, ReplayPlan
from .engine.replay.model import failures
from .progress import replay_progress
from .retroactive import describe_plan, task_summary


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_query import add_project, seconds_arg

    parser.add_argument("names", help="logged names to recover, comma-separated")
    add_project(parser)
    parser.add_argument("--where", help="which runs: a SQL condition over history columns, "
                        "or FlorDB's pandas style (lr > 0.01; cf.isna() and lr < 0.1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="replay processes at once (default: one per core)")
    parser.add_argument("--iterations", metavar="I[,I...]",
                        help="only these outer-loop iterations (e.g. epochs 3,4); code after "
                        "the loop is then not run")
    parser.add_argument("--task-timeout", type=seconds_arg, metavar="S",
                        help="stop a task that runs longer than S seconds and report it as "
                        "failed (0: no limit; default: FLOR_REPLAY_TASK_TIMEOUT, else "
                        "max(120 s, 10 x the task's estimate))")
    parser.add_argument("--executor", choices=("local", "process", "queue", "ray"),
                        help="where tasks run: this machine (local, the default), a new "
                        "interpreter per task (process), the project's running `florsql serve` "
                        "(queue), or Ray (ray); default $FLOR_EXECUTOR")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")


def replay_main(args: argparse.Namespace) -> int:
    """Plan, show and run a replay; failures and refusals are one line each, exit 1."""
    from .cli_query import fail, print_warnings

    try:
        iterations = ({int(i) for i in args.iterations.split(",") if i.strip()}
                      if args.iterations else None)
    except ValueError:
        return fail(f"--iterations takes outer-loop indices like 3,4, not {args.iterations!r}",
                    code=2)
    with sigterm_as_interrupt() as received:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    return _replay(args, iterations)
                finally:
                    print_warnings(caught)
        except (exceptions.Error, EngineError) as e:
            return fail(str(e))
        except ReplayInterrupted as e:
            _print_failures(e.results)
            print(f"florsql: {e}", file=sys.stderr)
            return 128 + received[0]
        except KeyboardInterrupt:  # before the replay started: nothing to stop
            print("florsql: interrupted", file=sys.stderr)
            return 128 + received[0]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[list[int]]:
    """SIGTERM raises KeyboardInterrupt, so that the replay stops its tasks as on Ctrl-C;
    yields [the signal that stopped us], SIGINT unless SIGTERM came."""
    received = [int(signal.SIGINT)]
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_sigterm(signum: int, frame: object) -> None:
        received[0] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _replay(args: argparse.Namespace, iterations: set[int] | None) -> int:
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    workers = max(1, args.workers)

    def show(plan: ReplayPlan):  # the plan, then the progress bar of its run
        print(describe_plan(plan, task_summary(plan)), flush=True)
        return replay_progress(estimate=plan.estimated_seconds) if plan.tasks else None

    with Connection(args.project, executor=args.executor) as conn:
        service = conn.replay_service
        service.on_wait = lambda: print(
            "florsql: another replay of this project is running; waiting for it to finish "
            "(Ctrl-C to stop waiting)", file=sys.stderr, flush=True)
        if not args.dry_run:  # workers import torch (~2 s) while the plan is made
            service.warm(workers)
        report = service.replay_names(names, args.where, workers, iterations, on_plan=show,
                                      dry_run=args.dry_run, task_timeout=args.task_timeout)
    failed = _print_failures(report.results)
    return 1 if failed or report.plan.refused else 0


def _print_failures(results) -> list:
    """One line per failed task (not those stopped by an interrupt); the failed ones."""
    failed = failures(results)
    for r in failed:
        print(f"florsql: replay of {r.task.runid} ({r.task.tstamp}) failed: {r.error}",
              file=sys.stderr)
    return failed
