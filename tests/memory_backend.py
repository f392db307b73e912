"""A brute-force in-memory VectorBackend for testing the index layer on its own."""

from __future__ import annotations

import numpy as np

from dagster_brain.algorithms.knn import pairwise_distances
from dagster_brain.similarity.backends.base import VectorBackend

_COLLECTIONS: dict[str, dict[str, np.ndarray]] = {}


class MemoryBackend(VectorBackend):
    """Vectors in a dict shared per collection name (so reopening finds them)."""

    name = "memory"
    exact = True

    def __init__(
        self, collection, dim, metric, root, fail_upsert_after: int | None = None, **params
    ):
        super().__init__(collection, dim, metric, root, **params)
        self._data = _COLLECTIONS.setdefault(collection, {})
        self._fail_after = fail_upsert_after

    def upsert(self, ids, vectors):
        if self._fail_after is not None and len(self._data) >= self._fail_after:
            raise ConnectionError(f"similarity backend 'memory' at test://{self.collection}: down")
        for i, v in zip(ids, np.asarray(vectors, np.float32), strict=True):
            self._data[i] = v.copy()

    def delete(self, ids):
        for i in ids:
            self._data.pop(i, None)

    def fetch(self, ids=None):
        ids = sorted(self._data) if ids is None else [i for i in ids if i in self._data]
        X = np.stack([self._data[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)
        return ids, X

    def count(self):
        return len(self._data)

    def query(self, queries, k, allowed=None):
        ids = sorted(self._data) if allowed is None else [i for i in allowed if i in self._data]
        X = np.stack([self._data[i] for i in ids])
        D = pairwise_distances(queries, X, self.metric)
        order = np.argsort(D, axis=1, kind="stable")[:, :k]
        return (
            [[ids[j] for j in row] for row in order],
            [D[r, row].astype(np.float64) for r, row in enumerate(order)],
        )

    def drop(self):
        _COLLECTIONS.pop(self.collection, None)
        self._data = {}
