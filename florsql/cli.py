"""The `florsql` command: run SQL over a project's history.

    florsql -c "SELECT runid, status FROM runs" [PROJECT_DIR] [--format table|csv|json|markdown]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from . import exceptions
from .dbapi import Connection
from .formatting import FORMATS, format_rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="florsql",
        description="SQL over machine-learning experiment history recorded with `import flor`.",
        epilog="Tables: runs, logs, contexts, loops, checkpoints, iterations, replays "
        "(see docs/catalog.md).",
    )
    parser.add_argument("project", nargs="?", default=".",
                        help="project directory (any directory in its git repo; default: .)")
    parser.add_argument("-c", "--command", metavar="SQL", help="run one SQL statement and exit")
    parser.add_argument("-f", "--file", metavar="FILE.sql", help="run the SQL in a file and exit")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output format (default: table)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sql = _sql_from(args)
    except OSError as e:
        print(f"florsql: error: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    if sql is None:
        print("florsql: give a query with -c SQL, -f FILE.sql or on standard input",
              file=sys.stderr)
        return 2
    try:
        with Connection(args.project) as conn, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cur = conn.execute(sql)
            columns = [d[0] for d in cur.description or ()]
            rows = cur.fetchall() if cur.description else []
        for w in caught:
            print(f"florsql: warning: {w.message}", file=sys.stderr)
    except exceptions.Error as e:
        print(f"florsql: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"florsql: error: {e}", file=sys.stderr)
        return 1
    if columns:
        print(format_rows(columns, rows, args.format))
    return 0


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
