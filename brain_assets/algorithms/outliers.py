"""Outliers: how far each item lies from its k nearest neighbours, against the collection's own
spread of that distance (a robust z), mapped to [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dagster_brain.algorithms.knn import Metric, check_vectors
from dagster_brain.algorithms.knn_graph import KnnGraph, build_knn_graph

# The robust z above which an item is flagged an outlier (the usual modified-z rule); it maps
# to a score of 0.5.
Z_FLAG = 3.5
# 1 / Phi^-1(3/4): the median absolute deviation of a normal sample times this is its sigma.
MAD_TO_SIGMA = 1.4826
# sqrt(pi / 2): the mean absolute deviation of a normal sample times this is its sigma.
MEAN_AD_TO_SIGMA = 1.2533


@dataclass(frozen=True)
class OutlierScores:
    """Per item: the mean distance to its k nearest neighbours, its robust z against all the
    items scored together, the [0, 1] score and the outlier flag (``z > Z_FLAG``)."""

    k_distance: np.ndarray
    z: np.ndarray
    score: np.ndarray
    flagged: np.ndarray


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(value - median) / sigma``, sigma from the median absolute deviation (the mean
    absolute deviation when over half the values are equal; all zero when all are equal)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.copy()
    med = float(np.median(v))
    dev = np.abs(v - med)
    sigma = MAD_TO_SIGMA * float(np.median(dev))
    if sigma <= 0:
        sigma = MEAN_AD_TO_SIGMA * float(dev.mean())
    if sigma <= 0:
        return np.zeros_like(v)
    return (v - med) / sigma


def z_to_score(z: np.ndarray) -> np.ndarray:
    """0 at or below the median, ``Z_FLAG`` -> 0.5, tending to 1 (never reached) as z grows;
    strictly increasing above 0, so the order of large z is kept."""
    z = np.clip(np.asarray(z, dtype=np.float64), 0.0, None)
    return z / (z + Z_FLAG)


def scores_from_distances(distances: np.ndarray) -> OutlierScores:
    """Outlier scores from each item's neighbour distances (rows: items, nearest first)."""
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"outliers: neighbour distances must be 2-D, got shape {d.shape}")
    if d.shape[1] == 0:
        raise ValueError("outliers: needs at least 2 items (no neighbour distances)")
    kd = np.clip(d.mean(axis=1), 0.0, None)  # float error can make a distance -1e-7
    z = robust_z(kd)
    return OutlierScores(kd, z, z_to_score(z), z > Z_FLAG)


def outliers_from_graph(graph: KnnGraph, k: int | None = None) -> OutlierScores:
    """Outlier scores of the items of a kNN graph (its first ``k`` neighbours; all by
    default), in ``graph.ids`` order."""
    w = graph.distances.shape[1] if k is None else min(k, graph.distances.shape[1])
    return scores_from_distances(graph.distances[:, :w])


def outlier_scores(
    X: np.ndarray, ids: Sequence[str], *, k: int = 16, metric: Metric = "cosine"
) -> OutlierScores:
    """Outlier scores of the rows of ``X`` from their exact ``k`` nearest neighbours."""
    ids = list(ids)
    X = check_vectors(X, ids)
    if len(ids) < 2:
        raise ValueError(f"outliers needs at least 2 items, got {len(ids)}")
    return outliers_from_graph(build_knn_graph(X, ids, k, metric), k)


@dataclass(frozen=True)
class ClassOutliers:
    """Per item: the within-class statistic (NaN where the class has one member, or the item
    has no label) and the classes too small to score."""

    scores: OutlierScores
    too_small: list[str]


def class_outlier_scores(
    X: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[str | None],
    *,
    k: int = 16,
    metric: Metric = "cosine",
    graph: KnnGraph | None = None,
) -> ClassOutliers:
    """The outlier statistic within each item's class: neighbours among the items of the same
    label, normalised by that class's own spread. ``graph``: the kNN graph of all of ``X``
    (rows in ``ids`` order), reused for a class holding every item, so one class gives the
    global scores."""
    ids = list(ids)
    X = check_vectors(X, ids)
    lab = np.asarray([None if v is None else str(v) for v in labels], dtype=object)
    if len(lab) != len(ids):
        raise ValueError(f"outliers: {len(lab)} labels for {len(ids)} items")
    n = len(ids)
    kd, z, score = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    flagged = np.zeros(n, dtype=bool)
    too_small = []
    for name in sorted({v for v in lab if v is not None}):
        rows = np.flatnonzero(lab == name)
        if len(rows) < 2:
            too_small.append(name)
            continue
        if len(rows) == n and graph is not None:
            got = outliers_from_graph(graph, k)
        else:
            got = outliers_from_graph(
                build_knn_graph(X[rows], [ids[i] for i in rows], k, metric), k
            )
        kd[rows], z[rows], score[rows], flagged[rows] = (
            got.k_distance,
            got.z,
            got.score,
            got.flagged,
        )
    return ClassOutliers(OutlierScores(kd, z, score, flagged), too_small)
