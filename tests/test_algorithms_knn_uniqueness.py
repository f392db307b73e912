"""Exact kNN and uniqueness against brute force and hand-computed answers."""

import numpy as np
import pytest

from dagster_brain.algorithms.knn import exact_knn, pairwise_distances
from dagster_brain.algorithms.uniqueness import neighbour_weights, uniqueness_scores


def brute_force(X, k, metric):
    D = pairwise_distances(X, X, metric).astype(np.float64)
    np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, axis=1), idx


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dotproduct"])
def test_blocked_knn_equals_brute_force(metric):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    # tiny blocks force many block boundaries
    dist, idx = exact_knn(X, 7, metric=metric, block_bytes=4 * 300 * 13)
    bd, bi = brute_force(X, 7, metric)
    assert np.allclose(dist, bd, atol=1e-4)
    assert (idx == bi).mean() > 0.99  # ties may order differently
    assert not (idx == np.arange(300)[:, None]).any()  # never itself


def test_knn_with_queries_and_duplicates():
    X = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    d, i = exact_knn(X, 1)
    assert i[0, 0] == 1 and i[1, 0] == 0  # exact duplicates find each other
    assert d[0, 0] == pytest.approx(0.0, abs=1e-6)
    d, i = exact_knn(X, 2, queries=np.array([[0, 2.0]]))
    assert i[0, 0] == 2 and d[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_knn_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown metric"):
        exact_knn(np.eye(3), 1, metric="manhattan")
    with pytest.raises(ValueError, match="non-finite"):
        exact_knn(np.array([[1.0, np.nan], [0, 1]]), 1)
    with pytest.raises(ValueError, match="neighbours requested"):
        exact_knn(np.eye(1), 1)


def test_uniqueness_hand_computed():
    # three points on a line (euclidean): distances 0-1: 1, 1-2: 2, 0-2: 3
    X = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    scores, nearest, nd = uniqueness_scores(
        X, ["a", "b", "c"], k=2, weights=[0.5, 0.5], metric="euclidean"
    )
    raw = np.array([(1 + 3) / 2, (1 + 2) / 2, (2 + 3) / 2])
    assert np.allclose(scores, raw / raw.max())
    assert list(nearest) == [1, 0, 1]
    assert np.allclose(nd, [1, 1, 2])


def test_uniqueness_duplicates_both_score_lowest():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 32)).astype(np.float32)
    X = np.vstack([X, X[17], X[42] + 1e-4])  # two planted duplicate pairs
    ids = [f"s{i}" for i in range(len(X))]
    scores, _, _ = uniqueness_scores(X, ids, k=3)
    lowest = set(np.argsort(scores)[:4])
    assert lowest == {17, 42, 200, 201}
    assert scores.max() == pytest.approx(1.0)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_uniqueness_against_brute_force_ordering():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 8)).astype(np.float32)
    scores, _, _ = uniqueness_scores(X, [str(i) for i in range(150)], k=3)
    bd, _ = brute_force(X, 3, "cosine")
    raw = bd @ neighbour_weights(3)
    assert np.allclose(scores, raw / raw.max(), atol=1e-5)


def test_uniqueness_errors_name_the_sample():
    X = np.ones((3, 2), dtype=np.float32)
    X[1, 0] = np.nan
    with pytest.raises(ValueError, match="'b'"):
        uniqueness_scores(X, ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least 2"):
        uniqueness_scores(np.ones((1, 2)), ["a"])
    with pytest.raises(ValueError, match="weights"):
        neighbour_weights(3, [1.0, 2.0])
