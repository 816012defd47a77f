"""`florsql serve` and `florsql jobs`: run the project's queued jobs, and watch them.

    florsql serve [PROJECT] [--workers N] [--gpus 0,1] [--retries N] [--time-limit S]
                  [--executor local|ray] [--once]
    florsql jobs [--project DIR] [--batch NAME] [--watch]
    florsql jobs log ID [--attempt N] [--project DIR]
    florsql jobs cancel ID [ID ...] | --batch NAME [--project DIR]

The engine does the work (engine/jobs/); this module parses, prints and maps signals: the
first Ctrl-C (SIGINT) stops claiming and lets running jobs finish, a second one (or SIGTERM)
stops them and puts them back in the queue.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from .engine import EngineError
from .engine.jobs.server import JobServer, ServeOptions
from .engine.jobs.status import all_ended, job_listing, job_log, progress_line
from .engine.jobs.store import JobQueue
from .engine.jobs.submit import project_of
from .formatting import format_rows

WATCH_SECONDS = 1.0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_query import add_project, seconds_arg

    add_project(parser)
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="CPU workers: jobs run at once on the CPU (default: 1 without "
                        "--gpus, 0 with it)")
    parser.add_argument("--gpus", metavar="IDS", default="",
                        help="one worker per GPU id (e.g. 0,1): its jobs see only that GPU "
                        "through CUDA_VISIBLE_DEVICES")
    parser.add_argument("--retries", type=int, default=0, metavar="N",
                        help="run a job that failed by itself up to N more times (default 0; "
                        "a job whose worker was killed is always run again)")
    parser.add_argument("--time-limit", type=seconds_arg, metavar="S",
                        help="stop a job running longer than S seconds (status timeout), "
                        "unless flor.batch(time_limit=) gave it its own")
    parser.add_argument("--executor", choices=("local", "ray"), default=None,
                        help="where jobs run: this machine (default) or Ray (RAY_ADDRESS, "
                        "else a local instance); default $FLOR_EXECUTOR when it is ray")
    parser.add_argument("--once", action="store_true",
                        help="exit when the queue is empty instead of waiting for more jobs")


def serve_options(args: argparse.Namespace) -> ServeOptions:
    gpus = tuple(g.strip() for g in (args.gpus or "").split(",") if g.strip())
    workers = args.workers if args.workers is not None else (0 if gpus else 1)
    if workers < 0 or (workers == 0 and not gpus):
        raise EngineError("a server needs at least one worker: --workers N (N >= 1) or "
                          "--gpus IDS")
    executor = args.executor or ("ray" if os.environ.get("FLOR_EXECUTOR") == "ray" else "local")
    root, home = project_of(args.project)
    return ServeOptions(root, home, workers=workers, gpus=gpus, retries=max(0, args.retries),
                        time_limit=args.time_limit or None, executor=executor, once=args.once)


def serve_main(args: argparse.Namespace) -> int:
    from .cli_query import fail

    try:
        options = serve_options(args)
        server = JobServer(options, say=lambda line: print(line, flush=True))
    except EngineError as e:
        return fail(str(e))
    slots = ", ".join(s.name for s in server.slots)
    print(f"florsql serve: {len(server.slots)} worker(s) ({slots}) on {options.project_root}, "
          f"executor {options.executor}; {progress_line(server.queue)}", flush=True)
    with StopOnSignals(server):
        try:
            server.serve()
        except EngineError as e:  # Ray missing or unreachable: nothing was claimed
            return fail(str(e))
    print(f"florsql serve: stopped; {progress_line(server.queue)}", flush=True)
    return 0


class StopOnSignals:
    """SIGINT: stop claiming (again: stop running jobs too); SIGTERM: stop them at once."""

    def __init__(self, server: JobServer) -> None:
        self.server, self.previous = server, {}
        self.count = 0

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._on_signal)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.count += 1
        hard = signum == signal.SIGTERM or self.count > 1
        running = self.server.running_count
        if hard:
            print(f"florsql serve: stopping {running} running job(s); they go back to the "
                  "queue", file=sys.stderr, flush=True)
        else:
            print(f"florsql serve: no new jobs; waiting for {running} running job(s) to "
                  "finish (Ctrl-C again stops them and queues them again)", file=sys.stderr,
                  flush=True)
        self.server.stop(hard=hard)


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", dest="project_option", metavar="DIR",
                        help="the project directory (default: .)")
    parser.add_argument("--batch", metavar="NAME", help="only the jobs of this batch")
    parser.add_argument("--watch", action="store_true",
                        help="refresh every second until every job has ended (Ctrl-C stops "
                        "watching, not the jobs)")
    actions = parser.add_subparsers(dest="jobs_action", metavar="ACTION")
    log = actions.add_parser("log", help="a job's output and traceback")
    log.add_argument("job_id", type=int, metavar="ID")
    log.add_argument("--attempt", type=int, metavar="N", help="an earlier attempt")
    cancel = actions.add_parser("cancel", help="cancel queued or running jobs")
    cancel.add_argument("job_ids", type=int, nargs="*", metavar="ID")
    cancel.add_argument("--batch", dest="cancel_batch", metavar="NAME",
                        help="every job of this batch")


def jobs_main(args: argparse.Namespace) -> int:
    from .cli_query import fail

    try:
        _, home = project_of(args.project)
        queue = JobQueue.open(home)
        if args.jobs_action == "log":
            sys.stdout.write(job_log(queue, args.job_id, args.attempt))
            return 0
        if args.jobs_action == "cancel":
            return _cancel(queue, args)
        return _watch(queue, args.batch) if args.watch else _list(queue, args.batch)
    except KeyError as e:
        return fail(str(e.args[0]))
    except EngineError as e:
        return fail(str(e))


def _list(queue: JobQueue, batch: str | None) -> int:
    columns, rows = job_listing(queue, batch)
    if rows:
        print(format_rows(columns, rows))
    print(progress_line(queue, batch))
    return 0


def _watch(queue: JobQueue, batch: str | None) -> int:
    tty = sys.stdout.isatty()
    try:
        while True:
            if tty:
                print("\033[H\033[J", end="")
            _list(queue, batch)
            if all_ended(queue, batch):
                return 0
            sys.stdout.flush()
            time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        return 0


def _cancel(queue: JobQueue, args: argparse.Namespace) -> int:
    from .cli_query import fail

    if not args.job_ids and not args.cancel_batch:
        return fail("name the jobs to cancel: florsql jobs cancel ID [ID ...] or --batch NAME",
                    code=2)
    now, later = queue.cancel(args.job_ids, args.cancel_batch)
    print(f"cancelled {now} queued job(s)" + (f"; {later} running job(s) are being stopped by "
                                              "their server" if later else ""))
    return 0 if now or later else 1

