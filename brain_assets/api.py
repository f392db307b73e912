"""The notebook API, with the reference's call names; it runs the same code as the assets.

>>> import dagster_brain as fob
>>> ds = fob.load_dataset("digits")
>>> fob.compute_uniqueness(ds, embeddings="default")
>>> ds.list_brain_runs(type="uniqueness")
>>> ds.load_brain_view("uniqueness").sort_by("uniqueness", reverse=True).ids[:10]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.config import get_brain_config
from dagster_brain.methods import RunOutcome, run_uniqueness
from dagster_brain.names import check_name
from dagster_brain.specs import EmbeddingsSpec, UniquenessSpec
from dagster_brain.store import EmbeddingSet, Store


def open_store(data_dir: str | Path | None = None) -> Store:
    """The store under ``data_dir`` (default: the brain config's ``data_dir``)."""
    return Store(data_dir or get_brain_config().data_dir)


@dataclass(frozen=True)
class DatasetView:
    """An ordered selection of a dataset's samples (what a brain run ran on, a sort result...)."""

    dataset: Dataset
    ids: tuple[str, ...]
    scores: pd.DataFrame | None = None  # optional per-id columns (e.g. a run's results)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return iter(self.ids)

    @property
    def name(self) -> str:
        """The dataset's name."""
        return self.dataset.name

    def to_pandas(self) -> pd.DataFrame:
        """The samples of the view, in view order, with any score columns joined."""
        df = self.dataset.store.samples(self.dataset.name, self.ids).set_index("sample_id")
        df = df.loc[list(self.ids)].reset_index()
        if self.scores is not None:
            df = df.merge(self.scores, on="sample_id", how="left")
        return df

    def sort_by(self, column: str, reverse: bool = False) -> DatasetView:
        """The view ordered by a score column (ascending unless ``reverse``)."""
        if self.scores is None or column not in self.scores:
            raise KeyError(f"view of {self.name!r} has no column {column!r}")
        order = self.scores.drop_duplicates("sample_id").sort_values(
            column, ascending=not reverse, kind="stable"
        )
        ids = [i for i in order["sample_id"] if i in set(self.ids)]
        return DatasetView(self.dataset, tuple(ids), self.scores)

    def select(self, ids: Sequence[str]) -> DatasetView:
        """The view restricted to ``ids`` (in the given order)."""
        known = set(self.ids)
        missing = [i for i in ids if i not in known]
        if missing:
            raise KeyError(f"view of {self.name!r} has no samples {missing[:5]}")
        return DatasetView(self.dataset, tuple(ids), self.scores)


class Dataset:
    """A named dataset in a store, with the reference's brain-run methods."""

    def __init__(self, name: str, store: Store):
        self.name = check_name(name, "dataset")
        self.store = store
        store.require_dataset(name)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {len(self)} samples, store={self.store.data_dir})"

    def __len__(self) -> int:
        return len(self.store.sample_ids(self.name))

    @property
    def sample_ids(self) -> list[str]:
        """All sample ids, sorted."""
        return self.store.sample_ids(self.name)

    def view(self, ids: Sequence[str] | None = None) -> DatasetView:
        """The whole dataset (or some ids) as a view."""
        return DatasetView(self, tuple(self.sample_ids if ids is None else ids))

    def to_pandas(self) -> pd.DataFrame:
        """All samples."""
        return self.store.samples(self.name)

    # -- brain runs (reference names) ----------------------------------------------------

    def list_brain_runs(self, type: str | None = None, method: str | None = None) -> list[str]:
        """Brain keys of this dataset, optionally of one type and/or method."""
        return self.store.list_runs(self.name, kind=type, method=method)["brain_key"].tolist()

    def has_brain_run(self, brain_key: str) -> bool:
        """Whether a brain run with this key exists."""
        return self.store.get_run(self.name, brain_key, missing_ok=True) is not None

    def get_brain_info(self, brain_key: str) -> dict[str, Any]:
        """Config, timestamp, versions, lineage and size of a run, without its results."""
        return self.store.get_run(self.name, brain_key).info()

    def load_brain_results(self, brain_key: str) -> pd.DataFrame:
        """A run's results table."""
        return self.store.load_results(self.name, brain_key)

    def load_brain_view(self, brain_key: str) -> DatasetView:
        """The samples the run ran on, with its results as score columns."""
        record = self.store.get_run(self.name, brain_key)
        results = self.store.load_results(self.name, brain_key)
        return DatasetView(self, tuple(record.sample_ids), results if len(results) else None)

    def rename_brain_run(self, brain_key: str, new_brain_key: str) -> None:
        """Move a run and its results to a new key."""
        self.store.rename_run(self.name, brain_key, new_brain_key)

    def delete_brain_run(self, brain_key: str) -> None:
        """Delete a run and everything it wrote."""
        self.store.delete_run(self.name, brain_key)

    def delete_brain_runs(self) -> None:
        """Delete every brain run of this dataset."""
        for key in self.list_brain_runs():
            self.delete_brain_run(key)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """A dataset of the store under ``data_dir`` (default: the brain config's)."""
    return Dataset(name, open_store(data_dir))


def list_datasets(data_dir: str | Path | None = None) -> list[str]:
    """Names of the datasets in the store."""
    return open_store(data_dir).list_datasets()


def _as_view(samples: Dataset | DatasetView) -> tuple[Dataset, list[str] | None]:
    if isinstance(samples, DatasetView):
        return samples.dataset, list(samples.ids)
    if isinstance(samples, Dataset):
        return samples, None
    raise TypeError(f"expected a Dataset or DatasetView, got {type(samples).__name__}")


def resolve_embeddings(
    dataset: Dataset,
    embeddings: str | np.ndarray | None,
    model: str | None,
    ids: list[str] | None,
    default_key: str,
    patches_field: str | None = None,
) -> tuple[str, bool]:
    """The embeddings key to use (an existing key, a stored array, or a model's output),
    and whether this call wrote it."""
    from dagster_brain.embeddings import compute_embeddings
    from dagster_brain.resources.embedder import EmbedderResource

    store = dataset.store
    if isinstance(embeddings, str):
        store.read_embeddings(dataset.name, embeddings, ids=[])  # clear error if unknown
        return embeddings, False
    if embeddings is not None:
        vectors = np.asarray(embeddings, dtype=np.float32)
        sample_ids = ids if ids is not None else dataset.sample_ids
        if vectors.shape[0] != len(sample_ids):
            raise ValueError(
                f"embeddings array has {vectors.shape[0]} rows for {len(sample_ids)} samples of "
                f"{dataset.name!r}"
            )
        store.write_embeddings(
            dataset.name, default_key, sample_ids, vectors, model=model, source="array"
        )
        return default_key, True
    model_name = model or get_brain_config().default_model
    spec = EmbeddingsSpec(
        key=default_key, dataset=dataset.name, model=model_name, patches_field=patches_field
    )
    compute_embeddings(spec, store, embedder=EmbedderResource(model=model_name), ids=ids)
    return default_key, True


def compute_uniqueness(
    samples: Dataset | DatasetView,
    uniqueness_field: str = "uniqueness",
    embeddings: str | np.ndarray | None = None,
    model: str | None = None,
    brain_key: str | None = None,
    k: int = 3,
    weights: Sequence[float] | None = None,
    metric: str = "cosine",
    patches_field: str | None = None,
) -> RunOutcome:
    """Score each sample (or patch) in [0, 1] by how far it is from its nearest neighbours.

    ``embeddings``: an embeddings key, an (n, d) array aligned with the samples, or None to
    compute them with ``model`` (default: the brain config's default model). The brain key
    defaults to ``uniqueness_field``, as in the reference.
    """
    dataset, ids = _as_view(samples)
    key = brain_key or uniqueness_field
    emb_key, created = resolve_embeddings(
        dataset, embeddings, model, ids, f"{key}_embeddings", patches_field
    )
    spec = UniquenessSpec(
        brain_key=key,
        kind="uniqueness",
        dataset=dataset.name,
        embeddings=emb_key,
        k=k,
        weights=list(weights) if weights is not None else None,
        metric=metric,
    )
    artifacts = [{"type": "embeddings", "key": emb_key}] if created else []
    return run_uniqueness(spec, dataset.store, ids=ids, artifacts=artifacts)


def get_embeddings(dataset: Dataset, key: str) -> EmbeddingSet:
    """Vectors of an embeddings key."""
    return dataset.store.read_embeddings(dataset.name, key)
