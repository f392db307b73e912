"""Saved views: named, ordered lists of a dataset's samples (with optional columns such as
distances), each in its own table ``views."<dataset>__<name>"`` and listed in ``saved_views``
(dataset, name, n, created_at, source)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dagster_brain.names import check_name
from dagster_brain.store.errors import StoreError
from dagster_brain.store.mirror import remove_copy
from dagster_brain.store.records import utcnow
from dagster_brain.store.runs import RunTables
from dagster_brain.store.tables import view_table_name


class ViewTables(RunTables):
    """Saving, listing, reading and deleting saved views."""

    def save_view(
        self,
        dataset: str,
        name: str,
        sample_ids: Sequence[str] | pd.DataFrame,
        source: str | None = None,
    ) -> str:
        """Save (or replace) a view, atomically; returns its table name.

        ``sample_ids``: the samples in order (repeats are dropped), or a frame with a
        ``sample_id`` column plus any further columns (a similarity query's distances).
        ``source``: where the view came from (e.g. the visualization's brain key). Every
        sample id must belong to the dataset.
        """
        self.require_dataset(dataset)
        check_name(name, "view name")
        if isinstance(sample_ids, pd.DataFrame):
            out = sample_ids.reset_index(drop=True).copy()
        else:
            if isinstance(sample_ids, str):
                raise TypeError(f"view {name!r}: sample_ids must be a list of ids, not a string")
            ids = list(dict.fromkeys(str(s) for s in sample_ids))
            out = pd.DataFrame({"sample_id": pd.Series(ids, dtype=object)})
        if "sample_id" in out:
            self._check_ids(dataset, name, out["sample_id"].astype(str).tolist())
        out.insert(0, "rank", range(len(out)))
        table = view_table_name(dataset, name)
        with self.transaction() as tx:
            tx.register("new_view", out)
            tx.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM new_view")
            tx.unregister("new_view")
            tx.execute("DELETE FROM saved_views WHERE dataset = ? AND name = ?", [dataset, name])
            tx.execute(
                "INSERT INTO saved_views VALUES (?, ?, ?, ?, ?)",
                [dataset, name, len(out), utcnow(), source],
            )
            self._mirror(tx, dataset, f"views/{name}", f"FROM {table}")
        return table

    def _check_ids(self, dataset: str, name: str, ids: list[str]) -> None:
        missing = set(self.unknown_samples(dataset, ids))
        unknown = [i for i in ids if i in missing]
        if unknown:
            raise StoreError(
                f"view {name!r}: {len(unknown)} sample id(s) not in dataset {dataset!r}, "
                f"e.g. {unknown[:3]}"
            )

    def saved_views(self, dataset: str) -> pd.DataFrame:
        """(name, n, created_at, source) of a dataset's saved views, by name."""
        return self.query(
            "SELECT name, n, created_at, source FROM saved_views WHERE dataset = ? ORDER BY name",
            [dataset],
        )

    def _require_view(self, dataset: str, name: str) -> None:
        check_name(name, "view name")
        names = self.saved_views(dataset)["name"].tolist()
        if name not in names:
            known = ", ".join(names) or "none"
            raise StoreError(f"dataset {dataset!r} has no saved view {name!r} (views: {known})")

    def load_view(self, dataset: str, name: str) -> pd.DataFrame:
        """A saved view, in its order (``rank``, ``sample_id`` and any saved columns)."""
        self._require_view(dataset, name)
        return self.query(f"SELECT * FROM {view_table_name(dataset, name)} ORDER BY rank")

    def load_view_ids(self, dataset: str, name: str) -> list[str]:
        """The sample ids of a saved view, in its order (each once)."""
        self._require_view(dataset, name)
        rows = self.query(f"SELECT sample_id FROM {view_table_name(dataset, name)} ORDER BY rank")
        return list(dict.fromkeys(rows["sample_id"].astype(str)))

    def delete_view(self, dataset: str, name: str) -> None:
        """Delete a saved view (its table, its listing and its Parquet copy)."""
        self._require_view(dataset, name)
        with self.transaction() as tx:
            tx.execute(f"DROP TABLE IF EXISTS {view_table_name(dataset, name)}")
            tx.execute("DELETE FROM saved_views WHERE dataset = ? AND name = ?", [dataset, name])
        remove_copy(self.parquet_dir, dataset, f"views/{name}")  # and its record

    def _drop_views_of(self, tx, dataset: str) -> None:
        """Inside ``tx``: drop every saved view of a dataset (its Parquet copies go with the
        dataset's folder)."""
        names = tx.execute("SELECT name FROM saved_views WHERE dataset = ?", [dataset]).fetchall()
        for (name,) in names:
            tx.execute(f"DROP TABLE IF EXISTS {view_table_name(dataset, name)}")
        tx.execute("DELETE FROM saved_views WHERE dataset = ?", [dataset])
