"""Results held in memory, and written to files by florsql itself (never by SQL).

florsql's SQL cannot write files. A result leaves it through `florsql -c SQL --output FILE`,
the shell's `.export FILE` (the last result, not run again) or `cursor.df()/arrow()/pl()`.
The format comes from `--format`, else from the file's extension.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from .formatting import format_rows

# Extension -> format; parquet keeps column types, the text formats match the screen's.
EXPORT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv",
                  ".json": "json", ".md": "markdown", ".txt": "table"}
FILE_FORMATS = ("parquet", "csv", "tsv", "json", "markdown", "table")


class ExportError(Exception):
    """A result could not be written; the message is one line naming the file and the fix."""


@dataclass
class Result:
    """One statement's rows as an Arrow table, with the column names as the query gave them."""

    columns: list[str]
    table: pa.Table

    @classmethod
    def from_cursor(cls, cursor: Any) -> Result:
        return cls([d[0] for d in cursor.description], cursor.arrow())

    def rows(self) -> list[tuple]:
        """Python values as DuckDB's fetchall() gives them (timedelta, int for HUGEINT, ...)."""
        reader = duckdb.connect(":memory:")
        try:  # Arrow's own to_pylist() turns intervals into MonthDayNano tuples
            return reader.from_arrow(_unique_names(self.table)).fetchall()
        finally:
            reader.close()


def export_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """`fmt` when given, else the one the file's extension names; ExportError otherwise."""
    if fmt is not None:
        if fmt not in FILE_FORMATS:
            raise ExportError(f"cannot write {fmt} files: use one of {', '.join(FILE_FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        known = ", ".join(sorted(EXPORT_FORMATS))
        raise ExportError(f"cannot tell the format of {os.fspath(path)!r} from its extension "
                          f"(known: {known}): add one or pass --format")
    return EXPORT_FORMATS[suffix]


def write_results(results: list[Result], path: str | os.PathLike, fmt: str) -> None:
    """Write `results` to `path` atomically (a temporary file, then a rename).

    Parquet holds one table, so several results are refused before anything is written; the
    text formats hold them one after another, as the screen shows them.
    """
    target = Path(path).expanduser()
    if fmt == "parquet" and len(results) != 1:
        raise ExportError(f"a parquet file holds one result, and the SQL returned {len(results)}"
                          ": export one statement at a time")
    if not target.parent.is_dir():
        raise ExportError(f"cannot write {target}: the directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as e:
        raise ExportError(f"cannot write {target}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            _write(results, fh, fmt)
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ExportError(f"cannot write {target}: {e.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(results: list[Result], fh: Any, fmt: str) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(_unique_names(results[0].table), fh)
        return
    texts = [format_rows(r.columns, r.rows(), fmt) for r in results]
    fh.write(("\n\n".join(texts) + "\n").encode())


def _unique_names(table: pa.Table) -> pa.Table:
    """`SELECT 1 AS a, 2 AS a` is legal SQL; Parquet and DuckDB scans need distinct names."""
    names, seen = [], set()
    for name in table.column_names:
        unique, n = name, 1
        while unique in seen:
            unique, n = f"{name}_{n}", n + 1
        seen.add(unique)
        names.append(unique)
    return table if names == table.column_names else table.rename_columns(names)
