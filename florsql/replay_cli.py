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
from .engine import EngineError
from .formatting import format_rows
from .progress import replay_progress


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
    from .engine.replay_run import ReplayInterrupted

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
    from .engine.replay_plan import plan_replay
    from .engine.replay_run import run_replay

    names = [n.strip() for n in args.names.split(",") if n.strip()]
    with Connection(args.project) as conn:
        if not args.dry_run:  # workers import torch (~2 s) while the plan is made
            conn.session.warm_replay_pool(max(1, args.workers))
        plan = plan_replay(conn.session, names, args.where, max(1, args.workers), iterations)
        print(format_rows(*plan_table(plan)))
        print(f"{len(plan.tasks)} task(s) on {plan.workers} worker(s), "
              f"estimated {plan.estimated_seconds:.1f} s")
        if args.dry_run or not plan.tasks:
            return 1 if any(r.refusal for r in plan.runs) else 0
        results = run_replay(conn.session, plan, replay_progress(estimate=plan.estimated_seconds),
                             args.task_timeout)
    failed = _print_failures(results)
    refused = [r for r in plan.runs if r.refusal]
    return 1 if failed or refused else 0


def _print_failures(results: list) -> list:
    """One line per failed task (not those stopped by an interrupt); the failed ones."""
    failed = [r for r in results if not r.ok and r.stopped != "interrupted"]
    for r in failed:
        print(f"florsql: replay of {r.run.runid} ({r.run.tstamp}) failed: {r.error}",
              file=sys.stderr)
    return failed


def plan_table(plan) -> tuple[list[str], list[tuple]]:
    rows = [(r.runid, r.tstamp, r.vid[:10], ",".join(r.names),
             "refused: " + r.refusal if r.refusal else
             f"{len(r.segments)} segment(s)" + (", inner loops skipped" if r.memoize else ""),
             round(sum(s.seconds for s in r.segments), 1)) for r in plan.runs]
    return ["runid", "tstamp", "vid", "names", "plan", "est_seconds"], rows


