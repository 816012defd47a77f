"""Exact-resume checkpoints at outer-loop boundaries, written off the training thread.

At a boundary the training thread copies the registered objects' state into preallocated CPU
buffers (pinned when the source is on a GPU) and captures RNG states; a writer thread saves,
fsyncs and renames the file, and only then writes the small `.json` entry that lists it.
The period adapts: a checkpoint is taken once the loop time since the last one is at least
its cost divided by the budget (default 1/15), and always at the first and last iterations
and at the end of the loop.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import FlorCheckpointError, FlorReplayError
from .recorder import write_atomic
from .rng import capture_rng, restore_rng

DEFAULT_BUDGET = 1 / 15


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


class Checkpointer:
    """Owns the registered objects, the adaptive schedule and the background writer."""

    def __init__(self, ckpt_dir: Path) -> None:
        self.ckpt_dir = ckpt_dir
        self.objects: dict[str, Any] = {}
        self.budget = float(os.environ.get("FLOR_CHECKPOINT_BUDGET", DEFAULT_BUDGET))
        every = os.environ.get("FLOR_CHECKPOINT_EVERY")
        self.every = int(every) if every else None
        self._buffers: dict[str, Any] = {}
        self._since = 0.0
        self._last_cost = 0.0
        self._idle = threading.Event()
        self._idle.set()
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def register(self, named: dict[str, Any]) -> None:
        """Take the objects, and allocate their buffers now, before the loop is timed."""
        validate_objects(named)
        self.objects.update(named)
        for name, obj in named.items():
            self._stage(obj.state_dict(), name, [])

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
        self._idle.wait()  # the previous write still owns the buffers
        copies: list[tuple] = []
        objects = {n: self._stage(o.state_dict(), n, copies) for n, o in self.objects.items()}
        _copy_all(copies)
        payload = {"objects": objects, "rng": capture_rng(), "loop": loop, "iteration": iteration}
        event = _cuda_event()
        blocked = time.perf_counter() - t0
        self._idle.clear()
        self._ensure_thread()
        self._jobs.put((payload, event, loop, iteration, blocked))
        self._since = 0.0
        self._last_cost = blocked
        return blocked

    def restore(self, run_dir: Path, loop: str, iteration: int) -> None:
        """Load the checkpoint of (`loop`, `iteration`) into the registered objects and RNGs."""
        path = checkpoint_path(run_dir / "ckpt", loop, iteration)
        if not path.exists() or not path.with_suffix(".json").exists():
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
        return checkpoint_path(run_dir / "ckpt", loop, iteration).with_suffix(".json").exists()

    def differs_from(self, run_dir: Path, loop: str, iteration: int) -> str | None:
        """What differs between the live objects and RNGs and a checkpoint; None: nothing."""
        payload = _load(checkpoint_path(run_dir / "ckpt", loop, iteration))
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
        self._idle.wait()

    def _due(self, iteration: int, total: int | None) -> bool:
        if iteration == 0 or (total is not None and iteration >= total - 1):
            return True
        if self.every is not None:
            return iteration % self.every == 0
        return self._since * self.budget >= self._last_cost

    def _stage(self, obj: Any, key: str, copies: list[tuple]) -> Any:
        """`obj` with every tensor replaced by its buffer; (buffer, tensor) pairs to copy."""
        if type(obj) in _IMMUTABLE:
            return obj
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            buf = self._buffer_for(torch, obj, key)
            copies.append((buf, obj))
            return buf
        if isinstance(obj, dict):
            staged = type(obj)((k, self._stage(v, f"{key}/{k}", copies)) for k, v in obj.items())
            if hasattr(obj, "_metadata"):  # module versions: load_state_dict reads them
                staged._metadata = copy.deepcopy(obj._metadata)
            return staged
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._stage(v, f"{key}/{i}", copies) for i, v in enumerate(obj))
        return copy.deepcopy(obj)

    def _buffer_for(self, torch: Any, tensor: Any, key: str) -> Any:
        buf = self._buffers.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            pin = tensor.is_cuda
            buf = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
            self._buffers[key] = buf
        return buf

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="flor-ckpt", daemon=True)
            self._thread.start()

    def _write_loop(self) -> None:
        while True:
            payload, event, loop, iteration, blocked = self._jobs.get()
            try:
                self._write(payload, event, loop, iteration, blocked)
            finally:
                self._idle.set()

    def _write(self, payload: dict, event: Any, loop: str, iteration: int, blocked: float) -> None:
        t0 = time.perf_counter()
        if event is not None:
            event.synchronize()
        path = checkpoint_path(self.ckpt_dir, loop, iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            _dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        seconds = time.perf_counter() - t0
        self._last_cost = blocked + seconds
        entry = {"loop": loop, "iteration": iteration, "file": path.name,
                 "bytes": path.stat().st_size, "seconds": seconds, "blocked_seconds": blocked,
                 "time": time.time()}
        write_atomic(path.with_suffix(".json"), json.dumps(entry).encode())


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


def _copy_all(copies: list[tuple]) -> None:
    """Copy every tensor into its buffer: one batched call per device, not one per tensor."""
    if not copies:
        return
    torch = sys.modules["torch"]
    with torch.no_grad():
        on_cpu = [(b, t) for b, t in copies if not t.is_cuda]
        on_gpu = [(b, t) for b, t in copies if t.is_cuda]
        if on_cpu:
            torch._foreach_copy_([b for b, _ in on_cpu], [t for _, t in on_cpu])
        for buf, tensor in on_gpu:  # pinned destination: asynchronous, fenced by the event
            buf.copy_(tensor, non_blocking=True)


def checkpoint_path(ckpt_dir: Path, loop: str, iteration: int) -> Path:
    return ckpt_dir / f"{loop}-{iteration:06d}.pt"


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
