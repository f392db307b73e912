"""Representativeness: how typical each item is of a dense region of its embeddings, in [0, 1].

Items are clustered (k-means on L2-normalised vectors); an item scores high when it lies close
to its cluster's centre and its cluster holds many items. ``cluster-center-downweight`` also
lowers items whose near neighbours already score higher (redundant members of a clump), so
a ranking by the score does not spend its top places on near-copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dagster_brain.algorithms.knn import check_vectors, normalize_rows

Method = Literal["cluster-center", "cluster-center-downweight"]
METHODS: tuple[str, ...] = ("cluster-center", "cluster-center-downweight")
MINIBATCH_ABOVE = 20_000  # rows above which MiniBatchKMeans replaces full k-means


def default_clusters(n: int) -> int:
    """Clusters chosen from the data size: about sqrt(n / 2), at least 2, at most 100."""
    return int(min(100, max(2, round(np.sqrt(n / 2)))))


@dataclass(frozen=True)
class Representativeness:
    """Scores in [0, 1] (1: the most representative item), each item's cluster, the cosine
    distance to its centre, and the cluster sizes."""

    scores: np.ndarray
    cluster: np.ndarray
    centre_distance: np.ndarray
    sizes: np.ndarray
    n_clusters: int


def cluster_items(X: np.ndarray, n_clusters: int, seed: int = 51) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centres) of k-means on the rows of ``X`` (MiniBatchKMeans when large)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(X) > MINIBATCH_ABOVE:
        model = MiniBatchKMeans(n_clusters, random_state=seed, n_init=3, batch_size=4096)
    else:
        model = KMeans(n_clusters, random_state=seed, n_init=4)
    labels = model.fit_predict(X)
    return labels.astype(np.int64), model.cluster_centers_.astype(np.float64)


def representativeness_scores(
    vectors: np.ndarray,
    ids: Sequence[str],
    *,
    method: Method = "cluster-center",
    n_clusters: int | None = None,
    neighbors: np.ndarray | None = None,
    distances: np.ndarray | None = None,
    seed: int = 51,
) -> Representativeness:
    """Score each row of ``vectors`` by how typical it is of a dense cluster.

    ``raw = closeness * sqrt(size / largest size)`` with ``closeness = 1 - d / d_max`` (``d``
    the cosine distance to the item's cluster centre, ``d_max`` the largest such distance),
    min-max normalised to [0, 1]. ``cluster-center-downweight`` first scales each raw score
    by :func:`downweight` (``neighbors``/``distances``: a kNN graph's lists, cosine): items
    close to a higher-scoring neighbour lose most. ``n_clusters``: None chooses
    :func:`default_clusters`.
    """
    ids = [str(i) for i in ids]
    X = check_vectors(vectors, ids)  # float32, never a float64 copy of all the vectors
    n = len(ids)
    if method not in METHODS:
        raise ValueError(f"unknown representativeness method {method!r}; expected {METHODS}")
    if n < 2:
        raise ValueError(f"representativeness needs at least 2 items, got {n}")
    zero = np.flatnonzero(np.linalg.norm(X, axis=1) == 0)
    if zero.size:
        raise ValueError(f"zero embedding for item {ids[zero[0]]!r} (no direction to cluster)")
    k = default_clusters(n) if n_clusters is None else int(n_clusters)
    if not 1 <= k <= n:
        raise ValueError(f"n_clusters must be between 1 and {n} items, got {k}")
    U = normalize_rows(np.asarray(X, dtype=np.float32))
    labels, centres = cluster_items(U, k, seed)
    norms = np.linalg.norm(centres, axis=1, keepdims=True)
    centres = centres / np.where(norms > 0, norms, 1.0)
    d = np.empty(n, dtype=np.float64)
    for c in range(k):  # one cluster's rows at a time: no (n, d) product array
        rows = np.flatnonzero(labels == c)
        d[rows] = 1.0 - U[rows].astype(np.float64) @ centres[c]
    d = np.clip(d, 0.0, 2.0)
    sizes = np.bincount(labels, minlength=k)
    d_max = d.max()
    closeness = 1.0 - d / d_max if d_max > 0 else np.ones(n)
    raw = closeness * np.sqrt(sizes[labels] / sizes.max())
    if method == "cluster-center-downweight":
        if neighbors is None or distances is None:
            raise ValueError("cluster-center-downweight needs the items' neighbour lists")
        raw = downweight(raw, np.asarray(neighbors), np.asarray(distances, dtype=np.float64))
    lo, hi = raw.min(), raw.max()
    scores = (raw - lo) / (hi - lo) if hi > lo else np.ones(n)
    return Representativeness(scores, labels, d, sizes, k)


def downweight(raw: np.ndarray, neighbors: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """``raw * (1 - exp(-d / tau))``, ``d`` the distance to the row's nearest higher-ranked
    neighbour (ranked by ``raw``, ties by row order; none in its list: no change) and ``tau``
    the median nearest-neighbour distance (at least 1e-6): a copy of a better-ranked item
    drops to 0, an item one typical spacing from it keeps about 63 %."""
    n = len(raw)
    if neighbors.shape != distances.shape or neighbors.shape[0] != n:
        raise ValueError(f"neighbour lists {neighbors.shape} do not match {n} items")
    if neighbors.shape[1] == 0:
        return raw
    tau = max(float(np.median(distances[:, 0])), 1e-6)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), -raw))] = np.arange(n)
    higher = rank[neighbors] < rank[:, None]
    nearest = np.where(higher, np.clip(distances, 0.0, None), np.inf).min(1)
    return raw * (1.0 - np.exp(-nearest / tau))
