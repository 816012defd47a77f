"""Helpers shared by the benchmarks: logging, medians, scratch git repos, child environments.

bench_record.py copies this file next to itself into its scratch repos (its worker imports it).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
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


def end_scratch(scratch: Path, keep: bool) -> None:
    """Remove a benchmark's scratch directory, or say where it was kept (--keep)."""
    if keep:
        log(f"scratch kept at {scratch}")
    else:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


def publish_results(results: dict, started: float, table: Callable[[dict], str],
                    path: Path) -> None:
    """Stamp the run's duration (and the load at its end), print the table, write the JSON."""
    import json
    import time

    results["elapsed_s"] = time.perf_counter() - started
    if "machine" in results:
        results["machine"]["loadavg_end"] = os.getloadavg()[0]
    print(table(results))
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"results: {path.parent.name}/{path.name} ({results['elapsed_s']:.0f} s)")
