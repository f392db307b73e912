"""Embeddings keys: vectors per sample (or label) with their model and data version."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from dagster_brain.names import check_name
from dagster_brain.store.connection import Transaction
from dagster_brain.store.errors import StoreError
from dagster_brain.store.hashing import (
    embeddings_version,
    parse_embeddings_version,
    rows_digest,
    shifted_version,
)
from dagster_brain.store.mirror import remove_copy
from dagster_brain.store.records import EmbeddingSet, utcnow
from dagster_brain.store.samples import SampleTables
from dagster_brain.store.vectors import arrow_to_vectors, vectors_to_arrow

KEY_COPY_SQL = (
    "SELECT sample_id, label_id, vector FROM embeddings WHERE dataset = ? AND embeddings_key = ?"
)
_READ_SQL = "SELECT e.sample_id, e.label_id, e.vector FROM embeddings e "
_READ_ORDER = "WHERE e.dataset = ? AND e.embeddings_key = ? ORDER BY e.sample_id, e.label_id"
READ_KEY_SQL = _READ_SQL + _READ_ORDER
READ_WANTED_SQL = _READ_SQL + "JOIN want w ON w.sample_id = e.sample_id " + _READ_ORDER
COUNT_KEY_SQL = "SELECT count(*) FROM embeddings WHERE dataset = ? AND embeddings_key = ?"


class EmbeddingTables(SampleTables):
    """Embeddings keys (tables ``embeddings``, ``embedding_sets``)."""

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

    def _mirror_embeddings(self, tx: Transaction, dataset: str, key: str) -> None:
        self._mirror(tx, dataset, f"embeddings/{key}", KEY_COPY_SQL, [dataset, key])

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
        with self.transaction() as tx:
            self._replace_key(
                tx, dataset, key, ids, vectors, table, model, model_hash, source,
                patches_field, run_id,
            )  # fmt: skip
        return self.read_embeddings(dataset, key)

    def _replace_key(
        self, tx, dataset, key, ids, vectors, table, model, model_hash, source, patches_field,
        run_id,
    ) -> None:  # fmt: skip
        """Inside a transaction: the key's rows and metadata become exactly these."""
        tx.execute(
            "DELETE FROM embeddings WHERE dataset = ? AND embeddings_key = ?", [dataset, key]
        )
        tx.register("new_vectors", table)
        tx.execute("INSERT INTO embeddings SELECT * FROM new_vectors")
        tx.execute(
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
        self._mirror_embeddings(tx, dataset, key)

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
        with self.transaction() as tx:
            rows = tx.execute(
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
                    tx, dataset, key, ids, vectors, table, model, model_hash, source,
                    patches_field, run_id,
                )  # fmt: skip
                restamp = False
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
                tx.register("touched", pd.DataFrame({"sample_id": touched}, dtype=object))
                tx.execute(
                    "DELETE FROM embeddings WHERE dataset = ? AND embeddings_key = ? AND "
                    "sample_id IN (SELECT sample_id FROM touched)",
                    [dataset, key],
                )
                if table is not None:
                    tx.register("new_vectors", table)
                    tx.execute("INSERT INTO embeddings SELECT * FROM new_vectors")
                count = tx.execute(COUNT_KEY_SQL, [dataset, key]).fetchall()[0][0]
                # None: a version from before row digests, recomputed below
                version = shifted_version(
                    old_version, count, (leaving.ids, leaving.vectors), (ids, vectors)
                )
                tx.execute(
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
                self._mirror_embeddings(tx, dataset, key)
                restamp = version is None
        if restamp:
            self._restamp_embeddings(dataset, key)
        return self.read_embeddings(dataset, key, ids=sorted(set(sample_ids)))

    def _restamp_embeddings(self, dataset: str, key: str) -> None:
        emb = self.read_embeddings(dataset, key)
        version = embeddings_version(len(emb.ids), rows_digest(emb.ids, emb.vectors))
        with self.transaction() as tx:
            tx.execute(
                "UPDATE embedding_sets SET data_version = ? WHERE dataset = ? "
                "AND embeddings_key = ?",
                [version, dataset, key],
            )

    def _drop_rows_of(self, tx: Transaction, dataset: str, sets: pd.DataFrame, leaving) -> None:
        """Inside a transaction whose samples were just deleted: bring each key's count,
        version and Parquet copy up to date (``leaving``: each key's removed rows)."""
        for _, meta in sets.iterrows():
            key, old = meta["embeddings_key"], leaving[meta["embeddings_key"]]
            if not old.ids:
                continue
            count = tx.execute(COUNT_KEY_SQL, [dataset, key]).fetchall()[0][0]
            version = shifted_version(meta["data_version"], count, (old.ids, old.vectors))
            tx.execute(
                "UPDATE embedding_sets SET count = ?, data_version = ? "
                "WHERE dataset = ? AND embeddings_key = ?",
                [count, version, dataset, key],
            )
            self._mirror_embeddings(tx, dataset, key)

    def _restamp_undigested(self, dataset: str, sets: pd.DataFrame) -> None:
        """Recompute the versions of keys written before row digests."""
        for _, meta in sets.iterrows():
            if parse_embeddings_version(meta["data_version"]) is None:
                self._restamp_embeddings(dataset, meta["embeddings_key"])

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
            if ids is None:
                tbl = conn.sql(READ_KEY_SQL, params=[dataset, key]).to_arrow_table()
            else:
                conn.register("want", pd.DataFrame({"sample_id": list(ids)}))
                tbl = conn.sql(READ_WANTED_SQL, params=[dataset, key]).to_arrow_table()
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
        with self.transaction() as tx:
            tx.execute(
                "DELETE FROM embeddings WHERE dataset = ? AND embeddings_key = ?", [dataset, key]
            )
            tx.execute(
                "DELETE FROM embedding_sets WHERE dataset = ? AND embeddings_key = ?",
                [dataset, key],
            )
        remove_copy(self.parquet_dir, dataset, f"embeddings/{key}")  # and its record
