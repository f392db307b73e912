"""``Store``: the one object the rest of the project uses; operations that span its parts
(deleting a dataset or samples, run locks) live here; saved views are in ``views.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pandas as pd

from dagster_brain.store.core import pins
from dagster_brain.store.locks import hold_run_lock
from dagster_brain.store.mirror import remove_tree
from dagster_brain.store.samples import SAMPLES_COPY_SQL
from dagster_brain.store.tables import quote
from dagster_brain.store.views import ViewTables


class Store(ViewTables):
    """DuckDB + Parquet store for datasets, labels, embeddings and brain runs."""

    @pins
    def delete_dataset(self, dataset: str) -> None:
        """Delete a dataset with its samples, labels, embeddings, brain runs and saved views."""
        self.require_dataset(dataset)
        for key in self.list_runs(dataset)["brain_key"]:
            self.delete_run(dataset, key)
        with self.transaction() as tx:
            self._drop_views_of(tx, dataset)
            for table in ("samples", "labels", "label_fields", "embeddings", "embedding_sets"):
                tx.execute(f"DELETE FROM {quote(table)} WHERE dataset = ?", [dataset])
            tx.execute("DELETE FROM datasets WHERE dataset = ?", [dataset])
        remove_tree(self.parquet_dir / dataset)

    @pins
    def delete_samples(self, dataset: str, ids: Sequence[str]) -> int:
        """Remove samples with their labels and vectors (every embeddings key), in one
        transaction; returns how many samples were removed. Brain results that cover them
        keep them until those runs are refreshed.
        """
        ids = sorted(set(ids))
        if not ids or dataset not in self.list_datasets():
            return 0
        with self.transaction() as tx:  # holds the file lock: reads and writes agree
            sets = self.embedding_sets(dataset)
            leaving = {k: self.read_embeddings(dataset, k, ids=ids) for k in sets["embeddings_key"]}
            tx.register("gone", pd.DataFrame({"sample_id": ids}, dtype=object))
            n = tx.execute(
                "SELECT count(*) FROM samples WHERE dataset = ? AND sample_id IN "
                "(SELECT sample_id FROM gone)",
                [dataset],
            ).fetchall()[0][0]
            for table in ("samples", "labels", "embeddings"):
                tx.execute(
                    f"DELETE FROM {quote(table)} WHERE dataset = ? AND sample_id IN "
                    "(SELECT sample_id FROM gone)",
                    [dataset],
                )
            self._drop_rows_of(tx, dataset, sets, leaving)
            self._mirror(tx, dataset, "samples", SAMPLES_COPY_SQL, [dataset])
        self._restamp_undigested(dataset, sets)
        return int(n)

    # -- one run per brain key at a time -------------------------------------------------

    @contextlib.contextmanager
    def run_lock(
        self, dataset: str, brain_key: str, holder: str, wait_s: float = 0.0
    ) -> Iterator[None]:
        """Hold the brain key for one run. A second concurrent run waits up to ``wait_s``
        seconds for it, then is refused, naming the holder. A lock left by a process that
        died is taken over: on this host when its pid is gone, from another host (a worker)
        when its heartbeat (every ``LOCK_HEARTBEAT_S``) is older than ``LOCK_STALE_S``; a
        holder that misses several heartbeats in a row logs a warning."""
        with hold_run_lock(self, dataset, brain_key, holder, wait_s):
            yield
