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
from dagster_brain.methods import RunOutcome, get_method, run_brain
from dagster_brain.methods.registry import API_HOLDER
from dagster_brain.names import check_name
from dagster_brain.owned import owner_of, run_owned
from dagster_brain.specs import EmbeddingsSpec, UniquenessSpec
from dagster_brain.store import EmbeddingSet, Store


def open_store(data_dir: str | Path | None = None) -> Store:
    """The store under ``data_dir`` (default: the brain config's ``data_dir``)."""
    return Store(data_dir or get_brain_config().data_dir)


@dataclass(frozen=True)
class DatasetView:
    """An ordered selection of a dataset's samples or patches, with optional score columns.

    ``ids`` are sample ids in view order; for patch views ``label_ids`` is aligned with them
    (a sample appears once per patch).
    """

    dataset: Dataset
    ids: tuple[str, ...]
    scores: pd.DataFrame | None = None  # per-id columns (a run's results, distances...)
    label_ids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return iter(self.label_ids if self.label_ids is not None else self.ids)

    @property
    def name(self) -> str:
        """The dataset's name."""
        return self.dataset.name

    @property
    def _key(self) -> str:
        return "label_id" if self.label_ids is not None else "sample_id"

    def _frame(self) -> pd.DataFrame:
        """View ids (and label ids) in order, with the score columns joined."""
        base = pd.DataFrame({"sample_id": list(self.ids)})
        if self.label_ids is not None:
            base["label_id"] = list(self.label_ids)
        if self.scores is not None:
            extra = self.scores.drop(
                columns=[c for c in ("sample_id", "label_id") if c != self._key], errors="ignore"
            ).drop_duplicates(self._key)
            base = base.merge(extra, on=self._key, how="left")
        return base

    def to_pandas(self) -> pd.DataFrame:
        """The view's rows in order: ids, score columns, then the samples' fields."""
        samples = self.dataset.store.samples(self.dataset.name, sorted(set(self.ids)))
        return self._frame().join(samples.set_index("sample_id"), on="sample_id")

    def sort_by(self, column: str, reverse: bool = False) -> DatasetView:
        """The view ordered by a score column (ascending unless ``reverse``)."""
        frame = self._frame()
        if column not in frame:
            raise KeyError(f"view of {self.name!r} has no column {column!r}")
        frame = frame.sort_values(column, ascending=not reverse, kind="stable")
        return self._with(frame)

    def _with(self, frame: pd.DataFrame) -> DatasetView:
        labels = tuple(frame["label_id"]) if self.label_ids is not None else None
        return DatasetView(self.dataset, tuple(frame["sample_id"]), self.scores, labels)

    def select(self, ids: Sequence[str]) -> DatasetView:
        """The view restricted to ``ids`` (sample ids, or label ids for patch views), in order."""
        frame = self._frame().drop_duplicates(self._key).set_index(self._key, drop=False)
        missing = [i for i in ids if i not in frame.index]
        if missing:
            raise KeyError(f"view of {self.name!r} has no items {missing[:5]}")
        return self._with(frame.loc[list(ids)].reset_index(drop=True))

    def match(self, column: str, predicate) -> DatasetView:
        """The items whose ``column`` satisfies ``predicate`` (a function of the value)."""
        frame = self._frame()
        if column not in frame:
            raise KeyError(f"view of {self.name!r} has no column {column!r}")
        return self._with(frame[frame[column].map(predicate).astype(bool)])

    def save(self, name: str) -> str:
        """Write the view (ids and score columns, in order) to ``views."<dataset>__<name>"``."""
        return self.dataset.store.save_view(self.dataset.name, name, self._frame())

    def sort_by_similarity(self, query: Any, **kwargs: Any) -> DatasetView:
        """See :func:`sort_by_similarity` (only this view's items are returned)."""
        return sort_by_similarity(self, query, **kwargs)


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

    def load_brain_results(self, brain_key: str, **backend_params: Any):
        """A run's results: a ``SimilarityIndex`` for similarity runs, else its results table."""
        if self.store.get_run(self.name, brain_key).kind == "similarity":
            from dagster_brain.similarity.compute import load_index

            return load_index(self.store, self.name, brain_key, backend_params or None)
        return self.store.load_results(self.name, brain_key)

    def sort_by_similarity(self, query: Any, **kwargs: Any) -> DatasetView:
        """See :func:`sort_by_similarity`."""
        return sort_by_similarity(self, query, **kwargs)

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
        from dagster_brain.methods import delete_brain_run

        delete_brain_run(self.store, self.name, brain_key)

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
    brain_key: str | None = None,
) -> tuple[str, bool]:
    """The embeddings key to use (an existing key, a stored array, or a model's output),
    and whether this call wrote it.

    ``brain_key``: the run's key; when its asset owns it, nothing is written here: no
    ``embeddings`` means the declared key, and an array or a model is refused.
    """
    from dagster_brain.embeddings import compute_embeddings
    from dagster_brain.resources.embedder import EmbedderResource

    store = dataset.store
    if isinstance(embeddings, str):
        store.read_embeddings(dataset.name, embeddings, ids=[])  # clear error if unknown
        return embeddings, False
    owner = owner_of(store, dataset.name, brain_key) if brain_key else None
    if owner is not None:
        declared = getattr(owner.spec, "embeddings", None)
        if embeddings is None and model is None and declared:
            return declared, False
        raise owner.refuse(
            f"its embeddings are the declared key {declared!r}; pass that key rather than "
            "an array or a model"
        )
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


def _run(
    spec: Any, store: Store, ids: list[str] | None = None, artifacts: list | None = None
) -> RunOutcome:
    """Run a brain-run spec: an ad-hoc key through ``run_brain`` (holding its lock); a key
    declared in the brain-keys YAML as a materialisation of its asset, or refused."""
    owner = owner_of(store, spec.dataset, spec.brain_key)
    if owner is not None:
        return run_owned(owner, spec, store, ids)
    extra = {} if artifacts is None else {"artifacts": artifacts}
    return run_brain(spec, store, ids=ids, **extra)


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
        dataset, embeddings, model, ids, f"{key}_embeddings", patches_field, key
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
    return _run(spec, dataset.store, ids=ids, artifacts=artifacts)


def compute_brain(
    samples: Dataset | DatasetView, kind: str, brain_key: str | None = None, **fields: Any
) -> RunOutcome:
    """Run any registered brain method: ``fields`` are its spec's fields (the brain key
    defaults to the kind). The brain key is held for the run, as a Dagster run holds it."""
    method = get_method(kind, brain_key)
    dataset, ids = _as_view(samples)
    spec = method.spec.model_validate(
        {"kind": kind, "dataset": dataset.name, "brain_key": brain_key or kind, **fields}
    )
    return _run(spec, dataset.store, ids=ids)


def get_embeddings(dataset: Dataset, key: str) -> EmbeddingSet:
    """Vectors of an embeddings key."""
    return dataset.store.read_embeddings(dataset.name, key)


def compute_similarity(
    samples: Dataset | DatasetView,
    patches_field: str | None = None,
    embeddings: str | np.ndarray | None = None,
    model: str | None = None,
    brain_key: str | None = None,
    backend: str | None = None,
    metric: str = "cosine",
    overwrite: bool = False,
    **backend_params: Any,
):
    """Build a nearest-neighbour index and return it (a ``SimilarityIndex``).

    ``backend``: sklearn (default), qdrant, milvus, lancedb or pinecone; their settings come
    from the brain config, overridden by ``backend_params``. An existing brain key with a
    different config is refused unless ``overwrite``.
    """
    from dagster_brain.similarity.compute import build_index
    from dagster_brain.specs import SimilaritySpec

    dataset, ids = _as_view(samples)
    key = brain_key or "similarity"
    emb_key, created = resolve_embeddings(
        dataset, embeddings, model, ids, f"{key}_embeddings", patches_field, key
    )
    spec = SimilaritySpec(
        brain_key=key,
        kind="similarity",
        dataset=dataset.name,
        embeddings=emb_key,
        backend=backend,
        metric=metric,
        model=model,
    )
    artifacts = [{"type": "embeddings", "key": emb_key}] if created else []
    owner = owner_of(dataset.store, spec.dataset, spec.brain_key)
    if owner is not None:
        if backend_params:
            raise owner.refuse(f"backend settings {sorted(backend_params)} are not launch-time")
        run_owned(owner, spec, dataset.store, ids)
        from dagster_brain.similarity.compute import load_index

        return load_index(dataset.store, dataset.name, spec.brain_key)
    # the brain key is held like run_brain holds it (the index is returned open, so the
    # build is called here rather than through the method's runner, which closes it)
    with dataset.store.run_lock(spec.dataset, spec.brain_key, API_HOLDER):
        index, _, _ = build_index(
            spec,
            dataset.store,
            ids=ids,
            params=backend_params or None,
            overwrite=overwrite,
            artifacts=artifacts,
        )
    return index


def _similarity_key(dataset: Dataset, brain_key: str | None) -> str:
    if brain_key is not None:
        return brain_key
    keys = dataset.list_brain_runs(type="similarity")
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise ValueError(f"dataset {dataset.name!r} has no similarity index; compute one first")
    raise ValueError(
        f"dataset {dataset.name!r} has several similarity indexes {keys}: pass brain_key"
    )


def sort_by_similarity(
    samples: Dataset | DatasetView,
    query: Any,
    k: int | None = None,
    reverse: bool = False,
    dist_field: str = "distance",
    brain_key: str | None = None,
    include_query: bool = True,
) -> DatasetView:
    """The samples (or patches) of a dataset or view ordered by similarity to a query.

    ``query``: a sample id (label id on patch indexes) or list of them, a vector or 2-D array
    of vectors, or a text prompt (CLIP-style models). ``k=None`` returns the whole view,
    sorted; ``reverse`` gives the least similar first; distances go to ``dist_field``.
    Querying by id returns the query item itself first unless ``include_query=False``.
    """
    from dagster_brain.similarity.compute import load_index

    dataset, ids = _as_view(samples)
    index = load_index(dataset.store, dataset.name, _similarity_key(dataset, brain_key))
    try:
        if ids is not None:
            index.use_view(ids)
        result = index.sort_by_similarity(
            query, k=k, reverse=reverse, dist_field=dist_field, include_query=include_query
        )
    finally:
        index.close()
    frame = result.to_frame()
    labels = tuple(result.label_ids) if result.label_ids is not None else None
    return DatasetView(dataset, tuple(result.sample_ids), frame, labels)


def compute_near_duplicates(
    samples: Dataset | DatasetView,
    similarity: str | None = None,
    thresh: float | str | None = "auto",
    fraction: float | None = None,
    verify: bool = True,
    brain_key: str = "duplicates",
) -> RunOutcome:
    """Near-duplicate groups on a similarity index (``similarity``: its brain key).

    By default the threshold is chosen from the data and candidate pairs are confirmed on
    the images; ``thresh`` (a distance) or ``fraction`` (the share to flag) fix it instead.
    """
    from dagster_brain.specs import DuplicatesSpec

    dataset, ids = _as_view(samples)
    spec = DuplicatesSpec(
        brain_key=brain_key,
        kind="duplicates",
        dataset=dataset.name,
        similarity=_similarity_key(dataset, similarity),
        thresh="auto" if fraction is not None and thresh == "auto" else thresh,
        fraction=fraction,
        verify=verify,
    )
    return _run(spec, dataset.store, ids=ids)


def compute_exact_duplicates(
    samples: Dataset | DatasetView, brain_key: str = "exact_duplicates"
) -> RunOutcome:
    """Groups of byte-identical or pixel-identical samples (no embeddings needed)."""
    from dagster_brain.specs import ExactDuplicatesSpec

    dataset, ids = _as_view(samples)
    spec = ExactDuplicatesSpec(brain_key=brain_key, kind="exact_duplicates", dataset=dataset.name)
    return _run(spec, dataset.store, ids=ids)


def compute_mistakenness(
    samples: Dataset | DatasetView,
    pred_field: str,
    label_field: str = "ground_truth",
    mistakenness_field: str = "mistakenness",
    method: str | None = None,
    use_logits: bool | None = None,
    copy_missing: bool = False,
    **detection_params: Any,
) -> RunOutcome:
    """How likely each annotation is wrong (classification or detections); the brain key is
    ``mistakenness_field``, as in the reference. ``method`` / ``use_logits`` left out: the
    spec's defaults for the field's kind."""
    from dagster_brain.specs import MistakennessSpec

    dataset, ids = _as_view(samples)
    given = {"method": method, "use_logits": use_logits}
    spec = MistakennessSpec(
        brain_key=mistakenness_field,
        kind="mistakenness",
        dataset=dataset.name,
        pred_field=pred_field,
        label_field=label_field,
        copy_missing=copy_missing,
        **{k: v for k, v in given.items() if v is not None},
        **detection_params,
    )
    return _run(spec, dataset.store, ids=ids)


def compute_hardness(
    samples: Dataset | DatasetView,
    label_field: str,
    hardness_field: str = "hardness",
    method: str = "entropy",
) -> RunOutcome:
    """The model's uncertainty per sample from the logits of ``label_field`` (predictions)."""
    from dagster_brain.specs import HardnessSpec

    dataset, ids = _as_view(samples)
    spec = HardnessSpec(
        brain_key=hardness_field,
        kind="hardness",
        dataset=dataset.name,
        label_field=label_field,
        method=method,
    )
    return _run(spec, dataset.store, ids=ids)


def compute_visualization(
    samples: Dataset | DatasetView,
    embeddings: str | np.ndarray | None = None,
    model: str | None = None,
    method: str = "umap",
    num_dims: int = 2,
    brain_key: str = "visualization",
    similarity_index: str | None = None,
    patches_field: str | None = None,
    label_field: str | None = None,
    seed: int = 51,
    points_path: str | None = None,
) -> RunOutcome:
    """2-D/3-D points of the samples (or patches), with a PNG and an interactive HTML plot."""
    from dagster_brain.specs import VisualizationSpec

    dataset, ids = _as_view(samples)
    emb_key, created = (None, False)
    if similarity_index is None:
        emb_key, created = resolve_embeddings(
            dataset, embeddings, model, ids, f"{brain_key}_embeddings", patches_field, brain_key
        )
    spec = VisualizationSpec(
        brain_key=brain_key,
        kind="visualization",
        dataset=dataset.name,
        embeddings=emb_key,
        similarity=similarity_index,
        method=method,
        num_dims=num_dims,
        seed=seed,
        label_field=label_field,
        points_path=points_path,
    )
    artifacts = [{"type": "embeddings", "key": emb_key}] if created else []
    return _run(spec, dataset.store, ids=ids, artifacts=artifacts)
