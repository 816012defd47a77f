"""FlorDB's batch workflow: a grid of hyper-parameters queued as jobs for `flor serve`.

    jobs = flor.cross_prod(hidden=[100, 200], lr=(1e-4, 1e-3))   # 4 dicts
    flor.batch(jobs)             # queues them; prints `--hidden 100 --lr 0.0001` ... per job

`python -m flor serve` (or `florsql serve`) then runs each job as a recorded run named BATCH,
with the code as it was when `flor.batch` was called. The queue is florsql's (engine/jobs/);
this module only builds the grid and hands it over, so `import flor` stays light.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any


def cross_prod(**grid: Any) -> list[dict[str, Any]]:
    """Every combination of the values given per name (a list or tuple each; a scalar is one
    value), in the order the names were given: the last name varies fastest."""
    axes = {name: list(values) if isinstance(values, (list, tuple)) else [values]
            for name, values in grid.items()}
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def batch(jobs: Sequence[dict[str, Any]], script: str = "train.py", name: str = "BATCH", *,
          time_limit: float | None = None, retries: int = 0, path: str = ".") -> list[int]:
    """Queue one job per dict of `jobs` (args of `script`, a path in the project at `path`),
    all named `name`; nothing is queued when a job names an arg the script does not read or
    the script is missing. Prints one line per job; returns the job ids."""
    from florsql.engine.jobs.submit import queue_batch

    queued = queue_batch(list(jobs), script=script, name=name, time_limit=time_limit,
                         retries=retries, path=path)
    for job in queued.jobs:
        print(job.flags() + " ")
    print(f"queued {len(queued.ids)} job(s) of batch {name!r} in {queued.home}; run them with "
          "`python -m flor serve` (or `florsql serve`)")
    return queued.ids
