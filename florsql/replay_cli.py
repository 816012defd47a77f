"""`florsql replay NAME[,NAME] [--where SQL] [--workers K] [--dry-run] [--project DIR]`."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .dbapi import Connection
from .formatting import format_rows


def build_replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="florsql replay",
        description="Recover values logged by today's code for past runs, by replaying them.")
    parser.add_argument("names", help="logged names to recover, comma-separated")
    parser.add_argument("--where", help="which runs: a SQL condition over history columns, "
                        "or FlorDB's pandas style (lr > 0.01; cf.isna() and lr < 0.1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="replay processes at once (default: one per core)")
    parser.add_argument("--iterations", metavar="I[,I...]",
                        help="only these outer-loop iterations (e.g. epochs 3,4); code after "
                        "the loop is then not run")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--project", default=".", help="project directory (default: .)")
    return parser


def replay_main(argv: list[str]) -> int:
    from .engine.replay_plan import plan_replay
    from .engine.replay_run import run_replay

    args = build_replay_parser().parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    with Connection(args.project) as conn:
        iterations = ({int(i) for i in args.iterations.split(",") if i.strip()}
                      if args.iterations else None)
        if not args.dry_run:  # workers import torch (~2 s) while the plan is made
            conn.session.warm_replay_pool(max(1, args.workers))
        plan = plan_replay(conn.session, names, args.where, max(1, args.workers), iterations)
        print(format_rows(*plan_table(plan)))
        print(f"{len(plan.tasks)} task(s) on {plan.workers} worker(s), "
              f"estimated {plan.estimated_seconds:.1f} s")
        if args.dry_run or not plan.tasks:
            return 1 if any(r.refusal for r in plan.runs) else 0
        results = run_replay(conn.session, plan, _progress_printer(plan.estimated_seconds))
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


def _progress_printer(estimate: float):
    started = time.monotonic()

    def show(result, done: int, total: int) -> None:
        elapsed = time.monotonic() - started
        eta = max(0.0, elapsed / done * (total - done))
        bar = "#" * int(20 * done / total)
        state = "ok" if result.ok else "FAILED"
        print(f"\r[{bar:<20}] {done}/{total} {result.run.runid} {state} "
              f"elapsed {elapsed:.1f}s eta {eta:.1f}s (estimated {estimate:.1f}s)",
              file=sys.stderr, end="\n" if done == total else "", flush=True)

    return show
