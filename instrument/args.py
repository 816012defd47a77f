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
    # `--kwargs` given with nothing, or a token after it without `=`: checked when a run
    # starts (not at import, and not in a replay, which must parse argv as its run did)
    bad_kwargs: list[str] = field(default_factory=list)


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
            i = _take_kwargs(argv, i + 1, parsed)
        else:
            keep.append(tok)
            i += 1
    argv[:] = keep
    if parsed.runid is None:
        parsed.runid = os.environ.get("FLOR_RUN") or None
    return parsed


def check_kwargs_syntax(flor_argv: FlorArgv) -> None:
    """Raise FlorArgError for a `--kwargs` without `key=value` pairs (`--kwargs epochs`): as
    FlorDB, every token after `--kwargs` up to the next `-` flag must be one."""
    for bad in flor_argv.bad_kwargs:
        if not bad:
            raise FlorArgError("flor: --kwargs is not followed by any key=value pair; write "
                               "e.g. --kwargs epochs=5 lr=0.01, or leave --kwargs out")
        key = bad.split("=", 1)[0]
        if key:
            raise FlorArgError(
                f"flor: --kwargs {bad} has no value; write --kwargs {key}=VALUE (each token "
                "after --kwargs up to the next --flag is a key=value pair; put the script's "
                "own arguments before --kwargs)"
            )
        raise FlorArgError(f"flor: --kwargs {bad} has no key; write --kwargs KEY{bad}")


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


def _take_kwargs(argv: list[str], i: int, parsed: FlorArgv) -> int:
    """Take the `key=value` tokens from `argv[i]` on; the index after them. A token without
    `=` ends them and stays in argv (as it always has, so that replays of older runs parse
    alike); unless it is a `-x` flag of the script, it is noted as a mistake."""
    start = i
    while i < len(argv) and not argv[i].startswith("--"):
        key, eq, value = argv[i].partition("=")
        if not eq:
            if not argv[i].startswith("-"):
                parsed.bad_kwargs.append(argv[i])
            break
        if not key:
            parsed.bad_kwargs.append(argv[i])
        parsed.kwargs[key] = value
        i += 1
    if i == start and not parsed.bad_kwargs:
        parsed.bad_kwargs.append("")
    return i


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
