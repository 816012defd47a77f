"""The `florsql` command: SQL over a project's history, saved queries, the shell.

    florsql [PROJECT] -c "SQL" | -f FILE.sql | < FILE.sql   run SQL and print the result
        [--yes | --no-replay] [--max-replay-seconds S] [--workers K]  (missing values)
    florsql [PROJECT]                                         the interactive shell (on a tty)
    florsql run NAME [--param k=v ...] [--project DIR]        run a saved query
    florsql queries [--project DIR]                           list saved queries
    florsql replay NAME[,NAME] [--where SQL] [--workers K] [--iterations I,...] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import exceptions
from .dbapi import Connection
from .engine import EngineError
from .formatting import FORMATS, format_rows
from .saved import SavedQueryError, find_query, list_queries, parse_assignments

SUBCOMMANDS = ("run", "queries", "replay")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="florsql",
        description="SQL over machine-learning experiment history recorded with `import flor`.",
        epilog="Subcommands: `florsql run NAME` runs a saved query, `florsql queries` lists them, "
        "`florsql replay NAME[,NAME]` recovers values today's script logs for past runs. "
        "Tables: history, runs, logs, names, contexts, loops, checkpoints, iterations, replays "
        "(see docs/catalog.md).",
    )
    parser.add_argument("project", nargs="?", default=".",
                        help="project directory (any directory in its git repo; default: .)")
    parser.add_argument("-c", "--command", metavar="SQL", help="run SQL and exit")
    parser.add_argument("-f", "--file", metavar="FILE.sql", help="run the SQL in a file and exit")
    _add_format(parser)
    _add_replay_flags(parser)
    return parser


def build_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="florsql run", description="Run a saved query.")
    parser.add_argument("name", help="the saved query's name (see `florsql queries`)")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                        help="a value for one of the query's :parameters (repeatable)")
    parser.add_argument("--project", default=".", help="project directory (default: .)")
    _add_format(parser)
    _add_replay_flags(parser)
    return parser


def build_queries_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="florsql queries", description="List saved queries.")
    parser.add_argument("--project", default=".", help="project directory (default: .)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `florsql ... | head`: the reader left, which is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "replay":
        from .replay_cli import replay_main

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                code = replay_main(argv[1:])
        except (exceptions.Error, EngineError) as e:
            return _fail(str(e))
        for w in caught:
            print(f"florsql: warning: {w.message}", file=sys.stderr)
        return code
    if argv and argv[0] in SUBCOMMANDS:
        return _run_saved(argv[1:]) if argv[0] == "run" else _list_saved(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        sql = _sql_from(args)
    except OSError as e:
        return _fail(f"cannot read {e.filename}: {e.strerror}")
    if sql is None:
        if sys.stdin.isatty():
            from .shell import run_shell

            return run_shell(args.project)
        print("florsql: give a query with -c SQL, -f FILE.sql or on standard input",
              file=sys.stderr)
        return 2
    return _run_sql(args.project, sql, None, args.format, _replay_options(args))


def _run_saved(argv: list[str]) -> int:
    args = build_run_parser().parse_args(argv)
    try:
        root = _project_root(args.project)
        query = find_query(args.name, root)
        sql, params = query.bind(parse_assignments(args.param))
    except (SavedQueryError, exceptions.Error) as e:
        return _fail(str(e))
    return _run_sql(args.project, sql, params or None, args.format, _replay_options(args))


def _list_saved(argv: list[str]) -> int:
    args = build_queries_parser().parse_args(argv)
    try:
        root = _project_root(args.project)
        rows = [(q.name, " ".join(f":{p}" for p in q.params), q.description)
                for q in list_queries(root)]
    except (SavedQueryError, exceptions.Error) as e:
        return _fail(str(e))
    print(format_rows(["name", "params", "description"], rows))
    return 0


def _run_sql(project: str, sql: str, params: dict | None, fmt: str,
             replay: dict | None = None) -> int:
    try:
        with Connection(project, **(replay or {})) as conn, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cur = conn.execute(sql, params)
            columns = [d[0] for d in cur.description or ()]
            rows = cur.fetchall() if cur.description else []
        for w in caught:
            print(f"florsql: warning: {w.message}", file=sys.stderr)
    except exceptions.Error as e:
        return _fail(str(e))
    if columns:
        print(format_rows(columns, rows, fmt))
    return 0


def _project_root(project: str) -> Path | None:
    """The project's root for its own `queries/`, or None when there is no history there."""
    try:
        with Connection(project) as conn:
            return conn.project.root
    except exceptions.OperationalError:
        return None


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output format (default: table)")


def _add_replay_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "missing values", "a query that names values today's script logs but past runs lack "
        "replays those runs first; on a terminal it shows the plan and asks")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--replay", dest="replay", action="store_const", const="ask",
                        default="ask", help="replay what the query needs, asking first "
                        "(the default; without a terminal, only with --yes)")
    choice.add_argument("--yes", "-y", dest="replay", action="store_const", const="auto",
                        help="replay without asking")
    choice.add_argument("--no-replay", dest="replay", action="store_const", const="off",
                        help="answer with NULLs for what is missing, and warn")
    group.add_argument("--max-replay-seconds", type=float, metavar="S",
                       help="refuse a replay estimated to take longer than S seconds")
    group.add_argument("--workers", type=int, metavar="K",
                       help="replay processes at once (default: one per core)")


def _replay_options(args: argparse.Namespace) -> dict:
    from .retroactive import ask_on_terminal, progress_printer

    return {"replay": args.replay, "max_replay_seconds": args.max_replay_seconds,
            "workers": args.workers, "confirm": ask_on_terminal,
            "progress": progress_printer()}


def _fail(message: str) -> int:
    print(f"florsql: error: {message}", file=sys.stderr)
    return 1


def _sql_from(args: argparse.Namespace) -> str | None:
    if args.command is not None:
        return args.command
    if args.file is not None:
        with open(args.file) as fh:
            return fh.read()
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        return text if text.strip() else None
    return None


if __name__ == "__main__":
    sys.exit(main())
