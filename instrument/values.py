"""Turn a value passed to `flor.log` into something a record part can hold."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_JSON_CHARS = 64 * 1024
_UNSUPPORTED = object()


def to_recordable(value: Any) -> Any:
    """Return a JSON-able copy of `value`, or `UNSUPPORTED` when flor cannot record it.

    Scalars come back as Python numbers; 0-d tensors and numpy scalars through `.item()`;
    lists, tuples and dicts through a JSON round trip (a snapshot, so later mutation is not seen).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)
    if item is not None and _is_single_element(value):
        scalar = item()
        if isinstance(scalar, (bool, int, float, str)):
            return scalar
    if isinstance(value, (list, tuple, dict)):
        try:
            text = json.dumps(value, default=_json_default)
        except (TypeError, ValueError):
            return _UNSUPPORTED
        if len(text) <= MAX_JSON_CHARS:
            return json.loads(text)
    return _UNSUPPORTED


def is_unsupported(value: Any) -> bool:
    return value is _UNSUPPORTED


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
