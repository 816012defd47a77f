"""A project's open catalog: ingest on demand, the current `history` schema, query preparation.

The DB-API connection, the shell and `flor.dataframe` all go through this one object, so every
surface sees the same tables, the same `history` and the same errors.
"""

from __future__ import annotations

import os
import threading

import duckdb

from .catalog import SCHEMA_VERSION, open_catalog
from .history import build_history_sql
from .ingest import IngestReport, ingest_project
from .names import HistorySchema, load_history_schema, names_are_stale, refresh_names
from .project import Project, locate_project
from .rewrite import Rewrite, rewrite_query

_HIDDEN_PREFIX = "_"
# Connections of one process share DuckDB's database instance: serialise their writes.
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()
_TABLES_BY_VERSION: dict[str, dict[str, dict[str, str]]] = {}


def _write_lock(path: os.PathLike) -> threading.Lock:
    with _GUARD:
        return _WRITE_LOCKS.setdefault(str(path), threading.Lock())


class CatalogSession:
    """One open catalog of one project."""

    def __init__(self, path: str | os.PathLike = ".") -> None:
        self.project: Project = locate_project(path)
        self._lock = _write_lock(self.project.catalog_path)
        with self._lock:
            self.con: duckdb.DuckDBPyConnection = open_catalog(self.project.catalog_path)
        self._schema: HistorySchema | None = None
        self._generation: tuple | None = None

    def refresh(self) -> IngestReport:
        """Ingest new record parts; recompute the name statistics if any records arrived."""
        with self._lock:
            report = ingest_project(self.con, self.project)
            if report.records or names_are_stale(self.con):
                refresh_names(self.con)
            generation = self.con.execute(
                "SELECT value FROM _meta WHERE key = 'names_generation'").fetchone()
        if generation != self._generation:  # this or another connection saw new names
            self._schema, self._generation = None, generation
        return report

    @property
    def history_schema(self) -> HistorySchema:
        if self._schema is None:
            self._schema = load_history_schema(self.con)
        return self._schema

    @property
    def tables(self) -> dict[str, dict[str, str]]:
        """User-visible catalog tables -> column -> type (internal `_` tables left out)."""
        if SCHEMA_VERSION not in _TABLES_BY_VERSION:  # fixed per schema: read once a process
            rows = self.con.execute(
                "SELECT table_name, column_name, data_type FROM duckdb_columns() "
                "WHERE schema_name = 'main' AND NOT internal "
                "AND database_name = current_database() ORDER BY table_name, column_index"
            ).fetchall()
            tables: dict[str, dict[str, str]] = {}
            for table, column, kind in rows:
                if not table.startswith(_HIDDEN_PREFIX):
                    tables.setdefault(table, {})[column] = kind
            _TABLES_BY_VERSION[SCHEMA_VERSION] = tables
        return _TABLES_BY_VERSION[SCHEMA_VERSION]

    def prepare(self, sql: str) -> Rewrite:
        """The SQL to run for `sql`: `history` expanded to the columns it references."""
        return rewrite_query(sql, self.history_schema, self.tables)

    def full_history_sql(self) -> str:
        """`history` with every column, for the temp-view fallback and `DESCRIBE history`."""
        return build_history_sql(self.history_schema, None)

    def close(self) -> None:
        self.con.close()
