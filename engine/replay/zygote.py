"""The replay worker's own program (a zygote, see replay_pool.py), and its bounded task logs.

A zygote serves requests on stdin, one JSON line each: `preload` imports modules, `run` forks a
child that runs one replay task, `kill` stops the running child. The child gets a process group
of its own, so that a stop reaches whatever it started (data loader workers included), and its
stdout and stderr go through pipes that the zygote copies into BoundedLog files: however much a
script prints, a log holds its last LOG_CAP bytes, and no process keeps it in memory. A task
stops at its time limit (`timeout`, killed by the zygote itself) or on `kill`; the answer says
which (`{"rc": -9, "stopped": "timeout"}`).

This file imports only the standard library and is loaded by path (replay_pool._BOOT), so a
zygote imports neither florsql nor flor. The owner's side imports BoundedLog and watch_child
from it too, for replays that run as processes of their own (replay_task.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable

LOG_CAP = 10 * 1024 * 1024  # bytes kept of each of a task's stdout and stderr: the last ones
OWNER_GONE = "owner-gone"  # why a zygote stopped a child: the pool's pipe closed


class BoundedLog:
    """A file that keeps about the last `cap` bytes written to it.

    Written in halves: when the file reaches cap/2 it becomes `<path>.1` (replacing the older
    half) and a new one starts. close() joins the two after one line saying how many bytes were
    dropped, so the file ends with the latest output whatever the volume. Written unbuffered:
    `tail -f` shows a running task's output. An I/O error drops the rest, never the task.
    """

    def __init__(self, path: str, cap: int = LOG_CAP) -> None:
        self.path, self.half = str(path), max(1, cap // 2)
        self.size = self.dropped = 0
        self.rotated = False
        try:
            self.fh = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError:
            self.fh = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view and self.fh is not None:
                if self.size >= self.half:
                    self._rotate()
                n = self.fh.write(view[:self.half - self.size]) or 0
                self.size += n
                view = view[n:]
        except OSError:
            self._drop()

    def close(self) -> None:
        if self.fh is None:
            return
        self.fh.close()
        self.fh = None
        if self.rotated:
            with contextlib.suppress(OSError):
                self._join()

    def _rotate(self) -> None:
        self.fh.close()
        older = self.path + ".1"
        if self.rotated:
            self.dropped += os.path.getsize(older)
        os.replace(self.path, older)
        self.fh = open(self.path, "wb", buffering=0)  # noqa: SIM115
        self.size, self.rotated = 0, True

    def _join(self) -> None:
        older, joined = self.path + ".1", self.path + ".tmp"
        kept = os.path.getsize(older) + self.size
        with open(joined, "wb") as out:
            out.write(f"[florsql: {self.dropped} earlier bytes of this output were dropped; "
                      f"the last {kept} follow]\n".encode())
            for part in (older, self.path):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
        os.replace(joined, self.path)
        os.unlink(older)

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        self.fh = None


def kill_group(pid: int) -> None:
    """SIGKILL the process group `pid` leads (the task and what it started), else `pid`."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def watch_child(pid: int, pipes: dict[int, BoundedLog], timeout: float | None,
                fds: list[int], check: Callable[[list[int]], str | None],
                tick: float | None = None) -> tuple[int, str | None]:
    """Copy child `pid`'s output from `pipes` (read ends) into their logs until it exits.

    Its process group is killed when `timeout` seconds pass ("timeout") or when `check`, called
    with the ready ones of `fds` (and every `tick` seconds), names a reason. Returns the exit
    code (negative: the signal that ended it) and that reason. Closes the pipes and the logs.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    stopped: str | None = None
    pidfd = _pidfd(pid)
    for fd in pipes:
        os.set_blocking(fd, False)
    try:
        while True:
            watch = [*pipes, *fds, *([] if pidfd is None else [pidfd])]
            ready = select.select(watch, [], [], _wait(deadline, stopped, pidfd, tick))[0]
            _pump(pipes, ready)
            reason = None if stopped else check([fd for fd in ready if fd in fds])
            if not stopped and not reason and deadline and time.monotonic() >= deadline:
                reason = "timeout"
            if reason:
                stopped = reason
                kill_group(pid)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                _pump(pipes, list(pipes), drain=True)  # what it wrote before it ended
                return os.waitstatus_to_exitcode(status), stopped
    finally:
        if pidfd is not None:
            os.close(pidfd)
        for fd, log in pipes.items():
            os.close(fd)
            log.close()


def _pidfd(pid: int) -> int | None:
    with contextlib.suppress(AttributeError, OSError):
        return os.pidfd_open(pid)
    return None


def _wait(deadline: float | None, stopped: str | None, pidfd: int | None,
          tick: float | None) -> float | None:
    waits = [w for w in (tick, None if pidfd is not None else 0.05) if w is not None]
    if deadline is not None and not stopped:
        waits.append(max(0.0, deadline - time.monotonic()))
    return min(waits) if waits else None


def _pump(pipes: dict[int, BoundedLog], ready: list[int], drain: bool = False) -> None:
    for fd in [fd for fd in ready if fd in pipes]:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:  # every writer closed it
                os.close(fd)
                pipes.pop(fd).close()
                break
            pipes[fd].write(data)
            if not drain:
                break


# ---------------------------------------------------------------------------------------------
# The zygote: this file run as its program.
# ---------------------------------------------------------------------------------------------


class _Lines:
    """Lines from a pipe fd, read with os.read so select() sees what is left."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def fill(self) -> None:
        data = os.read(self.fd, 1 << 16)
        if data:
            self.buf += data
        else:
            self.eof = True

    def readline(self) -> bytes | None:
        while b"\n" not in self.buf:
            if self.eof:
                return None
            self.fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def take_kill(self) -> bool:
        """Whether a `kill` request is among the complete lines read (it is consumed)."""
        lines = self.buf.split(b"\n")
        kills = [ln for ln in lines[:-1] if json.loads(ln).get("op") == "kill"]
        if kills:
            kept = [ln for ln in lines[:-1] if ln not in kills]
            self.buf = b"".join(ln + b"\n" for ln in kept) + lines[-1]
        return bool(kills)


class _ZygoteState:
    def __init__(self) -> None:
        self.prctl = None


def zygote_main() -> None:
    """Serve requests on stdin (one JSON line each, one JSON answer line on stdout)."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # stray prints of imported modules go to the log, not into the protocol
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's Ctrl-C must not kill warm workers
    boot_argv, sys.argv = sys.argv[1:], [""]
    state = _ZygoteState()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            state.prctl = ctypes.CDLL(None, use_errno=True).prctl
    lines = _Lines(proto_in)

    def answer(doc: dict) -> None:
        data = (json.dumps(doc) + "\n").encode()
        while data:
            data = data[os.write(proto_out, data):]

    modules = json.loads(boot_argv[1]) if len(boot_argv) > 1 else []
    answer({"pid": os.getpid(), **_preload(modules)})
    while (raw := lines.readline()) is not None:
        req = json.loads(raw)
        op = req.get("op")
        if op == "preload":
            answer(_preload(req["modules"]))
        elif op == "run":
            reply = _fork_task(req, state, lines, (proto_in, proto_out))
            if reply is None:  # the owner went away while the task ran
                break
            answer(reply)
        elif op != "kill":  # a kill that came after its task ended: nothing to stop
            break
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _preload(modules: list[str]) -> dict:
    import importlib

    imported, failed, seconds = [], {}, {}
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except BaseException as e:  # noqa: BLE001 - any failure: the child imports it itself
            failed[name] = f"{type(e).__name__}: {e}"[:300]
        else:
            imported.append(name)
        seconds[name] = time.perf_counter() - t0
    for name in [m for m in sys.modules if m == "flor" or m.startswith("flor.")]:
        del sys.modules[name]  # pulled in by a preloaded module: the child imports it afresh
    _skip_exit_finalizers()
    sys.stdout.flush()
    sys.stderr.flush()
    return {"imported": imported, "failed": failed, "seconds": seconds,
            "threads": threading.active_count()}


def _skip_exit_finalizers() -> None:
    """torch registers a finalizer per operator library (about 170 after its imports) that
    unregisters it at interpreter exit, about 50 ms in all: work for the zygote's own exit,
    not for each child, which is about to end anyway. Those of the script still run."""
    import weakref as _weakref

    registry = getattr(_weakref.finalize, "_registry", {})
    for fin, info in list(registry.items()):
        func = getattr(info, "func", None)
        if (getattr(func, "__module__", None) == "torch.library"
                and getattr(func, "__name__", None) == "_del_library"):
            fin.atexit = False


def _fork_task(req: dict, state: _ZygoteState, lines: _Lines,
               proto: tuple[int, int]) -> dict | None:
    """Fork the task's child and watch it: the answer, or None if the owner went away."""
    sys.stdout.flush()
    sys.stderr.flush()
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _child(req, state, proto, (out_w, err_w))  # never returns
    os.close(out_w)
    os.close(err_w)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # the child does it too: whichever runs first, a kill finds it
    cap = int(req.get("log_cap") or LOG_CAP)
    pipes = {out_r: BoundedLog(req["stdout"], cap), err_r: BoundedLog(req["stderr"], cap)}

    def check(ready: list[int]) -> str | None:
        if not ready:
            return None
        lines.fill()
        if lines.eof:
            return OWNER_GONE
        return "cancelled" if lines.take_kill() else None

    rc, stopped = watch_child(pid, pipes, req.get("timeout"), [lines.fd], check)
    return None if stopped == OWNER_GONE else {"rc": rc, "stopped": stopped}


def _child(req: dict, state: _ZygoteState, proto: tuple[int, int],
           outs: tuple[int, int]) -> None:
    """In the forked child: become the task's process, run the script, exit with its code."""
    code = 1
    try:
        os.setpgid(0, 0)
        parent = os.getppid()
        for fd in proto:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if state.prctl is not None:
            state.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote
            if os.getppid() != parent:
                os._exit(1)
        for fd, out in zip((1, 2), outs, strict=True):
            os.dup2(out, fd)
            os.close(out)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        script = os.path.abspath(req["argv"][0])
        sys.argv = list(req["argv"])
        sys.path[0] = os.path.dirname(script)
        _fresh_process_state(req.get("threads"))
        code = _run_script(script)
    except BaseException:  # noqa: BLE001 - the set-up failed: report it like a crash
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(code)


def _fresh_process_state(threads: int | None) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.default_generator.seed()  # a fresh process seeds it from the OS
        if threads:
            torch.set_num_threads(int(threads))
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # a fresh process seeds it from the OS


def _run_script(path: str) -> int:
    """runpy the script as __main__ and end like the interpreter does; the exit code."""
    import atexit
    import runpy

    code = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        with contextlib.suppress(BaseException):
            sys.excepthook(*sys.exc_info())
        code = 130
    except BaseException:  # noqa: BLE001 - uncaught: the hooks report it, exit 1
        with contextlib.suppress(BaseException):
            sys.excepthook(*sys.exc_info())
        code = 1
    with contextlib.suppress(BaseException):
        threading._shutdown()  # wait for non-daemon threads, as interpreter exit does
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()  # flor finishes its run here
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    with contextlib.suppress(BaseException):
        print(value, file=sys.stderr)
    return 1
