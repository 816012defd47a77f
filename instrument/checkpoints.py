"""Exact-resume checkpoints at outer-loop boundaries, written off the training thread.

At a boundary the training thread copies the registered objects' state into preallocated CPU
buffers (pinned when the source is on a GPU) and copies the RNG states' raw bytes; a writer
thread decodes them, saves, fsyncs and renames the file, and only then writes the small `.json`
entry that lists it. The period adapts: a checkpoint is taken once the loop time since the
last one is at least its cost divided by the budget (default 1/15), and always at the first
and last iterations and at the end of the loop.

Retention: all checkpoints are kept unless FLOR_CHECKPOINT_KEEP=N (N >= 2). Then the writer
keeps, of each outer loop's checkpoints numbered 0, 1, 2, ... in the order they were taken, the
first, the newest and every k-th, with the stride k doubled whenever more than N would remain
(so between N/2 and N remain, evenly spread). Thinning runs after each new checkpoint is
durable and deletes the `.json` entry before the file, so a listed checkpoint always exists.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import protocol
from .errors import FlorCheckpointError, FlorReplayError, warn_background
from .housekeeping import atomic_file, write_atomic
from .rng import RngCapture, capture_rng, decode_rng, restore_rng

DEFAULT_BUDGET = 1 / 15
KEEP_ENV = "FLOR_CHECKPOINT_KEEP"


def validate_objects(named: dict[str, Any]) -> None:
    """Raise one error naming every object that cannot be checkpointed."""
    bad = [
        f"{name} ({type(obj).__name__})"
        for name, obj in named.items()
        if not (callable(getattr(obj, "state_dict", None))
                and callable(getattr(obj, "load_state_dict", None)))
    ]
    if bad:
        raise FlorCheckpointError(
            "flor: cannot checkpoint " + ", ".join(bad) + ": objects need state_dict() and "
            "load_state_dict() (modules, optimizers, LR schedulers, grad scalers)"
        )


def retention_from_env() -> int | None:
    """FLOR_CHECKPOINT_KEEP: None (unset, empty or `all`: keep every checkpoint) or N >= 2."""
    raw = os.environ.get(KEEP_ENV, "").strip()
    if raw.lower() in ("", "all"):
        return None
    try:
        keep = int(raw)
    except ValueError:
        keep = 0
    if keep < 2:
        raise FlorCheckpointError(
            f"flor: {KEEP_ENV}={raw!r}: expected a whole number >= 2 (the first and the newest "
            "checkpoints are always kept), or `all` (the default)"
        )
    return keep


class Checkpointer:
    """Owns the registered objects, the adaptive schedule and the background writer.

    Hand-off without a queue: `_busy` is held from the start of a checkpoint until it is
    durable (so the next one waits for the buffers), and `_wake` is released to start the
    writer on the job in `_job`.
    """

    def __init__(self, ckpt_dir: Path) -> None:
        self.ckpt_dir = ckpt_dir
        self.objects: dict[str, Any] = {}
        self.budget = float(os.environ.get("FLOR_CHECKPOINT_BUDGET", DEFAULT_BUDGET))
        every = os.environ.get("FLOR_CHECKPOINT_EVERY")
        self.every = int(every) if every else None
        self.keep: int | None = None
        self._kept: dict[str, list[tuple[int, int]]] = {}  # loop -> [(number, iteration)]
        self._stride: dict[str, int] = {}
        self._buffers: list[Any] = []  # the i-th tensor met while staging goes to buffer i
        self._pinned: list[bool] = []
        self._metadata: list[Any] = []  # staged `_metadata` copies, by position
        self._metadata_seen = 0
        self._any_cuda = False  # of the tensors staged by the current checkpoint
        self._any_grad = False
        self._torch: Any = None
        self._rng = RngCapture()
        self._since = 0.0
        self._last_cost = 0.0
        self._busy = threading.Lock()
        self._wake = threading.Lock()
        self._wake.acquire()
        self._job: tuple | None = None
        self._thread: threading.Thread | None = None
        self._warned = False

    def register(self, named: dict[str, Any]) -> None:
        """Take the objects, and allocate their buffers now, before the loop is timed."""
        validate_objects(named)
        self.keep = retention_from_env()
        self.objects.update(named)
        with self._busy:  # a write in flight owns the buffers
            self._torch = sys.modules.get("torch")
            self._metadata_seen = 0
            srcs: list[Any] = []
            for obj in self.objects.values():
                self._stage(obj.state_dict(), srcs)
        self._rng.capture()  # calibrates the fast RNG readers outside the loop
        self._ensure_thread()  # started here, so no checkpoint pays for it

    def at_boundary(self, loop: str, iteration: int, total: int | None, loop_secs: float) -> None:
        """Called before outer iteration `iteration` runs (iteration == total: loop ended)."""
        if not self.objects:
            return
        self._since += loop_secs
        if self._due(iteration, total):
            self.save(loop, iteration)

    def save(self, loop: str, iteration: int) -> float:
        """Stage a checkpoint and hand it to the writer; returns seconds the caller was blocked."""
        t0 = time.perf_counter()
        self._busy.acquire()  # the previous write still owns the buffers
        try:
            self._torch = sys.modules.get("torch")
            self._any_cuda = self._any_grad = False
            self._metadata_seen = 0
            srcs: list[Any] = []
            stage = self._stage
            objects = {name: stage(obj.state_dict(), srcs) for name, obj in self.objects.items()}
            if srcs:
                _copy_all(self._torch, self._buffers[:len(srcs)], srcs, self._any_cuda,
                          self._any_grad)
            rng = self._rng.capture()
            event = _cuda_event() if self._any_cuda else None
        except BaseException:
            self._busy.release()
            raise
        blocked = time.perf_counter() - t0  # the hand-off below is one lock release (~0.1 us)
        self._job = (objects, rng, event, loop, iteration, blocked)
        self._ensure_thread()
        self._wake.release()
        self._since = 0.0
        self._last_cost = blocked
        return blocked

    def restore(self, run_dir: Path, loop: str, iteration: int) -> None:
        """Load the checkpoint of (`loop`, `iteration`) into the registered objects and RNGs."""
        path = checkpoint_path(run_dir / protocol.CKPT_DIR, loop, iteration)
        if not path.exists() or not path.with_suffix(protocol.CKPT_ENTRY_SUFFIX).exists():
            raise FlorReplayError(
                f"flor: no durable checkpoint for {loop}={iteration} in {run_dir}; "
                "replay from an iteration that has one (see the checkpoints table)"
            )
        payload = _load(path)
        missing = sorted(set(self.objects) - set(payload["objects"]))
        if missing:
            raise FlorReplayError(
                f"flor: checkpoint {path.name} has no state for {', '.join(missing)}; "
                "register the same objects as the recorded run"
            )
        for name, obj in self.objects.items():
            obj.load_state_dict(payload["objects"][name])
        restore_rng(payload["rng"])

    def has(self, run_dir: Path, loop: str, iteration: int) -> bool:
        """Whether a durable checkpoint of (`loop`, `iteration`) exists for the run."""
        path = checkpoint_path(run_dir / protocol.CKPT_DIR, loop, iteration)
        return path.with_suffix(protocol.CKPT_ENTRY_SUFFIX).exists()

    def differs_from(self, run_dir: Path, loop: str, iteration: int) -> str | None:
        """What differs between the live objects and RNGs and a checkpoint; None: nothing."""
        payload = _load(checkpoint_path(run_dir / protocol.CKPT_DIR, loop, iteration))
        for name, obj in self.objects.items():
            if not _same(obj.state_dict(), payload["objects"][name]):
                return f"the code after the inner loop changed {name}"
        current = capture_rng()
        for gen, state in payload["rng"].items():
            if gen in current and not _same(current[gen], state):
                return f"the code after the inner loop drew from the {gen} random generator"
        return None

    def wait(self) -> None:
        """Block until every staged checkpoint is durable."""
        with self._busy:
            pass

    def _due(self, iteration: int, total: int | None) -> bool:
        if iteration == 0 or (total is not None and iteration >= total - 1):
            return True
        if self.every is not None:
            return iteration % self.every == 0
        return self._since * self.budget >= self._last_cost

    def _stage(self, obj: Any, srcs: list) -> Any:
        """`obj` with every tensor replaced by its buffer (the tensors appended to `srcs`);
        containers are rebuilt and other mutable values deep-copied, so the snapshot does
        not change when the training goes on. Runs on every checkpoint: kept lean."""
        kind = type(obj)
        if kind in _IMMUTABLE:
            return obj
        stage = self._stage
        if kind is dict:
            return {k: v if type(v) in _IMMUTABLE else stage(v, srcs) for k, v in obj.items()}
        torch = self._torch
        if torch is not None and isinstance(obj, torch.Tensor):
            return self._buffer_for(obj, srcs)
        if isinstance(obj, dict):
            items = {k: v if type(v) in _IMMUTABLE else stage(v, srcs) for k, v in obj.items()}
            try:
                staged = kind(items)
            except TypeError:  # a constructor of its own (defaultdict): copy, then fill
                staged = copy.copy(obj)
                staged.update(items)
            metadata = getattr(obj, "_metadata", None)
            if metadata is not None:  # module versions: load_state_dict reads them
                staged._metadata = self._stage_metadata(metadata, srcs)
            return staged
        if kind is list:
            return [v if type(v) in _IMMUTABLE else stage(v, srcs) for v in obj]
        if isinstance(obj, tuple):
            items = [v if type(v) in _IMMUTABLE else stage(v, srcs) for v in obj]
            return kind(*items) if hasattr(obj, "_fields") else kind(items)
        if isinstance(obj, list):
            return kind(stage(v, srcs) for v in obj)
        return copy.deepcopy(obj)

    def _stage_metadata(self, metadata: Any, srcs: list) -> Any:
        """A module state_dict's `_metadata` (a version per submodule: one dict each, the
        same every time): the copy made last time at this position when still equal."""
        i = self._metadata_seen
        self._metadata_seen = i + 1
        memo = self._metadata
        if i < len(memo) and memo[i] is not None and memo[i] == metadata:
            return memo[i]
        before = len(srcs)
        staged = self._stage(metadata, srcs)
        memoizable = len(srcs) == before  # no tensors in it: never written to, safe to share
        if i < len(memo):
            memo[i] = staged if memoizable else None
        else:
            memo.append(staged if memoizable else None)
        return staged

    def _buffer_for(self, tensor: Any, srcs: list) -> Any:
        """The buffer for the next tensor: the one used at this position last time when it
        still has the tensor's shape, dtype and pinning, else a new one."""
        i = len(srcs)
        srcs.append(tensor)
        cuda = tensor.is_cuda
        if cuda:
            self._any_cuda = True
        if tensor.requires_grad:
            self._any_grad = True
        buffers = self._buffers
        if i < len(buffers):
            buf = buffers[i]
            if buf.shape == tensor.shape and buf.dtype == tensor.dtype and (
                    self._pinned[i] is cuda):
                return buf
        buf = self._torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=cuda)
        if i < len(buffers):
            buffers[i], self._pinned[i] = buf, cuda
        else:
            buffers.append(buf)
            self._pinned.append(cuda)
        return buf

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="flor-ckpt",
                                            daemon=True)
            self._thread.start()

    def _write_loop(self) -> None:
        while True:
            self._wake.acquire()
            job, self._job = self._job, None
            try:
                self._write(*job)
            except Exception as exc:  # noqa: BLE001 - disk full, dir removed: keep training
                if not self._warned:  # once: the next ones are tried, and fail the same way
                    self._warned = True
                    msg = (f"flor: could not write checkpoint {job[3]}={job[4]} ({exc}); "
                           "training goes on, replay needs the checkpoints that were written")
                    warn_background(msg, "flor-checkpoints")
            finally:
                self._busy.release()

    def _write(self, objects: dict, rng: dict, event: Any, loop: str, iteration: int,
               blocked: float) -> None:
        t0 = time.perf_counter()
        if event is not None:
            event.synchronize()
        payload = {"objects": objects, "rng": decode_rng(rng), "loop": loop,
                   "iteration": iteration}
        path = checkpoint_path(self.ckpt_dir, loop, iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as fh:  # a failed write (disk full) removes its temp file
            _dump(payload, fh)
        seconds = time.perf_counter() - t0
        self._last_cost = blocked + seconds
        entry = {"loop": loop, "iteration": iteration, "file": path.name,
                 "bytes": path.stat().st_size, "seconds": seconds, "blocked_seconds": blocked,
                 "time": time.time()}
        write_atomic(path.with_suffix(protocol.CKPT_ENTRY_SUFFIX), json.dumps(entry).encode())
        if self.keep is not None:
            self._prune(loop, iteration)

    def _prune(self, loop: str, iteration: int) -> None:
        """Thin the listed checkpoints of `loop` to at most `keep`: see the module docstring."""
        kept = self._kept.setdefault(loop, [])
        number = kept[-1][0] + 1 if kept else 0
        kept.append((number, iteration))
        stride, survivors = thin(kept, self._stride.get(loop, 1), self.keep)
        self._stride[loop] = stride
        for _, victim in sorted(set(kept) - set(survivors)):
            path = checkpoint_path(self.ckpt_dir, loop, victim)
            entry = path.with_suffix(protocol.CKPT_ENTRY_SUFFIX)
            for doomed in (entry, path):  # unlist first, then delete
                try:
                    os.unlink(doomed)
                except FileNotFoundError:
                    pass
        self._kept[loop] = survivors


def thin(kept: list[tuple[int, int]], stride: int, keep: int) -> tuple[int, list]:
    """The (number, iteration) pairs to keep: the first, the newest and every number that is a
    multiple of the stride, doubled until at most `keep` remain; returns (stride, kept)."""
    newest = kept[-1][0]
    while True:
        survivors = [(n, i) for n, i in kept if n % stride == 0 or n == newest]
        if len(survivors) <= keep:
            return stride, survivors
        stride *= 2


_IMMUTABLE = frozenset({int, float, bool, str, bytes, type(None)})


def _same(a: Any, b: Any) -> bool:
    """Deep equality of states: tensors and arrays compared element by element."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(a, numpy.ndarray):
        return bool(numpy.array_equal(a, b))
    return bool(a == b)


def _copy_all(torch: Any, bufs: list, srcs: list, any_cuda: bool, any_grad: bool) -> None:
    """Copy every tensor into its buffer: one batched call for CPU tensors, not one per tensor.
    With a source that requires grad, autograd is off so its buffer stays a plain tensor."""
    if any_grad and torch.is_grad_enabled():
        torch.set_grad_enabled(False)
        try:
            _copy_all(torch, bufs, srcs, any_cuda, False)
        finally:
            torch.set_grad_enabled(True)
        return
    if not any_cuda:
        torch._foreach_copy_(bufs, srcs)
        return
    pairs = list(zip(bufs, srcs, strict=True))
    on_cpu = [(b, t) for b, t in pairs if not t.is_cuda]
    if on_cpu:
        torch._foreach_copy_([b for b, _ in on_cpu], [t for _, t in on_cpu])
    for buf, tensor in pairs:  # pinned destination: asynchronous, fenced by the event
        if tensor.is_cuda:
            buf.copy_(tensor, non_blocking=True)


def checkpoint_path(ckpt_dir: Path, loop: str, iteration: int) -> Path:
    return ckpt_dir / f"{loop}-{iteration:06d}{protocol.CKPT_SUFFIX}"


def _cuda_event() -> Any:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def _dump(payload: dict, fh: Any) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.save(payload, fh)
    else:
        pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: Path) -> dict:
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.load(path, map_location="cpu", weights_only=False)
    with open(path, "rb") as fh:
        return pickle.load(fh)
