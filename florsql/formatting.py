"""Render a result (column names + rows) as an aligned table, CSV, JSON or markdown."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "csv", "json", "markdown")


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> str:
    if fmt == "csv":
        return _csv(columns, rows)
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


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[cell_text(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
               for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return " | ".join(v.rjust(w) if num else v.ljust(w)
                          for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    sep = "-+-".join("-" * w for w in widths)
    body = [line(r) for r in cells]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    return "\n".join([line(list(columns)), sep, *body, footer])


def _csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in r] for r in rows])
    return out.getvalue().rstrip("\n")


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    return "\n".join([line(list(columns)), line(["---"] * len(columns)),
                      *(line([cell_text(v) for v in r]) for r in rows)])


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
    width = max((len(c) for c in columns), default=0)
    blocks = []
    for n, row in enumerate(rows, 1):
        lines = [f"{c.ljust(width)} | {cell_text(v)}" for c, v in zip(columns, row, strict=True)]
        head = f"-[ RECORD {n} ]"
        blocks.append("\n".join([head + "-" * max(1, width + 3 - len(head)), *lines]))
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    return "\n".join([*blocks, footer])


def underline(line: str, column: int, length: int = 1, indent: str = "  ") -> str:
    """`line` with `^` marks under `length` characters from 0-based `column`."""
    return f"{indent}{line}\n{indent}{' ' * column}{'^' * max(1, length)}"
