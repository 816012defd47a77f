"""Capture and restore every random number generator a training loop draws from.

`capture_rng()` returns the states as each library's own getter does (python `random`, numpy's
global RandomState, torch CPU and, when initialised, CUDA). A checkpoint taken on the training
thread uses `RngCapture` instead: it copies the raw state bytes of python's and numpy's
Mersenne Twisters (2.5 KB each, under a microsecond) and `decode_rng` turns them into the
same tuples on the checkpoint writer thread. `random.getstate()` (~8 us) and above all
`numpy.random.get_state()` (~30 us: it copies the key one element at a time) would otherwise
dominate the checkpoint of a small model.

The raw copy reads the generators' C structs through `ctypes`; their layout is found and then
checked against the library's own getter in several states (after draws, with and without a
cached gaussian) on a private generator and on the global one. Where any check fails (another
Python implementation or library version), the getter is used: the result is the same.
"""

from __future__ import annotations

import ctypes
import os
import random
import struct
import sys
from collections.abc import Callable
from typing import Any

_PTR = struct.calcsize("P")
_MT_WORDS = 624
_MT_BYTES = _MT_WORDS * 4 + 4  # uint32 key[624] (or state) and an int position (or index)


def capture_rng() -> dict[str, Any]:
    """RNG states of python `random`, numpy and torch (CPU and, when initialised, CUDA)."""
    states: dict[str, Any] = {"python": random.getstate()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states["numpy"] = numpy.random.get_state()
    _capture_torch(states)
    return states


def restore_rng(states: dict[str, Any]) -> None:
    """Put back what `capture_rng` (or `decode_rng`) saved; generators absent now are skipped."""
    random.setstate(states["python"])
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in states:
        numpy.random.set_state(states["numpy"])
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in states:
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def _capture_torch(states: dict[str, Any]) -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        states["torch"] = torch.get_rng_state()
        if torch.cuda.is_initialized():  # initialised implies available
            states["cuda"] = torch.cuda.get_rng_state_all()


class RngCapture:
    """Fast capture for checkpoints: `capture()` on the training thread, `decode_rng` later."""

    def __init__(self) -> None:
        self._python: _Raw | None = None
        self._numpy: _Raw | None = None
        self._numpy_module: Any = None
        self._calibrated_python = False
        self._enabled = os.environ.get("FLOR_RNG_RAW", "1") != "0"  # 0: the getters only

    def capture(self) -> dict[str, Any]:
        if not self._enabled:
            return capture_rng()
        states: dict[str, Any] = {}
        py = self._python
        if py is None and not self._calibrated_python:
            self._calibrated_python = True
            py = self._python = _python_raw()
        states["python"] = py.read() if py is not None and py.valid() else random.getstate()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            if numpy is not self._numpy_module:
                self._numpy_module, self._numpy = numpy, _numpy_raw(numpy)
            raw = self._numpy
            states["numpy"] = raw.read() if raw is not None and raw.valid() else (
                numpy.random.get_state())
        _capture_torch(states)
        return states


def decode_rng(states: dict[str, Any]) -> dict[str, Any]:
    """`states` from `RngCapture.capture` in the form `capture_rng` returns."""
    return {gen: state.decode() if isinstance(state, _Bytes) else state
            for gen, state in states.items()}


class _Bytes:
    """Raw generator state: the bytes of its C struct, decoded on the writer thread."""

    __slots__ = ("decode_fn", "raw", "extra")

    def __init__(self, decode_fn: Callable[[bytes, Any], Any], raw: bytes, extra: Any) -> None:
        self.decode_fn, self.raw, self.extra = decode_fn, raw, extra

    def decode(self) -> Any:
        return self.decode_fn(self.raw, self.extra)


def _view(addr: int, size: int) -> memoryview:
    """The `size` bytes at `addr`, readable with `.tobytes()`: a plain copy, no foreign call."""
    return memoryview((ctypes.c_char * size).from_address(addr)).cast("B")


class _Raw:
    """Reads one generator's state as bytes from fixed addresses found by calibration.
    `obj` (the generator, kept alive here) owns the memory; `valid()` checks that the
    module still draws from it."""

    def __init__(self, owner: Callable[[], Any], obj: Any, addr: int, extra: Callable[[], Any],
                 decode_fn: Callable[[bytes, Any], Any]) -> None:
        self.owner, self.obj, self.view = owner, obj, _view(addr, _MT_BYTES)
        self.extra, self.decode_fn = extra, decode_fn

    def valid(self) -> bool:
        return self.owner() is self.obj

    def read(self) -> _Bytes:
        return _Bytes(self.decode_fn, self.view.tobytes(), self.extra())


# --- python `random` -------------------------------------------------------------------------
# _random.Random is {PyObject_HEAD; int index; uint32_t state[624]}; random.Random keeps the
# cached gaussian in the instance attribute gauss_next.


def _python_raw() -> _Raw | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        inst = random.getstate.__self__
        offset = _python_offset(inst)
        probe = random.Random(12345)
        if offset is None or _python_offset(probe) != offset:
            return None

        def make(gen: random.Random) -> _Raw:
            return _Raw(lambda: random.getstate.__self__, gen, id(gen) + offset,
                        lambda: gen.gauss_next, _decode_python)

        for _ in range(3):  # a private generator in several states, then the global one
            if not _same_state(make(probe).read().decode(), probe.getstate()):
                return None
            probe.random()
            probe.gauss(0.0, 1.0)
        raw = make(inst)
        return raw if _same_state(raw.read().decode(), inst.getstate()) else None
    except Exception:  # noqa: BLE001 - any surprise: use random.getstate()
        return None


def _python_offset(gen: random.Random) -> int | None:
    """Offset of `int index` (followed by the state words) in the generator object."""
    _, internal, _ = gen.getstate()
    words = struct.pack(f"{_MT_WORDS}I", *internal[:_MT_WORDS])
    mem = ctypes.string_at(id(gen), type(gen).__basicsize__)
    at = mem.find(words)
    if at < 4 or mem.count(words) != 1:
        return None
    if struct.unpack_from("i", mem, at - 4)[0] != internal[_MT_WORDS]:
        return None
    return at - 4


def _decode_python(raw: bytes, gauss_next: Any) -> tuple:
    index = struct.unpack_from("i", raw, 0)[0]
    words = struct.unpack_from(f"{_MT_WORDS}I", raw, 4)
    return (random.Random.VERSION, (*words, index), gauss_next)


# --- numpy's global RandomState ----------------------------------------------------------------
# RandomState holds `bitgen_t _bitgen` (5 pointers, the first being the MT19937 state address)
# followed by `aug_bitgen_t _aug_state` {bitgen_t *bit_generator; int has_gauss; double gauss}.
# The MT19937 state is {uint32_t key[624]; int pos}; its address is public (bit_generator.ctypes).


def _numpy_raw(numpy: Any) -> _Raw | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        rs = numpy.random.get_state.__self__
        gauss_at = _numpy_gauss_offset(rs)
        probe = numpy.random.RandomState(12345)
        if gauss_at is None or _numpy_gauss_offset(probe) != gauss_at:
            return None

        def make(gen: Any) -> _Raw:
            bitgen = gen._bit_generator
            gauss = _view(id(gen) + gauss_at, 16)

            def owner() -> Any:
                return numpy.random.get_state.__self__ if bitgen is gen._bit_generator else None

            return _Raw(owner, gen, bitgen.ctypes.state_address, gauss.tobytes, _decode_numpy)

        for _ in range(3):  # no cached gaussian, one, none again
            if not _same_state(make(probe).read().decode(), probe.get_state()):
                return None
            probe.standard_normal()
        raw = make(rs)
        return raw if _same_state(raw.read().decode(), rs.get_state()) else None
    except Exception:  # noqa: BLE001 - any surprise: use numpy.random.get_state()
        return None


def _numpy_gauss_offset(rs: Any) -> int | None:
    """Offset of `has_gauss` in the RandomState object, found from its pointers."""
    if type(rs._bit_generator).__name__ != "MT19937":
        return None
    mem = ctypes.string_at(id(rs), type(rs).__basicsize__)
    needle = struct.pack("P", rs._bit_generator.ctypes.state_address)
    bitgen_at = mem.find(needle)
    if bitgen_at < 0 or mem.count(needle) != 1:
        return None
    aug_at = bitgen_at + 5 * _PTR
    if aug_at + _PTR + 16 > len(mem):
        return None
    if struct.unpack_from("P", mem, aug_at)[0] != id(rs) + bitgen_at:
        return None
    return aug_at + _PTR


def _decode_numpy(raw: bytes, gauss: bytes) -> tuple:
    numpy = sys.modules["numpy"]
    key = numpy.frombuffer(raw, dtype=numpy.uint32, count=_MT_WORDS).copy()
    pos = struct.unpack_from("i", raw, _MT_WORDS * 4)[0]
    has_gauss, value = struct.unpack("id", gauss)
    return ("MT19937", key, pos, has_gauss, value)


def _same_state(a: Any, b: Any) -> bool:
    """Exact equality of two states (arrays element-wise, floats bit for bit)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("d", a) == struct.pack("d", b)
    if hasattr(a, "dtype"):
        return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
    return a == b
