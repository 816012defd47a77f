"""`florsql run NAME [PROJECT]` and `florsql queries [PROJECT]`: saved `.sql` queries."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from . import exceptions
from .cli_query import (
    add_output_arguments,
    add_project,
    add_replay_flags,
    fail,
    print_warnings,
    run_statements,
)
from .engine import EngineError
from .engine.project import locate_project
from .formatting import format_rows
from .saved import SavedQueryError, find_query, list_queries, parse_assignments
from .statements import split_statements


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the saved query's name (see `florsql queries`)")
    add_project(parser)
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                        help="a value for one of the query's :parameters (repeatable)")
    add_output_arguments(parser)
    add_replay_flags(parser)


def run_main(args: argparse.Namespace) -> int:
    try:
        query = find_query(args.name, project_root(args.project))
        sql, params = query.bind(parse_assignments(args.param))
    except (SavedQueryError, exceptions.Error) as e:
        return fail(str(e))
    return run_statements(args, split_statements(sql), params or None)


def list_main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as skipped:  # files that could not be read
        warnings.simplefilter("always")
        rows = [(q.name, " ".join(f":{p}" for p in q.params), q.description)
                for q in list_queries(project_root(args.project))]
    print_warnings(skipped)
    print(format_rows(["name", "params", "description"], rows))
    return 0


def project_root(project: str) -> Path | None:
    """The project's root for its own `queries/`, or None when there is no history there.

    Found without opening the catalog: `florsql run` opens it once, to run the query."""
    try:
        return locate_project(project).root
    except EngineError:
        return None
