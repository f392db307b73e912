"""``SimilarityIndex``: one index API over any vector backend, with bookkeeping in the store.

The backend holds the vectors; the store holds which ids the run put there (the run's results
table: ``id``, ``sample_id``, ``label_id``). Sizes are the backend's own counts; an index
whose backend lacks vectors the run recorded (a deleted file or collection) is refused with
:class:`IndexIncomplete` naming the fix.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import inspect
import logging
import os
import threading
import time
import typing
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydantic

from dagster_brain.algorithms.knn import check_vectors, pairwise_distances
from dagster_brain.display import PngBytes
from dagster_brain.progress import progress
from dagster_brain.similarity.backends.base import VectorBackend
from dagster_brain.similarity.backends.registry import backend_class
from dagster_brain.store import BrainRunRecord, Store

_LOG = logging.getLogger("dagster_brain")
ADD_BATCH = 10_000


class SimilarityError(ValueError):
    """A similarity request that cannot be answered (unknown ids, bad k, empty index...)."""


class IndexIncomplete(SimilarityError):
    """The backend holds fewer of the index's vectors than its run recorded."""


FETCH_CHUNK = 10_000  # ids per fetch when only asking which ids the backend holds


@dataclass(frozen=True)
class SimilarityConfig:
    """What a similarity run is, as stored in its brain run's config."""

    backend: str
    metric: str
    dim: int
    collection: str
    embeddings_key: str | None = None
    model: str | None = None
    patches_field: str | None = None
    supports_prompts: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # non-secret backend settings

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimilarityConfig:
        """Inverse of :meth:`to_dict` (ignores unknown keys)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def new_collection_name(dataset: str, brain_key: str) -> str:
    """A fresh backend collection name for one materialisation of a similarity run."""
    return f"brain_{dataset}_{brain_key}_{uuid.uuid4().hex[:8]}"


def index_root(store: Store, dataset: str) -> Path:
    """Folder for embedded backends' files (sklearn Parquet, qdrant, milvus-lite, lancedb)."""
    return store.data_dir / "indexes" / dataset


def open_backend(
    store: Store, dataset: str, config: SimilarityConfig, params: dict[str, Any] | None = None
) -> VectorBackend:
    """Open (creating if needed) the backend collection a config names."""
    settings = {**config.params, **(params or {})}
    cls = backend_class(config.backend)
    accepted = _accepted_params(cls)
    settings = {
        k: v
        for k, v in settings.items()
        if v is not None and k != "metric" and (accepted is None or k in accepted)
    }
    settings = _typed_settings(cls, settings)
    root = index_root(store, dataset)
    root.mkdir(parents=True, exist_ok=True)
    key = (config.backend, str(root), config.collection)
    return HANDLES.acquire(
        key, lambda: cls(config.collection, config.dim, config.metric, root, **settings)
    )


def bulk_writes(backend: VectorBackend):
    """The adapter's batched-write context (persist once at the end) if it has one."""
    bulk = getattr(backend, "bulk", None)
    return bulk() if bulk is not None else contextlib.nullcontext()


class BackendHandles:
    """Open backend clients shared within a process, counted per holder, under a lock.

    Embedded stores (Qdrant local mode, milvus-lite) lock their files to one client per
    process, so every index of one collection in a process shares one client; the last
    :meth:`release` closes it. Steps running in threads of one process may open and release
    concurrently.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (backend, root, collection) -> [open adapter, holders]
        self._open: dict[tuple[str, str, str], list[Any]] = {}

    def acquire(
        self, key: tuple[str, str, str], make: Callable[[], VectorBackend]
    ) -> VectorBackend:
        """The open client for ``key`` (made by ``make`` when none is open), one more holder."""
        with self._lock:
            entry = self._open.get(key)
            if entry is not None:
                entry[1] += 1
                return entry[0]
            backend = make()
            self._open[key] = [backend, 1]
            return backend

    def share(self, backend: VectorBackend) -> VectorBackend:
        """One more holder of a client that is open now (a cached index's, handed out)."""
        with self._lock:
            for entry in self._open.values():
                if entry[0] is backend:
                    entry[1] += 1
                    return backend
        raise SimilarityError(f"backend client of {backend.collection!r} is not open")

    def release(self, backend: VectorBackend) -> None:
        """One holder fewer; the last one (or a client never shared) closes it."""
        with self._lock:
            for key, entry in self._open.items():
                if entry[0] is backend:
                    entry[1] -= 1
                    if entry[1] > 0:
                        return
                    del self._open[key]
                    break
        backend.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


HANDLES = BackendHandles()  # this process's open clients (one client per embedded store)


def release_backend(backend: VectorBackend) -> None:
    """Give back a handle from :func:`open_backend`; the last one closes the client."""
    HANDLES.release(backend)


_SCALARS = (bool, int, float)


def _typed_settings(cls: type[VectorBackend], settings: dict[str, Any]) -> dict[str, Any]:
    """Text values of an adapter's bool, int or float keywords as those types (an environment
    variable gives ``"false"`` or ``"100000"``, which Python would take as true or compare as
    text); an error names the parameter."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation this module cannot resolve: leave the values
        return settings
    out = dict(settings)
    for name, value in settings.items():
        kinds = [
            t for t in (typing.get_args(hints.get(name)) or (hints.get(name),)) if t in _SCALARS
        ]
        if not isinstance(value, str) or not kinds:
            continue
        try:
            out[name] = pydantic.TypeAdapter(kinds[0]).validate_python(value)
        except pydantic.ValidationError as err:
            raise ValueError(
                f"{cls.__name__}: parameter {name}={value!r} is not a valid {kinds[0].__name__} "
                f"({err.errors()[0]['msg']})"
            ) from None
    return out


def _accepted_params(cls: type[VectorBackend]) -> set[str] | None:
    """Keyword parameters an adapter takes (None: it takes any)."""
    sig = inspect.signature(cls.__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return set(sig.parameters) - {"self", "collection", "dim", "metric", "root"}


@dataclass(frozen=True)
class SimilarityResult:
    """An ordered answer: ids (and label ids for patches) with their distances."""

    sample_ids: list[str]
    label_ids: list[str] | None
    distances: np.ndarray
    dist_field: str = "distance"

    def to_frame(self) -> pd.DataFrame:
        """``sample_id`` (``label_id``) and the distance column, in order."""
        df = pd.DataFrame({"sample_id": self.sample_ids})
        if self.label_ids is not None:
            df["label_id"] = self.label_ids
        df[self.dist_field] = self.distances
        return df


class DuplicatesMixin:
    """Unique and duplicate finding on the index's own vectors (every backend)."""

    def find_unique(self, count: int, seed: int = 0) -> list[str]:
        """``count`` items of the view that are maximally spread (k-center greedy)."""
        from dagster_brain.algorithms.duplicates import find_unique

        ids, X = self.all_vectors()
        self._last_unique = find_unique(X, ids, count, metric=self.config.metric, seed=seed)
        return self._last_unique

    @property
    def unique_ids(self) -> list[str] | None:
        """Ids chosen by the last :meth:`find_unique`."""
        return self._last_unique

    def find_duplicates(self, thresh: float | None = None, fraction: float | None = None):
        """Near-duplicates among the view's vectors; exactly one of ``thresh``/``fraction``."""
        from dagster_brain.algorithms.duplicates import find_duplicates

        ids, X = self.all_vectors()
        self._last_duplicates = find_duplicates(
            X, ids, thresh=thresh, fraction=fraction, metric=self.config.metric
        )
        return self._last_duplicates

    def _duplicates(self):
        if self._last_duplicates is None:
            raise SimilarityError("call find_duplicates() first")
        return self._last_duplicates

    @property
    def duplicate_ids(self) -> list[str]:
        """Ids flagged by the last :meth:`find_duplicates`."""
        return self._duplicates().duplicate_ids

    @property
    def neighbors_map(self) -> dict[str, list[tuple[str, float]]]:
        """Kept id -> [(duplicate id, distance), ...] of the last :meth:`find_duplicates`."""
        return self._duplicates().neighbors_map

    @property
    def thresh(self) -> float:
        """The distance threshold the last :meth:`find_duplicates` used."""
        return self._duplicates().thresh

    @property
    def duplicate_pairs(self) -> pd.DataFrame:
        """Every pair within the last :meth:`find_duplicates` threshold: id_a, id_b, distance.

        Each unordered pair once, sorted by distance; unlike :attr:`neighbors_map` it keeps a
        pair whose two members were both assigned to a third kept item.
        """
        return self._duplicates().all_pairs.copy()

    def duplicates_view(self) -> pd.DataFrame:
        """One row per member of each duplicate group (connected components of the pairs).

        Columns: group, id, sample_id, type (``"nearest"``: kept, ``"duplicate"``), kept_id
        (the kept item a duplicate maps to in :attr:`neighbors_map`), nearest_id and distance
        (the member's nearest other member of its group).
        """
        from dagster_brain.algorithms.duplicates import group_members

        return self._with_samples(group_members(self._duplicates()))

    def unique_view(self) -> pd.DataFrame:
        """The items chosen by the last :meth:`find_unique`."""
        if self._last_unique is None:
            raise SimilarityError("call find_unique() first")
        return self._with_samples(pd.DataFrame({"id": self._last_unique}))

    def _with_samples(self, frame: pd.DataFrame) -> pd.DataFrame:
        by_id = self._members.set_index("id")["sample_id"]
        frame.insert(frame.columns.get_loc("id") + 1, "sample_id", frame["id"].map(by_id))
        return frame

    def visualize_duplicates(self, points: np.ndarray | None = None) -> bytes:
        """PNG scatter (2-D points, default PCA of the vectors) with duplicates highlighted."""
        from dagster_brain.algorithms.duplicates import visualize_duplicates

        ids, X = self.all_vectors()
        return PngBytes(visualize_duplicates(points, ids, self._duplicates(), vectors=X))

    def visualize_unique(self, points: np.ndarray | None = None) -> bytes:
        """PNG scatter with the last :meth:`find_unique` items highlighted."""
        from dagster_brain.algorithms.duplicates import visualize_unique

        if self._last_unique is None:
            raise SimilarityError("call find_unique() first")
        ids, X = self.all_vectors()
        return PngBytes(visualize_unique(points, ids, self._last_unique, vectors=X))


class SimilarityIndex(DuplicatesMixin):
    """A nearest-neighbour index of one dataset's samples or patches, on any backend."""

    def __init__(
        self,
        store: Store,
        dataset: str,
        brain_key: str,
        config: SimilarityConfig,
        backend: VectorBackend,
        members: pd.DataFrame | None = None,
        record: BrainRunRecord | None = None,
    ):
        self.store = store
        self.dataset = dataset
        self.brain_key = brain_key
        self.config = config
        self.backend = backend
        self._record = record
        cols = ["id", "sample_id", "label_id"]
        self._members = (
            members[cols].reset_index(drop=True)
            if members is not None and len(members)
            else pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
        )
        self._view: list[str] | None = None
        self._defer_persist = False
        self._last_unique: list[str] | None = None
        self._last_duplicates: Any = None
        self._closed = False

    def __repr__(self) -> str:
        try:
            size: int | str = self.total_index_size
        except Exception:  # an unreachable backend must not break the repr
            size = "?"
        return (
            f"SimilarityIndex({self.dataset}/{self.brain_key}: {self.config.backend}, "
            f"{self.config.metric}, {size} vectors of dim {self.config.dim})"
        )

    # -- sizes and ids ----------------------------------------------------------------------

    @property
    def is_patches(self) -> bool:
        """Whether items are object patches (ids are label ids)."""
        return self.config.patches_field is not None

    @property
    def members(self) -> pd.DataFrame:
        """Indexed items: ``id`` (sample or label id), ``sample_id``, ``label_id``."""
        return self._members.copy()

    @property
    def record(self) -> BrainRunRecord | None:
        """The brain run this index belongs to (None before it is committed)."""
        return self._record

    @property
    def total_index_size(self) -> int:
        """Vectors the backend holds, whatever the view."""
        return int(self.backend.count())

    def held_ids(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` the backend holds a vector for (asked in chunks)."""
        held: list[str] = []
        ids = list(ids)
        for start in range(0, len(ids), FETCH_CHUNK):
            found, _ = self.backend.fetch(ids[start : start + FETCH_CHUNK])
            held.extend(found)
        return held

    def _fix(self) -> str:
        return (
            f"run `brain doctor --dataset {self.dataset} --repair` to rebuild it from "
            f"embeddings key {self.config.embeddings_key!r}, or re-materialise brain key "
            f"{self.brain_key!r}"
        )

    def _incomplete(self, missing: int | None = None) -> IndexIncomplete:
        """The error for a backend that lacks vectors the run recorded."""
        where = getattr(self.backend, "path", None) or getattr(self.backend, "where", "")
        try:
            held = f"holds {int(self.backend.count())} of the {len(self._members)} vectors"
        except Exception:
            held = f"lacks {missing} of the {len(self._members)} vectors"
        gone = "" if not where else f" ({where})"
        noun = getattr(self.backend, "noun", "collection")
        return IndexIncomplete(
            f"similarity index {self.brain_key!r} on {self.dataset!r}: the {self.config.backend} "
            f"{noun} {self.config.collection!r}{gone} {held} the run recorded; {self._fix()}"
        )

    def _require(self, wanted: Sequence[str], found: Sequence[str]) -> None:
        """Refuse an answer built on members the backend does not hold."""
        if len(found) < len(wanted):
            raise self._incomplete(len(wanted) - len(found))

    @property
    def sample_ids(self) -> np.ndarray:
        """Sample id of every indexed vector."""
        return self._members["sample_id"].to_numpy()

    @property
    def label_ids(self) -> np.ndarray | None:
        """Label id of every indexed vector (patch indexes only)."""
        return self._members["label_id"].to_numpy() if self.is_patches else None

    def use_view(self, sample_ids: Sequence[str]) -> None:
        """Restrict queries, sizes and duplicates to these samples."""
        self._view = list(sample_ids)

    def clear_view(self) -> None:
        """Back to the whole index."""
        self._view = None

    def _view_members(self) -> pd.DataFrame:
        if self._view is None:
            return self._members
        return self._members[self._members["sample_id"].isin(set(self._view))]

    @property
    def index_size(self) -> int:
        """Vectors the backend holds for the current view's items."""
        if self._view is None:
            return self.total_index_size
        return len(self.held_ids(self._view_members()["id"].tolist()))

    @property
    def missing_size(self) -> int:
        """Items of the current view (samples, or patches) the backend has no vector for."""
        view = self._view if self._view is not None else self.store.sample_ids(self.dataset)
        if not self.is_patches:
            wanted = sorted(set(view))
        else:
            labels = self.store.labels(self.dataset, self.config.patches_field)
            wanted = sorted(set(labels.loc[labels["sample_id"].isin(set(view)), "label_id"]))
        return len(wanted) - len(self.held_ids(wanted))

    # -- changing the index -----------------------------------------------------------------

    def add_to_index(
        self,
        embeddings: np.ndarray,
        sample_ids: Sequence[str],
        label_ids: Sequence[str] | None = None,
        overwrite: bool = True,
        allow_existing: bool = True,
        warn_existing: bool = False,
    ) -> int:
        """Add vectors (or overwrite those with the same id); returns how many were written."""
        sample_ids = [str(s) for s in sample_ids]
        if self.is_patches and label_ids is None:
            raise SimilarityError(
                f"index {self.brain_key!r} holds patches of {self.config.patches_field!r}: "
                "add_to_index needs label_ids"
            )
        ids = [str(i) for i in label_ids] if self.is_patches else sample_ids
        X = self._check_vectors(embeddings, ids)
        if len(sample_ids) != len(ids):
            raise SimilarityError(f"{len(sample_ids)} sample ids for {len(ids)} label ids")
        if len(set(ids)) != len(ids):
            raise SimilarityError(f"index {self.brain_key!r}: duplicate ids in add_to_index")
        unknown = self.store.unknown_samples(self.dataset, sample_ids)
        if unknown:
            raise SimilarityError(
                f"index {self.brain_key!r}: {len(unknown)} sample ids are not in dataset "
                f"{self.dataset!r}, e.g. {unknown[:3]}"
            )
        existing = set(self._members["id"]) & set(ids)
        if existing and not allow_existing:
            raise SimilarityError(
                f"index {self.brain_key!r} already has {len(existing)} of these ids, e.g. "
                f"{sorted(existing)[:3]} (pass allow_existing=True)"
            )
        if existing and warn_existing:
            warnings.warn(f"{len(existing)} ids already indexed", stacklevel=2)
        keep = np.ones(len(ids), bool) if overwrite else ~np.isin(ids, list(existing))
        ids = [i for i, k in zip(ids, keep, strict=True) if k]
        sample_ids = [s for s, k in zip(sample_ids, keep, strict=True) if k]
        X = X[keep]
        desc = f"{self.brain_key}: uploading {len(ids):,} vectors"
        # one upsert call needs no progress report: only uploads of several batches have one
        report = progress(desc, len(ids), "vectors", enabled=len(ids) > ADD_BATCH)
        with bulk_writes(self.backend), report as bar:
            for start in range(0, len(ids), ADD_BATCH):
                self.backend.upsert(ids[start : start + ADD_BATCH], X[start : start + ADD_BATCH])
                bar.update(min(ADD_BATCH, len(ids) - start))
        new = pd.DataFrame(
            {
                "id": ids,
                "sample_id": sample_ids,
                "label_id": ids if self.is_patches else [None] * len(ids),
            }
        )
        members = self._members[~self._members["id"].isin(set(ids))]
        self._members = pd.concat([members, new], ignore_index=True)
        self._persist()
        return len(ids)

    def remove_from_index(
        self,
        sample_ids: Sequence[str] | None = None,
        label_ids: Sequence[str] | None = None,
        allow_missing: bool = True,
    ) -> int:
        """Remove vectors by sample id (all of a sample's patches) or label id."""
        m = self._members
        if label_ids is not None:
            wanted = {str(i) for i in label_ids}
            col = "label_id" if self.is_patches else "id"
        elif sample_ids is not None:
            wanted, col = {str(s) for s in sample_ids}, "sample_id"
        else:
            raise SimilarityError("remove_from_index needs sample_ids or label_ids")
        hit = m[m[col].isin(wanted)]
        missing = wanted - set(hit[col])
        if missing and not allow_missing:
            raise SimilarityError(
                f"index {self.brain_key!r} has no vectors for {len(missing)} ids, e.g. "
                f"{sorted(missing)[:3]}"
            )
        ids = hit["id"].tolist()
        if ids:
            self.backend.delete(ids)
            self._members = m[~m["id"].isin(set(ids))].reset_index(drop=True)
            self._persist()
        return len(ids)

    @contextlib.contextmanager
    def deferred_persist(self) -> Iterator[None]:
        """Several adds and removes, with the membership written by the caller afterwards."""
        self._defer_persist = True
        try:
            yield
        finally:
            self._defer_persist = False

    def _persist(self) -> None:
        """Write the membership to the run's results table (no-op before the run exists)."""
        if self._record is None or self._defer_persist:
            return
        self._record.sample_ids = sorted(set(self._members["sample_id"]))
        self._record.label_ids = self._members["label_id"].tolist() if self.is_patches else None
        self.store.commit_run(self._record, self._members.copy(), event="updated")

    # -- reading vectors --------------------------------------------------------------------

    def _check_vectors(self, embeddings: np.ndarray, ids: Sequence[str]) -> np.ndarray:
        X = np.asarray(embeddings, dtype=np.float32)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[0] != len(ids):
            raise SimilarityError(f"{X.shape[0] if X.ndim else 0} vectors for {len(ids)} ids")
        if X.shape[1] != self.config.dim:
            raise SimilarityError(
                f"index {self.brain_key!r} holds vectors of dimension {self.config.dim}, got "
                f"{X.shape[1]} (id {ids[0]!r})"
            )
        try:
            return check_vectors(X, list(ids), what=f"index {self.brain_key!r}")
        except ValueError as err:
            raise SimilarityError(str(err)) from err

    def get_embeddings(
        self, sample_ids: Sequence[str] | None = None, label_ids: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(vectors, sample ids, label ids or None) for the given ids (default: the view)."""
        m = self._view_members()
        if label_ids is not None:
            m = self._members[self._members["label_id"].isin({str(i) for i in label_ids})]
        elif sample_ids is not None:
            m = self._members[self._members["sample_id"].isin({str(i) for i in sample_ids})]
        found, X = self.backend.fetch(m["id"].tolist()) if len(m) else ([], None)
        self._require(m["id"].tolist(), found)
        if X is None or len(found) == 0:
            X = np.zeros((0, self.config.dim), np.float32)
        by_id = m.set_index("id")
        sids = by_id.loc[found, "sample_id"].to_numpy() if found else np.array([], object)
        lids = np.asarray(found, dtype=object) if self.is_patches else None
        return X, sids, lids

    def all_vectors(self) -> tuple[list[str], np.ndarray]:
        """(ids, vectors) of the view's members, in membership order."""
        m = self._view_members()
        if m.empty:
            raise SimilarityError(
                f"index {self.brain_key!r} has no vectors"
                + (" in the current view" if self._view is not None else "")
            )
        found, X = self.backend.fetch(m["id"].tolist())
        self._require(m["id"], found)
        return list(found), np.asarray(X, dtype=np.float32)

    def vector_source(self, batch: int | None = None):
        """The view's members (in membership order) read from the backend page by page
        (:class:`~dagster_brain.similarity.streaming.VectorSource`): no copy of every vector."""
        from dagster_brain.similarity.streaming import STREAM_BATCH, VectorSource

        m = self._view_members()
        if m.empty:
            raise SimilarityError(
                f"index {self.brain_key!r} has no vectors"
                + (" in the current view" if self._view is not None else "")
            )
        return VectorSource(
            self.backend,
            m["id"].tolist(),
            batch or STREAM_BATCH,
            name=f"similarity index {self.brain_key!r} on {self.dataset!r}",
            on_missing=self._incomplete,
        )

    # -- models -----------------------------------------------------------------------------

    def get_model(self):
        """The embedding model the index was built with (needs a recorded model name)."""
        from dagster_brain.embedding.models import load_model

        if not self.config.model:
            raise SimilarityError(
                f"index {self.brain_key!r} records no model name (embeddings were precomputed "
                "without one); pass model= when computing it"
            )
        return load_model(self.config.model)

    @property
    def supports_prompts(self) -> bool:
        """Whether text prompts can query this index (its model embeds text)."""
        return bool(self.config.supports_prompts)

    def compute_embeddings(
        self, sample_ids: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Embed samples (or their patches) with the index's model, ready for add_to_index."""
        from dagster_brain.embedding.pipeline import embed_files, embed_patches

        model = self.get_model()
        samples = self.store.samples(self.dataset, sample_ids)
        if self.is_patches:
            labels = self.store.labels(self.dataset, self.config.patches_field)
            labels = labels[labels["sample_id"].isin(set(samples["sample_id"]))]
            out = embed_patches(
                model,
                dict(zip(samples["sample_id"], samples["filepath"], strict=True)),
                labels[["sample_id", "label_id", "box"]].reset_index(drop=True),
            )
            return out.vectors, np.asarray(out.sample_ids, object), np.asarray(out.ids, object)
        out = embed_files(model, samples["filepath"].tolist(), samples["sample_id"].tolist())
        return out.vectors, np.asarray(out.ids, object), None

    def cleanup(self) -> None:
        """Delete the backend collection / table / files."""
        self.backend.drop()

    def close(self) -> None:
        """Release this index's handle on the backend client (shared within a process)."""
        if not self._closed:
            self._closed = True
            release_backend(self.backend)

    # -- queries ----------------------------------------------------------------------------

    def _sample_of(self) -> pd.Series:
        """Each member id's sample id (indexed by id), built once per members table: queries
        on a million-item index do not rebuild it."""
        cached = getattr(self, "_sample_of_cache", None)
        if cached is None or cached[0] is not self._members:
            cached = (self._members, self._members.set_index("id")["sample_id"])
            self._sample_of_cache = cached
        return cached[1]

    def _query_vectors(self, query: Any) -> tuple[np.ndarray, list[str]]:
        """Query vectors and the query's own ids (ids are returned for include_query).

        A string that is an indexed id is an id query; any other string is a text prompt.
        """
        known = self._sample_of().index  # hashed once per members table, not per query
        if isinstance(query, str):
            if query not in known:
                return self._prompt_vectors([query]), []
            query = [query]
        if isinstance(query, (list, tuple)) and query and all(isinstance(q, str) for q in query):
            missing = [q for q in query if q not in known]
            if missing:
                what = "label" if self.is_patches else "sample"
                raise SimilarityError(
                    f"index {self.brain_key!r} has no vectors for {what} ids {missing[:5]}"
                )
            found, X = self.backend.fetch(list(query))
            self._require(query, found)
            return np.asarray(X, np.float32), list(found)
        Q = np.asarray(query, dtype=np.float32)
        Q = Q[None, :] if Q.ndim == 1 else Q
        return self._check_vectors(Q, [f"query[{i}]" for i in range(len(Q))]), []

    def _prompt_vectors(self, prompts: list[str]) -> np.ndarray:
        if not self.supports_prompts:
            raise SimilarityError(
                f"{prompts[0]!r} is not an id in index {self.brain_key!r}, and the index cannot "
                f"answer text prompts: its model {self.config.model!r} has no text tower "
                "(use a CLIP-style model)"
            )
        return self.get_model().embed_prompts(prompts).astype(np.float32)

    def sort_by_similarity(
        self,
        query: Any,
        k: int | None = None,
        reverse: bool = False,
        dist_field: str = "distance",
        include_query: bool = True,
    ) -> SimilarityResult:
        """The view's items ordered by distance to the query (nearest first, or farthest).

        ``query``: an id or list of ids in the index, a vector or 2-D array of vectors, or a
        text prompt (CLIP-style models). With several query items, each candidate's distance
        is the mean over the query items. ``k=None`` sorts the whole view. ``include_query``
        keeps the query ids themselves in the result (first, at distance 0).
        """
        if k is not None and k <= 0:
            raise SimilarityError(f"k must be positive, got {k}")
        Q, own_ids = self._query_vectors(query)
        members = self._view_members()
        if members.empty:
            raise SimilarityError(
                f"index {self.brain_key!r} has no vectors"
                + (" in the current view" if self._view is not None else "")
            )
        allowed = members["id"].tolist() if self._view is not None else None
        n = len(members)
        want = n if k is None else min(k + (0 if include_query else len(own_ids)), n)
        ids, dist = self._ranked(Q, want, reverse, allowed, n)
        if own_ids:
            own = set(own_ids)
            keep = [i for i, x in enumerate(ids) if x not in own]
            if include_query and len(own_ids) == 1:
                # the query itself first, even when exact copies tie with it at distance 0
                keep = [i for i, x in enumerate(ids) if x in own] + keep
            if include_query and len(own_ids) > 1:
                keep = list(range(len(ids)))
            ids, dist = [ids[i] for i in keep], dist[keep]
        if k is not None:
            ids, dist = ids[:k], dist[:k]
        sids = self._sample_of().loc[ids].tolist() if ids else []
        return SimilarityResult(
            sample_ids=sids,
            label_ids=list(ids) if self.is_patches else None,
            distances=np.asarray(dist, dtype=np.float64),
            dist_field=dist_field,
        )

    def _ranked(
        self, Q: np.ndarray, k: int, reverse: bool, allowed: list[str] | None, n: int
    ) -> tuple[list[str], np.ndarray]:
        """Top-k (or bottom-k) ids by mean distance over the query rows."""
        metric = self.config.metric
        exhaustive = reverse or len(Q) > 1 or k >= n
        if not exhaustive:
            got, d = self.backend.query(Q, k, allowed=allowed)
            if len(got[0]) < k and self.backend.count() < len(self._members):
                raise self._incomplete()  # fewer answers than the members promise
            return list(got[0]), np.asarray(d[0], dtype=np.float64)
        # Exact answer for least-similar, multi-vector and whole-view sorts: scan the view's
        # vectors in blocks (every backend gets the same answer).
        ids, X = self.all_vectors()
        if allowed is not None:
            keep = set(allowed)
            sel = [i for i, x in enumerate(ids) if x in keep]
            ids, X = [ids[i] for i in sel], X[sel]
        total = np.zeros(len(ids), dtype=np.float64)
        for start in range(0, len(ids), 65_536):
            block = pairwise_distances(Q, X[start : start + 65_536], metric)
            total[start : start + 65_536] = block.mean(axis=0)
        order = np.argsort(-total if reverse else total, kind="stable")[:k]
        return [ids[i] for i in order], total[order]


# -- loaded indexes kept for later queries in this process --------------------------------------

INDEX_CACHE_SIZE = 4  # loaded indexes kept per process (least recently used goes first)

Loader = Callable[[Store, str, str, "dict[str, Any] | None"], SimilarityIndex]


def run_stamp(store: Store, dataset: str, brain_key: str) -> tuple[Any, ...] | None:
    """What identifies the current state of a brain run, read in one small query (None: no run).

    Every write of a run goes through ``commit_run``, which stamps ``created_at`` anew, so an
    update in place (``add_to_index``, ``remove_from_index``, an incremental batch) changes it
    even though the run id stays; a rebuild changes the run id and collection too.
    """
    with store.connect() as conn:
        row = conn.execute(
            "SELECT run_id, kind, created_at, data_version, results_table, config "
            "FROM brain_runs WHERE dataset = ? AND brain_key = ?",
            [dataset, brain_key],
        ).fetchone()
    return None if row is None else tuple(row)


def _file_stamp(backend: VectorBackend) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of a backend's own file, if it keeps one (sklearn's Parquet)."""
    path = getattr(backend, "path", None)
    if not isinstance(path, (str, Path)):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _store_stat(store: Store) -> tuple[Any, ...]:
    """(inode, mtime, size) of the DuckDB file and its write-ahead log (None when absent)."""
    out: list[tuple[int, int, int] | None] = []
    for path in (store.db_path, store.db_path.with_name(store.db_path.name + ".wal")):
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _settled(stat: tuple[Any, ...], now: float) -> bool:
    """Whether no file of ``stat`` was written in the last ``STAT_MARGIN_S`` seconds: only
    then does an unchanged (inode, mtime, size) prove that nothing was written since (a write
    within the filesystem's timestamp granularity could otherwise leave mtime unchanged)."""
    limit = int((now - STAT_MARGIN_S) * 1e9)
    return all(s is None or s[1] < limit for s in stat)


STAT_MARGIN_S = 1.0


@dataclass
class _Cached:
    index: SimilarityIndex  # holds one handle on the backend client while cached
    stamp: tuple[Any, ...]
    file_stamp: tuple[int, int, int] | None
    store_stat: tuple[Any, ...] | None  # the store files when ``stamp`` was read, if settled


class IndexCache:
    """Similarity indexes loaded in this process, reused by later queries while valid.

    Keyed by (store data dir, dataset, brain key, backend overrides). Each use checks that the
    run is unchanged: its stamp (:func:`run_stamp`: run id, created_at, data version, results
    table, config) is read again unless the store's files have not been written since it was
    last read; for backends that keep one file (sklearn's Parquet) that file's inode, mtime
    and size must be unchanged too. Any difference (a rebuild, an update in place through
    another handle or process, a rename or delete) drops the entry and loads the index again.
    At most ``size`` entries; the least recently used is closed when another comes in.
    Backends whose store one process locks (Qdrant local mode, milvus-lite) are not kept.
    """

    def __init__(self, size: int = INDEX_CACHE_SIZE) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[Any, ...], _Cached] = OrderedDict()
        self._pid = os.getpid()
        self.loads = 0  # indexes loaded through the cache (hits do not count)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(
        self,
        store: Store,
        dataset: str,
        brain_key: str,
        loader: Loader,
        params: dict[str, Any] | None = None,
    ) -> SimilarityIndex:
        """An open index (the caller closes it) sharing the cached backend client and members."""
        if self.size <= 0:
            return loader(store, dataset, brain_key, params)
        key = (
            str(Path(store.data_dir).resolve()),
            dataset,
            brain_key,
            tuple(sorted((k, repr(v)) for k, v in (params or {}).items())),
        )
        now, before = time.time(), _store_stat(store)
        with self._lock:
            self._forget_after_fork()
            entry = self._entries.get(key)
            if (
                entry is not None
                and entry.store_stat == before
                and entry.file_stamp == _file_stamp(entry.index.backend)
            ):
                self._entries.move_to_end(key)
                return _handout(entry.index, store)
        stamp = run_stamp(store, dataset, brain_key)
        after = _store_stat(store)
        seen = before if before == after and _settled(before, now) else None
        stale: list[_Cached] = []
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if (
                    stamp is not None
                    and entry.stamp == stamp
                    and entry.file_stamp == _file_stamp(entry.index.backend)
                ):
                    entry.store_stat = seen
                    self._entries.move_to_end(key)
                    return _handout(entry.index, store)
                stale.append(self._entries.pop(key))
        _close_all(stale)  # before loading: the reload must not get the old client back
        stale = []
        index = loader(store, dataset, brain_key, params)
        self.loads += 1
        rec = index.record
        if stamp is None or rec is None or (rec.run_id, rec.created_at) != (stamp[0], stamp[2]):
            return index  # written while loading: answer from it, keep nothing
        if _locks_its_store(index, params):
            return index  # kept open, it would lock other processes (Dagster runs) out
        entry = _Cached(index, stamp, _file_stamp(index.backend), seen)
        with self._lock:
            if key in self._entries:  # another thread loaded it meanwhile
                stale.append(self._entries.pop(key))
            self._entries[key] = entry
            while len(self._entries) > self.size:
                stale.append(self._entries.popitem(last=False)[1])
            out = _handout(index, store)
        _close_all(stale)
        return out

    def clear(self) -> None:
        """Close and forget every cached index."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        _close_all(entries)

    def _forget_after_fork(self) -> None:
        # a forked child must not use (or close) its parent's clients
        if self._pid != os.getpid():
            self._entries = OrderedDict()
            self._pid = os.getpid()


def _locks_its_store(index: SimilarityIndex, params: dict[str, Any] | None) -> bool:
    """Whether the index's backend is a store one process locks (Qdrant local mode,
    milvus-lite): such clients are closed after each query, not cached."""
    settings = {**index.config.params, **(params or {})}
    return backend_class(index.config.backend).embedded(settings) is not None


def _handout(cached: SimilarityIndex, store: Store) -> SimilarityIndex:
    """A new index object over the cached one's client (one more holder) and members."""
    index = SimilarityIndex(
        store,
        cached.dataset,
        cached.brain_key,
        cached.config,
        HANDLES.share(cached.backend),
        None,
        record=copy.copy(cached.record),
    )
    index._members = cached._members  # replaced, never changed in place: safe to share
    cached._sample_of()  # its id lookup too, built once for every query of this entry
    index._sample_of_cache = cached._sample_of_cache
    return index


def _close_all(entries: list[_Cached]) -> None:
    for entry in entries:
        try:
            entry.index.close()
        except Exception as err:  # closing one client must not stop the others
            _LOG.warning("could not close cached index %r: %s", entry.index.brain_key, err)


INDEX_CACHE = IndexCache()
atexit.register(lambda: INDEX_CACHE.clear())  # close clients before the interpreter unwinds


def cached_index(
    store: Store,
    dataset: str,
    brain_key: str,
    loader: Loader,
    params: dict[str, Any] | None = None,
) -> SimilarityIndex:
    """The similarity index of a brain run from this process's cache (see :class:`IndexCache`);
    ``loader`` (``similarity.compute.load_index``) loads it when absent or out of date."""
    return INDEX_CACHE.get(store, dataset, brain_key, loader, params)


def clear_index_cache() -> None:
    """Close every similarity index this process keeps loaded for queries."""
    INDEX_CACHE.clear()
