"""The small protocol every vector backend implements; the index API is built on top of it.

Conventions every adapter follows, so that the same question gets the same answer on every
backend:

- ids are strings (a sample id, or a label id for patch indexes); adapters map them to what the
  backend needs (UUIDs, hashes) and keep the original string with the vector;
- vectors are float32 rows of length ``dim``; ``upsert`` overwrites vectors with the same id;
- distances are reported in one convention, smaller = nearer:
  ``cosine`` -> ``1 - cos(q, x)`` in [0, 2]; ``euclidean`` -> ``||q - x||``;
  ``dotproduct`` -> ``-<q, x>``;
- ``query`` returns, per query row, up to ``k`` (id, distance) pairs, nearest first, optionally
  restricted to ``allowed`` ids (a view): native filters where the backend has them, else an
  exact scan of the allowed vectors;
- errors that come from an unreachable backend are raised as :class:`BackendUnavailable`
  naming the backend and its URL/path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

METRICS: tuple[str, ...] = ("cosine", "euclidean", "dotproduct")


class BackendUnavailable(RuntimeError):
    """The backend cannot be reached or opened (message names the backend and where)."""


class UnsupportedMetric(ValueError):
    """A metric the backend does not offer."""


class VectorBackend(ABC):
    """One collection / table / index of string-keyed vectors on one backend."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = METRICS
    exact: ClassVar[bool] = False  # True: query results are exact top-k
    noun: ClassVar[str] = "collection"  # what the backend calls one index, for messages

    def __init__(self, collection: str, dim: int, metric: str, root: Path, **params: Any):
        """Open (creating if needed) ``collection``; ``root`` is a folder for local files."""
        if metric not in self.metrics:
            raise UnsupportedMetric(
                f"similarity backend {self.name!r} does not support metric {metric!r} "
                f"(supported: {', '.join(self.metrics)})"
            )
        self.collection = collection
        self.dim = int(dim)
        self.metric = metric
        self.root = Path(root)
        self.params = params

    @classmethod
    def check_metric(cls, metric: str) -> None:
        """Refuse an unsupported metric before anything is created."""
        if metric not in cls.metrics:
            raise UnsupportedMetric(
                f"similarity backend {cls.name!r} does not support metric {metric!r} "
                f"(supported: {', '.join(cls.metrics)})"
            )

    @abstractmethod
    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite vectors by id."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None:
        """Remove vectors by id (ids that are absent are ignored)."""

    @abstractmethod
    def fetch(self, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(found ids, vectors) for ``ids`` in the given order (absent ids left out);
        ``None`` fetches everything (in id order)."""

    @abstractmethod
    def count(self) -> int:
        """Number of vectors stored."""

    @abstractmethod
    def query(
        self, queries: np.ndarray, k: int, allowed: Sequence[str] | None = None
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """Per query row: up to ``k`` nearest ids and their distances, nearest first."""

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection / table / files (``cleanup``)."""

    def _check(self, X: np.ndarray, ids: Sequence[str] | None, what: str) -> np.ndarray:
        """Finite float32 rows of this index's dimension (errors name the id / collection)."""
        from dagster_brain.algorithms.knn import check_vectors

        X = check_vectors(X, list(ids) if ids is not None else None, what=what)
        if X.shape[1] != self.dim:
            raise ValueError(
                f"{self.name} {self.noun} {self.collection!r} holds {self.dim}-d vectors; "
                f"got {what} of dimension {X.shape[1]}"
            )
        return X

    def plan_view(
        self, queries: np.ndarray, k: int, allowed: Sequence[str] | None, max_filter_ids: int
    ) -> tuple[list[str] | None, tuple[list[list[str]], list[np.ndarray]] | None]:
        """(ids to filter by, or None for no view; an answer when no backend query is needed).

        An empty view answers with empty results; a view longer than ``max_filter_ids`` is
        answered by an exact :meth:`scan`, since a filter that long costs more than a scan.
        """
        if allowed is None:
            return None, None
        view = list(dict.fromkeys(str(s) for s in allowed))
        if not view:
            return view, ([[] for _ in queries], [np.empty(0, np.float32) for _ in queries])
        if len(view) > max_filter_ids:
            return view, self.scan(queries, k, view)
        return view, None

    def scan(
        self, queries: np.ndarray, k: int, allowed: Sequence[str] | None = None
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """Exact top-k over the fetched vectors (big views, or ``k`` past a backend's cap)."""
        from dagster_brain.algorithms.knn import exact_knn

        ids, X = self.fetch(None if allowed is None else list(allowed))
        if not ids:
            return [[] for _ in queries], [np.empty(0, np.float32) for _ in queries]
        dist, idx = exact_knn(X, min(k, len(ids)), queries=queries, metric=self.metric)
        return [[ids[j] for j in row] for row in idx], list(dist)

    def close(self) -> None:  # noqa: B027 - optional hook, most adapters need nothing
        """Release clients and file locks (embedded stores lock their folder)."""

    def describe(self) -> dict[str, Any]:
        """Where the vectors live (for lineage and ``get_brain_info``); no secrets."""
        return {"backend": self.name, "collection": self.collection, "metric": self.metric}


def to_distance(metric: str, similarity: np.ndarray) -> np.ndarray:
    """Convert a backend's similarity score to the shared distance convention.

    cosine: similarity is cos -> 1 - cos; dotproduct: similarity is <q, x> -> -<q, x>.
    (Euclidean backends usually report (squared) distances directly; adapters convert.)
    """
    if metric == "cosine":
        return 1.0 - similarity
    if metric == "dotproduct":
        return -similarity
    raise ValueError(f"no similarity->distance conversion for metric {metric!r}")
