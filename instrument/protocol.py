"""The contract between flor (which records and replays runs) and florsql's engine (which reads
the records and asks for replays): on-disk layout names, part format constants, the replay task
spec and the exit codes of a replay process.

Both sides import this module; nothing here is copied. It has no side effects and imports only
the standard library, so the engine can import it without starting anything of flor's, and a
replay worker of another florsql version refuses a task it cannot read with one clear line.

    spec = ReplaySpec(run_dir, replay_id, "epoch", 3, 5, frozenset({"acc"}), staging)
    env[REPLAY_ENV] = spec.to_json()          # the engine
    spec = ReplaySpec.from_json(env[REPLAY_ENV])  # flor, in the replay process
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# --- the flor home: FLOR_HOME, else <git top level>/.flor --------------------------------------
HOME_ENV = "FLOR_HOME"
HOME_DIRNAME = ".flor"
RUNS_DIR = "runs"  # runs/<tstamp>-<runid>/ : one folder per run, written only by that run
REPLAYS_STAGING_DIR = "replays-staging"  # a replay task's records until the task succeeds
CATALOG_DIR = "catalog"  # the published catalog: segments and a manifest (engine/catalog/store.py)
CATALOG_FILE = "catalog.duckdb"  # the single-file catalog before 0.6, removed on first open
REPLAY_LOCK_FILE = "replay.lock"  # held by whoever runs a replay of the project

# --- inside a run folder ---------------------------------------------------------------------
RUN_IDENT_FILE = "run.json"  # who the run is (written first)
REPLAY_IDENT_FILE = "replay.json"  # the same, for a replay's folder
END_FILE = "end.json"  # how it ended (written last)
HEARTBEAT_FILE = "heartbeat"  # touched at every flush while the run's process lives
PARTS_DIR = "parts"  # record parts, numbered in order
CKPT_DIR = "ckpt"  # checkpoints: <loop>-<iteration>.pt with a .json entry beside each
CKPT_SUFFIX = ".pt"
CKPT_ENTRY_SUFFIX = ".json"  # written after the checkpoint is durable: it lists it
REPLAYS_DIR = "replays"  # replays/<replay id>/ : a finished replay task's records
STDOUT_LOG = "stdout.log"  # a replay task's output, kept with its records
STDERR_LOG = "stderr.log"
RUN_FORMAT = "flor-run/1"  # run.json's "format"

# --- record parts ----------------------------------------------------------------------------
PART_FORMAT = "flor-part/3"
PART_MAGIC = b"FLORPART3\n"  # then a u32 header length, a JSON header, the binary columns
PART_SUFFIX = ".part"
LEGACY_PART_FORMAT = "flor-part/2"  # one JSON document per part, still read
LEGACY_PART_SUFFIX = ".json"

# --- code snapshots --------------------------------------------------------------------------
SNAPSHOT_REF_PREFIX = "refs/flor/snapshots/"  # hidden refs: never a branch, never pushed

# --- replay tasks ----------------------------------------------------------------------------
REPLAY_ENV = "FLOR_REPLAY"  # the task spec, as JSON, in the replay process's environment
PROJECT_ROOT_ENV = "FLOR_PROJECT_ROOT"  # the project a replay's records belong to
PROTOCOL_VERSION = 1  # bumped when a field changes meaning; a worker refuses another version
EXIT_OK = 0
EXIT_FAILED = 1  # the script raised, or flor could not set the task up
EXIT_MEMO_UNSAFE = 3  # a memoized replay changed the saved state: replay the task in full
EXIT_BAD_TASK = 4  # the spec is unreadable or of another protocol version: nothing ran


class ReplaySpecError(ValueError):
    """A replay spec this flor cannot run; its message is one line naming the fix."""


@dataclass(frozen=True)
class ReplaySpec:
    """What one replay process runs: the iterations [start, stop) of the recorded run in
    `run_dir`, from its checkpoint at `start`, recording only `names` into `out_dir`."""

    run_dir: Path
    replay_id: str
    loop: str | None  # the outer loop the window applies to; None: the whole script
    start: int = 0
    stop: int | None = None  # exclusive; None: to the end of the script
    names: frozenset[str] | None = None  # None: every name
    staging_dir: Path | None = None  # where the records go; None: run_dir/replays/replay_id
    memoize: bool = False  # skip inner loops whose end state was saved (EXIT_MEMO_UNSAFE)
    parent: int | None = None  # the pid this process must not outlive

    @property
    def out_dir(self) -> Path:
        return self.staging_dir or self.run_dir / REPLAYS_DIR / self.replay_id

    def window(self, loop: str) -> tuple[int, int | None]:
        """The iterations of outer loop `loop` to run; other outer loops run whole."""
        if self.loop is not None and loop != self.loop:
            return 0, None
        return self.start, self.stop

    def to_json(self) -> str:
        return json.dumps({
            "protocol": PROTOCOL_VERSION, "run_dir": str(self.run_dir),
            "replay_id": self.replay_id, "loop": self.loop, "start": self.start,
            "stop": self.stop, "names": None if self.names is None else sorted(self.names),
            "out_dir": None if self.staging_dir is None else str(self.staging_dir),
            "memoize": self.memoize, "parent": self.parent})

    @classmethod
    def from_json(cls, raw: str) -> ReplaySpec:
        """The spec in `raw`; ReplaySpecError when it is malformed or of another version."""
        try:
            doc = json.loads(raw)
            version = doc.get("protocol")
        except (ValueError, AttributeError) as exc:
            raise ReplaySpecError(f"{REPLAY_ENV} is not a valid replay spec ({exc})") from None
        if version != PROTOCOL_VERSION:
            raise ReplaySpecError(
                f"this replay task speaks protocol {version}, this flor speaks "
                f"{PROTOCOL_VERSION}: install the same florsql version where the replay "
                "runs as where it was asked for")
        try:
            return cls(
                run_dir=Path(doc["run_dir"]), replay_id=str(doc["replay_id"]),
                loop=doc.get("loop"), start=int(doc.get("start") or 0),
                stop=None if doc.get("stop") is None else int(doc["stop"]),
                names=None if doc.get("names") is None else frozenset(doc["names"]),
                staging_dir=Path(doc["out_dir"]) if doc.get("out_dir") else None,
                memoize=bool(doc.get("memoize", False)),
                parent=None if doc.get("parent") is None else int(doc["parent"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ReplaySpecError(f"{REPLAY_ENV} is not a valid replay spec ({exc})") from None


JOB_ENV = "FLOR_JOB"  # a batch job's spec, as JSON, in the environment of the run it starts
JOB_REPORT_FILE = "run.json"  # in the attempt's log folder: the run's tstamp and pid once known


@dataclass(frozen=True)
class JobSpec:
    """A batch job's run: it executes a temporary tree holding version `vid`, yet is recorded
    as a run of the project at `project_root` (its projid, its flor home), with `vid` as its
    code version (no new snapshot: the tree is that snapshot). `report` gets the run's tstamp
    and pid as soon as the run starts; `parent` is the worker it must not outlive."""

    project_root: Path
    vid: str
    job_id: int
    attempt: int
    report: Path
    parent: int | None = None

    def to_json(self) -> str:
        return json.dumps({"protocol": PROTOCOL_VERSION, "project_root": str(self.project_root),
                           "vid": self.vid, "job_id": self.job_id, "attempt": self.attempt,
                           "report": str(self.report), "parent": self.parent})

    @classmethod
    def from_json(cls, raw: str) -> JobSpec:
        try:
            doc = json.loads(raw)
            if doc.get("protocol") != PROTOCOL_VERSION:
                raise ValueError(f"protocol {doc.get('protocol')}, this flor speaks "
                                 f"{PROTOCOL_VERSION}")
            return cls(project_root=Path(doc["project_root"]), vid=str(doc["vid"]),
                       job_id=int(doc["job_id"]), attempt=int(doc["attempt"]),
                       report=Path(doc["report"]),
                       parent=None if doc.get("parent") is None else int(doc["parent"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReplaySpecError(f"{JOB_ENV} is not a valid job spec ({exc})") from None
