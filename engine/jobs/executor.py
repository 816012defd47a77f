"""The queue as a replay executor (FLOR_EXECUTOR=queue): a replay's tasks become jobs that the
project's running `florsql serve` processes run, ahead of batch jobs.

    executor = QueueExecutor(home)
    submission = executor.submit(tasks, workers, cancel)    # enqueued at once
    for result in submission.results(): ...                # as servers finish them
    submission.stop()                                       # cancels the rest, waits for them

A server runs each task exactly as the local executors do (replay/worker.perform_task), so
the records are the same; only where the process runs differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import EngineError
from ..replay.estimate import IMPORT_SECONDS, WORKTREE_SECONDS
from ..replay.executor import Executor, Submission
from ..replay.model import INTERRUPTED, ReplayTask, Startup, TaskResult
from .model import CANCELLED, ENDED, REPLAY, REPLAY_PRIORITY
from .store import JobQueue, NewJob
from .task_json import result_from_json

POLL_SECONDS = 0.2
CLAIM_SECONDS = 0.5  # a queued task waits up to a server's idle poll before it starts
STOP_WAIT = 60.0  # seconds stop() waits for servers to kill the tasks they run
ORPHAN_SECONDS = 30.0  # with no live server this long, the tasks left fail


class NoServerError(EngineError):
    def __init__(self, home: Path) -> None:
        super().__init__(f"no `florsql serve` is running for the project at {home}: start "
                         "one (florsql serve, or python -m flor serve), or unset "
                         "FLOR_EXECUTOR to replay here")


class QueueExecutor(Executor):
    name = "queue"

    def __init__(self, home: Path) -> None:
        self.home = home
        self._queue: JobQueue | None = None

    @property
    def queue(self) -> JobQueue:
        """The project's queue, opened (made) at first use: a connection that never replays
        must not need a writable flor home."""
        if self._queue is None:
            self._queue = JobQueue.open(self.home)
        return self._queue

    @property
    def slots(self) -> int:
        return sum(s.slots for s in self.queue.live_servers())

    def parallelism(self, workers: int) -> int:
        return max(1, min(workers, self.slots))

    def startup(self, setup_seconds: float, modules: Sequence[str]) -> Startup:
        return Startup(CLAIM_SECONDS + IMPORT_SECONDS + setup_seconds + WORKTREE_SECONDS)

    def submit(self, tasks: Sequence[ReplayTask], workers: int,
               cancel: threading.Event) -> Submission:
        if not self.queue.live_servers():
            raise NoServerError(self.home)
        news = [NewJob(REPLAY, t.runid, t.filename, {}, t.vid, REPLAY_PRIORITY,
                       t.project_root, time_limit=None, payload=t.to_json()) for t in tasks]
        ids = self.queue.enqueue(news)
        return QueueSubmission(self.queue, dict(zip(ids, tasks, strict=True)), cancel)


class QueueSubmission(Submission):
    def __init__(self, queue: JobQueue, tasks: dict[int, ReplayTask],
                 cancel: threading.Event) -> None:
        self.queue, self.tasks, self.cancel = queue, tasks, cancel
        self.seen: dict[int, TaskResult] = {}

    def _ended(self) -> list[tuple[int, TaskResult]]:
        waiting = [i for i in self.tasks if i not in self.seen]
        if not waiting:
            return []
        marks = ",".join("?" * len(waiting))
        rows = self.queue.read(f"SELECT id, status, result, error FROM jobs WHERE id IN "
                               f"({marks}) AND status IN ({','.join('?' * len(ENDED))})",
                               [*waiting, *ENDED])
        out = []
        for row in rows:
            task = self.tasks[row["id"]]
            if row["result"]:
                result = result_from_json(row["result"], task)
            else:  # cancelled before a server took it
                stopped = INTERRUPTED if row["status"] == CANCELLED else None
                result = TaskResult(task, False, 0.0, row["error"] or row["status"],
                                    stopped=stopped)
            self.seen[row["id"]] = result
            out.append((row["id"], result))
        return out

    def results(self) -> Iterator[TaskResult]:
        served = time.monotonic()  # when a live server was last seen
        while len(self.seen) < len(self.tasks):
            for _, result in self._ended():
                yield result
            if len(self.seen) >= len(self.tasks):
                break
            if self.cancel.wait(POLL_SECONDS):
                raise KeyboardInterrupt
            if time.monotonic() - served > ORPHAN_SECONDS / 6:
                if self.queue.live_servers():
                    served = time.monotonic()
                elif time.monotonic() - served > ORPHAN_SECONDS:
                    yield from self._orphaned()

    def _orphaned(self) -> Iterator[TaskResult]:
        """Every server stopped: the tasks left would wait forever, so they fail, saying so."""
        left = [i for i in self.tasks if i not in self.seen]
        self.queue.cancel(left)
        why = str(NoServerError(self.queue.path.parent))
        for job_id in left:
            self.seen[job_id] = TaskResult(self.tasks[job_id], False, 0.0, why)
            yield self.seen[job_id]

    def stop(self) -> list[TaskResult]:
        self.cancel.set()
        self.queue.cancel([i for i in self.tasks if i not in self.seen])
        deadline = time.monotonic() + STOP_WAIT
        while len(self.seen) < len(self.tasks) and time.monotonic() < deadline:
            self._ended()
            time.sleep(POLL_SECONDS)
        out = []
        for job_id, task in self.tasks.items():
            out.append(self.seen.get(job_id) or TaskResult(
                task, False, 0.0, "stopped: its server did not answer", stopped=INTERRUPTED))
        return out
