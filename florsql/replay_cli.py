"""`florsql replay NAME[,NAME] [PROJECT] [--where SQL] [--workers K] [--dry-run]`."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import exceptions
from .dbapi import Connection
from .engine import EngineError
from .formatting import format_rows
from .progress import replay_progress


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_query import add_project

    parser.add_argument("names", help="logged names to recover, comma-separated")
    add_project(parser)
    parser.add_argument("--where", help="which runs: a SQL condition over history columns, "
                        "or FlorDB's pandas style (lr > 0.01; cf.isna() and lr < 0.1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="replay processes at once (default: one per core)")
    parser.add_argument("--iterations", metavar="I[,I...]",
                        help="only these outer-loop iterations (e.g. epochs 3,4); code after "
                        "the loop is then not run")
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
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return _replay(args, iterations)
            finally:
                print_warnings(caught)
    except (exceptions.Error, EngineError) as e:
        return fail(str(e))


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
        results = run_replay(conn.session, plan, replay_progress(estimate=plan.estimated_seconds))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"florsql: replay of {r.run.runid} ({r.run.tstamp}) failed: {r.error}",
              file=sys.stderr)
    refused = [r for r in plan.runs if r.refusal]
    return 1 if failed or refused else 0


def plan_table(plan) -> tuple[list[str], list[tuple]]:
    rows = [(r.runid, r.tstamp, r.vid[:10], ",".join(r.names),
             "refused: " + r.refusal if r.refusal else
             f"{len(r.segments)} segment(s)" + (", inner loops skipped" if r.memoize else ""),
             round(sum(s.seconds for s in r.segments), 1)) for r in plan.runs]
    return ["runid", "tstamp", "vid", "names", "plan", "est_seconds"], rows
