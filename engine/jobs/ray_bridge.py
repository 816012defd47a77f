"""`florsql serve --executor ray`: the server claims jobs as always and runs each as a Ray task.

A batch job becomes one `RayExecutor.submit_call` of run.run_job_in_tree: the job's vid
travels as an archive through Ray's object store, so a node needs the package and the flor home
(records, checkpoints, the job's log folder) on shared storage, never the project's repository.
A GPU worker's job asks Ray for one GPU (`num_gpus=1`), and Ray picks the device. A replay
task goes through the executor's own `submit`. Cancellation and the server's hard stop kill the
Ray worker (`ray.cancel(force=True)`); the time limit is applied inside the task, as locally.
"""

from __future__ import annotations

import threading

from ..replay.model import ReplayTask, TaskResult
from ..replay.ray_executor import RayCallError, RayExecutor
from .model import FAILED, INTERRUPTED, KILLED, Outcome
from .run import JobRun, StopReason, run_job_in_tree

WAIT_TICK = 0.5  # seconds between looks at the cancel event while a Ray task runs


class RayBridge:
    def __init__(self) -> None:
        self.executor = RayExecutor()

    def connect(self) -> None:
        """Start or join Ray now (RAY_ADDRESS, else a local instance)."""
        self.executor.connect()

    def run_job(self, run: JobRun, gpu: str | None, cancel: threading.Event,
                stop: StopReason) -> Outcome:
        call = self.executor.submit_call(
            run_job_in_tree, (run, None), project_root=run.project_root, vid=run.job.vid,
            num_gpus=1 if gpu is not None else 0)
        while not call.wait(WAIT_TICK):
            if cancel.is_set():
                call.cancel()
                call.wait(30)
                reason = stop.reason or INTERRUPTED
                return Outcome(reason, None, "cancelled" if reason != INTERRUPTED else
                               "stopped by its server; queued again")
        try:
            return call.result()
        except RayCallError as exc:  # its worker or node was lost past Ray's own retries
            return Outcome(KILLED, None, f"its Ray task was lost: {exc}; queued again")
        except Exception as exc:  # noqa: BLE001 - the job's worker code failed remotely
            return Outcome(FAILED, None, f"its Ray task failed: {exc}")

    def run_task(self, task: ReplayTask, cancel: threading.Event) -> TaskResult:
        submission = self.executor.submit([task], 1, cancel)
        try:
            for result in submission.results():
                return result
        except KeyboardInterrupt:  # the cancel event: stop it and report how it ended
            return submission.stop()[0]
        raise RuntimeError("the Ray submission ended without a result")

    def close(self) -> None:
        self.executor.close()
