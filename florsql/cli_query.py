"""`florsql [query] [PROJECT] -c SQL | -f FILE.sql | < FILE.sql`: run SQL, print or export it.

Every statement runs in order and each result is printed, as sqlite3 and psql do; an error in
statement k names k and stops there. `--output FILE` writes the results to a file instead
(parquet, csv, tsv, json, markdown or table; from `--format` or the extension): florsql writes
the file, since its SQL cannot.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from . import exceptions
from .dbapi import Connection, Cursor
from .export import FILE_FORMATS, ExportError, Result, export_format, write_results
from .formatting import FORMATS, format_rows
from .statements import (
    ScriptReadError,
    Statement,
    read_sql_file,
    read_sql_stream,
    split_statements,
)


def add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", nargs="?", metavar="PROJECT",
                        help="project directory: any directory in its git repository "
                        "(default: .)")
    parser.add_argument("--project", dest="project_option", metavar="DIR",
                        help="the project directory, as an option")


def project_of(args: argparse.Namespace) -> str:
    """The project given as a word or as --project (the same one if both); default `.`."""
    word, option = getattr(args, "project", None), getattr(args, "project_option", None)
    if word and option and Path(word).resolve() != Path(option).resolve():
        print(f"florsql: error: two projects given ({word} and --project {option}): "
              "give one", file=sys.stderr)
        raise SystemExit(2)
    return option or word or "."


def add_query_arguments(parser: argparse.ArgumentParser) -> None:
    add_project(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-c", "--command", metavar="SQL",
                        help="run these SQL statements and exit")
    source.add_argument("-f", "--file", metavar="FILE.sql",
                        help="run the SQL statements in a file and exit")
    add_output_arguments(parser)
    add_replay_flags(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=sorted({*FORMATS, *FILE_FORMATS}),
                        help="output format (default: table; with --output, the file's "
                        "extension)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the result to FILE instead of printing it (.parquet, .csv, "
                        ".tsv, .json, .md); florsql's SQL itself cannot write files")


def add_replay_flags(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument("--task-timeout", type=seconds_arg, metavar="S",
                       help="stop a replay task that runs longer than S seconds (0: no limit; "
                       "default: FLOR_REPLAY_TASK_TIMEOUT, else max(120 s, 10 x its estimate))")


def query_main(args: argparse.Namespace) -> int:
    try:
        sql = _sql_from(args)
    except ScriptReadError as e:
        return fail(str(e))
    if sql is None:
        if sys.stdin.isatty() and args.output is None:
            from .shell import run_shell

            return run_shell(args.project)
        print("florsql: error: give SQL with -c SQL, -f FILE.sql or on standard input "
              "(or run florsql on a terminal for the shell)", file=sys.stderr)
        return 2
    statements = split_statements(sql)
    if not statements:
        return fail("no SQL statement to run (only blanks, comments or ';')")
    return run_statements(args, statements)


def run_statements(args: argparse.Namespace, statements: list[Statement],
                   params: dict[str, Any] | None = None) -> int:
    """Run each statement in order; print each result, or export them all to --output."""
    try:
        fmt = _output_format(args)
    except ExportError as e:
        return fail(str(e), code=2)
    results: list[Result] = []
    printed = 0
    try:
        with Connection(args.project, **replay_options(args)) as conn:
            for statement in statements:
                try:
                    cur = _execute(conn, statement.sql, _params_for(statement.sql, params))
                    if cur is None:
                        continue
                    if args.output:
                        results.append(Result.from_cursor(cur))
                    else:
                        _print_result(cur, fmt, first=printed == 0)
                        printed += 1
                except exceptions.Error as e:
                    return fail(_numbered(statement, len(statements)) + str(e))
    except exceptions.Error as e:  # the project could not be opened
        return fail(str(e))
    return _export(results, args.output, fmt) if args.output else 0


def replay_options(args: argparse.Namespace) -> dict[str, Any]:
    from .progress import replay_progress
    from .retroactive import ask_on_terminal

    return {"replay": args.replay, "max_replay_seconds": args.max_replay_seconds,
            "workers": args.workers, "confirm": ask_on_terminal,
            "progress": replay_progress(), "surface": "cli",
            "task_timeout": args.task_timeout}


def seconds_arg(text: str) -> float:
    """An argparse type: seconds, 0 or more (0: no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds expected, not {text!r}") from None
    if value != value or value < 0:
        raise argparse.ArgumentTypeError(f"seconds expected (0: no limit), not {text!r}")
    return value


def fail(message: str, code: int = 1) -> int:
    print(f"florsql: error: {message}", file=sys.stderr)
    return code


def print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        print(f"florsql: warning: {w.message}", file=sys.stderr)


def _execute(conn: Connection, sql: str, params: dict[str, Any] | None) -> Cursor | None:
    """The cursor of a statement that returns rows; None for SET and the like."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cur = conn.execute(sql, params)
        finally:
            print_warnings(caught)
    return cur if cur.description else None


def _print_result(cur: Cursor, fmt: str, first: bool) -> None:
    columns = [d[0] for d in cur.description or ()]
    text = format_rows(columns, cur.fetchall(), fmt)
    if not first:
        print()  # a blank line between results, as psql prints them
    print(text, flush=True)


def _export(results: list[Result], output: str, fmt: str) -> int:
    if not results:
        return fail(f"nothing written to {output}: no statement returned rows")
    try:
        write_results(results, output, fmt)
    except ExportError as e:
        return fail(str(e))
    rows = sum(r.table.num_rows for r in results)
    print(f"florsql: wrote {rows} row(s) to {output} ({fmt})", file=sys.stderr)
    return 0


def _output_format(args: argparse.Namespace) -> str:
    if args.output:
        return export_format(args.output, args.format)
    if args.format == "parquet":
        raise ExportError("parquet is a binary format: write it to a file with --output "
                          "FILE.parquet")
    return args.format or "table"


def _numbered(statement: Statement, total: int) -> str:
    return f"statement {statement.number} (line {statement.line}): " if total > 1 else ""


def _params_for(sql: str, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The saved query's parameters this statement uses (DuckDB refuses unused ones)."""
    if not params:
        return None
    import sqlglot
    from sqlglot import exp

    try:
        used = {p.name for p in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Placeholder)}
    except sqlglot.errors.SqlglotError:
        return params
    return {k: v for k, v in params.items() if k in used} or None


def _sql_from(args: argparse.Namespace) -> str | None:
    if args.command is not None:
        return args.command
    if args.file is not None:
        return read_sql_file(args.file)
    if not sys.stdin.isatty():
        stream = getattr(sys.stdin, "buffer", None)
        text = read_sql_stream(stream, "standard input") if stream else sys.stdin.read()
        return text if text.strip() else None
    return None
