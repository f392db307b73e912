"""The notebook API, with the reference's call names; it runs the same code as the assets.

>>> import dagster_brain as fob
>>> ds = fob.load_dataset("digits")
>>> fob.compute_uniqueness(ds, embeddings="default")
>>> ds.list_brain_runs(type="uniqueness")
>>> ds.load_brain_view("uniqueness").sort_by("uniqueness", reverse=True)  # an HTML table
>>> fob.compute_similarity(ds, embeddings="default")
>>> fob.compute_near_duplicates(ds)
>>> fob.visualize_duplicates(ds).save("duplicates.png")  # a PIL image; Jupyter shows it

Every public name has a docstring with ``Args:`` and ``Returns:`` (``help(fob.NAME)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.config import get_brain_config
from dagster_brain.display import HTML_ROWS, THUMB_SIZE, png_image, view_html
from dagster_brain.methods import RunOutcome, get_method, run_brain
from dagster_brain.methods.registry import API_HOLDER
from dagster_brain.names import check_name
from dagster_brain.owned import owner_of, run_owned
from dagster_brain.specs import EmbeddingsSpec, UniquenessSpec
from dagster_brain.store import EmbeddingSet, Store


def open_store(data_dir: str | Path | None = None) -> Store:
    """Open (or create) the DuckDB + Parquet store of a data directory.

    Args:
        data_dir: the data directory; None: the brain config's ``data_dir``.

    Returns:
        The :class:`~dagster_brain.store.Store`.
    """
    config = get_brain_config()
    return Store(data_dir or config.data_dir, memory_limit=config.store_memory_limit)


@dataclass(frozen=True, repr=False)
class DatasetView:
    """An ordered selection of a dataset's samples or patches, with optional score columns.

    In Jupyter a view shows as a table of its first rows with thumbnails (:meth:`to_html`).

    Args:
        dataset: the dataset the items belong to.
        ids: sample ids in view order; for patch views one per patch (a sample appears once
            per patch).
        scores: per-item columns (a run's results, distances...) keyed by ``sample_id``
            (``label_id`` for patch views); None: no score columns.
        label_ids: for patch views, the label ids aligned with ``ids``; None: a sample view.
    """

    dataset: Dataset
    ids: tuple[str, ...]
    scores: pd.DataFrame | None = None  # per-id columns (a run's results, distances...)
    label_ids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        item = "patches" if self.label_ids is not None else "samples"
        cols = self._score_columns()
        extra = f", columns={cols}" if cols else ""
        return f"DatasetView({self.name!r}, {len(self)} {item}{extra})"

    def _repr_html_(self) -> str:
        return self.to_html()

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

    def _score_columns(self) -> list[str]:
        if self.scores is None:
            return []
        return [c for c in self.scores.columns if c not in ("sample_id", "label_id")]

    def to_pandas(self) -> pd.DataFrame:
        """The view as a table.

        Returns:
            One row per item in view order: ids, score columns, then the samples' fields.
        """
        samples = self.dataset.store.samples(self.dataset.name, sorted(set(self.ids)))
        return self._frame().join(samples.set_index("sample_id"), on="sample_id")

    def to_html(self, max_rows: int = HTML_ROWS, thumb_size: int = THUMB_SIZE) -> str:
        """An HTML table of the first rows (what Jupyter shows for a view).

        Args:
            max_rows: how many rows to show.
            thumb_size: the thumbnails' longest edge in pixels.

        Returns:
            HTML: a line "N of M samples" (or patches), then one row per item with its
            thumbnail, ids, labels of every label field and the view's score columns.
        """
        frame = self._frame().head(max_rows).copy()
        store, name = self.dataset.store, self.dataset.name
        shown = frame["sample_id"].tolist()
        paths = store.samples(name, sorted(set(shown))).set_index("sample_id")["filepath"]
        frame["filepath"] = frame["sample_id"].map(paths)
        label_cols = []
        for fld in store.label_fields(name)["field"]:
            labels = store.labels(name, fld)
            labels = labels[labels["sample_id"].isin(shown)]
            if self.label_ids is not None:
                by_label = labels.set_index("label_id")["label"]
                values = frame["label_id"].map(by_label)
                if values.isna().all():
                    continue
            else:
                per_sample = labels.groupby("sample_id", sort=False)["label"].agg(list)
                values = frame["sample_id"].map(per_sample)
                values = values.map(lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v)
            frame[fld] = values
            label_cols.append(fld)
        ids = ["sample_id", "label_id"] if self.label_ids is not None else ["sample_id"]
        return view_html(
            frame,
            len(self),
            title=name,
            item="patches" if self.label_ids is not None else "samples",
            id_columns=ids,
            label_columns=label_cols,
            score_columns=[c for c in self._score_columns() if c not in label_cols],
            thumb_size=thumb_size,
        )

    def sort_by(self, column: str, reverse: bool = False) -> DatasetView:
        """The view ordered by a score column.

        Args:
            column: a score column of the view (e.g. ``"uniqueness"``).
            reverse: highest first (default: ascending).

        Returns:
            A new view (the sort is stable: ties keep their order).
        """
        frame = self._frame()
        if column not in frame:
            raise KeyError(f"view of {self.name!r} has no column {column!r}")
        frame = frame.sort_values(column, ascending=not reverse, kind="stable")
        return self._with(frame)

    def _with(self, frame: pd.DataFrame) -> DatasetView:
        labels = tuple(frame["label_id"]) if self.label_ids is not None else None
        return DatasetView(self.dataset, tuple(frame["sample_id"]), self.scores, labels)

    def select(self, ids: Sequence[str]) -> DatasetView:
        """The view restricted to some items, in the given order.

        Args:
            ids: sample ids (label ids for patch views); each must be in the view.

        Returns:
            A new view of those items.
        """
        frame = self._frame().drop_duplicates(self._key).set_index(self._key, drop=False)
        missing = [i for i in ids if i not in frame.index]
        if missing:
            raise KeyError(f"view of {self.name!r} has no items {missing[:5]}")
        return self._with(frame.loc[list(ids)].reset_index(drop=True))

    def match(self, column: str, predicate) -> DatasetView:
        """The items whose column value satisfies a test.

        Args:
            column: a score column of the view.
            predicate: a function of one value returning true to keep the item.

        Returns:
            A new view of the matching items, in view order.
        """
        frame = self._frame()
        if column not in frame:
            raise KeyError(f"view of {self.name!r} has no column {column!r}")
        return self._with(frame[frame[column].map(predicate).astype(bool)])

    def save(self, name: str) -> str:
        """Store the view (ids and score columns, in order) under a name.

        Args:
            name: the view's name (a lower-case identifier).

        Returns:
            The DuckDB table it was written to, ``views."<dataset>__<name>"``.
        """
        return self.dataset.store.save_view(self.dataset.name, name, self._frame())

    def sort_by_similarity(self, query: Any, **kwargs: Any) -> DatasetView:
        """This view's items ordered by similarity to a query (:func:`sort_by_similarity`).

        Args:
            query: sample or label id(s), vector(s) or a text prompt.
            **kwargs: the other arguments of :func:`sort_by_similarity` (``k``, ``reverse``,
                ``dist_field``, ``brain_key``, ``include_query``).

        Returns:
            A view of this view's items, most similar first.
        """
        return sort_by_similarity(self, query, **kwargs)


class Dataset:
    """A named dataset in a store, with the reference's brain-run methods.

    In Jupyter a dataset shows as a table of its first samples with thumbnails.

    Args:
        name: the dataset's name (it must exist in the store).
        store: the store holding it (:func:`open_store`).
    """

    def __init__(self, name: str, store: Store):
        self.name = check_name(name, "dataset")
        self.store = store
        store.require_dataset(name)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {len(self)} samples, store={self.store.data_dir})"

    def __len__(self) -> int:
        return len(self.store.sample_ids(self.name))

    def _repr_html_(self) -> str:
        return self.view().to_html()

    def to_html(self, max_rows: int = HTML_ROWS, thumb_size: int = THUMB_SIZE) -> str:
        """An HTML table of the first samples (what Jupyter shows for a dataset).

        Args:
            max_rows: how many samples to show.
            thumb_size: the thumbnails' longest edge in pixels.

        Returns:
            HTML, as :meth:`DatasetView.to_html`.
        """
        return self.view().to_html(max_rows, thumb_size)

    @property
    def sample_ids(self) -> list[str]:
        """All sample ids, sorted."""
        return self.store.sample_ids(self.name)

    def view(self, ids: Sequence[str] | None = None) -> DatasetView:
        """The dataset, or some of its samples, as a view.

        Args:
            ids: sample ids in the order wanted; None: every sample, sorted by id.

        Returns:
            A :class:`DatasetView` without score columns.
        """
        return DatasetView(self, tuple(self.sample_ids if ids is None else ids))

    def to_pandas(self) -> pd.DataFrame:
        """All samples as a table.

        Returns:
            One row per sample (id, file path, size, tags, hashes, batch), sorted by id.
        """
        return self.store.samples(self.name)

    # -- brain runs (reference names) ----------------------------------------------------

    def list_brain_runs(self, type: str | None = None, method: str | None = None) -> list[str]:
        """The brain keys of this dataset.

        Args:
            type: only runs of this kind (e.g. ``"uniqueness"``); None: all.
            method: only runs of this method; None: all.

        Returns:
            The brain keys, sorted.
        """
        return self.store.list_runs(self.name, kind=type, method=method)["brain_key"].tolist()

    def has_brain_run(self, brain_key: str) -> bool:
        """Whether a brain run exists.

        Args:
            brain_key: the run's key.

        Returns:
            True if this dataset has a run with that key.
        """
        return self.store.get_run(self.name, brain_key, missing_ok=True) is not None

    def get_brain_info(self, brain_key: str) -> dict[str, Any]:
        """What a run was, without its results.

        Args:
            brain_key: the run's key.

        Returns:
            A JSON-friendly dict: type, method, config, timestamp, run id, code and data
            versions, package versions, upstream lineage, sizes, results table.
        """
        return self.store.get_run(self.name, brain_key).info()

    def load_brain_results(self, brain_key: str, **backend_params: Any):
        """A run's results.

        Args:
            brain_key: the run's key.
            **backend_params: for similarity runs, backend settings that override the stored
                ones (e.g. a URL).

        Returns:
            A ``SimilarityIndex`` for similarity runs (close it when done), else the results
            table as a DataFrame.
        """
        if self.store.get_run(self.name, brain_key).kind == "similarity":
            from dagster_brain.similarity.compute import load_index
            from dagster_brain.similarity.index import cached_index

            # loaded once per process and reused while the run is unchanged
            params = backend_params or None
            return cached_index(self.store, self.name, brain_key, load_index, params)
        return self.store.load_results(self.name, brain_key)

    def sort_by_similarity(self, query: Any, **kwargs: Any) -> DatasetView:
        """The samples ordered by similarity to a query (:func:`sort_by_similarity`).

        Args:
            query: sample or label id(s), vector(s) or a text prompt.
            **kwargs: the other arguments of :func:`sort_by_similarity`.

        Returns:
            A view, most similar first.
        """
        return sort_by_similarity(self, query, **kwargs)

    def load_brain_view(self, brain_key: str) -> DatasetView:
        """The samples a run ran on, with its results as score columns.

        Args:
            brain_key: the run's key.

        Returns:
            A :class:`DatasetView` in the run's sample order.
        """
        record = self.store.get_run(self.name, brain_key)
        results = self.store.load_results(self.name, brain_key)
        return DatasetView(self, tuple(record.sample_ids), results if len(results) else None)

    def list_saved_views(self) -> pd.DataFrame:
        """The dataset's saved views (``view.save(name)``, or a lasso in the viewer).

        Returns:
            A DataFrame of ``name``, ``n``, ``created_at`` and ``source`` (the plot's brain
            key when the viewer saved it), by name.
        """
        return self.store.saved_views(self.name)

    def load_saved_view(self, name: str) -> DatasetView:
        """A saved view again, in its saved order.

        Args:
            name: the view's name.

        Returns:
            A :class:`DatasetView` of its samples.
        """
        return DatasetView(self, tuple(self.store.load_view_ids(self.name, name)))

    def delete_saved_view(self, name: str) -> None:
        """Delete a saved view (its table, its listing and its Parquet copy).

        Args:
            name: the view's name.

        Returns:
            None.
        """
        self.store.delete_view(self.name, name)

    def rename_brain_run(self, brain_key: str, new_brain_key: str) -> None:
        """Move a run and its results to a new key.

        Args:
            brain_key: the run's key.
            new_brain_key: its new key (not in use).

        Returns:
            None.
        """
        self.store.rename_run(self.name, brain_key, new_brain_key)

    def delete_brain_run(self, brain_key: str) -> None:
        """Delete a run and everything it wrote (results, index, embeddings it computed).

        Args:
            brain_key: the run's key.

        Returns:
            None.
        """
        from dagster_brain.methods import delete_brain_run

        delete_brain_run(self.store, self.name, brain_key)

    def delete_brain_runs(self) -> None:
        """Delete every brain run of this dataset.

        Returns:
            None.
        """
        for key in self.list_brain_runs():
            self.delete_brain_run(key)


def load_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Open a dataset of a store.

    Args:
        name: the dataset's name.
        data_dir: the store's data directory; None: the brain config's ``data_dir``.

    Returns:
        The :class:`Dataset`.
    """
    return Dataset(name, open_store(data_dir))


def list_datasets(data_dir: str | Path | None = None) -> list[str]:
    """The names of the datasets in a store.

    Args:
        data_dir: the store's data directory; None: the brain config's ``data_dir``.

    Returns:
        The dataset names, sorted.
    """
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

    Args:
        samples: a dataset or a view (only its items are scored).
        uniqueness_field: the score column; also the brain key unless ``brain_key`` is given,
            as in the reference.
        embeddings: an embeddings key, an (n, d) array aligned with the samples, or None to
            compute them with ``model``.
        model: the model to embed with when ``embeddings`` is None (default: the brain
            config's default model, offline).
        brain_key: the run's key (default: ``uniqueness_field``).
        k: neighbours per item.
        weights: weights of the k neighbours' distances (default: equal).
        metric: ``"cosine"`` or ``"euclidean"``.
        patches_field: a detections field: score one embedding per box instead of per image.

    Returns:
        The run's outcome: ``record`` (what :meth:`Dataset.get_brain_info` shows) and
        ``results`` (one row per item with its score).
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
    """Run any registered brain method; the brain key is held for the run, as a Dagster run
    holds it.

    Args:
        samples: a dataset or a view.
        kind: the method's kind (e.g. ``"hardness"``; any registered method).
        brain_key: the run's key (default: ``kind``).
        **fields: the fields of the method's spec (as in the brain-keys YAML).

    Returns:
        The run's outcome (``record``, ``results``, ``summary``).
    """
    method = get_method(kind, brain_key)
    dataset, ids = _as_view(samples)
    spec = method.spec.model_validate(
        {"kind": kind, "dataset": dataset.name, "brain_key": brain_key or kind, **fields}
    )
    return _run(spec, dataset.store, ids=ids)


def get_embeddings(dataset: Dataset, key: str) -> EmbeddingSet:
    """The vectors stored under an embeddings key.

    Args:
        dataset: the dataset.
        key: the embeddings key.

    Returns:
        An ``EmbeddingSet``: ``ids``, ``sample_ids``, ``label_ids``, ``vectors`` (n, d),
        ``model`` and ``data_version``.
    """
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
    """Build a nearest-neighbour index of the samples (or patches).

    Args:
        samples: a dataset or a view (only its items are indexed).
        patches_field: a detections field: index one embedding per box.
        embeddings: an embeddings key, an (n, d) array aligned with the samples, or None to
            compute them with ``model``.
        model: the model to embed with (default: the brain config's default model); a
            CLIP-style model also answers text prompts.
        brain_key: the run's key (default: ``"similarity"``).
        backend: a registered vector backend: sklearn (default), qdrant, milvus, lancedb,
            pinecone...; its settings come from the brain config.
        metric: ``"cosine"``, ``"euclidean"`` or ``"dotproduct"`` (as the backend allows).
        overwrite: replace an existing brain key with a different config (else refused).
        **backend_params: backend settings that override the brain config's.

    Returns:
        The open ``SimilarityIndex`` (``sort_by_similarity``, ``find_duplicates``,
        ``find_unique``...); ``close()`` it when done.
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

    Args:
        samples: a dataset or a view (only its items are returned).
        query: a sample id (label id on patch indexes) or list of them, a vector or 2-D
            array of vectors, or a text prompt (CLIP-style models).
        k: how many items to return; None: the whole view, sorted.
        reverse: the least similar first.
        dist_field: the column the distances go to.
        brain_key: the similarity index (default: the dataset's only one).
        include_query: querying by id returns the query item itself first; False leaves
            it out.

    Returns:
        A :class:`DatasetView` in similarity order with a ``dist_field`` column.
    """
    from dagster_brain.similarity.compute import load_index
    from dagster_brain.similarity.index import cached_index

    dataset, ids = _as_view(samples)
    key = _similarity_key(dataset, brain_key)
    index = cached_index(dataset.store, dataset.name, key, load_index)  # reused while unchanged
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
    """Near-duplicate groups on a similarity index.

    Args:
        samples: a dataset or a view.
        similarity: the similarity index's brain key (default: the dataset's only one).
        thresh: a fixed distance threshold, or ``"auto"`` (chosen from the data).
        fraction: flag about this share of the items instead of a threshold.
        verify: confirm candidate pairs on the images (hashes, aligned pixels).
        brain_key: the run's key.

    Returns:
        The run's outcome; ``results`` has one row per member of each group: ``sample_id``,
        ``group``, ``role`` (``kept`` or ``duplicate``), ``nearest_id``, ``distance``, ``path``.
        :func:`visualize_duplicates` plots it.
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
    """Groups of byte-identical or pixel-identical samples (no embeddings needed).

    Args:
        samples: a dataset or a view.
        brain_key: the run's key.

    Returns:
        The run's outcome; ``results`` has one row per member of each group.
    """
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
    """How likely each annotation is wrong (classification or detections).

    Args:
        samples: a dataset or a view.
        pred_field: the predictions' label field.
        label_field: the annotations' label field.
        mistakenness_field: the score column; also the brain key, as in the reference.
        method: ``"confident_learning"`` or ``"reference"``; None: the spec's default.
        use_logits: score from the predictions' logits; None: the spec's default.
        copy_missing: detections: also store the predicted objects that no annotation
            matches (``possible_missing``).
        **detection_params: detection-only options of the spec (``iou_thresh``,
            ``missing_conf``, ``spurious_rule``, ``loc_iou_thresh``).

    Returns:
        The run's outcome; ``results`` has one row per sample (or annotation).
    """
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
    """The model's uncertainty per sample, from the logits of its predictions.

    Args:
        samples: a dataset or a view.
        label_field: the predictions' label field (with logits).
        hardness_field: the score column; also the brain key.
        method: ``"entropy"`` or ``"margin"``.

    Returns:
        The run's outcome; ``results`` has one row per sample.
    """
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
    """2-D/3-D points of the samples (or patches), with a PNG and an interactive HTML plot.

    Args:
        samples: a dataset or a view.
        embeddings: an embeddings key, an (n, d) array aligned with the samples, or None to
            compute them with ``model``.
        model: the model to embed with (default: the brain config's default model).
        method: ``"umap"``, ``"tsne"``, ``"pca"`` or ``"manual"`` (``points_path``).
        num_dims: 2 or 3.
        brain_key: the run's key.
        similarity_index: take the vectors of this similarity index instead.
        patches_field: a detections field: one point per box.
        label_field: colour the plot by this label field.
        seed: the random seed of the reduction.
        points_path: for ``method="manual"``, a table of precomputed points.

    Returns:
        The run's outcome; ``results`` holds the points. :func:`visualize_points` shows
        the plot.
    """
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


# -- plots for notebooks ------------------------------------------------------------------


def _run_of(samples: Dataset | DatasetView, brain_key: str, kind: str):
    """(dataset, record) of a brain run of the given kind."""
    dataset, _ = _as_view(samples)
    record = dataset.store.get_run(dataset.name, brain_key)
    if record.kind != kind:
        raise ValueError(
            f"brain key {brain_key!r} on {dataset.name!r} is a {record.kind} run, not {kind}"
        )
    return dataset, record


def visualize_duplicates(
    source: Dataset | DatasetView | Any,
    brain_key: str = "duplicates",
    points: np.ndarray | None = None,
):
    """A scatter plot of a near-duplicates run: duplicates (red) joined to their kept item
    (blue), the other items grey.

    Args:
        source: a dataset or view (the run ``brain_key`` of it is plotted), or an open
            ``SimilarityIndex`` after its ``find_duplicates()``.
        brain_key: the :func:`compute_near_duplicates` run to plot.
        points: (n, 2) coordinates of the index's items in its order; None: a PCA of the
            vectors.

    Returns:
        A ``PIL.Image.Image``: Jupyter shows it; ``.save("duplicates.png")`` writes it.
    """
    if not isinstance(source, (Dataset, DatasetView)):
        return png_image(source.visualize_duplicates(points))
    from types import SimpleNamespace

    from dagster_brain.algorithms.duplicates import visualize_duplicates as plot
    from dagster_brain.similarity.runs import read_index

    dataset, record = _run_of(source, brain_key, "duplicates")
    iv = read_index(dataset.store, dataset.name, record.config["similarity"], record.sample_ids)
    results = dataset.store.load_results(dataset.name, brain_key)
    item = "label_id" if "label_id" in results else "sample_id"
    dups = results[results["role"] == "duplicate"]
    neighbours: dict[str, list[tuple[str, float]]] = {}
    for row in dups.itertuples(index=False):
        kept = row.nearest_id
        neighbours.setdefault(kept, []).append((getattr(row, item), float(row.distance)))
    chosen = (record.config.get("chosen") or {}).get("thresh", record.config.get("thresh"))
    result = SimpleNamespace(
        duplicate_ids=dups[item].tolist(),
        neighbors_map=neighbours,
        thresh=float(chosen) if isinstance(chosen, (int, float)) else float("nan"),
        metric=iv.metric,
    )
    title = f"{dataset.name}/{brain_key}: {len(dups)} duplicates of {len(iv.ids)} items"
    return png_image(plot(points, iv.ids, result, vectors=iv.vectors, title=title))


def visualize_unique(
    source: Dataset | DatasetView | Any,
    brain_key: str = "unique",
    points: np.ndarray | None = None,
):
    """A scatter plot of a unique-subset run: the chosen items in green over all items.

    Args:
        source: a dataset or view (the run ``brain_key`` of it is plotted), or an open
            ``SimilarityIndex`` after its ``find_unique()``.
        brain_key: the unique-subset run (``compute_brain(ds, "unique", count=...)``).
        points: (n, 2) coordinates of the index's items in its order; None: a PCA of the
            vectors.

    Returns:
        A ``PIL.Image.Image``: Jupyter shows it; ``.save("unique.png")`` writes it.
    """
    if not isinstance(source, (Dataset, DatasetView)):
        return png_image(source.visualize_unique(points))
    from dagster_brain.algorithms.duplicates import visualize_unique as plot
    from dagster_brain.similarity.runs import read_index

    dataset, record = _run_of(source, brain_key, "unique")
    iv = read_index(dataset.store, dataset.name, record.config["similarity"], record.sample_ids)
    results = dataset.store.load_results(dataset.name, brain_key)
    chosen = results["label_id" if "label_id" in results else "sample_id"].tolist()
    title = f"{dataset.name}/{brain_key}: {len(chosen)} unique of {len(iv.ids)} items"
    return png_image(plot(points, iv.ids, chosen, vectors=iv.vectors, title=title))


def visualize_points(samples: Dataset | DatasetView, brain_key: str = "visualization"):
    """The scatter plot a :func:`compute_visualization` run drew (coloured by its
    ``label_field``, if it had one).

    Args:
        samples: the dataset (or a view of it) the run belongs to.
        brain_key: the visualization run.

    Returns:
        A ``PIL.Image.Image``: Jupyter shows it; ``.save("points.png")`` writes it. The
        interactive HTML plot is next to the PNG (``plots/<dataset>/<brain_key>.html``
        under the data directory).
    """
    from dagster_brain.visualization_runs import plot_paths

    dataset, _ = _run_of(samples, brain_key, "visualization")
    png, _ = plot_paths(dataset.store, dataset.name, brain_key)
    if not png.is_file():
        raise FileNotFoundError(
            f"brain run {brain_key!r} on {dataset.name!r} has no plot at {png}; "
            "run it again to draw one"
        )
    return png_image(png.read_bytes())


def compute_outliers(
    samples: Dataset | DatasetView,
    embeddings: str,
    brain_key: str = "outliers",
    k: int = 16,
    metric: str = "cosine",
    label_field: str | None = None,
) -> RunOutcome:
    """Score each sample (or patch) in [0, 1] by how far it lies from its ``k`` nearest
    neighbours compared with the rest (0.5: the outlier flag, robust z 3.5).

    Args:
        samples: a dataset or a view (only its items are scored).
        embeddings: the embeddings key to score.
        brain_key: the run's key.
        k: neighbours per item.
        metric: ``"cosine"`` or ``"euclidean"``.
        label_field: a classification field (or the detections field of patch embeddings):
            also score each item within its class (``class_outlier``).

    Returns:
        The run's outcome; ``results`` has ``outlier``, ``outlier_z``, ``is_outlier`` per item.
    """
    return compute_brain(
        samples,
        "outliers",
        brain_key,
        embeddings=embeddings,
        k=k,
        metric=metric,
        label_field=label_field,
    )


def compute_label_summary(
    samples: Dataset | DatasetView,
    label_field: str = "ground_truth",
    brain_key: str = "label_summary",
    split_field: str | None = "split",
    mistakenness: str | None = None,
) -> RunOutcome:
    """Label counts per class (and split), class imbalance, and classes with unusually many
    likely mistakes when the dataset has a mistakenness run on ``label_field``.

    Args:
        samples: a dataset or a view.
        label_field: the label field to summarise.
        brain_key: the run's key.
        split_field: ``"split"`` (the samples' split column), a classification field, or
            None for no split.
        mistakenness: the mistakenness run to read (None: the newest on ``label_field``).

    Returns:
        The run's outcome; ``results`` has one row per class.
    """
    return compute_brain(
        samples,
        "label_summary",
        brain_key,
        label_field=label_field,
        split_field=split_field,
        mistakenness=mistakenness,
    )


def write_health_report(
    dataset: Dataset | str, path: str | Path | None = None, data_dir: str | Path | None = None
) -> Path:
    """Write the dataset's health report: one self-contained HTML page from every brain run
    stored for it (issue counts, top items as thumbnails, duplicate groups, leaks, mistakes,
    the embeddings map).

    Args:
        dataset: the dataset, or its name.
        path: the HTML file (default: ``<data_dir>/reports/<dataset>.html``).
        data_dir: the data directory when ``dataset`` is a name (default: the brain config's).

    Returns:
        The path written.
    """
    from dagster_brain.health_report import write_health_report as write

    if isinstance(dataset, str):
        dataset = load_dataset(dataset, data_dir)
    out, _ = write(dataset.store, dataset.name, path)
    return out


# -- representativeness and leaky splits ---------------------------------------------------


def compute_representativeness(
    samples: Dataset | DatasetView,
    representativeness_field: str = "representativeness",
    method: str = "cluster-center",
    embeddings: str | np.ndarray | None = None,
    model: str | None = None,
    brain_key: str | None = None,
    n_clusters: int | None = None,
    patches_field: str | None = None,
) -> RunOutcome:
    """Score each sample (or patch) in [0, 1] by how typical it is of a dense cluster.

    Args:
        samples: a dataset or a view (only its items are scored).
        representativeness_field: the score column; also the brain key unless
            ``brain_key`` is given, as in the reference.
        method: ``"cluster-center"`` or ``"cluster-center-downweight"`` (also lowers items
            whose near neighbours already score higher).
        embeddings: an embeddings key (image or patch embeddings), an (n, d) array aligned
            with the samples, or None to compute them with ``model``.
        model: the model to embed with when ``embeddings`` is None.
        brain_key: the run's key (default: ``representativeness_field``).
        n_clusters: the number of clusters; None: chosen from the data (about sqrt(n / 2)).
        patches_field: a detections field: score one embedding per box.

    Returns:
        The run's outcome; ``results`` has one row per item: ``representativeness``,
        ``cluster``, ``centre_distance``.
    """
    from dagster_brain.methods.representativeness import RepresentativenessSpec

    dataset, ids = _as_view(samples)
    key = brain_key or representativeness_field
    emb_key, created = resolve_embeddings(
        dataset, embeddings, model, ids, f"{key}_embeddings", patches_field, key
    )
    spec = RepresentativenessSpec(
        brain_key=key,
        kind="representativeness",
        dataset=dataset.name,
        embeddings=emb_key,
        method=method,
        n_clusters=n_clusters,
    )
    artifacts = [{"type": "embeddings", "key": emb_key}] if created else []
    return _run(spec, dataset.store, ids=ids, artifacts=artifacts)


class LeakySplitsIndex:
    """The results of a leaky-splits run: which samples have a near-duplicate in another
    split, and views without them.

    Args:
        dataset: the dataset the run belongs to.
        brain_key: the leaky-splits run.
        outcome: the run's outcome when it was just computed (None: read from the store).
    """

    def __init__(self, dataset: Dataset, brain_key: str, outcome: RunOutcome | None = None):
        record = dataset.store.get_run(dataset.name, brain_key)
        if record.kind != "leaky_splits":
            raise ValueError(
                f"brain key {brain_key!r} on {dataset.name!r} is a {record.kind} run, "
                "not leaky_splits"
            )
        self.dataset, self.brain_key, self.outcome = dataset, brain_key, outcome
        self.results = dataset.store.load_results(dataset.name, brain_key)
        self.pairs = dataset.store.load_extra(dataset.name, brain_key, "pairs")

    def __repr__(self) -> str:
        return (
            f"LeakySplitsIndex({self.dataset.name!r}, {self.brain_key!r}, "
            f"{len(self.leak_ids)} leaking samples, {len(self.pairs)} pairs)"
        )

    @property
    def leak_ids(self) -> list[str]:
        """The samples with a near-duplicate in another split, closest pairs first."""
        leaks = self.results[self.results["leak"]].sort_values("distance", kind="stable")
        return list(dict.fromkeys(leaks["sample_id"]))

    @property
    def splits(self) -> dict[str, int]:
        """Samples per split (``unassigned``: samples without one)."""
        per = self.results.drop_duplicates("sample_id")["assigned_split"].value_counts()
        return {str(k): int(v) for k, v in per.items()}

    def leaks_view(self) -> DatasetView:
        """The leaking samples, closest pairs first.

        Returns:
            A :class:`DatasetView` with ``assigned_split``, ``nearest_id``,
            ``nearest_split``, ``distance`` and ``verification`` columns.
        """
        return DatasetView(self.dataset, tuple(self.leak_ids), self._scores())

    def leaks_for_sample(self, sample_id: str) -> DatasetView:
        """The samples of other splits that a sample leaks with.

        Args:
            sample_id: a sample of the run.

        Returns:
            A :class:`DatasetView` of its partners, closest first, with ``partner_split``,
            ``distance`` and ``verification`` columns (empty when it does not leak).
        """
        if sample_id not in set(self.results["sample_id"]):
            raise KeyError(
                f"sample {sample_id!r} is not in leaky-splits run {self.brain_key!r} on "
                f"{self.dataset.name!r}"
            )
        p = self.pairs
        mine_a, mine_b = p[p["sample_id_a"] == sample_id], p[p["sample_id_b"] == sample_id]
        other = pd.concat(
            [
                pd.DataFrame(
                    {
                        "sample_id": mine_a["sample_id_b"],
                        "partner_split": mine_a["split_b"],
                        "distance": mine_a["distance"],
                        "verification": mine_a["verification"],
                    }
                ),
                pd.DataFrame(
                    {
                        "sample_id": mine_b["sample_id_a"],
                        "partner_split": mine_b["split_a"],
                        "distance": mine_b["distance"],
                        "verification": mine_b["verification"],
                    }
                ),
            ]
        )
        other = other.sort_values("distance", kind="stable").drop_duplicates("sample_id")
        return DatasetView(self.dataset, tuple(other["sample_id"]), other.reset_index(drop=True))

    def no_leaks_view(self, view: Dataset | DatasetView | None = None) -> DatasetView:
        """A view (default: the run's samples) without the samples that leak.

        Args:
            view: a dataset or view to filter; None: every sample of the run.

        Returns:
            The view's samples that have no near-duplicate in another split, in view order.
        """
        leaking = set(self.leak_ids)
        if view is None:
            ids = list(dict.fromkeys(self.results["sample_id"]))
            return DatasetView(self.dataset, tuple(i for i in ids if i not in leaking))
        dataset, ids = _as_view(view)
        if dataset.name != self.dataset.name:
            raise ValueError(
                f"view of {dataset.name!r} is not of leaky-splits run {self.brain_key!r}'s "
                f"dataset {self.dataset.name!r}"
            )
        keep = [i for i in (ids if ids is not None else dataset.sample_ids) if i not in leaking]
        if isinstance(view, DatasetView):
            return view.select(keep)
        return DatasetView(dataset, tuple(keep))

    def _scores(self) -> pd.DataFrame:
        cols = [
            "sample_id",
            "assigned_split",
            "nearest_id",
            "nearest_split",
            "distance",
            "verification",
        ]
        leaks = self.results[self.results["leak"]].sort_values("distance", kind="stable")
        return leaks[cols].drop_duplicates("sample_id").reset_index(drop=True)


def compute_leaky_splits(
    samples: Dataset | DatasetView,
    splits: str | Sequence[str] | dict[str, Sequence[str]] = "split",
    embeddings: str | np.ndarray | None = None,
    model: str | None = None,
    brain_key: str = "leaky_splits",
    thresh: float | str = "auto",
    verify: bool = True,
    train_split: str | None = None,
    test_split: str | None = None,
    patches_field: str | None = None,
) -> LeakySplitsIndex:
    """Near-duplicates across splits: samples of one split with a copy in another.

    Args:
        samples: a dataset or a view.
        splits: a sample field or classification label field holding each sample's split
            (default ``"split"``), a list of tags (one per split), or a dict split name ->
            sample ids. Samples without a split are put in the split ``"unassigned"``.
        embeddings: an embeddings key, an (n, d) array aligned with the samples, or None to
            compute them with ``model``.
        model: the model to embed with when ``embeddings`` is None.
        brain_key: the run's key.
        thresh: ``"auto"`` (pairs confirmed on the images; without images, a data-chosen
            embedding distance), or an embedding distance that also confirms a pair.
        verify: confirm candidate pairs on the images (hashes, aligned pixels).
        train_split: the split the ``no_test_leaks`` check protects (default ``"train"``).
        test_split: the split that must not leak into it (default ``"test"``).
        patches_field: a detections field: one embedding per box.

    Returns:
        A :class:`LeakySplitsIndex`: ``leaks_view()``, ``leaks_for_sample(id)``,
        ``no_leaks_view(view)``, ``results`` (one row per item) and ``pairs``.
    """
    from dagster_brain.methods.leaky_splits import LeakySplitsSpec

    dataset, ids = _as_view(samples)
    emb_key, created = resolve_embeddings(
        dataset, embeddings, model, ids, f"{brain_key}_embeddings", patches_field, brain_key
    )
    given = (
        splits
        if isinstance(splits, str)
        else {k: list(v) for k, v in splits.items()}
        if isinstance(splits, dict)
        else list(splits)
    )
    spec = LeakySplitsSpec(
        brain_key=brain_key,
        kind="leaky_splits",
        dataset=dataset.name,
        embeddings=emb_key,
        splits=given,
        thresh=thresh,
        verify=verify,
        train_split=train_split,
        test_split=test_split,
    )
    artifacts = [{"type": "embeddings", "key": emb_key}] if created else []
    outcome = _run(spec, dataset.store, ids=ids, artifacts=artifacts)
    return LeakySplitsIndex(dataset, brain_key, outcome)


def load_leaky_splits(samples: Dataset | DatasetView, brain_key: str = "leaky_splits"):
    """The results of an earlier :func:`compute_leaky_splits` run.

    Args:
        samples: the dataset (or a view of it) the run belongs to.
        brain_key: the run's key.

    Returns:
        A :class:`LeakySplitsIndex`.
    """
    dataset, _ = _as_view(samples)
    return LeakySplitsIndex(dataset, brain_key)


def compute_image_issues(
    samples: Dataset | DatasetView, brain_key: str = "image_issues", **kwargs: Any
) -> RunOutcome:
    """Score and flag each image for dark, bright, blurry, low-information, odd-size,
    odd-aspect-ratio, greyscale and unreadable (no model needed).

    Args:
        samples: a dataset or a view (only its samples are scored; thresholds come from them).
        brain_key: the run's key.
        **kwargs: fields of the spec: ``issues`` (a list, default all), ``thresholds``
            (``"data"``: from the median and MAD of these images, default; ``"fixed"``: fixed
            cutoffs) and ``workers`` (decoding processes; 0: one per core, 1: inline).

    Returns:
        The run's outcome; ``results`` has one row per sample: ``<issue>_score`` in [0, 1]
        (0.5 at the flag threshold), ``is_<issue>``, ``issues`` (comma list),
        ``image_issue_score`` (the worst), the image statistics and ``error`` (why a file
        could not be read).
    """
    return compute_brain(samples, "image_issues", brain_key, **kwargs)
