"""Render a result (column names + rows) as an aligned table, CSV, TSV, JSON or markdown.

Tables are aligned by terminal cells, not characters: `実験一` takes six columns, `🚀` two, a
combining accent none. In the layouts meant for reading (table, vertical, markdown) a newline,
tab or other control character inside a value is shown escaped, as `\\n` or `\\x1b`, so one row
stays one line; CSV and JSON carry values exactly.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from wcwidth import wcswidth, wcwidth

FORMATS = ("table", "csv", "tsv", "json", "markdown")
# C0, DEL and C1 controls, and the Unicode line/paragraph separators some terminals break on
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NUMBERS = (int, float, Decimal)  # right-aligned; HUGEINT sums come back as Decimal
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> str:
    if fmt in ("csv", "tsv"):  # TSV quotes like CSV, so tabs and newlines in values survive
        return _csv(columns, rows, "," if fmt == "csv" else "\t")
    if fmt == "json":
        records = [dict(zip(columns, map(_jsonable, r), strict=True)) for r in rows]
        return json.dumps(records, indent=1)
    if fmt == "markdown":
        return _markdown(columns, rows)
    return _table(columns, rows)


def cell_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def shown_text(value: Any) -> str:
    """`cell_text` with control characters escaped: what a table cell shows, on one line.

    >>> shown_text("loss\\tnan\\n")
    'loss\\\\tnan\\\\n'
    """
    return escape_controls(cell_text(value))


def escape_controls(text: str) -> str:
    """Newline, tab and CR as `\\n`, `\\t`, `\\r`; other controls as `\\x1b` or `\\u2028`."""
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or _hex_escape(m[0]), text)


def display_width(text: str) -> int:
    """How many terminal columns the widest line of `text` takes.

    >>> display_width("実験一 | ok\\nab")
    11
    """
    return max((_cells(line) for line in text.splitlines()), default=0)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = [escape_controls(c) for c in columns]
    cells = [[shown_text(v) for v in row] for row in rows]
    widths = [max([_cells(h)] + [_cells(r[i]) for r in cells]) for i, h in enumerate(head)]
    numeric = [bool(rows) and all(isinstance(r[i], _NUMBERS) or r[i] is None for r in rows)
               for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return " | ".join(_pad(v, w, right=num)
                          for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    sep = "-+-".join("-" * w for w in widths)
    body = [line(r) for r in cells]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    return "\n".join([line(head), sep, *body, footer])


def _csv(columns: Sequence[str], rows: Sequence[Sequence[Any]], delimiter: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in r] for r in rows])
    return out.getvalue().rstrip("\n")


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line([escape_controls(c) for c in columns]), line(["---"] * len(columns)),
                      *(line([shown_text(v) for v in r]) for r in rows)])


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def format_vertical(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """One `name | value` block per row, headed `-[ RECORD n ]-`: for rows wider than the screen."""
    names = [escape_controls(c) for c in columns]
    width = max((_cells(c) for c in names), default=0)
    blocks = []
    for n, row in enumerate(rows, 1):
        lines = [f"{_pad(c, width)} | {shown_text(v)}" for c, v in zip(names, row, strict=True)]
        head = f"-[ RECORD {n} ]"
        blocks.append("\n".join([head + "-" * max(1, width + 3 - len(head)), *lines]))
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    return "\n".join([*blocks, footer])


def underline(line: str, column: int, length: int = 1, indent: str = "  ") -> str:
    """`line` with `^` marks under `length` characters from 0-based `column`."""
    return f"{indent}{line}\n{indent}{' ' * column}{'^' * max(1, length)}"


def _cells(text: str) -> int:
    width = wcswidth(text)
    if width >= 0:
        return width
    # wcswidth gives up (-1) on a control character; count the printable ones
    return sum(max(0, wcwidth(c)) for c in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - _cells(text))
    return fill + text if right else text + fill


def _hex_escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
