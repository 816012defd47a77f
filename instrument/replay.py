"""Replay mode: a process started with FLOR_REPLAY re-runs part of a recorded run.

FLOR_REPLAY holds the task spec (protocol.ReplaySpec, as JSON, with the protocol version it
speaks). The outer loop skips to iteration `start`, restores the checkpoint saved there
(objects and RNG states) and runs until `stop` (exclusive; null runs to the end of the
script). A replay stopped early exits right there, so code after the loop never runs on a
half-trained state. Only `names` are recorded (all when absent), with source `replay`, into
`out_dir` (default `<run_dir>/replays/<replay_id>/`); the replay executor moves a finished one
there, so ingest never sees a partial replay.
At every later outer iteration that has a checkpoint, the replay restores it too: a new
statement with side effects (random draws, consumed data) is evaluated at its point of the
original run and its effects do not leak past the next checkpoint. With "memoize": true, the
first inner loop of each outer iteration k whose end state was saved (a checkpoint of k + 1)
is skipped by restoring that checkpoint; after the code that follows it the state must still
equal that checkpoint, else the process exits with protocol.EXIT_MEMO_UNSAFE and the run is
replayed in full. An iteration without such a checkpoint runs its inner loop in full.
A spec this flor cannot read (malformed, or of another protocol version) ends the process
before the script runs anything else: one line on stderr, exit protocol.EXIT_BAD_TASK.
A replay run as a process of its own gets "parent": the pid of the florsql process that
started it; reading the spec binds this process to it (Linux: it gets SIGKILL when that
process dies), so a killed `florsql replay` leaves no task running behind it.
"""

from __future__ import annotations

import os
import signal
import sys

from . import protocol
from .protocol import ReplaySpec, ReplaySpecError

__all__ = ["ReplaySpec", "job_spec_from_env", "replay_spec_from_env", "report_job_start"]


def replay_spec_from_env() -> ReplaySpec | None:
    raw = os.environ.get(protocol.REPLAY_ENV)
    if not raw:
        return None
    try:
        spec = ReplaySpec.from_json(raw)
    except ReplaySpecError as exc:
        print(f"flor: {exc}", file=sys.stderr, flush=True)
        os._exit(protocol.EXIT_BAD_TASK)
    _die_with(spec.parent)
    return spec


def job_spec_from_env() -> protocol.JobSpec | None:
    """The batch job this process runs (FLOR_JOB, set by `florsql serve`), bound to its worker
    like a replay task is; an unreadable spec ends it before the script runs anything."""
    raw = os.environ.get(protocol.JOB_ENV)
    if not raw:
        return None
    try:
        spec = protocol.JobSpec.from_json(raw)
    except ReplaySpecError as exc:
        print(f"flor: {exc}", file=sys.stderr, flush=True)
        os._exit(protocol.EXIT_BAD_TASK)
    _die_with(spec.parent)
    return spec


def report_job_start(spec: protocol.JobSpec, identity: dict, run_dir: object) -> None:
    """Tell the worker which run this job became (the `jobs` table shows its tstamp)."""
    import json

    from .housekeeping import write_atomic

    doc = {"tstamp": identity["tstamp"], "pid": identity["pid"], "run_dir": str(run_dir)}
    try:
        write_atomic(spec.report, json.dumps(doc).encode())
    except OSError:  # a full disk: the run goes on; its job just shows no tstamp
        pass


def _die_with(parent: int | None) -> None:
    """End this process when `parent` ends (or at once if it already has)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the line above: nothing would signal us
        os._exit(1)
