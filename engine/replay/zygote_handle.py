"""The owner's handle on one warm replay worker (a zygote, zygote.py): the pipe to it, its
requests (import these modules, run this task) and their answers, and its end.

    z = pool.acquire(...)                       # pool.py hands them out
    done = z.run_task(Task(cwd, argv, env, stdout, stderr), cancel)
    done.rc, done.stopped                       # 0, None - or -9, "timeout"
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import zygote as replay_zygote

START_TIMEOUT = 300.0  # seconds for a zygote to start and import its modules
CLOSE_TIMEOUT = 5.0
LOG_TAIL = 2000


class PoolError(RuntimeError):
    """A zygote could not be started or died."""


@dataclass
class Task:
    """One script run in a forked child."""

    cwd: str
    argv: list[str]  # argv[0]: the script, relative to cwd or absolute
    env: dict[str, str]
    stdout: str  # files the child's stdout and stderr go to
    stderr: str
    threads: int | None = None  # torch.set_num_threads before the script, when torch is loaded
    timeout: float | None = None  # seconds until the zygote kills the child's group
    log_cap: int = replay_zygote.LOG_CAP  # bytes kept of each of stdout and stderr


@dataclass(frozen=True)
class TaskExit:
    """How a task's child ended: its exit code (negative: the signal that killed it) and why
    it was stopped ("timeout", "cancelled"), if it was."""

    rc: int
    stopped: str | None = None


@dataclass
class Zygote:
    """One warm worker slot: a zygote process and the pipe to it."""

    slot: int
    proc: subprocess.Popen
    log_path: Path
    attempted: set[str] = field(default_factory=set)
    imported: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    import_seconds: dict[str, float] = field(default_factory=dict)
    ready: bool = False
    preloading: bool = False
    tasks: int = 0
    _io: threading.Lock = field(default_factory=threading.Lock)  # one request and its answer
    _write: threading.Lock = field(default_factory=threading.Lock)  # one line into the pipe

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def importing(self) -> bool:
        """Starting, or importing modules for a task: busy for seconds, with no child."""
        return not self.ready or self.preloading

    def request(self, doc: dict, timeout: float | None = None) -> dict:
        """Send one request and wait for its answer (a task's answer comes when it exits)."""
        with self._io:
            self._send(doc)
            return self._receive(timeout)

    def _send(self, doc: dict) -> None:
        with self._write:
            try:
                self.proc.stdin.write((json.dumps(doc) + "\n").encode())
                self.proc.stdin.flush()
            except (OSError, ValueError) as e:
                raise PoolError(f"replay worker {self.pid} is gone ({e}){self._tail()}") from None

    def hello(self) -> None:
        """The zygote's first line: its pid and the imports it started with."""
        with self._io:
            reply = self._receive(START_TIMEOUT)
        if reply.get("pid") != self.pid:
            raise PoolError(f"replay worker {self.pid} answered {reply!r}{self._tail()}")
        self._imports(reply)
        self.ready = True

    def _receive(self, timeout: float | None = None) -> dict:
        if timeout is not None:  # imports that hang: give up on this worker
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                self.proc.kill()
                self.proc.wait()
                raise PoolError(f"replay worker {self.pid} did not import its modules within "
                                f"{timeout:.0f} s{self._tail()}")
        try:
            line = self.proc.stdout.readline()
        except (OSError, ValueError) as e:
            raise PoolError(f"replay worker {self.pid} is gone ({e}){self._tail()}") from None
        if not line:
            self.proc.wait()
            raise PoolError(f"replay worker {self.pid} exited "
                            f"(status {self.proc.returncode}){self._tail()}")
        return json.loads(line)

    def preload(self, modules: Iterable[str]) -> None:
        missing = [m for m in modules if m not in self.attempted]
        if missing:
            self.preloading = True
            try:
                self._imports(self.request({"op": "preload", "modules": missing},
                                           START_TIMEOUT))
            finally:
                self.preloading = False

    def _imports(self, reply: dict) -> None:
        self.attempted.update(reply["seconds"])
        self.imported.extend(reply["imported"])
        self.failed.update(reply["failed"])
        self.import_seconds.update(reply["seconds"])
        if reply.get("threads", 1) > 1:
            raise PoolError(f"importing {', '.join(reply['seconds'])} started Python threads "
                            "in the replay worker: forking it is not safe")

    def run(self, task: Task) -> int:
        """Run `task` in a forked child; its exit code."""
        return self.run_task(task).rc

    def run_task(self, task: Task, cancel: threading.Event | None = None) -> TaskExit:
        """Run `task` in a forked child until it exits, reaches `task.timeout`, or `cancel` is
        set (then the zygote kills the child's process group within about 50 ms)."""
        with self._io:
            self._send({"op": "run", "cwd": task.cwd, "argv": task.argv, "env": task.env,
                        "stdout": task.stdout, "stderr": task.stderr, "threads": task.threads,
                        "timeout": task.timeout, "log_cap": task.log_cap})
            if cancel is not None:
                self._await(cancel)
            reply = self._receive()
        self.tasks += 1
        return TaskExit(int(reply["rc"]), reply.get("stopped"))

    def _await(self, cancel: threading.Event) -> None:
        """Wait until the answer can be read; ask for a kill (once) when `cancel` is set."""
        asked = False
        while not select.select([self.proc.stdout], [], [], 0.05)[0]:
            if cancel.is_set() and not asked:
                self._send({"op": "kill"})
                asked = True

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the pipe (the zygote kills its child and exits), then reap it."""
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()  # not under _io: a reader may hold it until its task ends
        if not self.ready:  # still importing, no child: it would read the pipe only when done
            self.proc.kill()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdout.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()

    def _tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return f": {text[-LOG_TAIL:]}" if text else ""
