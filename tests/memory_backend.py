"""A brute-force in-memory backend: the whole of what a new backend declares.

It tests the index layer on its own, and shows what adding a backend takes: this module, one
line in ``registry.BACKENDS`` (the tests add it with ``monkeypatch.setitem``) and a contract
test parameter (tests/test_backend_memory.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from dagster_brain.algorithms.knn import pairwise_distances
from dagster_brain.similarity.backends.base import (
    Answer,
    BackendSettings,
    VectorBackend,
    index_field,
)

_COLLECTIONS: dict[str, dict[str, np.ndarray]] = {}


class MemoryBackend(VectorBackend):
    """Vectors in a dict shared per collection name (so reopening finds them)."""

    name = "memory"
    metrics = ("cosine", "euclidean")  # no dotproduct: specs asking for it are refused
    sdk = "numpy"
    exact = True
    unavailable = (ConnectionError,)

    class Settings(BackendSettings):
        """The in-memory test backend."""

        where: str = Field("memory://", description="shown in messages")
        token: str | None = Field(None, description="a secret, to show it stays masked")
        down: bool = Field(False, description="every guarded call fails as if unreachable")
        fail_upsert_after: int | None = index_field(None, "upserts fail past this many vectors")

    @classmethod
    def embedded(cls, settings: Mapping[str, Any]) -> str | None:
        """The vectors live in this process's memory."""
        return f"memory backend at {settings.get('where', 'memory://')}: one process's memory"

    def __init__(
        self,
        collection: str,
        dim: int,
        metric: str,
        root: Any,
        *,
        where: str = "memory://",
        down: bool = False,
        fail_upsert_after: int | None = None,
        **params: Any,
    ):
        super().__init__(collection, dim, metric, root, **params)
        self.where = where
        self._down = down
        self._data = _COLLECTIONS.setdefault(collection, {})
        self._fail_after = fail_upsert_after

    def _handle(self) -> dict[str, np.ndarray]:
        if self._down:
            raise ConnectionError("connection refused")
        return self._data

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        if self._fail_after is not None and len(self._data) >= self._fail_after:
            raise ConnectionError(f"similarity backend 'memory' at test://{self.collection}: down")
        X = self._check(vectors, ids, what=f"vectors for memory collection {self.collection!r}")
        for i, v in zip(ids, X, strict=True):
            self._data[i] = v.copy()

    def delete(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._data.pop(i, None)

    def fetch(self, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        ids = sorted(self._data) if ids is None else [i for i in ids if i in self._data]
        X = np.stack([self._data[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)
        return ids, X

    def count(self) -> int:
        with self._guard() as data:
            return len(data)

    def _query(self, Q: np.ndarray, k: int, view: list[str] | None) -> Answer:
        with self._guard() as data:
            ids = sorted(data) if view is None else [i for i in view if i in data]
            if not ids:
                return [[] for _ in Q], [np.empty(0, np.float32) for _ in Q]
            D = pairwise_distances(Q, np.stack([data[i] for i in ids]), self.metric)
        order = np.argsort(D, axis=1, kind="stable")[:, :k]
        return (
            [[ids[j] for j in row] for row in order],
            [D[r, row].astype(np.float64) for r, row in enumerate(order)],
        )

    def drop(self) -> None:
        _COLLECTIONS.pop(self.collection, None)
        self._data = {}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "where": self.where}
