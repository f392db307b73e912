"""Datasets, their samples and their label fields."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dagster_brain.names import check_name
from dagster_brain.store.core import StoreCore, pins
from dagster_brain.store.errors import StoreError
from dagster_brain.store.hashing import (
    DATA_VERSION_OF_WANTED_SQL,
    DATA_VERSION_SQL,
    hash_strings,
)
from dagster_brain.store.records import utcnow
from dagster_brain.store.tables import column_list

SAMPLES_COPY_SQL = "SELECT * FROM samples WHERE dataset = ?"


def with_columns(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of ``df`` with exactly these columns (missing ones filled with None)."""
    out = pd.DataFrame(index=range(len(df)))
    for c in columns:
        out[c] = df[c].to_numpy() if c in df else None
    return out


class SampleTables(StoreCore):
    """Datasets, samples and labels (tables ``datasets``, ``samples``, ``label_fields``,
    ``labels``)."""

    SAMPLE_COLUMNS = (
        "sample_id filepath width height size_bytes split tags content_hash pixel_hash batch"
    ).split()
    LABEL_COLUMNS = "sample_id label_id label confidence logits box".split()

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

    # -- samples and labels ---------------------------------------------------------------

    @pins
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
        frame = with_columns(samples, self.SAMPLE_COLUMNS)
        if frame["sample_id"].duplicated().any():
            dup = frame.loc[frame["sample_id"].duplicated(), "sample_id"].iloc[0]
            raise StoreError(f"dataset {dataset!r}: duplicate sample id {dup!r}")
        frame.insert(0, "dataset", dataset)
        label_frames = {}
        for fld, (kind, classes, df) in (labels or {}).items():
            check_name(fld, "label field")
            if kind not in ("classification", "detections"):
                raise StoreError(f"label field {fld!r}: unknown kind {kind!r}")
            lf = with_columns(df, self.LABEL_COLUMNS)
            lf.insert(0, "field", fld)
            lf.insert(0, "dataset", dataset)
            label_frames[fld] = (kind, classes, lf)
        ids = frame[["sample_id"]]
        sample_cols = column_list(["dataset", *self.SAMPLE_COLUMNS])
        label_cols = column_list(["dataset", "field", *self.LABEL_COLUMNS])
        with self.transaction() as tx:
            tx.register("new_ids", ids)
            replaced = tx.execute(
                "DELETE FROM samples WHERE dataset = ? AND sample_id IN "
                "(SELECT sample_id FROM new_ids)",
                [dataset],
            ).fetchall()[0][0]
            tx.register("new_samples", frame)
            tx.execute(f"INSERT INTO samples ({sample_cols}) SELECT {sample_cols} FROM new_samples")
            for fld, (kind, classes, lf) in label_frames.items():
                old = tx.execute(
                    "SELECT kind, classes FROM label_fields WHERE dataset = ? AND field = ?",
                    [dataset, fld],
                ).fetchone()
                if old and old[0] != kind:
                    raise StoreError(
                        f"dataset {dataset!r}: label field {fld!r} holds {old[0]}, not {kind}"
                    )
                if old and classes is None:
                    classes = old[1]
                tx.execute(
                    "INSERT OR REPLACE INTO label_fields VALUES (?, ?, ?, ?)",
                    [dataset, fld, kind, classes],
                )
                tx.execute(
                    "DELETE FROM labels WHERE dataset = ? AND field = ? AND sample_id IN "
                    "(SELECT sample_id FROM new_ids)",
                    [dataset, fld],
                )
                tx.register("new_labels", lf)
                tx.execute(f"INSERT INTO labels ({label_cols}) SELECT {label_cols} FROM new_labels")
                tx.unregister("new_labels")
            if replaced:
                self._mirror(tx, dataset, "samples", SAMPLES_COPY_SQL, [dataset])
            else:  # only new samples: appended to the copy as a part
                added = SAMPLES_COPY_SQL + " AND sample_id IN (SELECT sample_id FROM new_ids)"
                self._mirror_added(
                    tx, dataset, "samples", SAMPLES_COPY_SQL, [dataset], added, [dataset]
                )

    @pins
    def write_labels(
        self, dataset: str, fld: str, kind: str, classes: list[str] | None, df: pd.DataFrame
    ) -> None:
        """Replace the labels of one field for the samples in ``df`` (which must exist)."""
        self.require_dataset(dataset)
        unknown = self.unknown_samples(dataset, df["sample_id"].tolist())
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
        cols = column_list(self.SAMPLE_COLUMNS)
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

    def unknown_samples(self, dataset: str, ids: Sequence[str]) -> list[str]:
        """The ids among ``ids`` that are not samples of the dataset, sorted (reads only
        those ids, not the dataset's)."""
        if not len(ids):
            return []
        with self.connect() as conn:
            conn.register("asked", pd.DataFrame({"sample_id": list(set(ids))}, dtype=object))
            rows = conn.execute(
                "SELECT a.sample_id FROM asked a ANTI JOIN "
                "(SELECT sample_id FROM samples WHERE dataset = ?) s USING (sample_id) "
                "ORDER BY 1",
                [dataset],
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
        if classes is None or (pd.api.types.is_scalar(classes) and pd.isna(classes)):
            return row["kind"].iloc[0], None  # a field declared without a class list
        return row["kind"].iloc[0], list(classes)

    def labels(self, dataset: str, fld: str) -> pd.DataFrame:
        """Labels of one field, ordered by sample id then label id."""
        self.label_field(dataset, fld)
        return self.query(
            f"SELECT {column_list(self.LABEL_COLUMNS)} FROM labels "
            "WHERE dataset = ? AND field = ? ORDER BY sample_id, label_id",
            [dataset, fld],
        )

    def data_version(self, dataset: str, ids: Sequence[str] | None = None) -> str:
        """Hash of the sample ids and their content hashes (the dataset's data version)."""
        self.require_dataset(dataset)
        empty = hash_strings([])
        with self.connect() as conn:
            if ids is None:
                return conn.execute(DATA_VERSION_SQL, [empty, dataset]).fetchone()[0]
            conn.register("want", pd.DataFrame({"sample_id": list(ids)}, dtype=object))
            return conn.execute(DATA_VERSION_OF_WANTED_SQL, [empty, dataset]).fetchone()[0]
