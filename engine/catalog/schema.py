"""The catalog's schema: the tables every process's in-memory mirror (mirror.py) holds.

Large tables (`_logs`, `_contexts`, `_iterations`) carry `_seg`, the published segment their
rows came from (rows ingested here carry the id their publish will have: mirror.begin_ingest);
the user sees them through the views `logs`, `contexts` and `iterations`, without it.
`_logs` is itself a view: the rows DuckDB holds (`_log_rows`) and, while there are any, those
an ingest here just added, still Arrow tables (`_log_tail`, registered on each connection over
a stub; tail.py), of the pieces `_tail_pieces` lists; a piece leaves that list in the
transaction that moves its rows into `_log_rows`, so every statement sees each record once.
`_contexts` holds only the contexts no record of their own stands for: the run level, those
deeper than 3, and those without records at their depth; `_all_contexts` adds the others from
the record flagged `defines_ctx` (one per context), so a step context costs no second row.
`_dropped` lists runs an ingest here removed, which the next publish turns into tombstones
(store.py). `jobs` and `job_attempts` mirror the job queue (SIDE_TABLES).
"""

from __future__ import annotations

SCHEMA_VERSION = "9"

# The columns of `_logs`, in the order of its segments' and its tail's tables.
LOG_COLUMNS = (
    ("tstamp", "TIMESTAMP"), ("ctx_id", "BIGINT"), ("depth", "INTEGER"),
    ("value_name", "VARCHAR"), ("value_type", "VARCHAR"), ("value_num", "DOUBLE"),
    ("value_text", "VARCHAR"), ("kind", "VARCHAR"), ("source", "VARCHAR"), ("ord", "BIGINT"),
    *((f"{column}_{k}", sql_type) for k in (1, 2, 3)
      for column, sql_type in (("loop", "VARCHAR"), ("iter", "BIGINT"), ("ctx", "BIGINT"))),
    ("defines_ctx", "BOOLEAN"), ("_seg", "INTEGER"))
_LOG_NAMES = ", ".join(n for n, _ in LOG_COLUMNS)
# `_logs` while the tail holds no live piece (the union costs ~1 ms of a 12 ms query), and while
# it does; each is set in the transaction that makes it true (tail.py)
LOGS_VIEW = f"CREATE OR REPLACE VIEW _logs AS SELECT {_LOG_NAMES} FROM _log_rows"
LOGS_VIEW_WITH_TAIL = (f"{LOGS_VIEW} UNION ALL SELECT {_LOG_NAMES} FROM _log_tail "
                       "WHERE _piece IN (SELECT piece FROM _tail_pieces)")
# Where the rows of each segmented table are written (`_logs` is a view, see above).
STORED = {"_logs": "_log_rows", "_contexts": "_contexts", "_iterations": "_iterations"}
# How many rows of each segmented table the mirror holds for segment {seg}: the tail's live
# pieces are counted from `_tail_pieces`, not scanned (~15 ms per 1M records)
SEGMENT_ROWS = {
    "_logs": "(SELECT count(*) FROM _log_rows WHERE _seg = {seg}) + "
             "(SELECT coalesce(sum(rows), 0) FROM _tail_pieces WHERE seg = {seg})",
    "_contexts": "(SELECT count(*) FROM _contexts WHERE _seg = {seg})",
    "_iterations": "(SELECT count(*) FROM _iterations WHERE _seg = {seg})"}

# Documented in docs/catalog.md; keep the two in step.
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    projid VARCHAR, runid VARCHAR, tstamp TIMESTAMP PRIMARY KEY, vid VARCHAR, filename VARCHAR,
    argv VARCHAR[], status VARCHAR, start_time TIMESTAMPTZ, end_time TIMESTAMPTZ,
    error VARCHAR, pid BIGINT, hostname VARCHAR, run_dir VARCHAR
);
CREATE TABLE IF NOT EXISTS _log_rows ({log_columns});
CREATE TABLE IF NOT EXISTS _log_tail ({log_columns}, _piece INTEGER);
CREATE TABLE IF NOT EXISTS _tail_pieces (piece INTEGER, tstamp TIMESTAMP, seg INTEGER, rows BIGINT);
{logs_view};
CREATE OR REPLACE VIEW logs AS
SELECT tstamp, ctx_id, depth, value_name, value_type, value_num, value_text, kind, source, ord
FROM _logs;
CREATE TABLE IF NOT EXISTS _contexts (
    tstamp TIMESTAMP, ctx_id BIGINT, depth INTEGER, path VARCHAR, parent_id BIGINT,
    loop_name VARCHAR, iteration BIGINT,
    loop_1 VARCHAR, iter_1 BIGINT, ctx_1 BIGINT, loop_2 VARCHAR, iter_2 BIGINT, ctx_2 BIGINT,
    loop_3 VARCHAR, iter_3 BIGINT, ctx_3 BIGINT, _seg INTEGER
);
-- A context at depth 1..3 with records of its own is not stored in _contexts: its first record
-- stands for it (`defines_ctx`), and its columns are that record's ancestor columns.
-- Paths to depth 3 are derived from the ancestor columns where the ingest left them NULL.
CREATE OR REPLACE VIEW _all_contexts AS
SELECT tstamp, ctx_id, depth,
       coalesce(path, concat_ws('/', loop_1 || '=' || iter_1, loop_2 || '=' || iter_2,
                                loop_3 || '=' || iter_3)) AS path,
       parent_id, loop_name, iteration, loop_1, iter_1, ctx_1, loop_2, iter_2, ctx_2,
       loop_3, iter_3, ctx_3
FROM _contexts
UNION ALL
SELECT tstamp, ctx_id, depth,
       concat_ws('/', loop_1 || '=' || iter_1, loop_2 || '=' || iter_2,
                 loop_3 || '=' || iter_3) AS path,
       CASE depth WHEN 1 THEN 0 WHEN 2 THEN ctx_1 ELSE ctx_2 END AS parent_id,
       CASE depth WHEN 1 THEN loop_1 WHEN 2 THEN loop_2 ELSE loop_3 END AS loop_name,
       CASE depth WHEN 1 THEN iter_1 WHEN 2 THEN iter_2 ELSE iter_3 END AS iteration,
       loop_1, iter_1, ctx_1, loop_2, iter_2, ctx_2, loop_3, iter_3, ctx_3
FROM _logs WHERE defines_ctx;
CREATE OR REPLACE VIEW contexts AS
SELECT tstamp, ctx_id, depth, path, parent_id, loop_name, iteration FROM _all_contexts;
CREATE TABLE IF NOT EXISTS checkpoints (
    tstamp TIMESTAMP, loop_name VARCHAR, iteration BIGINT, path VARCHAR, bytes BIGINT,
    seconds DOUBLE, blocked_seconds DOUBLE, created TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS _iterations (
    tstamp TIMESTAMP, loop_name VARCHAR, iteration BIGINT, seconds DOUBLE, source VARCHAR,
    _seg INTEGER
);
CREATE OR REPLACE VIEW iterations AS
SELECT tstamp, loop_name, iteration, seconds, source FROM _iterations;
CREATE TABLE IF NOT EXISTS _dropped (tstamp TIMESTAMP);
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
CREATE TABLE IF NOT EXISTS _name_stats (
    tstamp TIMESTAMP, name_key VARCHAR, value_name VARCHAR, depth INTEGER, kind VARCHAR,
    records BIGINT, contexts BIGINT, types VARCHAR[], over_int64 BIGINT, over_int128 BIGINT
);
CREATE OR REPLACE VIEW _name_depths AS
SELECT name_key, value_name, depth, kind, sum(records)::BIGINT AS records,
       sum(contexts)::BIGINT AS contexts, count(DISTINCT tstamp) AS runs,
       list_distinct(flatten(list(types))) AS types, sum(over_int64)::BIGINT AS over_int64,
       sum(over_int128)::BIGINT AS over_int128
FROM _name_stats GROUP BY ALL;
CREATE TABLE IF NOT EXISTS _loop_stats (tstamp TIMESTAMP, loop_name VARCHAR, depth INTEGER);
CREATE OR REPLACE VIEW _loop_dims AS SELECT DISTINCT loop_name, depth FROM _loop_stats;
CREATE OR REPLACE VIEW loops AS
WITH RECURSIVE deep AS (  -- loops 1..3 are columns of each context; deeper ones are walked
    SELECT tstamp, ctx_id, depth AS anc_depth, loop_name, iteration, parent_id
    FROM _contexts WHERE depth > 3
    UNION ALL
    SELECT d.tstamp, d.ctx_id, c.depth, c.loop_name, c.iteration, c.parent_id FROM deep AS d
    JOIN _contexts AS c ON c.tstamp = d.tstamp AND c.ctx_id = d.parent_id WHERE c.depth > 3
)
SELECT tstamp, ctx_id, 0 AS depth, loop_1 AS loop_name, iter_1 AS iteration
FROM _all_contexts WHERE depth >= 1
UNION ALL
SELECT tstamp, ctx_id, 1, loop_2, iter_2 FROM _all_contexts WHERE depth >= 2
UNION ALL
SELECT tstamp, ctx_id, 2, loop_3, iter_3 FROM _all_contexts WHERE depth >= 3
UNION ALL
SELECT tstamp, ctx_id, anc_depth - 1, loop_name, iteration FROM deep;
CREATE TABLE IF NOT EXISTS jobs (
    id BIGINT, kind VARCHAR, batch VARCHAR, script VARCHAR, args VARCHAR, vid VARCHAR,
    status VARCHAR, done INTEGER, attempts INTEGER, worker VARCHAR, host VARCHAR, pid BIGINT,
    queued TIMESTAMPTZ, started TIMESTAMPTZ, ended TIMESTAMPTZ, exit_code INTEGER,
    tstamp TIMESTAMP, error VARCHAR, path VARCHAR
);
CREATE TABLE IF NOT EXISTS job_attempts (
    job_id BIGINT, attempt INTEGER, status VARCHAR, worker VARCHAR, host VARCHAR, pid BIGINT,
    started TIMESTAMPTZ, ended TIMESTAMPTZ, exit_code INTEGER, tstamp TIMESTAMP, error VARCHAR
);
CREATE OR REPLACE VIEW names AS
SELECT value_name AS name, string_agg(DISTINCT kind, ',' ORDER BY kind) AS kind,
       max(depth) AS depth, sum(records) AS records, max(runs) AS runs,
       list_sort(flatten(list(types))) AS value_types
FROM _name_depths GROUP BY value_name;
""".replace("{log_columns}", ", ".join(f"{n} {t}" for n, t in LOG_COLUMNS)).replace(
    "{logs_view}", LOGS_VIEW)

USER_TABLES = ("runs", "logs", "contexts", "loops", "checkpoints", "iterations", "replays",
               "names", "jobs", "job_attempts")
# Filled from the job queue (engine/jobs/status.py) through CatalogSession.add_side_tables: the
# queue's rows change state every second, so they are read from it, never published here.
SIDE_TABLES = ("jobs", "job_attempts")
