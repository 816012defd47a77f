"""The DuckDB catalog: schema, and opening it safely.

The catalog is derived entirely from the record files under the flor home, so an unreadable
catalog is moved aside and rebuilt. Only one process may write a DuckDB file at a time: other
processes wait for it (FLOR_CATALOG_TIMEOUT seconds, default 30) instead of failing.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import duckdb

from ..errors import CatalogLockedError, CatalogNotWritableError, IngestWarning

SCHEMA_VERSION = "7"

# Documented in docs/catalog.md; keep the two in step.
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    projid VARCHAR, runid VARCHAR, tstamp TIMESTAMP PRIMARY KEY, vid VARCHAR, filename VARCHAR,
    argv VARCHAR[], status VARCHAR, start_time TIMESTAMPTZ, end_time TIMESTAMPTZ,
    error VARCHAR, pid BIGINT, hostname VARCHAR, run_dir VARCHAR
);
CREATE TABLE IF NOT EXISTS logs (
    tstamp TIMESTAMP, ctx_id INTEGER, depth INTEGER, value_name VARCHAR, value_type VARCHAR,
    value_num DOUBLE, value_text VARCHAR, kind VARCHAR, source VARCHAR, ord BIGINT
);
CREATE TABLE IF NOT EXISTS contexts (
    tstamp TIMESTAMP, ctx_id INTEGER, depth INTEGER, path VARCHAR, parent_id INTEGER,
    loop_name VARCHAR, iteration BIGINT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    tstamp TIMESTAMP, loop_name VARCHAR, iteration BIGINT, path VARCHAR, bytes BIGINT,
    seconds DOUBLE, blocked_seconds DOUBLE, created TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS iterations (
    tstamp TIMESTAMP, loop_name VARCHAR, iteration BIGINT, seconds DOUBLE, source VARCHAR
);
CREATE TABLE IF NOT EXISTS replays (
    tstamp TIMESTAMP, replay_id VARCHAR, status VARCHAR, end_time TIMESTAMPTZ, error VARCHAR,
    names VARCHAR[], loop_name VARCHAR, start_iter BIGINT, stop_iter BIGINT
);
CREATE TABLE IF NOT EXISTS _ingested (
    path VARCHAR PRIMARY KEY, dir VARCHAR, run_dir VARCHAR, kind VARCHAR, size BIGINT,
    mtime BIGINT, status VARCHAR, message VARCHAR
);
CREATE TABLE IF NOT EXISTS _sources (
    dir VARCHAR PRIMARY KEY, run_dir VARCHAR, tstamp TIMESTAMP, sealed BOOLEAN,
    signature VARCHAR
);
CREATE TABLE IF NOT EXISTS _meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS _name_depths (
    name_key VARCHAR, value_name VARCHAR, depth INTEGER, kind VARCHAR, records BIGINT,
    contexts BIGINT, runs BIGINT, types VARCHAR[], over_int64 BIGINT, over_int128 BIGINT
);
CREATE TABLE IF NOT EXISTS _loop_dims (loop_name VARCHAR, depth INTEGER);
CREATE OR REPLACE VIEW loops AS
WITH RECURSIVE chain AS (
    SELECT tstamp, ctx_id, ctx_id AS anc_id FROM contexts WHERE depth > 0
    UNION ALL
    SELECT ch.tstamp, ch.ctx_id, c.parent_id FROM chain AS ch
    JOIN contexts AS c ON c.tstamp = ch.tstamp AND c.ctx_id = ch.anc_id WHERE c.depth > 1
)
SELECT ch.tstamp, ch.ctx_id, a.depth - 1 AS depth, a.loop_name, a.iteration
FROM chain AS ch JOIN contexts AS a ON a.tstamp = ch.tstamp AND a.ctx_id = ch.anc_id;
CREATE OR REPLACE VIEW names AS
SELECT value_name AS name, string_agg(DISTINCT kind, ',' ORDER BY kind) AS kind,
       max(depth) AS depth, sum(records) AS records, max(runs) AS runs,
       list_sort(flatten(list(types))) AS value_types
FROM _name_depths GROUP BY value_name;
"""

USER_TABLES = ("runs", "logs", "contexts", "loops", "checkpoints", "iterations", "replays",
               "names")


def open_catalog(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the catalog at `path`, waiting while another process holds it."""
    con = _connect_waiting(path, read_only)
    if not read_only:
        _ensure_schema(con)
    return con


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables; a catalog of another schema version is dropped and re-ingested."""
    try:
        row = con.execute("SELECT value FROM _meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:
        row = None
    if row is not None and row[0] == SCHEMA_VERSION:
        return  # the common case: no DDL, no write on open
    if row is not None:
        tables = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()
        for (name,) in tables:
            con.execute(f'DROP TABLE "{name}"')
    con.execute(SCHEMA)
    con.execute("INSERT OR IGNORE INTO _meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])


def _connect_waiting(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    if not read_only:
        _check_writable(path)
    timeout = float(os.environ.get("FLOR_CATALOG_TIMEOUT", "30"))
    start, delay = time.monotonic(), 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                return _rebuild_unreadable(path, exc, read_only)
            waited = time.monotonic() - start
            if waited > timeout:
                raise CatalogLockedError(str(path), waited) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        except duckdb.Error as exc:
            return _rebuild_unreadable(path, exc, read_only)


def _check_writable(path: Path) -> None:
    """DuckDB needs to write the file and a WAL beside it: say so before it fails obscurely."""
    for target in (path.parent, path):
        if target.exists() and not os.access(target, os.W_OK):
            raise CatalogNotWritableError(str(path), _why_not_writable(target))


def _why_not_writable(target: Path) -> str:
    try:
        read_only_fs = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    return "read-only file system" if read_only_fs else f"no write permission on {target.name}"


def _rebuild_unreadable(path: Path, exc: Exception, read_only: bool) -> duckdb.DuckDBPyConnection:
    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    try:
        os.replace(path, aside)
        wal = path.with_name(path.name + ".wal")
        if wal.exists():
            os.replace(wal, aside.with_name(aside.name + ".wal"))
    except OSError as err:  # the catalog cannot be moved aside: it is not ours to rebuild
        reason = str(exc).splitlines()[0][:120] if path.exists() else err.strerror
        raise CatalogNotWritableError(str(path), reason) from None
    warnings.warn(
        f"catalog {path} was unreadable ({str(exc).splitlines()[0][:120]}); moved it to "
        f"{aside.name} and rebuilding it from the record files",
        IngestWarning,
        stacklevel=3,
    )
    return duckdb.connect(str(path), read_only=read_only)
