"""The embedded store: one DuckDB file (the truth) plus Parquet copies, under one data directory.

Every table carries a ``dataset`` column, so one store holds many named datasets. Each brain
run's results live in their own table ``results."<dataset>__<brain_key>"``; names are validated
identifiers (see :mod:`dagster_brain.names`), so that name is unambiguous and safe to quote.
Every write that belongs together happens in one DuckDB transaction; Parquet copies are written
to a temporary file first and renamed into place only after the transaction commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dagster_brain.names import check_name, quote

SCHEMA_SQL = """
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

# A run holding a brain key refreshes its lock this often; a lock from another host whose
# heartbeat is older than LOCK_STALE_S belongs to a worker that died, and is taken over.
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = 300.0


class StoreError(RuntimeError):
    """A store operation that cannot be done (unknown dataset, brain key, embeddings key...)."""


@dataclass(frozen=True)
class EmbeddingSet:
    """Vectors of one embeddings key, aligned with their sample (and label) ids."""

    key: str
    sample_ids: list[str]
    label_ids: list[str] | None
    vectors: np.ndarray
    model: str | None
    dim: int
    patches_field: str | None = None
    model_hash: str | None = None
    data_version: str | None = None
    count_all: int | None = None  # vectors in the whole key (these may be a subset)

    @property
    def ids(self) -> list[str]:
        """Label ids for patch embeddings, sample ids otherwise."""
        return self.label_ids if self.label_ids is not None else self.sample_ids


@dataclass
class BrainRunRecord:
    """What a brain run is remembered by (``brain_runs`` row)."""

    dataset: str
    brain_key: str
    kind: str
    method: str | None
    config: dict[str, Any]
    sample_ids: list[str]
    label_ids: list[str] | None = None
    run_id: str | None = None
    code_version: str | None = None
    data_version: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    results_table: str | None = None

    def info(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``get_brain_info`` returns)."""
        return {
            "dataset": self.dataset,
            "brain_key": self.brain_key,
            "type": self.kind,
            "method": self.method,
            "timestamp": self.created_at.isoformat() if self.created_at else None,
            "run_id": self.run_id,
            "code_version": self.code_version,
            "data_version": self.data_version,
            "versions": self.versions,
            "config": self.config,
            "upstream": self.upstream,
            "num_samples": len(self.sample_ids),
            "num_labels": None if self.label_ids is None else len(self.label_ids),
            "results_table": self.results_table,
        }


def utcnow() -> datetime:
    """Naive UTC timestamp (DuckDB TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


def vectors_to_arrow(vectors: np.ndarray) -> pa.Array:
    """An (n, d) float32 array as an Arrow list column without a Python loop."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """An Arrow list column of equal-length float lists as an (n, d) float32 array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1)


def hash_strings(values: Sequence[str]) -> str:
    """A short stable content hash of a sequence of strings."""
    h = hashlib.sha256()
    for v in values:
        h.update(str(v).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def rows_digest(ids: Sequence[str], vectors: np.ndarray) -> int:
    """Order-free digest of (id, vector) rows: the sum of 64-bit row hashes, modulo 2**64.

    Adding or removing rows changes it by their own hashes only, so an embeddings key's data
    version can be kept current without reading the vectors it keeps.
    """
    return int(row_hashes(ids, vectors).sum(dtype=np.uint64)) if len(ids) else 0


def row_hashes(ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each (id, vector) row (uint64): tells a changed vector from a kept
    one. Vectorised: the id's hash plus a keyed sum over the vector's bytes, then mixed."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(ids)
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} ids")
    id_hash = pd.util.hash_array(np.asarray([str(i) for i in ids], dtype=object))
    words = vectors.reshape(n, -1)
    if words.shape[1] % 2:
        words = np.concatenate([words, np.zeros((n, 1), np.float32)], axis=1)
    words = words.view(np.uint64)
    keys = np.random.default_rng(0x5EED).integers(
        1, 1 << 63, size=words.shape[1], dtype=np.uint64
    ) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = (words * keys).sum(axis=1, dtype=np.uint64) + id_hash * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(29)
    return h


def embeddings_version(count: int, digest: int) -> str:
    """An embeddings key's data version from its row count and :func:`rows_digest`."""
    return f"{count}-{digest:016x}"


def _parse_embeddings_version(version: str | None) -> tuple[int, int] | None:
    try:
        count, digest = str(version).split("-")
        return int(count), int(digest, 16)
    except ValueError:
        return None


def extra_table_name(dataset: str, brain_key: str, name: str) -> str:
    """Qualified, quoted name of a run's further table (names never contain ``__``)."""
    return f"results.{quote(f'{dataset}__{brain_key}__{name}')}"


def results_table_name(dataset: str, brain_key: str) -> str:
    """Qualified, quoted name of a run's results table."""
    return f"results.{quote(f'{dataset}__{brain_key}')}"


class Store:
    """DuckDB + Parquet store for datasets, labels, embeddings and brain runs."""

    def __init__(self, data_dir: str | os.PathLike, lock_timeout_s: float = 120.0):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.db_path = self.data_dir / "brain.duckdb"
        self.parquet_dir = self.data_dir / "parquet"
        self.lock_timeout_s = lock_timeout_s
        self._renames: list[tuple[Path, Path]] | None = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.execute(SCHEMA_SQL)

    def __repr__(self) -> str:
        return f"Store({str(self.data_dir)!r})"

    # -- connections ---------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits while another process holds the file lock."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                conn = duckdb.connect(str(self.db_path))
                break
            except duckdb.IOException as err:
                if "lock" not in str(err).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay + random.random() * delay)
                delay = min(delay * 2, 2.0)
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction: everything inside commits together or not at all.

        Parquet copies written inside it (:meth:`_mirror`) replace the old files only after
        the commit, while the connection (and so the store's file lock) is still held: two
        writers' copies land in the order of their commits. On rollback they are removed.
        """
        renames: list[tuple[Path, Path]] = []
        self._renames = renames
        try:
            with self.connect() as conn:
                conn.execute("BEGIN TRANSACTION")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                for tmp, final in renames:
                    os.replace(tmp, final)
        except BaseException:
            for tmp, _ in renames:
                tmp.unlink(missing_ok=True)
            raise
        finally:
            self._renames = None

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run read-only SQL and return a DataFrame."""
        with self.connect() as conn:
            return conn.execute(sql, params or []).df()

    # -- datasets ------------------------------------------------------------------------

    def create_dataset(self, dataset: str, media_type: str = "image") -> None:
        """Register a dataset name (no-op if it exists)."""
        check_name(dataset, "dataset")
        with self.connect() as conn:
            conn.execute(
                "INSERT INTO datasets VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [dataset, media_type, utcnow()],
            )

    def list_datasets(self) -> list[str]:
        """Names of all datasets."""
        with self.connect() as conn:
            return [
                r[0] for r in conn.execute("SELECT dataset FROM datasets ORDER BY 1").fetchall()
            ]

    def require_dataset(self, dataset: str) -> None:
        """Raise a clear error for an unknown dataset."""
        check_name(dataset, "dataset")
        if dataset not in self.list_datasets():
            known = ", ".join(self.list_datasets()) or "none"
            raise StoreError(f"no dataset {dataset!r} in {self.data_dir} (datasets: {known})")

    def delete_dataset(self, dataset: str) -> None:
        """Delete a dataset with its samples, labels, embeddings and brain runs."""
        self.require_dataset(dataset)
        for key in self.list_runs(dataset)["brain_key"]:
            self.delete_run(dataset, key)
        with self.transaction() as conn:
            for table in ("samples", "labels", "label_fields", "embeddings", "embedding_sets"):
                conn.execute(f"DELETE FROM {table} WHERE dataset = ?", [dataset])
            conn.execute("DELETE FROM datasets WHERE dataset = ?", [dataset])
        _remove_tree(self.parquet_dir / dataset)

    # -- samples and labels ---------------------------------------------------------------

    SAMPLE_COLUMNS = (
        "sample_id filepath width height size_bytes split tags content_hash pixel_hash batch"
    ).split()
    LABEL_COLUMNS = "sample_id label_id label confidence logits box".split()

    def write_samples(
        self,
        dataset: str,
        samples: pd.DataFrame,
        labels: dict[str, tuple[str, list[str] | None, pd.DataFrame]] | None = None,
    ) -> None:
        """Upsert samples (by id) and replace their labels, in one transaction.

        ``labels`` maps a field name to ``(kind, classes, frame)``; kind is ``classification``
        or ``detections``; the frame has :attr:`LABEL_COLUMNS`.
        """
        self.create_dataset(dataset)
        frame = _with_columns(samples, self.SAMPLE_COLUMNS)
        if frame["sample_id"].duplicated().any():
            dup = frame.loc[frame["sample_id"].duplicated(), "sample_id"].iloc[0]
            raise StoreError(f"dataset {dataset!r}: duplicate sample id {dup!r}")
        frame.insert(0, "dataset", dataset)
        label_frames = {}
        for fld, (kind, classes, df) in (labels or {}).items():
            check_name(fld, "label field")
            if kind not in ("classification", "detections"):
                raise StoreError(f"label field {fld!r}: unknown kind {kind!r}")
            lf = _with_columns(df, self.LABEL_COLUMNS)
            lf.insert(0, "field", fld)
            lf.insert(0, "dataset", dataset)
            label_frames[fld] = (kind, classes, lf)
        ids = frame[["sample_id"]]
        with self.transaction() as conn:
            conn.register("new_ids", ids)
            conn.execute(
                "DELETE FROM samples WHERE dataset = ? AND sample_id IN "
                "(SELECT sample_id FROM new_ids)",
                [dataset],
            )
            conn.register("new_samples", frame)
            conn.execute(
                f"INSERT INTO samples ({', '.join(['dataset', *self.SAMPLE_COLUMNS])}) "
                f"SELECT {', '.join(['dataset', *self.SAMPLE_COLUMNS])} FROM new_samples"
            )
            for fld, (kind, classes, lf) in label_frames.items():
                old = conn.execute(
                    "SELECT kind, classes FROM label_fields WHERE dataset = ? AND field = ?",
                    [dataset, fld],
                ).fetchone()
                if old and old[0] != kind:
                    raise StoreError(
                        f"dataset {dataset!r}: label field {fld!r} holds {old[0]}, not {kind}"
                    )
                if old and classes is None:
                    classes = old[1]
                conn.execute(
                    "INSERT OR REPLACE INTO label_fields VALUES (?, ?, ?, ?)",
                    [dataset, fld, kind, classes],
                )
                conn.execute(
                    "DELETE FROM labels WHERE dataset = ? AND field = ? AND sample_id IN "
                    "(SELECT sample_id FROM new_ids)",
                    [dataset, fld],
                )
                conn.register("new_labels", lf)
                cols = ["dataset", "field", *self.LABEL_COLUMNS]
                conn.execute(
                    f"INSERT INTO labels ({', '.join(cols)}) SELECT {', '.join(cols)} "
                    "FROM new_labels"
                )
                conn.unregister("new_labels")
            self._mirror(conn, dataset, "samples", "SELECT * FROM samples WHERE dataset = ?")

    def write_labels(
        self, dataset: str, fld: str, kind: str, classes: list[str] | None, df: pd.DataFrame
    ) -> None:
        """Replace the labels of one field for the samples in ``df`` (which must exist)."""
        self.require_dataset(dataset)
        known = set(self.sample_ids(dataset))
        unknown = sorted(set(df["sample_id"]) - known)
        if unknown:
            raise StoreError(
                f"dataset {dataset!r}: {len(unknown)} labels of field {fld!r} refer to unknown "
                f"samples, e.g. {unknown[:3]}"
            )
        samples = self.samples(dataset, ids=sorted(set(df["sample_id"])))
        self.write_samples(dataset, samples, labels={fld: (kind, classes, df)})

    def samples(self, dataset: str, ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Sample rows (without the dataset column), in id order, optionally restricted."""
        self.require_dataset(dataset)
        cols = ", ".join(self.SAMPLE_COLUMNS)
        with self.connect() as conn:
            if ids is None:
                return conn.execute(
                    f"SELECT {cols} FROM samples WHERE dataset = ? ORDER BY sample_id", [dataset]
                ).df()
            conn.register("want", pd.DataFrame({"sample_id": list(ids)}))
            return conn.execute(
                f"SELECT {cols} FROM samples JOIN want USING (sample_id) "
                "WHERE dataset = ? ORDER BY sample_id",
                [dataset],
            ).df()

    def sample_ids(self, dataset: str) -> list[str]:
        """All sample ids of a dataset, sorted."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT sample_id FROM samples WHERE dataset = ? ORDER BY 1", [dataset]
            ).fetchall()
        return [r[0] for r in rows]

    def batch_sample_ids(self, dataset: str, batch: str) -> list[str]:
        """Sample ids of one ingest batch, sorted."""
        rows = self.query(
            "SELECT sample_id FROM samples WHERE dataset = ? AND batch = ? ORDER BY 1",
            [dataset, batch],
        )
        return rows["sample_id"].tolist()

    def sample_batches(self, dataset: str, ids: Sequence[str]) -> dict[str, str | None]:
        """The batch of each of these samples that exists (unknown ids are left out)."""
        if dataset not in self.list_datasets():
            return {}
        with self.connect() as conn:
            conn.register("want", pd.DataFrame({"sample_id": list(ids)}, dtype=object))
            rows = conn.execute(
                "SELECT sample_id, batch FROM samples JOIN want USING (sample_id) "
                "WHERE dataset = ?",
                [dataset],
            ).fetchall()
        return dict(rows)

    def delete_samples(self, dataset: str, ids: Sequence[str]) -> int:
        """Remove samples with their labels and vectors (every embeddings key), in one
        transaction; returns how many samples were removed. Brain results that cover them
        keep them until those runs are refreshed.
        """
        ids = sorted(set(ids))
        if not ids or dataset not in self.list_datasets():
            return 0
        with self.transaction() as conn:  # holds the file lock: reads and writes agree
            sets = self.embedding_sets(dataset)
            leaving = {k: self.read_embeddings(dataset, k, ids=ids) for k in sets["embeddings_key"]}
            conn.register("gone", pd.DataFrame({"sample_id": ids}, dtype=object))
            n = conn.execute(
                "SELECT count(*) FROM samples WHERE dataset = ? AND sample_id IN "
                "(SELECT sample_id FROM gone)",
                [dataset],
            ).fetchall()[0][0]
            for table in ("samples", "labels", "embeddings"):
                conn.execute(
                    f"DELETE FROM {table} WHERE dataset = ? AND sample_id IN "
                    "(SELECT sample_id FROM gone)",
                    [dataset],
                )
            for _, meta in sets.iterrows():
                key, old = meta["embeddings_key"], leaving[meta["embeddings_key"]]
                if not old.ids:
                    continue
                parsed = _parse_embeddings_version(meta["data_version"])
                count = conn.execute(
                    "SELECT count(*) FROM embeddings WHERE dataset = ? AND embeddings_key = ?",
                    [dataset, key],
                ).fetchall()[0][0]
                version = (
                    embeddings_version(
                        count, (parsed[1] - rows_digest(old.ids, old.vectors)) % (1 << 64)
                    )
                    if parsed is not None
                    else None
                )
                conn.execute(
                    "UPDATE embedding_sets SET count = ?, data_version = ? "
                    "WHERE dataset = ? AND embeddings_key = ?",
                    [count, version, dataset, key],
                )
                self._mirror_embeddings(conn, dataset, key)
            self._mirror(conn, dataset, "samples", "SELECT * FROM samples WHERE dataset = ?")
        for _, meta in sets.iterrows():
            if _parse_embeddings_version(meta["data_version"]) is None:
                self._restamp_embeddings(dataset, meta["embeddings_key"])
        return int(n)

    def label_fields(self, dataset: str) -> pd.DataFrame:
        """(field, kind, classes) of every label field of a dataset."""
        return self.query(
            "SELECT field, kind, classes FROM label_fields WHERE dataset = ? ORDER BY field",
            [dataset],
        )

    def label_field(self, dataset: str, fld: str) -> tuple[str, list[str] | None]:
        """(kind, classes) of one label field; a clear error if it does not exist."""
        check_name(fld, "label field")
        fields = self.label_fields(dataset)
        row = fields[fields["field"] == fld]
        if row.empty:
            known = ", ".join(fields["field"]) or "none"
            raise StoreError(f"dataset {dataset!r} has no label field {fld!r} (fields: {known})")
        classes = row["classes"].iloc[0]
        return row["kind"].iloc[0], (list(classes) if classes is not None else None)

    def labels(self, dataset: str, fld: str) -> pd.DataFrame:
        """Labels of one field, ordered by sample id then label id."""
        self.label_field(dataset, fld)
        return self.query(
            f"SELECT {', '.join(self.LABEL_COLUMNS)} FROM labels WHERE dataset = ? AND field = ? "
            "ORDER BY sample_id, label_id",
            [dataset, fld],
        )

    def data_version(self, dataset: str, ids: Sequence[str] | None = None) -> str:
        """Hash of the sample ids and their content hashes (the dataset's data version)."""
        self.require_dataset(dataset)
        # in SQL, byte for byte what hash_strings gives on "<sample_id>:<content_hash>"
        agg = (
            "SELECT coalesce(left(sha256(string_agg(s.sample_id || ':' || "
            "coalesce(s.content_hash, 'None') || chr(0), '' ORDER BY s.sample_id)), 16), "
            "?) FROM samples s {join} WHERE s.dataset = ?"
        )
        empty = hash_strings([])
        with self.connect() as conn:
            if ids is None:
                return conn.execute(agg.format(join=""), [empty, dataset]).fetchone()[0]
            conn.register("want", pd.DataFrame({"sample_id": list(ids)}, dtype=object))
            return conn.execute(
                agg.format(join="JOIN want w ON w.sample_id = s.sample_id"), [empty, dataset]
            ).fetchone()[0]

    # -- embeddings -----------------------------------------------------------------------

    def _embedding_rows(
        self,
        dataset: str,
        key: str,
        sample_ids: Sequence[str],
        vectors: np.ndarray,
        label_ids: Sequence[str] | None,
    ) -> tuple[np.ndarray, list[str], pa.Table]:
        """Validated (vectors, item ids, Arrow rows) for an embeddings key."""
        self.require_dataset(dataset)
        check_name(key, "embeddings key")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(sample_ids):
            raise StoreError(
                f"embeddings key {key!r}: {vectors.shape} vectors for {len(sample_ids)} ids"
            )
        if label_ids is not None and len(label_ids) != len(sample_ids):
            raise StoreError(f"embeddings key {key!r}: label ids and sample ids differ in length")
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            who = label_ids[bad] if label_ids is not None else sample_ids[bad]
            raise StoreError(f"embeddings key {key!r}: non-finite vector for {who!r}")
        unknown = sorted(set(sample_ids) - set(self.sample_ids(dataset)))
        if unknown:
            raise StoreError(
                f"embeddings key {key!r}: {len(unknown)} vectors for unknown samples of "
                f"{dataset!r}, e.g. {unknown[:3]}"
            )
        ids = list(label_ids) if label_ids is not None else list(sample_ids)
        if len(set(ids)) != len(ids):
            raise StoreError(f"embeddings key {key!r}: duplicate ids")
        table = pa.table(
            {
                "dataset": pa.array([dataset] * len(sample_ids), pa.string()),
                "embeddings_key": pa.array([key] * len(sample_ids), pa.string()),
                "sample_id": pa.array(list(sample_ids), pa.string()),
                "label_id": pa.array(
                    list(label_ids) if label_ids is not None else [None] * len(sample_ids),
                    pa.string(),
                ),
                "vector": vectors_to_arrow(vectors),
            }
        )
        return vectors, ids, table

    def _mirror_embeddings(self, conn, dataset: str, key: str) -> None:
        self._mirror(
            conn,
            dataset,
            f"embeddings/{key}",
            "SELECT sample_id, label_id, vector FROM embeddings WHERE dataset = ? "
            f"AND embeddings_key = '{key}'",
        )

    def write_embeddings(
        self,
        dataset: str,
        key: str,
        sample_ids: Sequence[str],
        vectors: np.ndarray,
        *,
        label_ids: Sequence[str] | None = None,
        model: str | None = None,
        model_hash: str | None = None,
        source: str = "model",
        patches_field: str | None = None,
        run_id: str | None = None,
    ) -> EmbeddingSet:
        """Replace an embeddings key with these vectors, in one transaction."""
        vectors, ids, table = self._embedding_rows(dataset, key, sample_ids, vectors, label_ids)
        with self.transaction() as conn:
            self._replace_key(
                conn, dataset, key, ids, vectors, table, model, model_hash, source,
                patches_field, run_id,
            )  # fmt: skip
        return self.read_embeddings(dataset, key)

    def _replace_key(
        self, conn, dataset, key, ids, vectors, table, model, model_hash, source, patches_field,
        run_id,
    ) -> None:  # fmt: skip
        """Inside a transaction: the key's rows and metadata become exactly these."""
        conn.execute(
            "DELETE FROM embeddings WHERE dataset = ? AND embeddings_key = ?", [dataset, key]
        )
        conn.register("new_vectors", table)
        conn.execute("INSERT INTO embeddings SELECT * FROM new_vectors")
        conn.execute(
            "INSERT OR REPLACE INTO embedding_sets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                dataset,
                key,
                model,
                model_hash,
                int(vectors.shape[1]) if vectors.size else 0,
                patches_field,
                source,
                len(ids),
                embeddings_version(len(ids), rows_digest(ids, vectors)),
                run_id,
                utcnow(),
            ],
        )
        self._mirror_embeddings(conn, dataset, key)

    def update_embeddings(
        self,
        dataset: str,
        key: str,
        sample_ids: Sequence[str],
        vectors: np.ndarray,
        *,
        label_ids: Sequence[str] | None = None,
        model: str | None = None,
        model_hash: str | None = None,
        source: str = "model",
        patches_field: str | None = None,
        run_id: str | None = None,
        drop_samples: Sequence[str] = (),
    ) -> EmbeddingSet:
        """Replace the vectors of these samples (and drop those of ``drop_samples``), keeping
        the rest of the key, in one transaction; a key that does not exist yet is created.

        The vectors must come from the key's model, dimension and patches field: a key cannot
        mix models. The data version is updated from the changed rows alone. Returns the rows
        of these samples (``count_all`` and ``data_version`` are the whole key's).
        """
        self.create_dataset(dataset)
        if len(sample_ids):
            vectors, ids, table = self._embedding_rows(dataset, key, sample_ids, vectors, label_ids)
        else:  # only dropping rows
            ids, table = [], None
        touched = sorted(set(sample_ids) | set(drop_samples))
        # Everything below reads and writes under one transaction, which holds the store's
        # file lock: another process cannot change the key in between.
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT model, patches_field, dim, count, data_version FROM embedding_sets "
                "WHERE dataset = ? AND embeddings_key = ?",
                [dataset, key],
            ).fetchall()
            row = rows[0] if rows else None
            if row is None or row[3] == 0:  # nothing to keep: this is the whole key
                if table is None:
                    vectors = np.zeros((0, 0), np.float32)
                    _, ids, table = self._embedding_rows(dataset, key, [], vectors, None)
                self._replace_key(
                    conn, dataset, key, ids, vectors, table, model, model_hash, source,
                    patches_field, run_id,
                )  # fmt: skip
                parsed = (0, 0)
            else:
                old_model, old_patches, dim, _, old_version = row
                if table is None:
                    vectors = np.zeros((0, int(dim)), np.float32)
                for what, old, value in (
                    ("model", old_model, model),
                    ("patches_field", old_patches, patches_field),
                ):
                    if value != old and len(ids):
                        raise StoreError(
                            f"embeddings key {key!r} of {dataset!r} holds vectors with {what} "
                            f"{old!r}; these have {value!r}: recompute the whole key instead"
                        )
                if len(ids) and int(dim) and vectors.shape[1] != int(dim):
                    raise StoreError(
                        f"embeddings key {key!r} of {dataset!r} holds {int(dim)}-d vectors; "
                        f"these are {vectors.shape[1]}-d (sample {sample_ids[0]!r})"
                    )
                leaving = self.read_embeddings(dataset, key, ids=touched)
                parsed = _parse_embeddings_version(old_version)
                conn.register("touched", pd.DataFrame({"sample_id": touched}, dtype=object))
                conn.execute(
                    "DELETE FROM embeddings WHERE dataset = ? AND embeddings_key = ? AND "
                    "sample_id IN (SELECT sample_id FROM touched)",
                    [dataset, key],
                )
                if table is not None:
                    conn.register("new_vectors", table)
                    conn.execute("INSERT INTO embeddings SELECT * FROM new_vectors")
                count = conn.execute(
                    "SELECT count(*) FROM embeddings WHERE dataset = ? AND embeddings_key = ?",
                    [dataset, key],
                ).fetchall()[0][0]
                version = None  # a version from before row digests: recomputed below
                if parsed is not None:
                    digest = parsed[1] - rows_digest(leaving.ids, leaving.vectors)
                    version = embeddings_version(
                        count, (digest + rows_digest(ids, vectors)) % (1 << 64)
                    )
                conn.execute(
                    "UPDATE embedding_sets SET count = ?, data_version = ?, run_id = ?, "
                    "created_at = ?, dim = CASE WHEN dim = 0 THEN ? ELSE dim END "
                    "WHERE dataset = ? AND embeddings_key = ?",
                    [
                        count,
                        version,
                        run_id,
                        utcnow(),
                        int(vectors.shape[1]) if vectors.size else 0,
                        dataset,
                        key,
                    ],
                )
                self._mirror_embeddings(conn, dataset, key)
        if parsed is None:
            self._restamp_embeddings(dataset, key)
        return self.read_embeddings(dataset, key, ids=sorted(set(sample_ids)))

    def _restamp_embeddings(self, dataset: str, key: str) -> None:
        emb = self.read_embeddings(dataset, key)
        version = embeddings_version(len(emb.ids), rows_digest(emb.ids, emb.vectors))
        with self.transaction() as conn:
            conn.execute(
                "UPDATE embedding_sets SET data_version = ? WHERE dataset = ? "
                "AND embeddings_key = ?",
                [version, dataset, key],
            )

    def embedded_sample_ids(self, dataset: str, key: str) -> list[str]:
        """Sample ids that have vectors under an embeddings key (without reading them)."""
        rows = self.query(
            "SELECT DISTINCT sample_id FROM embeddings WHERE dataset = ? AND embeddings_key = ? "
            "ORDER BY 1",
            [dataset, key],
        )
        return rows["sample_id"].tolist()

    def embedding_sets(self, dataset: str) -> pd.DataFrame:
        """One row per embeddings key of a dataset."""
        return self.query(
            "SELECT * EXCLUDE (dataset) FROM embedding_sets WHERE dataset = ? ORDER BY 1",
            [dataset],
        )

    def read_embeddings(
        self, dataset: str, key: str, ids: Sequence[str] | None = None
    ) -> EmbeddingSet:
        """Vectors of an embeddings key (optionally restricted to sample ids), in id order."""
        check_name(key, "embeddings key")
        sets = self.embedding_sets(dataset)
        meta = sets[sets["embeddings_key"] == key]
        if meta.empty:
            known = ", ".join(sets["embeddings_key"]) or "none"
            raise StoreError(
                f"dataset {dataset!r} has no embeddings key {key!r} (embeddings keys: {known})"
            )
        m = meta.iloc[0]
        with self.connect() as conn:
            sql = (
                "SELECT e.sample_id, e.label_id, e.vector FROM embeddings e {join} "
                "WHERE e.dataset = ? AND e.embeddings_key = ? "
                "ORDER BY e.sample_id, e.label_id"
            )
            if ids is None:
                tbl = conn.sql(sql.format(join=""), params=[dataset, key]).to_arrow_table()
            else:
                conn.register("want", pd.DataFrame({"sample_id": list(ids)}))
                tbl = conn.sql(
                    sql.format(join="JOIN want w ON w.sample_id = e.sample_id"),
                    params=[dataset, key],
                ).to_arrow_table()
        patches = m["patches_field"] if isinstance(m["patches_field"], str) else None
        return EmbeddingSet(
            key=key,
            sample_ids=tbl.column("sample_id").to_pylist(),
            label_ids=tbl.column("label_id").to_pylist() if patches else None,
            vectors=arrow_to_vectors(tbl.column("vector"), int(m["dim"])),
            model=m["model"] if isinstance(m["model"], str) else None,
            dim=int(m["dim"]),
            patches_field=patches,
            model_hash=m["model_hash"] if isinstance(m["model_hash"], str) else None,
            data_version=m["data_version"],
            count_all=int(m["count"]),
        )

    def delete_embeddings(self, dataset: str, key: str) -> None:
        """Remove an embeddings key and its Parquet copy."""
        check_name(key, "embeddings key")
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM embeddings WHERE dataset = ? AND embeddings_key = ?", [dataset, key]
            )
            conn.execute(
                "DELETE FROM embedding_sets WHERE dataset = ? AND embeddings_key = ?",
                [dataset, key],
            )
        self._parquet_path(dataset, f"embeddings/{key}").unlink(missing_ok=True)

    # -- brain runs -----------------------------------------------------------------------

    def commit_run(
        self,
        record: BrainRunRecord,
        results: pd.DataFrame | None,
        event: str = "materialized",
        extra: dict[str, pd.DataFrame | pa.Table] | None = None,
    ) -> BrainRunRecord:
        """Record a brain run and replace its results table, in one transaction.

        If anything fails, the previous run record, results table and Parquet copy stay.
        ``event`` is what the history table records (``materialized``, ``updated``...).
        ``extra`` holds further named tables of the run (``results."<ds>__<key>__<name>"``,
        e.g. per-object rows beside per-sample results); they move and go with the run.
        """
        for name in extra or {}:
            check_name(name, "results table name")
        record.artifacts = [a for a in record.artifacts if a.get("type") != "table"] + [
            {"type": "table", "name": name} for name in (extra or {})
        ]
        self.require_dataset(record.dataset)
        check_name(record.brain_key, "brain key")
        existing = self.get_run(record.dataset, record.brain_key, missing_ok=True)
        if existing is not None and existing.kind != record.kind:
            raise StoreError(
                f"brain key {record.brain_key!r} already holds a {existing.kind} run on "
                f"{record.dataset!r}; delete or rename it before running {record.kind}"
            )
        record.created_at = utcnow()
        table = results_table_name(record.dataset, record.brain_key)
        record.results_table = table if results is not None else None
        with self.transaction() as conn:
            if results is not None:
                conn.register("new_results", results)
                conn.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM new_results")
                conn.unregister("new_results")
            else:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(
                "INSERT OR REPLACE INTO brain_runs VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    record.dataset,
                    record.brain_key,
                    record.kind,
                    record.method,
                    json.dumps(record.config, sort_keys=True, default=str),
                    record.created_at,
                    record.run_id,
                    record.code_version,
                    record.data_version,
                    json.dumps(record.versions, sort_keys=True),
                    json.dumps(record.upstream, sort_keys=True, default=str),
                    list(record.sample_ids),
                    record.label_ids,
                    record.results_table,
                    json.dumps(record.artifacts, sort_keys=True),
                ],
            )
            self._history(conn, record, event)
            if results is not None:
                self._mirror(
                    conn,
                    record.dataset,
                    f"results/{record.brain_key}",
                    f"FROM {table}",
                    params=False,
                )
            for name, frame in (extra or {}).items():
                extra_table = extra_table_name(record.dataset, record.brain_key, name)
                conn.register("new_extra", frame)
                conn.execute(f"CREATE OR REPLACE TABLE {extra_table} AS SELECT * FROM new_extra")
                conn.unregister("new_extra")
                self._mirror(
                    conn,
                    record.dataset,
                    f"results/{record.brain_key}__{name}",
                    f"FROM {extra_table}",
                    params=False,
                )
        return record

    def load_extra(
        self, dataset: str, brain_key: str, name: str, arrow: bool = False
    ) -> pd.DataFrame | pa.Table:
        """One of a run's further tables (see ``commit_run(extra=...)``); ``arrow``: as an
        Arrow table (list columns stay columnar)."""
        record = self.get_run(dataset, brain_key)
        names = [a["name"] for a in record.artifacts if a.get("type") == "table"]
        if name not in names:
            raise StoreError(
                f"brain run {brain_key!r} on {dataset!r} has no table {name!r} (tables: {names})"
            )
        sql = f"SELECT * FROM {extra_table_name(dataset, brain_key, name)}"
        if not arrow:
            return self.query(sql)
        with self.connect() as conn:
            return conn.sql(sql).to_arrow_table()

    def _history(self, conn, record: BrainRunRecord, event: str, detail: str = "") -> None:
        conn.execute(
            "INSERT INTO brain_run_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                record.dataset,
                record.brain_key,
                record.kind,
                event,
                utcnow(),
                record.run_id,
                record.code_version,
                record.data_version,
                json.dumps(record.upstream, sort_keys=True, default=str),
                detail,
            ],
        )

    def get_run(self, dataset: str, brain_key: str, missing_ok: bool = False):
        """The run record of a brain key (``None`` or a clear error if there is none)."""
        check_name(brain_key, "brain key")
        df = self.query(
            "SELECT * FROM brain_runs WHERE dataset = ? AND brain_key = ?", [dataset, brain_key]
        )
        if df.empty:
            if missing_ok:
                return None
            keys = ", ".join(self.list_runs(dataset)["brain_key"]) or "none"
            raise StoreError(f"dataset {dataset!r} has no brain run {brain_key!r} (runs: {keys})")
        return _record_from_row(df.iloc[0])

    def list_runs(
        self, dataset: str, kind: str | None = None, method: str | None = None
    ) -> pd.DataFrame:
        """(brain_key, kind, method, created_at) of a dataset's runs, filtered."""
        sql = "SELECT brain_key, kind, method, created_at FROM brain_runs WHERE dataset = ?"
        params: list[Any] = [dataset]
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if method:
            sql += " AND method = ?"
            params.append(method)
        return self.query(sql + " ORDER BY brain_key", params)

    def load_results(self, dataset: str, brain_key: str) -> pd.DataFrame:
        """A run's results table."""
        record = self.get_run(dataset, brain_key)
        if record.results_table is None:
            return pd.DataFrame()
        return self.query(f"SELECT * FROM {record.results_table}")

    def rename_run(self, dataset: str, brain_key: str, new_key: str) -> None:
        """Move a run (record, results table, Parquet copy) to a new brain key."""
        check_name(new_key, "brain key")
        record = self.get_run(dataset, brain_key)
        if self.get_run(dataset, new_key, missing_ok=True) is not None:
            raise StoreError(f"dataset {dataset!r} already has a brain run {new_key!r}")
        old_pq = self._parquet_path(dataset, f"results/{brain_key}")
        new_pq = self._parquet_path(dataset, f"results/{new_key}")
        with self.transaction() as conn:
            new_table = None
            if record.results_table:
                new_table = results_table_name(dataset, new_key)
                conn.execute(
                    f"ALTER TABLE {record.results_table} RENAME TO {quote(f'{dataset}__{new_key}')}"
                )
            extras = [a["name"] for a in record.artifacts if a.get("type") == "table"]
            for name in extras:
                conn.execute(
                    f"ALTER TABLE {extra_table_name(dataset, brain_key, name)} RENAME TO "
                    f"{quote(f'{dataset}__{new_key}__{name}')}"
                )
            conn.execute(
                "UPDATE brain_runs SET brain_key = ?, results_table = ? "
                "WHERE dataset = ? AND brain_key = ?",
                [new_key, new_table, dataset, brain_key],
            )
            self._history(conn, record, "renamed", detail=f"to {new_key}")
        if old_pq.exists():
            os.replace(old_pq, new_pq)
        for name in extras:
            old_x = self._parquet_path(dataset, f"results/{brain_key}__{name}")
            if old_x.exists():
                os.replace(old_x, self._parquet_path(dataset, f"results/{new_key}__{name}"))

    def delete_run(self, dataset: str, brain_key: str) -> BrainRunRecord:
        """Delete a run's record, results table, Parquet copy and files it wrote."""
        record = self.get_run(dataset, brain_key)
        extras = [a["name"] for a in record.artifacts if a.get("type") == "table"]
        with self.transaction() as conn:
            if record.results_table:
                conn.execute(f"DROP TABLE IF EXISTS {record.results_table}")
            for name in extras:
                conn.execute(f"DROP TABLE IF EXISTS {extra_table_name(dataset, brain_key, name)}")
            conn.execute(
                "DELETE FROM brain_runs WHERE dataset = ? AND brain_key = ?", [dataset, brain_key]
            )
            self._history(conn, record, "deleted")
        self._parquet_path(dataset, f"results/{brain_key}").unlink(missing_ok=True)
        for name in extras:
            self._parquet_path(dataset, f"results/{brain_key}__{name}").unlink(missing_ok=True)
        for art in record.artifacts:
            if art.get("type") == "path":
                _remove_tree(Path(art["path"]))
            elif art.get("type") == "embeddings":
                self.delete_embeddings(dataset, art["key"])
        return record

    def export_results(self, dataset: str, brain_key: str, out: str | os.PathLike) -> Path:
        """Write a run's results (ids plus every score column) to a Parquet file, atomically."""
        df = self.load_results(dataset, brain_key)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out)
        return out

    # -- one run per brain key at a time -------------------------------------------------

    @contextlib.contextmanager
    def run_lock(
        self, dataset: str, brain_key: str, holder: str, wait_s: float = 0.0
    ) -> Iterator[None]:
        """Hold the brain key for one run. A second concurrent run waits up to ``wait_s``
        seconds for it, then is refused, naming the holder. A lock left by a process that
        died is taken over: on this host when its pid is gone, from another host (a worker)
        when its heartbeat (every ``LOCK_HEARTBEAT_S``) is older than ``LOCK_STALE_S``."""
        import socket
        import threading

        check_name(brain_key, "brain key")
        host, pid = socket.gethostname(), os.getpid()
        deadline = time.monotonic() + wait_s
        delay = 0.2
        while True:
            with self.transaction() as conn:
                rows = conn.execute(
                    "SELECT holder, pid, host, acquired_at, "
                    "coalesce(heartbeat_at, acquired_at) FROM brain_locks "
                    "WHERE dataset = ? AND brain_key = ?",
                    [dataset, brain_key],
                ).fetchall()
                row = rows[0] if rows else None
                free = row is None or (
                    not _pid_alive(row[1])
                    if row[2] == host
                    else (utcnow() - row[4]).total_seconds() > LOCK_STALE_S
                )
                if free:
                    now = utcnow()
                    conn.execute(
                        "INSERT OR REPLACE INTO brain_locks "
                        "(dataset, brain_key, holder, pid, host, acquired_at, heartbeat_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [dataset, brain_key, holder, pid, host, now, now],
                    )
            if free:
                break
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"brain key {brain_key!r} on {dataset!r} is being computed by {row[0]} "
                    f"(pid {row[1]} on {row[2]}, since {row[3]}); wait for it to finish"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)

        done = threading.Event()

        def beat() -> None:
            while not done.wait(LOCK_HEARTBEAT_S):
                try:
                    with self.connect() as hb:
                        hb.execute(
                            "UPDATE brain_locks SET heartbeat_at = ? WHERE dataset = ? AND "
                            "brain_key = ? AND pid = ? AND host = ?",
                            [utcnow(), dataset, brain_key, pid, host],
                        )
                except Exception:  # a missed beat only shortens the lock's grace
                    continue

        beater = threading.Thread(target=beat, name=f"lock {brain_key}", daemon=True)
        beater.start()
        try:
            yield
        finally:
            done.set()
            beater.join()
            with self.connect() as conn:
                conn.execute(
                    "DELETE FROM brain_locks WHERE dataset = ? AND brain_key = ? AND pid = ? "
                    "AND host = ?",
                    [dataset, brain_key, pid, host],
                )

    # -- saved views ----------------------------------------------------------------------

    def save_view(self, dataset: str, name: str, frame: pd.DataFrame) -> str:
        """Write an ordered view (ids plus columns such as distances) to a table, atomically.

        The table is ``views."<dataset>__<name>"`` with a ``rank`` column keeping the order;
        a Parquet copy goes to ``parquet/<dataset>/views/<name>.parquet``.
        """
        self.require_dataset(dataset)
        check_name(name, "view name")
        table = f"views.{quote(f'{dataset}__{name}')}"
        out = frame.reset_index(drop=True).copy()
        out.insert(0, "rank", range(len(out)))
        with self.transaction() as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS views")
            conn.register("new_view", out)
            conn.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM new_view")
            conn.unregister("new_view")
            self._mirror(conn, dataset, f"views/{name}", f"FROM {table}", params=False)
        return table

    def load_view(self, dataset: str, name: str) -> pd.DataFrame:
        """A saved view, in its order."""
        check_name(name, "view name")
        table = f"views.{quote(f'{dataset}__{name}')}"
        return self.query(f"SELECT * FROM {table} ORDER BY rank")

    # -- Parquet copies -------------------------------------------------------------------

    def _parquet_path(self, dataset: str, name: str) -> Path:
        return self.parquet_dir / dataset / f"{name}.parquet"

    def parquet_path(self, dataset: str, name: str) -> Path:
        """Where the Parquet copy of ``samples``, ``embeddings/<key>`` or ``results/<key>`` is."""
        return self._parquet_path(dataset, name)

    def _mirror(self, conn, dataset: str, name: str, select_sql: str, params: bool = True) -> None:
        """Write a Parquet copy inside the open transaction; rename after commit succeeds."""
        path = self._parquet_path(dataset, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{random.randrange(1 << 30)}.tmp")
        sql = select_sql.replace("?", f"'{dataset}'") if params else select_sql
        # Arrow + pyarrow's writer: about twice as fast as COPY for vector columns
        pq.write_table(conn.sql(sql).to_arrow_table(), tmp)
        if self._renames is None:
            raise RuntimeError("Parquet copies are written inside Store.transaction() only")
        self._renames.append((tmp, path))


def _with_columns(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of ``df`` with exactly these columns (missing ones filled with None)."""
    out = pd.DataFrame(index=range(len(df)))
    for c in columns:
        out[c] = df[c].to_numpy() if c in df else None
    return out


def _record_from_row(row: pd.Series) -> BrainRunRecord:
    def _list(v):
        return None if v is None or (np.isscalar(v) or v is pd.NA) else list(v)

    return BrainRunRecord(
        dataset=row["dataset"],
        brain_key=row["brain_key"],
        kind=row["kind"],
        method=row["method"],
        config=json.loads(row["config"]),
        sample_ids=_list(row["sample_ids"]) or [],
        label_ids=_list(row["label_ids"]),
        run_id=row["run_id"],
        code_version=row["code_version"],
        data_version=row["data_version"],
        versions=json.loads(row["versions"] or "{}"),
        upstream=json.loads(row["upstream"] or "{}"),
        artifacts=json.loads(row["artifacts"] or "[]"),
        created_at=pd.Timestamp(row["created_at"]).to_pydatetime(),
        results_table=row["results_table"] if isinstance(row["results_table"], str) else None,
    )


def _pid_alive(pid: int) -> bool:
    """Whether a process id is running on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
