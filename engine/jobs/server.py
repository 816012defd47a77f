"""`florsql serve`: workers that claim the project's queued jobs and run them.

    server = JobServer(ServeOptions(project_root, home, workers=2, gpus=("0",)), say=print)
    server.serve()              # until stop(): first stop lets running jobs finish,
    server.stop(hard=True)      # ... a hard one kills them and puts them back in the queue

One thread per worker slot claims the next job (replay tasks before batch jobs) and runs it:
a batch job through run.perform_job, a replay task through the replay worker, here or on Ray
(`executor="ray"`). A monitor thread beats the server's heartbeat, requeues the jobs of
servers that died, passes cancellations to running jobs, and copies each run's tstamp into the
queue once the run has started.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..replay.model import INTERRUPTED as TASK_INTERRUPTED
from ..replay.model import ReplayTask, TaskResult
from ..replay.process import run_process
from ..replay.worker import perform_task
from .model import (
    CANCELLED,
    FAILED,
    FINISHED,
    INTERRUPTED,
    REPLAY,
    TIMEOUT,
    Attempt,
    Job,
    Outcome,
    ServerRow,
)
from .run import JobRun, StopReason, perform_job, read_report
from .store import JobQueue
from .task_json import result_to_json

IDLE_POLL = 0.5  # seconds between looks at an empty queue
BEAT_SECONDS = 1.0


@dataclass(frozen=True)
class ServeOptions:
    project_root: Path
    home: Path
    workers: int = 1  # CPU workers
    gpus: tuple[str, ...] = ()  # one more worker per GPU id
    retries: int = 0  # failures a job may retry
    time_limit: float | None = None  # seconds, for jobs queued without one
    executor: str = "local"  # or "ray"
    once: bool = False  # stop when the queue is empty (tests, scripts)


@dataclass(frozen=True)
class Slot:
    name: str  # w0, w1, ... or gpu0
    gpu: str | None
    index: int


@dataclass
class Running:
    job: Job
    attempt: Attempt
    cancel: threading.Event
    stop: StopReason
    started: float
    tstamp_known: bool = False


class JobServer:
    def __init__(self, options: ServeOptions, say: Callable[[str], None] = print) -> None:
        self.options, self.say = options, say
        self.queue = JobQueue.open(options.home)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.slots = [Slot(f"gpu{g}", g, k) for k, g in enumerate(options.gpus)] + [
            Slot(f"w{k}", None, len(options.gpus) + k) for k in range(options.workers)]
        self.running: dict[int, Running] = {}
        self.guard = threading.Lock()
        self.claiming = threading.Event()
        self.stopping = threading.Event()
        self.hard = False  # a hard stop: running jobs are stopped and queued again
        self.done = threading.Event()
        self._ray = None

    # --- lifecycle ------------------------------------------------------------------------

    def serve(self) -> None:
        """Run jobs until stop() (or, with `once`, until the queue is empty)."""
        if not self.slots:
            raise ValueError("a server needs at least one worker (--workers N or --gpus IDS)")
        self.row = ServerRow(self.id, socket.gethostname(), os.getpid(), len(self.slots),
                             self.options.executor, time.time())
        if self.options.executor == "ray":  # in the main thread, before any worker needs it
            self._ray = self._ray or _ray_bridge()
            self._ray.connect()
        self.queue.register(self.row)
        requeued = self.queue.reap()
        if requeued:
            self.say(f"requeued job(s) {', '.join(map(str, requeued))}: their server died")
        if self.options.gpus:  # a replay task's GPU: worker.task_env picks one per slot
            os.environ["FLOR_REPLAY_GPUS"] = ",".join(self.options.gpus)
        self.claiming.set()
        threads = [threading.Thread(target=self._work, args=(slot,), daemon=True,
                                    name=f"flor-serve-{slot.name}") for slot in self.slots]
        monitor = threading.Thread(target=self._monitor, daemon=True, name="flor-serve-monitor")
        for thread in [*threads, monitor]:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        finally:
            self.done.set()
            monitor.join(5)
            self.queue.unregister(self.id)
            if self._ray is not None:
                self._ray.close()

    def stop(self, hard: bool = False) -> None:
        """Stop claiming; `hard`: also stop the running jobs, which go back to the queue."""
        self.claiming.clear()
        self.stopping.set()
        if hard:
            with self.guard:
                self.hard = True
                for entry in self.running.values():
                    entry.stop.reason = entry.stop.reason or INTERRUPTED
                    entry.cancel.set()

    @property
    def running_count(self) -> int:
        with self.guard:
            return len(self.running)

    # --- workers ----------------------------------------------------------------------------

    def _work(self, slot: Slot) -> None:
        while self.claiming.is_set():
            try:
                claimed = self.queue.claim(self.id, slot.name)
            except (OSError, sqlite3.Error) as exc:  # a queue locked or unwritable for long
                self.say(f"warning: {slot.name} could not claim a job ({exc}); retrying")
                self.stopping.wait(5 * IDLE_POLL)
                continue
            if claimed is None:
                if self.options.once:
                    return
                self.stopping.wait(IDLE_POLL)
                continue
            self._run_claimed(slot, *claimed)

    def _run_claimed(self, slot: Slot, job: Job, attempt: Attempt) -> None:
        entry = Running(job, attempt, threading.Event(), StopReason(), time.monotonic())
        with self.guard:
            self.running[job.id] = entry
            if self.hard:  # claimed just as a hard stop came: back to the queue at once
                entry.stop.reason = INTERRUPTED
                entry.cancel.set()
        self.say(f"job {job.id} started on {slot.name}: {describe(job)}")
        try:
            outcome = self._execute(slot, entry)
        except Exception as exc:  # noqa: BLE001 - a job's failure never stops the server
            outcome = Outcome(FAILED, None, f"the worker failed: {exc}")
        finally:
            with self.guard:
                self.running.pop(job.id, None)
        self._copy_report(entry)
        status = self._end(attempt, outcome)
        secs = time.monotonic() - entry.started
        why = f": {outcome.error.splitlines()[0]}" if outcome.error and status != FINISHED else ""
        self.say(f"job {job.id} {outcome.status} after {secs:.1f} s -> {status}{why}")

    def _end(self, attempt: Attempt, outcome: Outcome) -> str:
        """Record the outcome, retrying a busy queue: a job left `running` under a live server
        would never be run again."""
        for wait in (1, 5, 30, None):
            try:
                return self.queue.end(attempt, outcome, self.options.retries)
            except (OSError, sqlite3.Error) as exc:
                if wait is None:
                    raise
                self.say(f"warning: job {attempt.job_id}'s end could not be recorded ({exc}); "
                         f"retrying in {wait} s")
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _execute(self, slot: Slot, entry: Running) -> Outcome:
        job = entry.job
        limit = job.time_limit if job.time_limit is not None else self.options.time_limit
        if limit != job.time_limit:
            job = dataclasses.replace(job, time_limit=limit)
        run = JobRun(job, entry.attempt, self.options.project_root, self.options.home)
        if job.kind == REPLAY:
            return self._replay(slot, entry)
        if self.options.executor == "ray":
            return self.ray.run_job(run, slot.gpu, entry.cancel, entry.stop)
        gpu = slot.gpu if slot.gpu is not None else ""
        return perform_job(run, entry.cancel, entry.stop, gpu=gpu, parent=os.getpid(),
                           linked_root=self.options.project_root)

    def _replay(self, slot: Slot, entry: Running) -> Outcome:
        task = ReplayTask.from_json(entry.job.payload or "")
        if self.options.executor == "ray":
            result = self.ray.run_task(task, entry.cancel)
        else:
            result = perform_task(task, run_process, entry.cancel, slot=slot.index,
                                  parent=os.getpid())
        return task_outcome(result, entry.stop)

    @property
    def ray(self):  # noqa: ANN201 - the Ray bridge, made by serve() in the main thread
        if self._ray is None:
            raise RuntimeError("the Ray executor was not started (serve() starts it)")
        return self._ray

    # --- monitor ----------------------------------------------------------------------------

    def _monitor(self) -> None:
        while not self.done.wait(BEAT_SECONDS):
            try:
                self.queue.register(self.row)  # the heartbeat
                with self.guard:
                    entries = list(self.running.values())
                for job_id in self.queue.cancel_requested([e.job.id for e in entries]):
                    entry = next(e for e in entries if e.job.id == job_id)
                    if not entry.cancel.is_set():
                        entry.stop.reason = CANCELLED
                        entry.cancel.set()
                for entry in entries:
                    self._copy_report(entry)
                self.queue.reap()
            except Exception as exc:  # noqa: BLE001 - keep beating through a busy queue file
                self.say(f"warning: the queue could not be updated ({exc}); retrying")

    def _copy_report(self, entry: Running) -> None:
        if entry.tstamp_known:
            return
        report = read_report(entry.attempt)
        if report is not None:
            self.queue.started(entry.attempt, pid=report.get("pid"),
                               tstamp=report.get("tstamp"))
            entry.tstamp_known = True


def _ray_bridge():  # noqa: ANN202 - imported only when Ray is asked for
    from .ray_bridge import RayBridge

    return RayBridge()


def task_outcome(result: TaskResult, stop: StopReason) -> Outcome:
    """A replay task's result as an attempt's outcome (the result itself rides along)."""
    payload = result_to_json(result)
    if result.ok:
        return Outcome(FINISHED, 0, None, payload)
    if result.stopped == "timeout":
        return Outcome(TIMEOUT, None, result.error, payload)
    if result.stopped == TASK_INTERRUPTED:
        return Outcome(stop.reason or INTERRUPTED, None, result.error, payload)
    return Outcome(FAILED, None, result.error, payload)


def describe(job: Job) -> str:
    if job.kind == REPLAY:
        return f"replay of {job.script} ({job.batch})"
    return f"{job.script} --flor {job.batch} {job.flags()}".rstrip()
