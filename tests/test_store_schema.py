"""Schema versions: an old store opens and is migrated once; an up-to-date one runs no DDL."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest
from conftest import sample_frame

from dagster_brain.store import SCHEMA_VERSION, BrainRunRecord, Store, schema

# The DDL every Store() ran before schema versions (brain_assets/store.py at the commit before
# the store became a package), copied here so the test keeps describing those stores.
OLD_SCHEMA_SQL = """
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
ALTER TABLE brain_locks ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMP;
CREATE SCHEMA IF NOT EXISTS results;
"""
# Older still: before run locks had a heartbeat.
OLDER_SCHEMA_SQL = OLD_SCHEMA_SQL.replace(
    "ALTER TABLE brain_locks ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMP;", ""
)


def _old_store(path, ddl: str) -> None:
    """A data directory as the previous code left it: tables, a dataset, a brain run."""
    path.mkdir(parents=True)
    with duckdb.connect(str(path / "brain.duckdb")) as conn:
        conn.execute(ddl)
        conn.execute("INSERT INTO datasets VALUES ('d', 'image', now())")
        conn.execute(
            "INSERT INTO samples (dataset, sample_id, filepath) VALUES ('d', 's0', '/x.png')"
        )
        conn.execute("CREATE TABLE results.\"d__u\" AS SELECT 's0' AS sample_id, 0.5 AS score")
        conn.execute(
            "INSERT INTO brain_runs (dataset, brain_key, kind, method, config, created_at, "
            "sample_ids, results_table, artifacts) VALUES ('d', 'u', 'uniqueness', 'knn', '{}', "
            "now(), ['s0'], 'results.\"d__u\"', '[]')"
        )


def _columns(store: Store, table: str) -> list[str]:
    rows = store.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position",
        [table],
    )
    return rows["column_name"].tolist()


def _no_ddl(monkeypatch) -> None:
    """Make every migration fail, so opening a store proves whether any ran."""
    failing = tuple(f"SELECT error('migration {i} ran')" for i in range(1, SCHEMA_VERSION + 1))
    monkeypatch.setattr(schema, "MIGRATIONS", failing)


@pytest.mark.parametrize("ddl", [OLD_SCHEMA_SQL, OLDER_SCHEMA_SQL], ids=["old", "older"])
def test_a_store_made_by_the_previous_code_opens_and_is_migrated(tmp_path, ddl, monkeypatch):
    _old_store(tmp_path / "data", ddl)
    store = Store(tmp_path / "data")
    assert store.query("SELECT version FROM schema_version")["version"].tolist() == [SCHEMA_VERSION]
    # what was there is kept and usable
    assert store.list_datasets() == ["d"]
    assert store.sample_ids("d") == ["s0"]
    assert store.load_results("d", "u")["score"].tolist() == [0.5]
    # what the migrations add works: the lock heartbeat column and the views schema
    assert _columns(store, "brain_locks")[-1] == "heartbeat_at"
    with store.run_lock("d", "u", "run A"):
        beat = store.query("SELECT heartbeat_at FROM brain_locks")["heartbeat_at"]
        assert beat.notna().all()
    assert store.save_view("d", "top", pd.DataFrame({"sample_id": ["s0"]})) == 'views."d__top"'
    store.rename_run("d", "u", "v")
    assert store.load_results("d", "v")["score"].tolist() == [0.5]
    # migrated once: opening it again runs none
    _no_ddl(monkeypatch)
    Store(tmp_path / "data")


def test_an_up_to_date_store_opens_without_ddl(tmp_path, monkeypatch):
    store = Store(tmp_path / "data")
    store.write_samples("d", sample_frame(["/a.png", "/b.png"]))
    _no_ddl(monkeypatch)
    again = Store(tmp_path / "data")
    assert again.sample_ids("d") == ["s000", "s001"]
    # the same failing migrations do run on a store that is behind
    _old_store(tmp_path / "old", OLD_SCHEMA_SQL)
    with pytest.raises(duckdb.Error, match="migration 1 ran"):
        Store(tmp_path / "old")


def test_a_failed_migration_leaves_the_store_at_its_version(tmp_path, monkeypatch):
    _old_store(tmp_path / "data", OLDER_SCHEMA_SQL)
    broken = (*schema.MIGRATIONS[:-1], "SELECT error('disk full')")
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    with pytest.raises(duckdb.Error, match="disk full"):
        Store(tmp_path / "data")
    with duckdb.connect(str(tmp_path / "data" / "brain.duckdb")) as conn:
        assert schema.schema_version(conn) == 0
        cols = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'brain_locks'"
        ).fetchall()
        assert ("heartbeat_at",) not in cols  # migration 2 rolled back with the rest
    monkeypatch.undo()
    store = Store(tmp_path / "data")
    record = BrainRunRecord("d", "h", "hardness", "entropy", {}, ["s0"])
    store.commit_run(record, None)
    assert store.list_runs("d")["brain_key"].tolist() == ["h", "u"]


def test_threads_opening_a_new_store_together_migrate_it_once(tmp_path):
    import threading

    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(tmp_path / "data")
        except BaseException as err:  # collected, asserted below
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    store = Store(tmp_path / "data")
    assert store.query("SELECT version FROM schema_version")["version"].tolist() == [SCHEMA_VERSION]
