"""Text positions for statement propagation: where a line can go, and with what indentation."""

from __future__ import annotations

import ast

from .propagate_match import free_names


def indent_of(lines: list[str], block: list[ast.stmt]) -> str | None:
    """The indentation of a block's statements; None for a one-line block (`if x: y()`)."""
    first = block[0]
    prefix = lines[first.lineno - 1].encode()[:first.col_offset].decode()
    return prefix if prefix.strip() == "" else None


def after_line(lines: list[str], block: list[ast.stmt], p: int) -> int | None:
    """The line after which a statement lands at position `p` of `block` (0: before the first
    statement, right under the block's header); None where no line break separates them."""
    if p == 0:
        line = block[0].lineno - 1
        while line > 0 and _blank_or_comment(lines[line - 1]):
            line -= 1
        return line
    prev = block[p - 1]
    rest = lines[prev.end_lineno - 1].encode()[prev.end_col_offset:].decode().strip()
    return prev.end_lineno if rest == "" or rest.startswith("#") else None


def _blank_or_comment(line: str) -> bool:
    text = line.strip()
    return text == "" or text.startswith("#")


def renamed_text(text: str, rename: dict[str, str]) -> tuple[str, list[str]]:
    """A one-line expression with its free names renamed, and those (renamed) names."""
    names = free_names(ast.parse(text, mode="eval").body)
    raw = text.encode()
    for node in sorted(names, key=lambda n: -n.col_offset):
        if node.id in rename:
            raw = raw[:node.col_offset] + rename[node.id].encode() + raw[node.end_col_offset:]
    return raw.decode(), list(dict.fromkeys(rename.get(n.id, n.id) for n in names))
