"""Saved queries: `.sql` files with a `-- name:` / `-- description:` header and `:param`s.

    -- name: runs_above_lr
    -- description: Final accuracy of the runs trained with a learning rate above :lr
    SELECT runid, lr, max(accuracy) FROM history WHERE lr > :lr GROUP BY ALL

Looked up in FLORSQL_QUERIES (a directory), then the project's own `queries/`, then the
queries shipped with florsql. A file's name without `.sql` is used when it has no `-- name:`.
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "queries"
MAX_QUERY_BYTES = 1024 * 1024  # a saved query is text someone wrote, not data
_HEADER = re.compile(r"^\s*--\s*(name|description)\s*:\s*(.*?)\s*$", re.IGNORECASE)


class SavedQueryError(ValueError):
    """A saved query is missing, malformed, or called with the wrong parameters."""


@dataclass
class SavedQuery:
    name: str
    description: str
    sql: str
    path: Path
    params: list[str] = field(default_factory=list)

    def bind(self, values: dict[str, str]) -> tuple[str, dict[str, object]]:
        """DuckDB SQL with `$name` placeholders, and the parameter values to bind."""
        missing = [p for p in self.params if p not in values]
        unknown = sorted(set(values) - set(self.params))
        if missing or unknown:
            wanted = " ".join(f"--param {p}=..." for p in self.params) or "no parameters"
            problem = (f"missing {', '.join(missing)}" if missing
                       else f"unknown {', '.join(unknown)}")
            raise SavedQueryError(f"query {self.name!r}: {problem}; it takes {wanted}")
        tree = sqlglot.parse(self.sql, read="duckdb")
        sql = ";\n".join(t.sql(dialect="duckdb") for t in tree if t is not None)
        return sql, {k: parse_value(v) for k, v in values.items()}


def query_dirs(project_root: Path | None) -> list[Path]:
    dirs = []
    if os.environ.get("FLORSQL_QUERIES"):
        dirs.append(Path(os.environ["FLORSQL_QUERIES"]))
    if project_root is not None:
        dirs.append(project_root / "queries")
    dirs.append(SHIPPED_DIR)
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


class SavedQueryWarning(UserWarning):
    """A saved query file was skipped: the others stay usable."""


def list_queries(project_root: Path | None = None, *, warn: bool = True) -> list[SavedQuery]:
    """Every saved query, the first one of each name winning (project before shipped).

    A file that cannot be read or parsed is skipped with one SavedQueryWarning, so one bad
    file (a colleague's, from a pull) never hides the other queries.
    """
    found: dict[str, SavedQuery] = {}
    for directory in query_dirs(project_root):
        for path in sorted(directory.glob("*.sql")):
            try:
                query = load_query_file(path)
            except SavedQueryError as e:
                if warn:
                    warnings.warn(f"skipped saved query {e}", SavedQueryWarning, stacklevel=2)
                continue
            found.setdefault(query.name, query)
    return sorted(found.values(), key=lambda q: q.name)


def find_query(name: str, project_root: Path | None = None) -> SavedQuery:
    queries = {q.name: q for q in list_queries(project_root, warn=False)}
    if name in queries:
        return queries[name]
    for directory in query_dirs(project_root):  # the one asked for may be the broken one
        if (directory / f"{name}.sql").is_file():
            load_query_file(directory / f"{name}.sql")  # raises the reason
    import difflib

    close = difflib.get_close_matches(name, list(queries), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise SavedQueryError(f"no saved query named {name!r}{hint} (list them with "
                          "`florsql queries`, or .queries in the shell)")


def load_query_file(path: Path) -> SavedQuery:
    try:
        if path.stat().st_size > MAX_QUERY_BYTES:
            raise SavedQueryError(f"{path}: larger than {MAX_QUERY_BYTES // 1024} KiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise SavedQueryError(f"{path}: cannot read it ({reason})") from None
    header = {}
    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            header[match.group(1).lower()] = match.group(2)
    try:
        trees = [t for t in sqlglot.parse(text, read="duckdb") if t is not None]
    except SqlglotError as e:
        raise SavedQueryError(f"{path}: not valid SQL ({str(e).splitlines()[0]})") from None
    params = list(dict.fromkeys(p.name for t in trees for p in t.find_all(exp.Placeholder)
                                if p.name))
    return SavedQuery(name=header.get("name") or path.stem,
                      description=header.get("description", ""),
                      sql=text, path=path, params=params)


def parse_value(raw: str) -> object:
    """A command-line parameter value: a Python literal (number, True, None...) or the string."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    return value if isinstance(value, (int, float, str, bool)) or value is None else raw


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`["lr=0.01", "runid=base"]` -> {"lr": "0.01", "runid": "base"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SavedQueryError(f"parameter {item!r} is not NAME=VALUE; write e.g. lr=0.01")
        out[key.strip()] = value
    return out
