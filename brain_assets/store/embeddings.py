"""Embeddings keys: vectors per sample (or label) with their model and data version."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from dagster_brain.names import check_name
from dagster_brain.store.connection import Transaction
from dagster_brain.store.core import pins
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
from dagster_brain.store.vectors import BLOCK_ROWS, block_vectors, vector_rows

KEY_COPY_SQL = (
    "SELECT sample_id, label_id, vector FROM embeddings WHERE dataset = ? AND embeddings_key = ?"
)
_KEY_WHERE = "WHERE e.dataset = ? AND e.embeddings_key = ? "
_WANTED = "JOIN want w ON w.sample_id = e.sample_id "
# ids in order (a sort of short strings), then the vectors unordered (a scan), placed by id
_READ_IDS_SQL = (
    "SELECT e.sample_id, e.label_id FROM embeddings e {join}"
    + _KEY_WHERE
    + ("ORDER BY e.sample_id, e.label_id")
)
_READ_VECTORS_SQL = (
    "SELECT coalesce(e.label_id, e.sample_id) AS item, e.vector FROM embeddings e {join}"
    + _KEY_WHERE
)
_ADDED_SQL = KEY_COPY_SQL + " AND sample_id IN (SELECT sample_id FROM touched)"
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
    ) -> tuple[np.ndarray, list[str], pa.RecordBatchReader]:
        """Validated (vectors, item ids, a stream of Arrow rows to insert once)."""
        self.require_dataset(dataset)
        check_name(key, "embeddings key")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(sample_ids):
            raise StoreError(
                f"embeddings key {key!r}: {vectors.shape} vectors for {len(sample_ids)} ids"
            )
        if label_ids is not None and len(label_ids) != len(sample_ids):
            raise StoreError(f"embeddings key {key!r}: label ids and sample ids differ in length")
        for start in range(0, len(vectors), BLOCK_ROWS):  # a block's flags at a time
            finite = np.isfinite(vectors[start : start + BLOCK_ROWS]).all(axis=1)
            if not finite.all():
                bad = start + int(np.flatnonzero(~finite)[0])
                who = label_ids[bad] if label_ids is not None else sample_ids[bad]
                raise StoreError(f"embeddings key {key!r}: non-finite vector for {who!r}")
        unknown = self.unknown_samples(dataset, sample_ids)
        if unknown:
            raise StoreError(
                f"embeddings key {key!r}: {len(unknown)} vectors for unknown samples of "
                f"{dataset!r}, e.g. {unknown[:3]}"
            )
        ids = list(label_ids) if label_ids is not None else list(sample_ids)
        if len(set(ids)) != len(ids):
            raise StoreError(f"embeddings key {key!r}: duplicate ids")
        rows = vector_rows(
            {
                "dataset": dataset,
                "embeddings_key": key,
                "sample_id": sample_ids,
                "label_id": label_ids if label_ids is not None else [None] * len(sample_ids),
            },
            vectors,
            rows=BLOCK_ROWS,
        )
        return vectors, ids, rows

    def _mirror_embeddings(
        self, tx: Transaction, dataset: str, key: str, added: bool = False
    ) -> None:
        """Bring the key's copy up to date inside ``tx``. ``added``: the key only gained the
        rows of the samples registered as ``touched`` since the copy was written."""
        name, params = f"embeddings/{key}", [dataset, key]
        if added:
            self._mirror_added(tx, dataset, name, KEY_COPY_SQL, params, _ADDED_SQL, params)
        else:
            self._mirror(tx, dataset, name, KEY_COPY_SQL, params)

    @pins
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
        """Replace an embeddings key with these vectors, in one transaction; returns them in
        id order as :meth:`read_embeddings` would (without reading them back)."""
        vectors, ids, table = self._embedding_rows(dataset, key, sample_ids, vectors, label_ids)
        with self.transaction() as tx:
            version = self._replace_key(
                tx, dataset, key, ids, vectors, table, model, model_hash, source,
                patches_field, run_id,
            )  # fmt: skip
        sample_ids, label_ids, vectors = _in_id_order(sample_ids, label_ids, vectors)
        return EmbeddingSet(
            key=key,
            sample_ids=sample_ids,
            label_ids=label_ids,
            vectors=vectors,
            model=model,
            dim=int(vectors.shape[1]) if vectors.size else 0,
            patches_field=patches_field,
            model_hash=model_hash,
            data_version=version,
            count_all=len(ids),
        )

    def _replace_key(
        self, tx, dataset, key, ids, vectors, table, model, model_hash, source, patches_field,
        run_id,
    ) -> str:  # fmt: skip
        """Inside a transaction: the key's rows and metadata become exactly these; returns
        the key's data version."""
        tx.execute(
            "DELETE FROM embeddings WHERE dataset = ? AND embeddings_key = ?", [dataset, key]
        )
        tx.register("new_vectors", table)
        tx.execute("INSERT INTO embeddings SELECT * FROM new_vectors")
        tx.unregister("new_vectors")
        version = embeddings_version(len(ids), rows_digest(ids, vectors))
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
                version,
                run_id,
                utcnow(),
            ],
        )
        self._mirror_embeddings(tx, dataset, key)
        return version

    @pins
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
                    tx.unregister("new_vectors")
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
                # nothing replaced or dropped: the copy takes the new rows as a part
                added = not leaving.ids and table is not None
                self._mirror_embeddings(tx, dataset, key, added=added)
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

    @pins
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
            vectors, sample_ids, label_ids = _read_key(conn, dataset, key, ids, int(m["dim"]))
        patches = m["patches_field"] if isinstance(m["patches_field"], str) else None
        return EmbeddingSet(
            key=key,
            sample_ids=sample_ids,
            label_ids=label_ids if patches else None,
            vectors=vectors,
            model=m["model"] if isinstance(m["model"], str) else None,
            dim=int(m["dim"]),
            patches_field=patches,
            model_hash=m["model_hash"] if isinstance(m["model_hash"], str) else None,
            data_version=m["data_version"],
            count_all=int(m["count"]),
        )

    @pins
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


def _read_key(
    conn, dataset: str, key: str, ids: Sequence[str] | None, dim: int
) -> tuple[np.ndarray, list[str], list[str | None]]:
    """(vectors, sample ids, label ids) of a key in (sample id, label id) order, read in one
    snapshot; the vectors are streamed block by block into one float32 array, so the peak is
    the array plus a block (DuckDB never sorts the vectors)."""
    join = ""
    if ids is not None:
        wanted = list(dict.fromkeys(ids))  # each once: a repeated id is one row
        conn.register("want", pd.DataFrame({"sample_id": wanted}, dtype=object))
        join = _WANTED
    conn.begin()  # one snapshot for both reads
    try:
        order = conn.sql(_READ_IDS_SQL.format(join=join), params=[dataset, key]).to_arrow_table()
        sample_ids = order.column("sample_id").to_pylist()
        label_ids = order.column("label_id").to_pylist()
        items = pd.Index(
            [lab if lab is not None else s for s, lab in zip(sample_ids, label_ids, strict=True)]
        )
        out = np.empty((len(items), dim), dtype=np.float32)
        reader = conn.sql(_READ_VECTORS_SQL.format(join=join), params=[dataset, key])
        for batch in reader.to_arrow_reader(BLOCK_ROWS):
            if batch.num_rows:
                rows = items.get_indexer(batch.column(0).to_pylist())
                out[rows] = block_vectors(batch.column(1))
    finally:
        conn.commit()
    return out, sample_ids, label_ids


def _in_id_order(
    sample_ids: Sequence[str], label_ids: Sequence[str] | None, vectors: np.ndarray
) -> tuple[list[str], list[str] | None, np.ndarray]:
    """The rows in (sample id, label id) order, the store's; the vectors are copied only when
    the rows were not already in that order."""
    if label_ids is None:
        keys = list(sample_ids)
        order = np.argsort(np.asarray(keys, dtype=str), kind="stable") if keys else []
    else:
        keys = list(zip(sample_ids, label_ids, strict=True))
        order = sorted(range(len(keys)), key=keys.__getitem__)
    order = np.asarray(order, dtype=np.int64)
    if np.array_equal(order, np.arange(len(order))):
        return list(sample_ids), None if label_ids is None else list(label_ids), vectors
    samples = [sample_ids[i] for i in order]
    labels = None if label_ids is None else [label_ids[i] for i in order]
    return samples, labels, vectors[order]
