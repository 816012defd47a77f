"""A project's open catalog: ingest on demand, the current `history` schema, query preparation.

The DB-API connection, the shell and `flor.dataframe` all go through this one object, so every
surface sees the same tables, the same `history` and the same errors. Each session queries its
own in-memory mirror of the published catalog (catalog/mirror.py): any number of sessions, in
any number of processes, read at once without waiting for each other.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, TypeVar

import duckdb
import pyarrow as pa

from flor import protocol

from ..catalog.ingest import IngestReport, ingest_needed, ingest_project
from ..catalog.mirror import Mirror, open_mirror
from ..catalog.names import HistorySchema, load_history_schema, refresh_names
from ..catalog.sandbox import unordered_inserts
from ..catalog.schema import SCHEMA_VERSION, SIDE_TABLES
from ..code.script_names import script_names, scripts_stamp
from ..project import Project, locate_project
from .history import build_history_sql
from .rewrite import Rewrite, rewrite_query

T = TypeVar("T")
_HIDDEN_PREFIX = "_"
_PREPARED_CACHE = 128  # rewritten queries kept per session
_RACY_NS = 2_000_000_000  # a directory changed this recently may change again unseen
_TABLES_BY_VERSION: dict[str, dict[str, dict[str, str]]] = {}


class SideTables(Protocol):
    """Tables filled from outside the catalog (the job queue)."""

    def stamp(self) -> object:
        """Changes whenever the tables may have."""

    def tables(self) -> dict[str, list[dict]]:
        """Table name -> its rows, each a dict by column name."""


class CatalogSession:
    """One open catalog of one project.

    Its in-memory DuckDB instance is locked down (sandbox.py) before any statement: no file
    access, no extensions, a memory limit (`memory_limit`, else FLORSQL_MEMORY_LIMIT, else
    half the RAM).
    """

    def __init__(self, path: str | os.PathLike = ".", memory_limit: str | None = None) -> None:
        self.project: Project = locate_project(path)
        self._lock = threading.RLock()  # one ingest at a time on this session's mirror
        self.mirror: Mirror = open_mirror(self.project.home, memory_limit)
        self.con: duckdb.DuckDBPyConnection = self.mirror.con
        try:  # what is published, as a catalog file held it before: planning reads it at once
            self.mirror.sync()
        except BaseException:
            self.mirror.close()
            raise
        # Temporary files of crashed writers (kill -9) go with each opening, off this thread.
        from flor.housekeeping import clean_in_background

        clean_in_background(self.project.home)
        self._schema: HistorySchema | None = None
        self._generation: tuple | None = None
        self._filenames: tuple[tuple | None, list[str]] | None = None
        self._quiet_stamp: tuple | None = None  # see refresh()
        self._derived: dict = {}
        self._data_version: tuple | None = None
        self._derived_state: tuple | None = None
        self._prepared: OrderedDict[tuple, Rewrite] = OrderedDict()
        self._side: list[tuple[SideTables, list]] = []  # [provider, [its last stamp]]

    def add_side_tables(self, provider: SideTables) -> None:
        """Keep some of SIDE_TABLES filled from `provider` (the job queue), reloaded at each
        refresh() whose stamp changed."""
        self._side.append((provider, [None]))

    def _sync_side_tables(self) -> None:
        for provider, last in self._side:
            stamp = provider.stamp()
            if stamp == last[0]:
                continue
            tables = provider.tables()
            with self._lock:
                self.con.execute("BEGIN")
                try:
                    for name, rows in tables.items():
                        assert name in SIDE_TABLES, name
                        self.con.execute(f"DELETE FROM {name}")
                        if rows:
                            self.con.register("_side_rows", pa.Table.from_pylist(rows))
                            self.con.execute(f"INSERT INTO {name} BY NAME "
                                             "SELECT * FROM _side_rows")
                            self.con.unregister("_side_rows")
                    self.con.execute("COMMIT")
                except BaseException:
                    self.con.execute("ROLLBACK")
                    raise
            last[0] = stamp

    def refresh(self) -> IngestReport:
        """Load what other processes published, then ingest new record parts and publish them.

        Reading takes no lock: only a process that finds record files newer than the published
        catalog takes the ingest lock (catalog/store.py), loads what was published meanwhile,
        and ingests what is still new. When every known run has ended and neither `runs/` nor
        `replays-staging/` changed since the last full check, nothing can be new: the scan of
        every run directory is skipped (a change within the last seconds is never trusted, as
        mtimes are coarse).
        """
        self._sync_side_tables()
        stamp = self._files_stamp()
        if stamp is not None and stamp == self._quiet_stamp and self.mirror.current():
            with self._lock:
                self.mirror.reap()
            return IngestReport()
        report = IngestReport()
        with self._lock, unordered_inserts(self.con):
            self.mirror.sync()
            if ingest_needed(self.con, self.project):
                with self.mirror.store.ingest_lock() as can_publish:
                    self.mirror.sync()  # what others published while this one waited
                    pending = self.mirror.begin_ingest()
                    out = self.mirror.open_output(can_publish)
                    try:
                        report = ingest_project(self.con, self.project, self.mirror.added, out)
                        refresh_names(self.con, pending)
                    except BaseException:
                        self.mirror.abandon(out)
                        raise
                    self.mirror.publish(can_publish, out)
                    pa.default_memory_pool().release_unused()  # the batches' Arrow buffers
            self.mirror.settle()
            generation = self.con.execute(
                "SELECT value FROM _meta WHERE key = 'names_generation'").fetchone()
            self._data_version = self.con.execute(
                "SELECT value FROM _meta WHERE key = 'data_version'").fetchone()
            unsealed = self.con.execute(
                "SELECT count(*) FROM _sources WHERE NOT sealed").fetchone()[0]
        if generation != self._generation:  # this or another process saw new names
            self._schema, self._generation = None, generation
        self._quiet_stamp = stamp if not unsealed else None
        return report

    def derived(self, key: object, compute: Callable[[], T]) -> T:
        """`compute()`, kept until the catalog changes (new records, runs ending, replays)."""
        state = self._data_version  # read by the last full refresh(); see there
        if state is None:
            state = self.con.execute(
                "SELECT value FROM _meta WHERE key = 'data_version'").fetchone()
        if self._derived_state != state:
            self._derived, self._derived_state = {}, state
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def _files_stamp(self) -> tuple | None:
        """The mtimes that change when a run or a replay appears; None while too recent."""
        stamps = []
        for path in (self.project.runs_dir, self.project.home / protocol.REPLAYS_STAGING_DIR):
            try:
                stamps.append(path.stat().st_mtime_ns)
            except OSError:
                stamps.append(None)
        newest = max((t for t in stamps if t is not None), default=0)
        return None if time.time_ns() - newest < _RACY_NS else tuple(stamps)

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

    def prepare(self, sql: str, params: object = None) -> Rewrite:
        """The SQL to run for `sql`: `history` expanded to the columns it references.

        Names that today's scripts log but no run has yet are columns too (NULL until
        replayed); `params` are only read to push a WHERE clause down (see analyze.py).
        """
        names = self.script_names()
        key = (sql, self._generation, tuple(sorted(names.items())), repr(params))
        if key in self._prepared:  # as sqlite3 caches statements: a repeated query is free
            self._prepared.move_to_end(key)
            return self._prepared[key]
        rewrite = rewrite_query(sql, self.history_schema, self.tables, names, params)
        self._prepared[key] = rewrite
        if len(self._prepared) > _PREPARED_CACHE:
            self._prepared.popitem(last=False)
        return rewrite

    def script_names(self) -> dict[str, str]:
        """Lower-cased name -> spelling, for every name the recorded runs' scripts log today."""
        names: dict[str, str] = {}
        for per_file in script_names(self.project.root, self._script_files()).values():
            names.update({k: v.name for k, v in per_file.items()})
        return names

    def scripts_state(self) -> tuple:
        """Changes when today's version of any recorded run's script is edited."""
        return scripts_stamp(self.project.root, self._script_files())

    def _script_files(self) -> list[str]:
        if self._filenames is None or self._filenames[0] != self._generation:
            rows = self.con.execute("SELECT DISTINCT filename FROM runs").fetchall()
            self._filenames = (self._generation, sorted(f for (f,) in rows if f))
        return self._filenames[1]

    def full_history_sql(self) -> str:
        """`history` with every column, for the temp-view fallback and `DESCRIBE history`."""
        return build_history_sql(self.history_schema, None)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new DuckDB connection to this session's catalog (one per DB-API statement)."""
        return self.mirror.cursor()

    def close(self) -> None:
        self.mirror.close()
