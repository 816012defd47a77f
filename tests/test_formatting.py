"""Result tables aligned by terminal cells, with control characters in values shown escaped."""

from __future__ import annotations

import json

from wcwidth import wcwidth

from florsql.formatting import display_width, format_rows, format_vertical


def bar_columns(line: str, mark: str = "|") -> list[int]:
    """The terminal columns at which `mark` appears in `line`."""
    found, column = [], 0
    for char in line:
        if char == mark:
            found.append(column)
        column += max(0, wcwidth(char))
    return found


def assert_aligned(text: str, mark: str = "|") -> None:
    lines = [line for line in text.splitlines() if mark in line]
    assert len({tuple(bar_columns(line, mark)) for line in lines}) == 1, "\n" + text


def test_an_ascii_table_keeps_its_psql_layout() -> None:
    text = format_rows(["runid", "loss", "note"], [("a", 0.5, "x"), ("bb", 12, None)])
    assert text == ("runid | loss | note\n"
                    "------+------+-----\n"
                    "a     |  0.5 | x\n"
                    "bb    |   12 | NULL\n"
                    "(2 rows)")


def test_cjk_and_emoji_run_names_keep_every_bar_in_the_same_column() -> None:
    text = format_rows(["runid", "loss"], [("実験一", 0.5), ("🚀run", 12), ("plain", None)])
    assert_aligned(text)
    assert_aligned(text.replace("-+-", " | "))  # the rule's `+` under the bars too
    assert text.splitlines()[2] == "実験一 |  0.5"  # six cells wide, as wide as "runid "


def test_combining_characters_take_no_column() -> None:
    text = format_rows(["name", "n"], [("cafe\u0301", 1), ("coffee", 2)])
    assert_aligned(text)
    assert text.splitlines()[2] == "cafe\u0301   | 1"


def test_a_value_with_a_newline_stays_on_one_line_shown_escaped() -> None:
    rows = [("a", "line1\nline2"), ("b", "tab\there\r\x1b[31mred"), ("c", "sep\u2028x")]
    lines = format_rows(["runid", "note"], rows).splitlines()
    assert len(lines) == 2 + len(rows) + 1
    assert lines[2] == "a     | line1\\nline2"
    assert lines[3] == "b     | tab\\there\\r\\x1b[31mred"
    assert lines[4] == "c     | sep\\u2028x"


def test_column_names_with_newlines_are_escaped_too() -> None:
    text = format_rows(["two\nlines", "b"], [(1, 2)])
    assert text.splitlines()[0] == "two\\nlines | b"
    assert_aligned(text)


def test_vertical_output_aligns_values_after_wide_column_names() -> None:
    text = format_vertical(["runid", "名前", "🚀"], [("実験一", "a\nb", 1)])
    assert_aligned(text)
    assert text.splitlines() == ["-[ RECORD 1 ]-", "runid | 実験一", "名前  | a\\nb",
                                 "🚀    | 1", "(1 row)"]


def test_markdown_shows_newlines_escaped_and_pipes_quoted() -> None:
    text = format_rows(["a|b"], [("x\ny|z",)], "markdown")
    assert text.splitlines() == ["| a\\|b |", "| --- |", "| x\\ny\\|z |"]


def test_csv_and_json_carry_control_characters_exactly() -> None:
    rows = [("実験一", "line1\nline2\t\x1b")]
    assert json.loads(format_rows(["runid", "note"], rows, "json")) == [
        {"runid": "実験一", "note": "line1\nline2\t\x1b"}]
    assert '"line1\nline2\t\x1b"' in format_rows(["runid", "note"], rows, "csv")


def test_display_width_counts_terminal_cells_of_the_widest_line() -> None:
    assert display_width("実験一 | ok\nab") == 11
    assert display_width("🚀run") == 5 and display_width("cafe\u0301") == 4
    assert display_width("") == 0
