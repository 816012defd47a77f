"""Check every record file at the boundary, before any of its rows are built.

Ingest trusts nothing it reads: a file may be torn, hand-edited, written by another tool or
by a future flor. Each reader below turns one file into plain, storable Python values or
raises `RecordFileError` with a one-line reason; ingest then quarantines that file alone
(one `IngestWarning` naming it and the fix) and keeps every other record.

Text is stored losslessly as UTF-8: a lone surrogate (how Python carries bytes that are not
UTF-8, e.g. in `sys.argv` or a path) is written as the four characters `\\xNN` of the byte
it stands for (U+DC80..U+DCFF, from `surrogateescape`), any other as the six characters
`\\uXXXX` (Python's `backslashreplace` spelling).
"""

from __future__ import annotations

import codecs
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

INT64_MAX = 2**63 - 1
ORD_LIMIT = 2**62
MAX_JSON_BYTES = 1 << 20  # run.json, end.json, replay.json, checkpoint entries
_ESCAPE = "florsql-surrogates"
_LATEST = 253402300799.0  # 9999-12-31 23:59:59 UTC: the last second a timestamp can hold


class RecordFileError(ValueError):
    """A record file ingest cannot use: unreadable, malformed, or a field of the wrong type."""


def _escape_surrogates(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for char in err.object[err.start:err.end]:
        code = ord(char)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
    return "".join(out), err.end


codecs.register_error(_ESCAPE, _escape_surrogates)


def clean_text(text: str) -> str:
    """`text` with its lone surrogates escaped (see the module docstring), else unchanged."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", _ESCAPE).decode("utf-8")
    return text


def one_line(text: str, limit: int = 160) -> str:
    """An exception's text fit for a one-line warning."""
    first = clean_text(str(text)).strip().splitlines() or [""]
    return first[0][:limit]


def load_json(path: Path, limit: int | None = MAX_JSON_BYTES) -> Any:
    """The JSON document in `path`; FileNotFoundError passes (the file may be on its way)."""
    try:
        if limit is not None and path.stat().st_size > limit:
            raise RecordFileError(f"over {limit} bytes, too large for this kind of file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordFileError(f"unreadable: {one_line(exc)}") from None
    return parse_json(data)


def parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise RecordFileError("JSON nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError and the int digit limit
        raise RecordFileError(f"not valid JSON: {one_line(exc, 80)}") from None


def run_identity(doc: Any) -> dict:
    """run.json: the run's identity, each field checked; `tstamp` is required."""
    doc = _object(doc)
    return {
        "tstamp": timestamp(doc.get("tstamp"), "tstamp", required=True, zone=False),
        **{k: _text(doc.get(k), k) for k in ("projid", "runid", "vid", "filename", "hostname")},
        "argv": _texts(doc.get("argv"), "argv"),
        "pid": _int(doc.get("pid"), "pid"),
        "start_time": timestamp(doc.get("start_time"), "start_time"),
    }


def end_status(doc: Any) -> dict:
    """end.json: how the run (or replay) ended."""
    doc = _object(doc)
    status = _text(doc.get("status"), "status") or "finished"
    return {"status": status, "end_time": timestamp(doc.get("end_time"), "end_time"),
            "error": _text(doc.get("error"), "error")}


def replay_identity(doc: Any) -> dict:
    """replay.json: which names and outer iterations a replay process covers."""
    doc = _object(doc)
    replay_id = _text(doc.get("replay_id"), "replay_id")
    if not replay_id:
        raise RecordFileError("replay_id is missing")
    names = doc.get("names")
    return {"replay_id": replay_id, "loop": _text(doc.get("loop"), "loop"),
            "start": _int(doc.get("start"), "start"), "stop": _int(doc.get("stop"), "stop"),
            "names": None if names is None else _texts(names, "names"),
            "pid": _int(doc.get("pid"), "pid"), "hostname": _text(doc.get("hostname"), "hostname")}


def checkpoint_entry(doc: Any) -> dict:
    """ckpt/<loop>-<i>.json: a durable checkpoint file and what it cost."""
    doc = _object(doc)
    file = _text(doc.get("file"), "file")
    if not file or "/" in file or "\\" in file or file in (".", ".."):
        raise RecordFileError(f"file must be a file name in ckpt/, got {doc.get('file')!r:.60}")
    created = _number(doc.get("time"), "time")
    if created is None or not 0 <= created <= _LATEST:
        raise RecordFileError(f"time must be seconds since 1970, got {doc.get('time')!r:.40}")
    return {"loop": name_text(doc.get("loop"), "loop"),
            "iteration": _int(doc.get("iteration"), "iteration", required=True, low=0),
            "file": file, "bytes": _int(doc.get("bytes"), "bytes", low=0),
            "seconds": _number(doc.get("seconds"), "seconds"),
            "blocked_seconds": _number(doc.get("blocked_seconds"), "blocked_seconds"),
            "time": created}


def timestamp(value: Any, field: str, required: bool = False, zone: bool = True) -> str | None:
    """An ISO 8601 time, rewritten in the one spelling DuckDB reads back exactly."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RecordFileError(f"{field} must be an ISO timestamp, got {value!r:.40}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RecordFileError(f"{field} is not an ISO timestamp: {clean_text(value)!r:.40}") \
            from None
    if not zone and parsed.tzinfo is not None:
        raise RecordFileError(f"{field} must be a local time without an offset, got {value!r:.40}")
    return parsed.isoformat(timespec="microseconds")


def name_text(value: Any, field: str) -> str:
    """A logged name or loop name: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise RecordFileError(f"{field} must be a non-empty string, got {value!r:.40}")
    return clean_text(value)


def check_int(value: Any, field: str, low: int = -INT64_MAX - 1, high: int = INT64_MAX) -> int:
    """An int (not a bool, not a float) within [low, high]."""
    if type(value) is not int or not low <= value <= high:
        raise RecordFileError(f"{field} must be an integer in [{low}, {high}], got {value!r:.40}")
    return value


def check_number(value: Any, field: str) -> float:
    """A JSON number (NaN and infinities allowed) as a float."""
    if type(value) not in (int, float):
        raise RecordFileError(f"{field} must be a number, got {value!r:.40}")
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def _object(doc: Any) -> dict:
    if not isinstance(doc, dict):
        raise RecordFileError(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordFileError(f"{field} must be a string, got {value!r:.40}")
    return clean_text(value)


def _texts(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordFileError(f"{field} must be a list of strings")
    return [clean_text(v) for v in value]


def _int(value: Any, field: str, required: bool = False, low: int = -INT64_MAX - 1) -> int | None:
    if value is None and not required:
        return None
    return check_int(value, field, low=low)


def _number(value: Any, field: str) -> float | None:
    return None if value is None else check_number(value, field)


def check_part(header: dict, cols: dict, stride: int) -> dict:
    """A decoded part's header tables and columns, checked against each other.

    `cols` holds numpy arrays: the context definitions `parent`, `loop`, `iteration`, the
    records' `ctx` and `name` (indices into the header's tables), `kind` (optional) and
    `floats`. Checked with whole-array operations, so the check costs little per record.
    Returns the header with its text tables cleaned and its run metadata checked.
    """
    count = len(cols["ctx"])
    # ord = seq * stride + position, and history adds 2^62 to forward ords: keep that in 64 bits
    seq = check_int(header.get("seq"), "seq", low=0, high=(ORD_LIMIT - count) // stride - 1)
    loops = [name_text(n, "loop name") for n in _list(header.get("loops"), "loops")]
    names = [name_text(n, "name") for n in _list(header.get("names"), "names")]
    contexts = len(cols["parent"])
    if not len(cols["loop"]) == len(cols["iteration"]) == contexts:
        raise RecordFileError("context columns of different lengths")
    if contexts and (np.any(cols["parent"] > np.arange(contexts)) or
                     np.any(cols["loop"] >= len(loops)) or np.any(cols["iteration"] < 0)):
        raise RecordFileError("a context refers to a later context or an unknown loop, "
                              "or has a negative iteration")
    if len(cols["name"]) != count:
        raise RecordFileError("record columns of different lengths")
    if count and (np.any(cols["ctx"] > contexts) or np.any(cols["name"] >= len(names))):
        raise RecordFileError("a record refers to an unknown context or name")
    values = _list(header.get("values"), "values")
    _check_value_columns(cols.get("kind"), len(cols["floats"]), len(values), count)
    return {**header, "seq": seq, "loops": loops, "names": names, "values": values,
            "args": [[name_text(n, "arg name"), v] for n, v in _rows(header, "args", 2)],
            "iterations": [[name_text(n, "loop name"), check_int(i, "iteration", low=0),
                            check_number(s, "seconds")]
                           for n, i, s in _rows(header, "iterations", 3)]}


def _check_value_columns(kind: Any, floats: int, others: int, count: int) -> None:
    if kind is None:
        if floats != count or others:
            raise RecordFileError("value columns do not add up")
        return
    if len(kind) != count or np.any(kind > 1) or int(kind.sum()) != others \
            or floats + others != count:
        raise RecordFileError("value columns do not add up")


def _list(value: Any, field: str) -> list:
    if not isinstance(value, list):
        raise RecordFileError(f"{field} must be a list, got {type(value).__name__}")
    return value


def _rows(header: dict, field: str, width: int) -> list:
    rows = _list(header.get(field, []), field)
    if not all(isinstance(r, list) and len(r) == width for r in rows):
        raise RecordFileError(f"each of {field} must be a list of {width} items")
    return rows
