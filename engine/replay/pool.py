"""Warm replay workers: long-lived zygote processes that fork one child per replay task.

A replay task runs a training script from a checkpoint. As a new interpreter it first pays
its imports (torch: 1-3 s, and about 1 s more for the compiler stack its first optimizer
pulls in), often more than the replay itself. A pool slot is instead a *zygote*: a Python
process started once, which imports the heavy modules the scripts import (their module-level
imports, found with ast, that are not the scripts' own modules nor the standard library) and
then, for each task, forks a child. The child sets the task's environment, working directory,
`sys.argv` and `sys.path[0]` and runs the script with `runpy.run_path(..., "__main__")`, its
stdout and stderr going through the zygote into bounded log files; its exit code means what a
subprocess's would (0 ok, 3 memoization unsafe, anything else a failure). The child leads a
process group of its own, which the zygote kills at the task's time limit or when the owner
cancels the task (Zygote.run_task, zygote_handle.py), so that a stop also ends what the script
started.

Why the fork is safe: the zygote runs no code of the scripts and no torch operation, so there
is no intra-op thread pool, CUDA context or RNG draw to inherit; `flor` is never imported
there (it takes its flags out of sys.argv at import and starts a run at its first call). Each
child reseeds torch's and numpy's global generators from the OS, as a fresh process does
(python's `random` reseeds itself at fork), and sets torch's thread count before the script
runs.

Lifetime: a zygote exits when its pipe closes (the pool was closed, or its owner exited or
died), killing its running child's group first; on Linux a child also gets SIGKILL if its
zygote dies. The owner reaps its zygotes on close() and at interpreter exit, so no zombie is
left; an interrupted replay kills the zygotes still importing (abort_imports) rather than wait
for them. The pool's folder of zygote logs is marked with its owner (leftovers.py), so
that the next replay removes it if the owner was killed.
FLOR_REPLAY_POOL=0 turns the pool off (one interpreter per task), as does a platform without
os.fork (and macOS, where forking after importing system frameworks is unsafe).

The zygote's program is zygote.py: it imports only the standard library and is loaded
by path, so a zygote imports neither florsql nor flor.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

from flor import protocol

from . import zygote as replay_zygote
from .leftovers import claim
from .zygote_handle import PoolError, Task, TaskExit, Zygote

__all__ = ["PoolError", "ReplayPool", "Task", "TaskExit", "Zygote", "pool_enabled",
           "pool_supported"]

POOL_ENV = "FLOR_REPLAY_POOL"


def pool_supported() -> bool:
    return hasattr(os, "fork") and sys.platform != "darwin" and os.name == "posix"


def pool_enabled() -> bool:
    """Whether replays use warm workers: a platform with fork, and FLOR_REPLAY_POOL not 0."""
    flag = os.environ.get(POOL_ENV, "1").strip().lower()
    return pool_supported() and flag not in ("0", "false", "no", "off")


class ReplayPool:
    """Warm zygotes, checked out one task at a time. Thread-safe; close() reaps them all."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self._cond = threading.Condition()
        self._zygotes: list[Zygote] = []  # started (ready or starting), not closed
        self._idle: list[Zygote] = []
        self._starting = 0
        self._closed = False
        self._owner = os.getpid()
        self._dir = Path(tempfile.mkdtemp(prefix="flor-replay-pool-"))
        claim(self._dir)  # a killed owner's folder is removed by the next replay
        self.warm_error: BaseException | None = None  # what the last warm_async() raised
        # close() runs this; so do garbage collection and interpreter exit if close() did not
        self._finalizer = weakref.finalize(self, _shutdown, self._zygotes, self._dir,
                                           self._owner)

    # -- state ----------------------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        with self._cond:
            return [z.pid for z in self._zygotes]

    @property
    def closed(self) -> bool:
        return self._closed

    def warm_count(self, modules: Iterable[str] = ()) -> int:
        """Live, ready zygotes that have already tried to import `modules`."""
        wanted = set(modules)
        with self._cond:
            return sum(1 for z in self._zygotes
                       if z.ready and z.alive() and wanted <= z.attempted)

    def is_warm(self, workers: int, modules: Iterable[str] = ()) -> bool:
        """At least `workers` live, ready zygotes that have already tried to import `modules`."""
        return self.warm_count(modules) >= workers

    # -- warming --------------------------------------------------------------------------

    def warm(self, workers: int, modules: Iterable[str] = (), threads: int | None = None) -> None:
        """Block until `workers` zygotes are ready with `modules` imported (those that import).

        New zygotes start and import in parallel; idle ones import what they lack."""
        modules = list(modules)
        with self._cond:
            self._check_open()
            need = max(0, workers - len(self._zygotes) - self._starting)
            self._starting += need
        started: list[Zygote] = []
        errors: list[PoolError] = []
        try:
            for _ in range(need):
                started.append(self._spawn(threads, modules))
        except PoolError as e:
            errors.append(e)
        finally:
            with self._cond:
                self._starting -= need
        for z in started:
            try:
                self._boot(z)
            except PoolError as e:
                errors.append(e)
            else:
                self._checkin(z)
        for z in self._checkout_idle_all():
            try:
                z.preload(modules)
            except PoolError as e:
                errors.append(e)
                self._discard(z)
            else:
                self._checkin(z)
        if errors:
            raise errors[0]

    def warm_async(self, workers: int, modules: Iterable[str] = (),
                   threads: int | None = None) -> threading.Thread:
        """warm() in a daemon thread; join() it to wait. Errors are kept in `warm_error`."""
        self.warm_error = None

        def target() -> None:
            try:
                self.warm(workers, modules, threads)
            except BaseException as e:  # noqa: BLE001 - reported through warm_error
                self.warm_error = e

        thread = threading.Thread(target=target, name="flor-replay-warm", daemon=True)
        thread.start()
        return thread

    # -- use ------------------------------------------------------------------------------

    def acquire(self, limit: int, modules: Iterable[str] = (), threads: int | None = None,
                cancel: threading.Event | None = None) -> Zygote:
        """An idle zygote (a new one while fewer than `limit` exist; else wait for one) that
        has imported `modules`. Give it back with release(). Raises PoolError once `cancel` is
        set while it waits."""
        modules = list(modules)
        z = self._checkout(limit, threads, modules, cancel)
        try:
            z.preload(modules)
        except PoolError:
            self._discard(z)
            raise
        return z

    def release(self, z: Zygote) -> None:
        """Give a zygote back (a dead one is reaped and forgotten)."""
        if z.alive():
            self._checkin(z)
        else:
            self._discard(z)

    @contextlib.contextmanager
    def lease(self, limit: int, modules: Iterable[str] = (),
              threads: int | None = None) -> Iterator[Zygote]:
        """acquire() ... release()."""
        z = self.acquire(limit, modules, threads)
        try:
            yield z
        finally:
            self.release(z)

    def abort_imports(self) -> None:
        """Kill the zygotes still starting or importing: whoever waits on one gets a PoolError
        at once. An interrupted replay calls it rather than wait seconds for torch."""
        with self._cond:
            busy = [z for z in self._zygotes if z.importing]
        for z in busy:
            z.kill()

    def close(self) -> None:
        """Stop every zygote (each kills its running child) and reap them. Idempotent."""
        with self._cond:
            self._closed = True
            self._idle.clear()
            self._cond.notify_all()
        self._finalizer()

    def __enter__(self) -> ReplayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PoolError("the replay worker pool is closed")

    def _spawn(self, threads: int | None, modules: list[str]) -> Zygote:
        """Start a zygote process; it imports `modules` at once, then says hello."""
        with self._cond:
            self._check_open()
            used = {z.slot for z in self._zygotes}
            slot = next(i for i in range(len(used) + 1) if i not in used)
            log_path = self._dir / f"zygote-{slot}-{time.monotonic_ns()}.log"
            env = dict(os.environ)
            if threads:
                env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            env.pop(protocol.REPLAY_ENV, None)
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [self.python, "-c", _BOOT, str(Path(replay_zygote.__file__).resolve()),
                     json.dumps(modules)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    cwd=self._dir, env=env, close_fds=True)
            z = Zygote(slot, proc, log_path)
            self._zygotes.append(z)
            return z

    def _boot(self, z: Zygote) -> None:
        """Wait until the zygote has imported its modules; discard it if it failed."""
        try:
            z.hello()
        except PoolError:
            self._discard(z)
            raise

    def _checkout(self, limit: int, threads: int | None, modules: list[str],
                  cancel: threading.Event | None) -> Zygote:
        wanted = set(modules)
        with self._cond:
            while True:
                self._check_open()
                if cancel is not None and cancel.is_set():
                    raise PoolError("the replay was interrupted")
                for z in [z for z in self._idle if not z.alive()]:
                    self._idle.remove(z)
                    self._zygotes.remove(z)
                    _reap(z)
                if self._idle:  # prefer one that already imported the modules
                    best = max(self._idle, key=lambda z: (wanted <= z.attempted, -z.slot))
                    self._idle.remove(best)
                    return best
                if len(self._zygotes) + self._starting < max(1, limit):
                    self._starting += 1
                    break
                self._cond.wait(None if cancel is None else 0.05)
        try:
            z = self._spawn(threads, modules)
        finally:
            with self._cond:
                self._starting -= 1
        if cancel is not None and cancel.is_set():  # abort_imports() may have missed it
            self._discard(z)
            raise PoolError("the replay was interrupted")
        self._boot(z)
        return z

    def _checkout_idle_all(self) -> list[Zygote]:
        with self._cond:
            taken, self._idle = self._idle, []
            return taken

    def _checkin(self, z: Zygote) -> None:
        with self._cond:
            if self._closed or z not in self._zygotes:
                closing = True
            else:
                closing = False
                self._idle.append(z)
                self._cond.notify_all()
        if closing:
            z.close()

    def _discard(self, z: Zygote) -> None:
        with self._cond:
            if z in self._zygotes:
                self._zygotes.remove(z)
            if z in self._idle:
                self._idle.remove(z)
            self._cond.notify_all()
        z.close(timeout=1.0)


def _reap(z: Zygote) -> None:
    with contextlib.suppress(Exception):
        z.close(timeout=1.0)


def _shutdown(zygotes: list[Zygote], folder: Path, owner: int) -> None:
    """Close every zygote's pipe (each kills its child and exits), then reap them all."""
    taken = list(zygotes)
    zygotes.clear()
    if os.getpid() != owner:  # a forked copy of the owner: these are not its processes
        return
    for z in taken:
        with contextlib.suppress(OSError, ValueError):
            z.proc.stdin.close()
    for z in taken:
        _reap(z)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_flor_replay_zygote', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod.zygote_main()\n"
)
