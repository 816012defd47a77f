"""Helpers shared by the benchmarks: logging, medians, scratch git repos, child environments.

bench_record.py copies this file next to itself into its scratch repos (its worker imports it).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PREFIX = "[bench]"


def log(msg: str) -> None:
    print(f"{PREFIX} {msg}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def git(repo: Path, *argv: str) -> None:
    subprocess.run(["git", *argv], cwd=repo, check=True, capture_output=True)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a measured subprocess: no FLOR_* or venv leakage, one BLAS thread.
    PYTHONPATH passes through, so that a paired A/B run can point both the benchmark and its
    subprocesses at another checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLOR", "VIRTUAL_ENV", "PYTHON")) or k == "PYTHONPATH"}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, **(extra or {}))
    return env


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def machine_info(**extra: object) -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": os.getloadavg()[0], **extra}
