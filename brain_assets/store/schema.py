"""The store's tables and their numbered migrations.

A store records its schema version in ``schema_version`` (one row). Opening a store reads
that row only; when it is behind :data:`SCHEMA_VERSION`, the missing migrations run once, in
order, in one transaction. A store made before versioning has no ``schema_version`` table and
counts as version 0, so migrations 1-3 are written to be idempotent (``IF NOT EXISTS``): such a
store may already hold any of their tables. A later migration is appended to
:data:`MIGRATIONS` and may assume every migration before it has run.
"""

from __future__ import annotations

import threading

import duckdb

BASE_TABLES_SQL = """
CREATE TABLE IF NOT EXISTS datasets (
    dataset VARCHAR PRIMARY KEY,
    media_type VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    dataset VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    filepath VARCHAR NOT NULL,
    width INTEGER,
    height INTEGER,
    size_bytes BIGINT,
    split VARCHAR,
    tags VARCHAR[],
    content_hash VARCHAR,
    pixel_hash VARCHAR,
    batch VARCHAR,
    PRIMARY KEY (dataset, sample_id)
);
CREATE TABLE IF NOT EXISTS label_fields (
    dataset VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    classes VARCHAR[],
    PRIMARY KEY (dataset, field)
);
CREATE TABLE IF NOT EXISTS labels (
    dataset VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    label_id VARCHAR NOT NULL,
    label VARCHAR,
    confidence DOUBLE,
    logits FLOAT[],
    box DOUBLE[],
    PRIMARY KEY (dataset, field, label_id)
);
CREATE TABLE IF NOT EXISTS embedding_sets (
    dataset VARCHAR NOT NULL,
    embeddings_key VARCHAR NOT NULL,
    model VARCHAR,
    model_hash VARCHAR,
    dim INTEGER NOT NULL,
    patches_field VARCHAR,
    source VARCHAR NOT NULL,
    count BIGINT NOT NULL,
    data_version VARCHAR,
    run_id VARCHAR,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (dataset, embeddings_key)
);
CREATE TABLE IF NOT EXISTS embeddings (
    dataset VARCHAR NOT NULL,
    embeddings_key VARCHAR NOT NULL,
    sample_id VARCHAR NOT NULL,
    label_id VARCHAR,
    vector FLOAT[] NOT NULL
);
CREATE TABLE IF NOT EXISTS brain_runs (
    dataset VARCHAR NOT NULL,
    brain_key VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    method VARCHAR,
    config VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    run_id VARCHAR,
    code_version VARCHAR,
    data_version VARCHAR,
    versions VARCHAR,
    upstream VARCHAR,
    sample_ids VARCHAR[],
    label_ids VARCHAR[],
    results_table VARCHAR,
    artifacts VARCHAR,
    PRIMARY KEY (dataset, brain_key)
);
CREATE TABLE IF NOT EXISTS brain_run_history (
    dataset VARCHAR NOT NULL,
    brain_key VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    event VARCHAR NOT NULL,
    event_at TIMESTAMP NOT NULL,
    run_id VARCHAR,
    code_version VARCHAR,
    data_version VARCHAR,
    upstream VARCHAR,
    detail VARCHAR
);
CREATE TABLE IF NOT EXISTS brain_locks (
    dataset VARCHAR NOT NULL,
    brain_key VARCHAR NOT NULL,
    holder VARCHAR NOT NULL,
    pid INTEGER NOT NULL,
    host VARCHAR NOT NULL,
    acquired_at TIMESTAMP NOT NULL,
    PRIMARY KEY (dataset, brain_key)
);
CREATE SCHEMA IF NOT EXISTS results;
"""

SAVED_VIEWS_SQL = """
CREATE TABLE saved_views (
    dataset VARCHAR NOT NULL,
    name VARCHAR NOT NULL,
    n BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    source VARCHAR,
    PRIMARY KEY (dataset, name)
);
INSERT INTO saved_views
SELECT split_part(table_name, '__', 1), split_part(table_name, '__', 2), estimated_size,
       CAST(timezone('UTC', now()) AS TIMESTAMP), NULL
FROM duckdb_tables()
WHERE database_name = current_database() AND schema_name = 'views'
  AND contains(table_name, '__');
"""

# Migration n (1-based) brings a store from version n - 1 to n.
MIGRATIONS: tuple[str, ...] = (
    # 1: the tables every store has had
    BASE_TABLES_SQL,
    # 2: run locks from other hosts are taken over when their heartbeat stops
    "ALTER TABLE brain_locks ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMP;",
    # 3: saved views (was created by the first save_view)
    "CREATE SCHEMA IF NOT EXISTS views;",
    # 4: the list of saved views (name, size, when, where from); views saved before it are
    # listed with their table's row count, the migration's time and no source
    SAVED_VIEWS_SQL,
)
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATING = threading.Lock()


def schema_version(conn: duckdb.DuckDBPyConnection) -> int:
    """The store's schema version (0: made before versioning, or empty)."""
    has_table = conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' "
        "AND table_name = 'schema_version'"
    ).fetchone()
    if not has_table or not has_table[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: duckdb.DuckDBPyConnection) -> int:
    """Run the migrations the store lacks, in one transaction; returns the version it had.

    Nothing is written when the store is up to date. Other processes wait on DuckDB's file
    lock; threads of this process (which share one database instance) take turns here.
    """
    if schema_version(conn) >= SCHEMA_VERSION:
        return SCHEMA_VERSION
    with _MIGRATING:
        return _migrate_once(conn)


def _migrate_once(conn: duckdb.DuckDBPyConnection) -> int:
    if schema_version(conn) >= SCHEMA_VERSION:
        return SCHEMA_VERSION
    conn.execute("BEGIN TRANSACTION")
    try:
        had = schema_version(conn)
        for sql in MIGRATIONS[had:]:
            conn.execute(sql)
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?)", [max(had, SCHEMA_VERSION)])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return had
