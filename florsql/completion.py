"""Context-aware completion for the shell: pure functions over text, plus a prompt_toolkit adapter.

    suggest("SELECT acc", tables, history_columns, saved_queries)  ->  [Suggestion("accuracy")...]

After FROM/JOIN: tables (and `history`). After SELECT, WHERE, GROUP BY, ORDER BY, ON, HAVING,
a comma or an operator: the columns of the tables the statement reads (every column when it
names none yet). A line starting with `.`: dot commands, then their arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

HISTORY = "history"
KEYWORDS = (
    "SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "HAVING", "LIMIT", "OFFSET", "JOIN",
    "LEFT JOIN", "INNER JOIN", "CROSS JOIN", "USING", "ON", "AS", "AND", "OR", "NOT", "IN", "IS",
    "NULL", "LIKE", "ILIKE", "BETWEEN", "DISTINCT", "CASE", "WHEN", "THEN", "ELSE", "END", "ASC",
    "DESC", "WITH", "UNION", "ALL", "QUALIFY", "OVER", "PARTITION BY", "EXPLAIN", "DESCRIBE",
    "SUMMARIZE", "CAST", "count", "avg", "min", "max", "sum", "arg_max", "arg_min", "last",
)
MODES = ("table", "csv", "json", "markdown")
_TOKEN = re.compile(r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|[A-Za-z_][\w$]*|\d+(?:\.\d*)?|\S""")
_WORD_BEFORE = re.compile(r"[\w$]*$")
_SIMPLE_NAME = re.compile(r"[A-Za-z_][\w$]*")
_TABLE_CLAUSES = {"FROM", "JOIN"}
_COLUMN_CLAUSES = {"SELECT", "WHERE", "BY", "ON", "HAVING", "QUALIFY", "USING"}
_CLAUSES = _TABLE_CLAUSES | _COLUMN_CLAUSES | {"LIMIT", "OFFSET", "WITH", "UNION"}
_COLUMN_AFTER = _COLUMN_CLAUSES | {"AND", "OR", "NOT", "DISTINCT", "WHEN", "THEN", "ELSE",
                                   "BETWEEN", "IN", "LIKE", "ILIKE", "CASE"}
_NOT_ALIAS = _CLAUSES | {"LEFT", "RIGHT", "INNER", "OUTER", "CROSS", "FULL", "NATURAL", "GROUP",
                         "ORDER", "WINDOW", "AS", "LATERAL"}


@dataclass(frozen=True)
class Suggestion:
    """Replace the last `-start` characters before the cursor with `text`."""

    text: str
    start: int = 0
    kind: str = "keyword"  # keyword, table, column, command, query, mode


@dataclass
class CommandSpec:
    """What completion needs to know of a dot command."""

    name: str
    arg_kind: str = ""  # query, mode, table, onoff, file or ""


def suggest(text_before_cursor: str, tables: dict[str, list[str]], history_columns: list[str],
            saved_queries: Sequence[str], *, text_after_cursor: str = "",
            commands: Sequence[CommandSpec] = ()) -> list[Suggestion]:
    """The completions for the text left of the cursor, best first."""
    if text_before_cursor.lstrip().startswith("."):
        return _suggest_command(text_before_cursor.lstrip(), tables, saved_queries, commands)
    word = _WORD_BEFORE.search(text_before_cursor).group()
    head = text_before_cursor[: len(text_before_cursor) - len(word)]
    statement = head.rsplit(";", 1)[-1] + word + text_after_cursor.split(";", 1)[0]
    aliases = tables_in(statement)
    if head.endswith("."):
        qualifier = _WORD_BEFORE.search(head[:-1]).group().lower()
        return _matches(word, _columns_of([aliases.get(qualifier, qualifier)], tables,
                                          history_columns), "column")
    context = _context(_tokens(head.rsplit(";", 1)[-1]))
    if context == "table":
        return _matches(word, [HISTORY, *tables], "table")
    if context == "column":
        columns = _columns_of(list(dict.fromkeys(aliases.values())), tables, history_columns)
        return _matches(word, columns, "column")
    return _matches(word, _cased(KEYWORDS, word), "keyword")


def tables_in(statement: str) -> dict[str, str]:
    """Alias (lower-cased) -> table for every table named after FROM/JOIN (and commas there)."""
    tokens, found = _tokens(statement), {}
    clause = ""
    for i, token in enumerate(tokens):
        upper = token.upper()
        if upper in _CLAUSES:
            clause = upper
        if clause not in _TABLE_CLAUSES or upper not in (*_TABLE_CLAUSES, ","):
            continue
        name = tokens[i + 1] if i + 1 < len(tokens) else ""
        if not _is_name(name):
            continue
        table = _unquote(name)
        found[table.lower()] = table
        alias = _alias_after(tokens, i + 2)
        if alias:
            found[alias.lower()] = table
    return found


def _alias_after(tokens: list[str], i: int) -> str | None:
    if i < len(tokens) and tokens[i].upper() == "AS":
        i += 1
    if i < len(tokens) and _is_name(tokens[i]) and tokens[i].upper() not in _NOT_ALIAS:
        return _unquote(tokens[i])
    return None


def _context(tokens: list[str]) -> str:
    """`table`, `column` or `keyword`: what the next word of this statement should be."""
    if not tokens:
        return "keyword"
    last = tokens[-1].upper()
    clause = next((t.upper() for t in reversed(tokens) if t.upper() in _CLAUSES), "")
    if last in _TABLE_CLAUSES or (last == "," and clause in _TABLE_CLAUSES):
        return "table"
    if last in _COLUMN_AFTER or (last == "," and clause in _COLUMN_CLAUSES):
        return "column"
    if not _is_name(last) and last not in (")",) and not last[0].isdigit() and last[0] != "'":
        return "column"  # an operator or an opening parenthesis
    return "keyword"


def _suggest_command(text: str, tables: dict[str, list[str]], saved_queries: Sequence[str],
                     commands: Sequence[CommandSpec]) -> list[Suggestion]:
    name, sep, rest = text.partition(" ")
    if not sep:
        return _matches(name, [c.name for c in commands], "command")
    spec = next((c for c in commands if c.name == name), None)
    args = rest.split(" ")
    if spec is None or len(args) > 1:
        return []
    options = {"query": list(saved_queries), "mode": list(MODES), "onoff": ["on", "off"],
               "replay": ["auto", "ask", "off"],
               "table": [HISTORY, *tables]}.get(spec.arg_kind, [])
    return _matches(args[0], options, spec.arg_kind)


def _columns_of(names: Iterable[str], tables: dict[str, list[str]],
                history_columns: list[str]) -> list[str]:
    known = {HISTORY: history_columns, **{t.lower(): cols for t, cols in tables.items()}}
    picked = [known[n.lower()] for n in names if n.lower() in known]
    if not picked:
        picked = [history_columns, *tables.values()]
    return [_quoted(c) for c in dict.fromkeys(c for cols in picked for c in cols)]


def _matches(word: str, options: Iterable[str], kind: str) -> list[Suggestion]:
    """Prefix matches first, then substring matches, both case-insensitive, in given order."""
    low = word.lower()
    options = list(dict.fromkeys(options))
    prefix = [o for o in options if o.lower().lstrip('"').startswith(low)]
    inner = [o for o in options if low and low in o.lower() and o not in prefix]
    return [Suggestion(o, -len(word), kind) for o in prefix + inner]


def _cased(words: Iterable[str], typed: str) -> list[str]:
    lower = typed.islower()
    return [w.lower() if lower else w for w in words]


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text) if not t.startswith("'")] if text else []


def _is_name(token: str) -> bool:
    return bool(_SIMPLE_NAME.fullmatch(token)) or (token.startswith('"') and len(token) > 1)


def _unquote(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


def _quoted(column: str) -> str:
    if _SIMPLE_NAME.fullmatch(column):
        return column
    return '"' + column.replace('"', '""') + '"'


Catalog = tuple[dict[str, list[str]], list[str], list[str]]


class SqlCompleter(Completer):
    """prompt_toolkit adapter over `suggest`; `catalog()` gives tables, history columns, queries."""

    def __init__(self, catalog: Callable[[], Catalog], commands: Sequence[CommandSpec]) -> None:
        self.catalog = catalog
        self.commands = list(commands)
        self._paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        before = document.text_before_cursor
        if self._wants_path(before):
            arg = before.lstrip().partition(" ")[2]
            yield from self._paths.get_completions(Document(arg, len(arg)), complete_event)
            return
        tables, history_columns, queries = self.catalog()
        for s in suggest(before, tables, history_columns, queries,
                         text_after_cursor=document.text_after_cursor, commands=self.commands):
            yield Completion(s.text, start_position=s.start, display_meta=s.kind)

    def _wants_path(self, before: str) -> bool:
        name, sep, _ = before.lstrip().partition(" ")
        spec = next((c for c in self.commands if c.name == name), None)
        return bool(sep) and spec is not None and spec.arg_kind == "file"
