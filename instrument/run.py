"""One recording session: run identity, storage layout, and how the run ends.

Layout under the flor home (`<repo>/.flor`, or FLOR_HOME):
  runs/<key>/run.json          identity, written atomically when the run starts
  runs/<key>/parts/NNNNNN.part record parts (see part_encode.py)
  runs/<key>/ckpt/<loop>-<i>.pt  checkpoints, each listed by a .json entry once durable
  runs/<key>/heartbeat         touched by the writer while the process lives
  runs/<key>/end.json          status at exit: finished, failed or killed
A run with no end.json whose process is gone was killed (kill -9, power loss).
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import random
import signal
import socket
import sys
import threading
import traceback
import warnings
from pathlib import Path

from . import args as flor_args
from . import protocol
from .checkpoints import Checkpointer
from .errors import FlorStorageError, FlorWarning, warn_background
from .housekeeping import clean_in_background, write_atomic
from .part_writer import FLUSH_SECONDS
from .recorder import Recorder
from .replay import ReplaySpec, job_spec_from_env, replay_spec_from_env, report_job_start
from .snapshot import exclude_from_git, find_repo_root, snapshot_worktree

RUN_FORMAT = protocol.RUN_FORMAT
_ADJECTIVES = ("amber", "brisk", "calm", "deft", "eager", "fuzzy", "keen", "lucid", "mellow",
               "nimble", "plucky", "quiet", "rapid", "sunny", "tidy", "vivid", "witty", "zesty")
_NOUNS = ("otter", "falcon", "maple", "comet", "badger", "willow", "heron", "cedar", "lynx",
          "pebble", "quartz", "raven", "sparrow", "tulip", "walrus", "yak", "zephyr", "koala")


class Session:
    """The live recording state of this process."""

    def __init__(self, flor_argv: flor_args.FlorArgv) -> None:
        self.flor_argv = flor_argv
        self.replay: ReplaySpec | None = replay_spec_from_env()
        script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
        start_dir = script.parent if script and script.is_file() else Path.cwd()
        self.repo_root = find_repo_root(start_dir)
        self.filename = _relative_script(script, self.repo_root)
        self.job = None if self.replay else job_spec_from_env()
        if self.job is not None:  # a batch job: a run of the project, not of its temp tree
            self.repo_root = self.job.project_root
        self.home = flor_home(self.repo_root)
        self.args: dict[str, object] = {}
        self.memo_pending: tuple[str, int] | None = None  # memoized replay: skip next inner loop
        self.status: str | None = None
        self.error: str | None = None
        self._finished = False
        if self.replay:
            self.run_dir, self.out_dir = self.replay.run_dir, self.replay.out_dir
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_identity(self.out_dir / protocol.REPLAY_IDENT_FILE, self._replay_identity())
        else:
            self.run_dir = self.out_dir = self._start_run()
        source = "replay" if self.replay else "forward"
        self.recorder = Recorder(self.out_dir, source, self.replay.names if self.replay else None)
        self.checkpointer = Checkpointer(self.run_dir / protocol.CKPT_DIR)

    def _start_run(self) -> Path:
        """Check what a run needs, snapshot the code, make the run's directory."""
        flor_args.check_kwargs_syntax(self.flor_argv)  # before anything is written
        runs = writable_runs_dir(self.home, self.repo_root)
        clean_in_background(self.home, FLUSH_SECONDS)  # crashed runs' litter, after the start
        if self.job is not None:  # the tree it runs is the snapshot taken at queue time (its
            self.vid = self.job.vid  # project may not even be on this node: a Ray cluster)
        else:
            exclude_from_git(self.repo_root, "/.flor/")
            self.vid = snapshot_worktree(self.repo_root, _script_in_repo(self.filename))
        run_dir = self._make_run_dir(runs)
        identity = self._identity()
        self._write_identity(run_dir / protocol.RUN_IDENT_FILE, identity)
        if self.job is not None:
            report_job_start(self.job, identity, run_dir)
        return run_dir

    def check_unread_kwargs(self) -> None:
        if flor_args.unread_kwargs(self.flor_argv):
            raise flor_args.FlorArgError(flor_args.describe_unread(self.flor_argv))

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """Flush records, wait for checkpoints, write end.json. Safe to call more than once."""
        if self._finished:
            return
        self._finished = True
        self.status = self.status or status
        self.error = self.error or error
        if self.status == "finished" and flor_args.unread_kwargs(self.flor_argv):
            warnings.warn(flor_args.describe_unread(self.flor_argv), FlorWarning, stacklevel=2)
        self.checkpointer.wait()
        self.recorder.close()
        end = {"status": self.status, "end_time": _now().isoformat(), "error": self.error}
        try:
            write_atomic(self.out_dir / protocol.END_FILE, json.dumps(end).encode())
        except OSError as exc:  # disk full at exit: say so, never a traceback from atexit
            warn_background(f"flor: could not write {self.out_dir / 'end.json'} "
                            f"({exc.strerror or exc}); the run will show as killed", "flor")

    def _identity(self) -> dict:
        return {
            "format": RUN_FORMAT,
            "projid": self.repo_root.name,
            "runid": self.flor_argv.runid or _readable_name(),
            "tstamp": self.tstamp.isoformat(timespec="microseconds"),
            "vid": self.vid,
            "filename": self.filename,
            "argv": self.flor_argv.original,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "python": sys.executable,
            "start_time": _now().isoformat(),
            **({"job": {"id": self.job.job_id, "attempt": self.job.attempt}} if self.job else {}),
        }

    def _make_run_dir(self, runs: Path) -> Path:
        tstamp = dt.datetime.now()
        while True:  # tstamps are unique per project: the directory name is the lock
            path = runs / tstamp.strftime("%Y%m%dT%H%M%S.%f")
            try:
                path.mkdir()
            except FileExistsError:
                tstamp += dt.timedelta(microseconds=1)
                continue
            except OSError as exc:  # what os.access could not foresee (NFS root squash, ...)
                raise storage_error(self.home, self.repo_root, exc) from None
            self.tstamp = tstamp
            return path

    def _replay_identity(self) -> dict:
        """What this replay covers, so a later query knows not to redo it."""
        spec = self.replay
        return {"replay_id": spec.replay_id, "loop": spec.loop, "start": spec.start,
                "stop": spec.stop, "names": None if spec.names is None else sorted(spec.names),
                # who writes here, so that housekeeping can tell a live replay from a dead one
                "pid": os.getpid(), "hostname": socket.gethostname(),
                "start_time": _now().isoformat()}

    @staticmethod
    def _write_identity(path: Path, doc: dict) -> None:
        write_atomic(path, json.dumps(doc, indent=1).encode())


def flor_home(repo_root: Path) -> Path:
    """Where records live: FLOR_HOME, else `<repo>/.flor`."""
    env = os.environ.get(protocol.HOME_ENV)
    return Path(env).resolve() if env else repo_root / protocol.HOME_DIRNAME


def writable_runs_dir(home: Path, repo_root: Path) -> Path:
    """`<home>/runs`, created if needed; FlorStorageError when it cannot be written.

    Checked before the run starts, because a run that cannot record should stop while
    stopping costs nothing: a warning would scroll away and the hours of training that
    follow would leave no record. (A disk that fills up later is different: the training
    already done is worth more than the records, so the run goes on; see part_writer.)
    """
    runs = home / protocol.RUNS_DIR
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(home, repo_root, exc) from None
    if not os.access(runs, os.W_OK | os.X_OK):  # read-only mounts too (EROFS), even for root
        raise storage_error(home, repo_root, PermissionError(13, "Permission denied"))
    return runs


def storage_error(home: Path, repo_root: Path, exc: OSError) -> FlorStorageError:
    """The error for an unwritable flor home; when the repository cannot be written either,
    FLOR_HOME alone would not help (snapshots go into its git objects), so it says so."""
    why = exc.strerror or str(exc)
    git_dir = repo_root / ".git"
    if git_dir.is_dir() and not os.access(git_dir, os.W_OK):
        return FlorStorageError(
            f"flor: cannot record this run: {home} is not writable ({why}), nor is {git_dir}, "
            "where flor keeps each run's code snapshot; run from a writable clone"
        )
    return FlorStorageError(
        f"flor: cannot record this run: {home} is not writable ({why}); make it writable, "
        "or set FLOR_HOME to a writable directory (florsql reads the records there when "
        "given the same FLOR_HOME)"
    )


def install_exit_hooks(session: Session) -> None:
    """Finish the run at normal exit, on an uncaught exception, and on SIGTERM."""
    atexit.register(session.finish)
    previous_hook = sys.excepthook

    def excepthook(kind, exc, tb):
        status = "killed" if issubclass(kind, KeyboardInterrupt) else "failed"
        tail = "".join(traceback.format_exception(kind, exc, tb)[-3:]).strip()
        session.finish(status, tail[-2000:])
        previous_hook(kind, exc, tb)

    sys.excepthook = excepthook
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            session.finish("killed", "SIGTERM")
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)


def _relative_script(script: Path | None, repo_root: Path) -> str:
    if script is None or not script.is_file():
        return "<interactive>"
    try:
        return script.relative_to(repo_root).as_posix()
    except ValueError:
        return script.as_posix()


def _script_in_repo(filename: str) -> str | None:
    """The running script's path in the repository, when it is a file of the repository."""
    if filename.startswith("<") or Path(filename).is_absolute():
        return None
    return filename


def _readable_name() -> str:
    rng = random.SystemRandom()  # never draw from the user's seeded generator
    return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()
