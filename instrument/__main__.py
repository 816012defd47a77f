"""`python -m flor`: FlorDB's command-line entry point.

FlorDB's users type `python -m flor ...`. Its batch commands (`serve`, and the jobs that
`flor.batch` queues) arrive with the batch workflow; today it prints its usage and version.
Queries are florsql's: `florsql` or `python -m florsql`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flor",
        description="flor records training runs for florsql (FlorDB's API: flor.arg, flor.log, "
        "flor.loop, flor.checkpointing, flor.dataframe, flor.replay).",
        epilog="Record: `python train.py --flor NAME --kwargs lr=0.01` in a git repository. "
        "Query: `florsql` (or `python -m florsql`) in that repository; `florsql --help` lists "
        "its commands. FlorDB's batch commands (serve) come with the batch workflow.")
    parser.add_argument("--version", action="version", version=f"flor {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    parser.print_help()
    return 0


def _version() -> str:
    try:
        return metadata.version("florsql")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
