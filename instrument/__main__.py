"""`python -m flor`: FlorDB's command-line entry point.

    python -m flor serve          run the project's queued jobs (flor.batch) on the CPU
    python -m flor serve 0        ... on GPU 0 (one worker per GPU id: serve 0,1)

`serve` is `florsql serve` under FlorDB's name (see `florsql serve --help` for its options,
which it accepts too). Queries are florsql's: `florsql` or `python -m florsql`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flor",
        description="flor records training runs for florsql (FlorDB's API: flor.arg, flor.log, "
        "flor.loop, flor.checkpointing, flor.dataframe, flor.replay, flor.batch).",
        epilog="Record: `python train.py --flor NAME --kwargs lr=0.01` in a git repository. "
        "Query: `florsql` (or `python -m florsql`) in that repository; `florsql --help` lists "
        "its commands.")
    parser.add_argument("--version", action="version", version=f"flor {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", prog="python -m flor serve", help="run the queued jobs of flor.batch",
        description="Run the project's queued jobs (flor.batch) and replay tasks: "
        "`florsql serve` under FlorDB's name. GPU: a GPU id (or ids, 0,1) to run on.")
    serve.add_argument("gpu", nargs="?", metavar="GPU", help="GPU id(s), e.g. 0 or 0,1")
    from florsql.jobs_cli import add_serve_arguments

    add_serve_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command != "serve":
        parser.print_help()
        return 0
    from florsql.cli_query import project_of
    from florsql.jobs_cli import serve_main

    if args.gpu:
        args.gpus = ",".join(g for g in (args.gpus, args.gpu) if g)
    args.project = project_of(args)
    return serve_main(args)


def _version() -> str:
    try:
        return metadata.version("florsql")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
