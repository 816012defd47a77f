"""Command-line values for `flor.arg`: `--kwargs k=v ...` (FlorDB 4) and `--name value` (FlorDB 2).

At import, flor takes `--flor NAME` and `--kwargs ...` out of `sys.argv` so the script's own
argparse never sees them. A `--name value` pair is taken out when `flor.arg("name")` reads it.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .errors import FlorArgError


@dataclass
class FlorArgv:
    """What flor took from the command line."""

    original: list[str]
    runid: str | None = None
    kwargs: dict[str, str] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)


def strip_flor_argv(argv: list[str]) -> FlorArgv:
    """Remove flor's own flags from `argv` in place and return them."""
    parsed = FlorArgv(original=list(argv))
    keep = argv[:1]
    i = 1
    while i < len(argv):
        tok = argv[i]
        if tok == "--flor" and i + 1 < len(argv):
            parsed.runid, i = argv[i + 1], i + 2
        elif tok.startswith("--flor="):
            parsed.runid, i = tok.split("=", 1)[1], i + 1
        elif tok == "--kwargs":
            i += 1
            while i < len(argv) and "=" in argv[i] and not argv[i].startswith("--"):
                key, value = argv[i].split("=", 1)
                parsed.kwargs[key] = value
                i += 1
        else:
            keep.append(tok)
            i += 1
    argv[:] = keep
    if parsed.runid is None:
        parsed.runid = os.environ.get("FLOR_RUN") or None
    return parsed


def take_cli_value(flor_argv: FlorArgv, name: str) -> str | None:
    """The raw command-line value for `name`, or None when the command line does not set it."""
    flor_argv.read.add(name)
    if name in flor_argv.kwargs:
        return flor_argv.kwargs[name]
    return _take_flag(sys.argv, name)


def cast_value(name: str, raw: str, default: Any) -> Any:
    """Cast `raw` to the type of `default` (bool, int, float, str); literal_eval when None."""
    kind = type(default)
    try:
        if default is None:
            return _literal_or_str(raw)
        if kind is bool:
            return _parse_bool(raw)
        if kind in (int, float, str):
            return kind(raw)
        return type(default)(_literal_or_str(raw))
    except (TypeError, ValueError):
        raise FlorArgError(
            f"flor.arg({name!r}): cannot cast {raw!r} to {kind.__name__} "
            f"(the type of its default {default!r}); pass e.g. --kwargs {name}={default!r}"
        ) from None


def unread_kwargs(flor_argv: FlorArgv) -> list[str]:
    """`--kwargs` keys that no `flor.arg` call has read."""
    return sorted(k for k in flor_argv.kwargs if k not in flor_argv.read)


def describe_unread(flor_argv: FlorArgv) -> str:
    """One line naming the unread --kwargs keys, with the closest known names."""
    parts = []
    known = sorted(flor_argv.read)
    for key in unread_kwargs(flor_argv):
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"flor: --kwargs {', '.join(parts)} not read by any flor.arg(...) in this script "
        f"(known args: {', '.join(known) or 'none'}); fix the name or add flor.arg for it"
    )


def _take_flag(argv: list[str], name: str) -> str | None:
    flag = f"--{name}"
    for i, tok in enumerate(argv[1:], start=1):
        if tok == flag and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if tok.startswith(flag + "="):
            del argv[i]
            return tok.split("=", 1)[1]
    return None


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(raw)


def _literal_or_str(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
