"""Turn a value passed to `flor.log` into something a record part can hold."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from .errors import FlorError

MAX_JSON_CHARS = 64 * 1024
MAX_ELEMENTS_ENV = "FLOR_MAX_LOG_ELEMENTS"
DEFAULT_MAX_ELEMENTS = 10_000
_NUMPY_KINDS = frozenset("biufU")  # bool, int, uint, float, str: tolist() gives JSON values


class _Refused:
    """What `to_recordable` returns for a value flor does not record; `reason` (if any) is
    the one-line message to show instead of the generic unsupported-type warning."""

    __slots__ = ("reason",)

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason


_UNSUPPORTED = _Refused()
_HUGE_INT = _Refused(
    "whole number with more digits than Python writes as text (sys.get_int_max_str_digits); "
    "log float(x) or str(x); value not recorded"
)


def to_recordable(value: Any) -> Any:
    """Return a JSON-able copy of `value`, or a refusal (`is_unsupported`) when flor cannot
    record it.

    Scalars come back as Python numbers; 0-d tensors and numpy scalars through `.item()`;
    numpy arrays and torch tensors with dimensions as nested lists, when they hold at most
    FLOR_MAX_LOG_ELEMENTS (10,000) elements; lists, tuples and dicts through a JSON round trip.
    Each is a snapshot taken now, so later in-place changes are not seen.
    """
    if value is None or isinstance(value, (bool, float, str)):
        return value
    if isinstance(value, int):
        return _HUGE_INT if has_too_many_digits(value) else value
    item = getattr(value, "item", None)
    if item is not None and _is_single_element(value):
        scalar = item()
        if isinstance(scalar, (bool, int, float, str)):
            return scalar
    array = _array_to_list(value)
    if array is not None:
        return array
    if isinstance(value, (list, tuple, dict)):
        try:
            text = json.dumps(value, default=_json_default)
        except (TypeError, ValueError):
            return _UNSUPPORTED
        if len(text) <= MAX_JSON_CHARS:
            return json.loads(text)
    return _UNSUPPORTED


def has_too_many_digits(value: int) -> bool:
    """Whether Python refuses to write `value` as text (more than `sys.get_int_max_str_digits()`
    digits, 4,300 by default), as a record part must."""
    limit = sys.get_int_max_str_digits()
    if not limit or value.bit_length() * 0.30103 < limit - 1:  # log10(2): fewer digits, surely
        return False
    try:
        int.__repr__(value)
    except ValueError:
        return True
    return False


def max_log_elements() -> int:
    """FLOR_MAX_LOG_ELEMENTS: the most elements an array or tensor may have to be logged."""
    raw = os.environ.get(MAX_ELEMENTS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_ELEMENTS
    try:
        limit = int(raw.replace("_", ""))
    except ValueError:
        limit = -1
    if limit < 0:
        raise FlorError(f"flor: {MAX_ELEMENTS_ENV}={raw!r}: expected a whole number of elements "
                        f"(default {DEFAULT_MAX_ELEMENTS})")
    return limit


def _array_to_list(value: Any) -> Any:
    """Nested lists for a numpy array or torch tensor with dimensions; a refusal when it is
    too large or of a kind JSON cannot hold; None when `value` is neither."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        if value.dtype.kind not in _NUMPY_KINDS:
            return _UNSUPPORTED
        return _too_large(value, value.size) or value.tolist()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.is_complex() or value.layout != torch.strided:
            return _UNSUPPORTED
        refused = _too_large(value, value.numel())
        if refused:
            return refused
        try:
            return value.detach().tolist()
        except (RuntimeError, TypeError, ValueError):  # meta tensors and the like
            return _UNSUPPORTED
    return None


def _too_large(value: Any, size: int) -> _Refused | None:
    limit = max_log_elements()
    if size <= limit:
        return None
    shape = "x".join(str(d) for d in value.shape)
    return _Refused(
        f"{shape} {type(value).__name__} has {size:,} elements, over the limit of {limit:,}; "
        f"log a summary such as x.mean() or x.norm(), or set {MAX_ELEMENTS_ENV} higher; "
        "value not recorded"
    )


def is_unsupported(value: Any) -> bool:
    return type(value) is _Refused


def refusal_reason(value: Any) -> str | None:
    """Why `to_recordable` refused a value, when it says more than "unsupported type"."""
    return value.reason if type(value) is _Refused else None


def type_name(value: Any) -> str:
    """The catalog's value_type for a recordable value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def number_of(value: Any) -> float | None:
    """The DOUBLE column value: numbers and bools as floats, anything else NULL."""
    if isinstance(value, (bool, int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return None


def _is_single_element(value: Any) -> bool:
    ndim = getattr(value, "ndim", None)
    if ndim == 0:
        return True
    numel = getattr(value, "numel", None)
    if callable(numel) and ndim is not None:
        return False  # multi-element tensors are not scalars
    size = getattr(value, "size", None)
    return ndim is None and size == 1


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)
    if item is not None and _is_single_element(obj):
        return item()
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(type(obj).__name__)
