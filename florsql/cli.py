"""The `florsql` command: one argparse tree over the library (query, run, queries, replay).

    florsql [PROJECT] -c "SQL" | -f FILE.sql | < FILE.sql    short for `florsql query ...`
    florsql [PROJECT]                                          the interactive shell (on a tty)
    florsql run NAME [PROJECT] [--param k=v ...]               run a saved query
    florsql queries [PROJECT]                                  list saved queries
    florsql replay NAME[,NAME] [PROJECT] [--where SQL] ...     recover values for past runs
    florsql serve [PROJECT] [--workers N] [--gpus 0,1] ...     run queued jobs (flor.batch)
    florsql jobs [--watch] | jobs log ID | jobs cancel ID      the queue's progress

A command is recognised only as the first word, like git's: `florsql queries` lists saved
queries even where a `./queries` directory exists, and `florsql ./queries` (or
`--project queries`) opens that directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .cli_query import add_project, add_query_arguments, project_of, query_main
from .cli_saved import add_run_arguments, list_main, run_main
from .jobs_cli import add_jobs_arguments, add_serve_arguments, jobs_main, serve_main
from .replay_cli import add_replay_arguments, replay_main, sigterm_as_interrupt

DEFAULT_COMMAND = "query"
TOP_LEVEL_ONLY = ("-h", "--help", "--version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="florsql", usage="florsql [COMMAND] [PROJECT] [options]",
        description="SQL over machine-learning experiment history recorded with `import flor`. "
        "Without a COMMAND, `florsql [PROJECT] [options]` is `florsql query`: it runs -c, -f "
        "or standard-input SQL, or opens the shell on a terminal.",
        epilog="PROJECT is any directory inside the project's git repository (default: .), "
        "given as a word or as --project DIR. A COMMAND is recognised only as the first word: "
        "`florsql queries` lists saved queries even where ./queries exists; `florsql ./queries` "
        "or `florsql --project queries` opens that directory. Tables: history, runs, logs, "
        "names, contexts, loops, checkpoints, iterations, replays, jobs, job_attempts (see "
        "docs/catalog.md).")
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    query = commands.add_parser(
        "query", prog="florsql [query]", help="run SQL, or open the shell (the default command)",
        description="Run SQL and print every statement's result in order, or write it to a "
        "file; with no SQL on a terminal, open the interactive shell.")
    add_query_arguments(query)
    query.set_defaults(handler=query_main)
    run = commands.add_parser("run", prog="florsql run", help="run a saved query",
                              description="Run a saved query (see `florsql queries`).")
    add_run_arguments(run)
    run.set_defaults(handler=run_main)
    listing = commands.add_parser("queries", prog="florsql queries", help="list saved queries",
                                  description="List the saved queries with their parameters.")
    add_project(listing)
    listing.set_defaults(handler=list_main)
    replay = commands.add_parser(
        "replay", prog="florsql replay", help="recover values today's script logs, for past runs",
        description="Recover values logged by today's code for past runs, by replaying them.")
    add_replay_arguments(replay)
    replay.set_defaults(handler=replay_main)
    serve = commands.add_parser(
        "serve", prog="florsql serve", help="run the project's queued jobs (flor.batch) and "
        "replay tasks", description="Run queued batch jobs (flor.batch) and replay tasks "
        "(FLOR_EXECUTOR=queue) until stopped: Ctrl-C lets running jobs finish, a second "
        "Ctrl-C (or SIGTERM) stops them and queues them again.")
    add_serve_arguments(serve)
    serve.set_defaults(handler=serve_main)
    jobs = commands.add_parser(
        "jobs", prog="florsql jobs", help="the job queue: progress, a job's log, cancel",
        description="List the project's jobs (the 200 most recent) and a progress line "
        "counting all of them; `log ID` shows a job's "
        "output, `cancel ID|--batch NAME` cancels. SQL sees them as the jobs table.")
    add_jobs_arguments(jobs)
    jobs.set_defaults(handler=jobs_main)
    return parser


def version_line() -> str:
    """`florsql 0.1.0 (duckdb 2.0.1, sqlglot 30.3.0, Python 3.12.3)`."""
    import platform

    import duckdb
    import sqlglot

    return (f"florsql {__version__} (duckdb {duckdb.__version__}, sqlglot {sqlglot.__version__}, "
            f"Python {platform.python_version()})")


def with_default_command(argv: list[str]) -> list[str]:
    """`argv` with `query` in front unless its first word is a command or --help/--version."""
    commands = ("query", "run", "queries", "replay", "serve", "jobs")
    if argv and (argv[0] in commands or argv[0] in TOP_LEVEL_ONLY):
        return argv
    return [DEFAULT_COMMAND, *argv]


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # sqlglot warns on stderr for each statement it only half understands (EXPLAIN ANALYZE ...,
    # LOAD): noise for a CLI whose errors are one line each; DuckDB judges the SQL anyway.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    args = build_parser().parse_args(with_default_command(words))
    args.project = project_of(args)
    received = [int(signal.SIGINT)]
    try:
        with sigterm_as_interrupt() as received:  # SIGTERM stops a replay as Ctrl-C does
            return args.handler(args)
    except BrokenPipeError:  # `florsql ... | head`: the reader left, which is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:  # a replay's says what it stopped and what it kept
        print(f"florsql: {e}" if str(e) else "florsql: interrupted", file=sys.stderr)
        return 128 + received[0]


if __name__ == "__main__":
    sys.exit(main())
