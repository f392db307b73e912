"""Uniqueness: how far each item is from its nearest neighbours, scaled to [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dagster_brain.algorithms.knn import Metric, check_vectors
from dagster_brain.algorithms.knn_graph import KnnGraph, build_knn_graph

DEFAULT_WEIGHTS = (0.6, 0.3, 0.1)


def neighbour_weights(k: int, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weights for the 1st..k-th neighbour distances, summing to one."""
    if weights is None:
        w = np.asarray(
            DEFAULT_WEIGHTS[:k] if k <= len(DEFAULT_WEIGHTS) else [1.0 / (i + 1) for i in range(k)],
            dtype=np.float64,
        )
    else:
        w = np.asarray(list(weights), dtype=np.float64)
        if w.shape != (k,):
            raise ValueError(f"uniqueness: {len(w)} weights given for k={k} neighbours")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"uniqueness: weights must be non-negative and not all zero, got {w}")
    return w / w.sum()


def uniqueness_scores(
    X: np.ndarray,
    ids: Sequence[str],
    *,
    k: int = 3,
    weights: Sequence[float] | None = None,
    metric: Metric = "cosine",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score each row in [0, 1] (1 = most unique) from its ``k`` nearest neighbours.

    The raw score is the weighted mean distance to the 1st..k-th nearest other item. Unlike
    the reference, the nearest neighbour is *not* skipped, so both members of a duplicate
    pair score near 0. Raw scores are divided by their maximum over the scored collection,
    so scores are relative to that collection (the most unique item gets exactly 1).
    Returns ``(scores, nearest_index, nearest_distance)``.
    """
    ids = list(ids)
    X = check_vectors(X, ids)
    if len(ids) < 2:
        raise ValueError(f"uniqueness needs at least 2 samples, got {len(ids)}")
    graph = build_knn_graph(X, ids, k, metric)
    scores = uniqueness_from_graph(graph, weights)
    return scores, graph.neighbors[:, 0], graph.distances[:, 0].astype(np.float64)


def uniqueness_from_graph(graph: KnnGraph, weights: Sequence[float] | None = None) -> np.ndarray:
    """Uniqueness scores in [0, 1] of the items of a kNN graph, in ``graph.ids`` order.

    Same scores as ``uniqueness_scores`` on the graph's collection; weights beyond the
    graph's width (``min(k, n - 1)``) are dropped.
    """
    n, k = len(graph.ids), graph.width
    if n < 2:
        raise ValueError(f"uniqueness needs at least 2 samples, got {n}")
    w = neighbour_weights(k, weights if weights is None or len(weights) == k else weights[:k])
    raw = graph.distances.astype(np.float64) @ w
    top = raw.max()
    return raw / top if top > 0 else np.zeros_like(raw)
