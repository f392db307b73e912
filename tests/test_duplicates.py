"""Duplicates and unique subsets on vectors: hand-checked answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagster_brain.algorithms.duplicates import (
    DuplicatesResult,
    choose_threshold,
    exact_duplicate_groups,
    find_duplicates,
    find_unique,
    pca_2d,
    visualize_duplicates,
    visualize_unique,
)
from dagster_brain.algorithms.knn import pairwise_distances


def _line(n: int = 11) -> tuple[np.ndarray, list[str]]:
    """Points 0, 1, ..., n-1 on the x axis."""
    X = np.zeros((n, 2), np.float32)
    X[:, 0] = np.arange(n)
    return X, [f"p{i}" for i in range(n)]


def _blobs(seed: int = 0, n: int = 300, dim: int = 16) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), [f"s{i:03d}" for i in range(n)]


def _valid(result: DuplicatesResult, X: np.ndarray, ids: list[str], metric: str) -> None:
    """Kept items are pairwise farther than thresh; each duplicate's kept item is within it."""
    row = {i: r for r, i in enumerate(ids)}
    kept = [row[i] for i in result.kept_ids]
    D = pairwise_distances(X[kept], X[kept], metric=metric)
    np.fill_diagonal(D, np.inf)
    assert D.min() > result.thresh - 1e-6
    assert sorted(result.kept_ids + result.duplicate_ids) == sorted(ids)
    for kid, members in result.neighbors_map.items():
        for did, dist in members:
            assert dist <= result.thresh + 1e-6
            assert dist == pytest.approx(
                float(pairwise_distances(X[[row[kid]]], X[[row[did]]], metric=metric)[0, 0]),
                abs=1e-5,
            )


# -- find_unique ---------------------------------------------------------------------------


def test_find_unique_on_a_line_picks_both_ends_then_the_middle():
    X, ids = _line()
    got = find_unique(X, ids, 3, metric="euclidean")
    # farthest from the centroid (5) is an end; then the other end; then 5 (5 from both)
    assert set(got[:2]) == {"p0", "p10"}
    assert got[2] == "p5"


def test_find_unique_takes_one_point_per_cluster():
    rng = np.random.default_rng(1)
    centres = np.eye(3, 8, dtype=np.float32) * 10
    X = np.concatenate([c + 0.01 * rng.normal(size=(5, 8)) for c in centres]).astype(np.float32)
    ids = [f"c{i // 5}_{i % 5}" for i in range(15)]
    got = find_unique(X, ids, 3, metric="cosine")
    assert sorted(g.split("_")[0] for g in got) == ["c0", "c1", "c2"]


def test_find_unique_count_bounds():
    X, ids = _line(4)
    assert find_unique(X, ids, 4) == ids
    assert find_unique(X, ids, 10) == ids
    with pytest.raises(ValueError, match="count"):
        find_unique(X, ids, 0)
    with pytest.raises(ValueError, match="not a distance"):
        find_unique(X, ids, 2, metric="dotproduct")


def test_find_unique_is_reproducible_and_handles_exact_copies():
    X, ids = _blobs(n=50)
    X = np.concatenate([X, X[:5]])
    ids = ids + [f"copy{i}" for i in range(5)]
    a = find_unique(X, ids, 52, seed=3)
    assert a == find_unique(X, ids, 52, seed=3)
    assert len(set(a)) == 52


# -- find_duplicates -----------------------------------------------------------------------


@pytest.mark.parametrize("thresh", [0.0, 1e-9, 0.001])
def test_exact_copies_are_duplicates_at_any_thresh(thresh):
    X, ids = _blobs()
    X = np.concatenate([X, X[[3, 7]]])
    ids = ids + ["copy_of_3", "copy_of_7"]
    res = find_duplicates(X, ids, thresh=thresh)
    assert sorted(res.duplicate_ids) == ["copy_of_3", "copy_of_7"]  # originals come first
    assert res.neighbors_map == {"s003": [("copy_of_3", 0.0)], "s007": [("copy_of_7", 0.0)]}
    assert res.thresh == thresh


def test_fraction_flags_about_that_fraction():
    X, ids = _blobs(n=400)
    for fraction in (0.05, 0.1, 0.3):
        res = find_duplicates(X, ids, fraction=fraction)
        assert abs(len(res.duplicate_ids) - fraction * 400) <= 4
        _valid(res, X, ids, "cosine")
        assert res.fraction == fraction


def test_extreme_fractions_and_thresholds_do_not_raise():
    X, ids = _blobs(n=60)
    assert find_duplicates(X, ids, fraction=0.0).duplicate_ids == []
    everything = find_duplicates(X, ids, fraction=1.0)
    assert len(everything.kept_ids) == 1 and len(everything.duplicate_ids) == 59
    assert find_duplicates(X, ids, thresh=0.0).duplicate_ids == []
    huge = find_duplicates(X, ids, thresh=10.0)
    assert len(huge.kept_ids) == 1
    assert len(huge.groups) == 1 and len(huge.groups[0]) == 60
    single = find_duplicates(X[:1], ids[:1], thresh=0.5)
    assert single.kept_ids == ids[:1] and single.duplicate_ids == []


@pytest.mark.parametrize(
    "kwargs,match",
    [({}, "exactly one of"), ({"thresh": 0.1, "fraction": 0.1}, "exactly one of")],
)
def test_thresh_and_fraction_are_exclusive(kwargs, match):
    X, ids = _blobs(n=10)
    with pytest.raises(ValueError, match=match):
        find_duplicates(X, ids, **kwargs)


def test_bad_inputs_name_the_problem():
    X, ids = _blobs(n=10)
    with pytest.raises(ValueError, match=">= 0"):
        find_duplicates(X, ids, thresh=-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        find_duplicates(X, ids, fraction=1.5)
    X[4, 0] = np.nan
    with pytest.raises(ValueError, match="s004"):
        find_duplicates(X, ids, thresh=0.1)


def test_neighbors_map_pairs_and_groups_on_a_chain():
    # a - b - c on a line 0.05 apart, d far away: at 0.06, a and c are kept (0.1 apart)
    X = np.array([[0.0, 0], [0.05, 0], [0.1, 0], [5.0, 0]], np.float32)
    ids = ["a", "b", "c", "d"]
    res = find_duplicates(X, ids, thresh=0.06, metric="euclidean")
    assert res.kept_ids == ["a", "c", "d"]
    assert res.duplicate_ids == ["b"]
    (kid, members), *_ = res.neighbors_map.items()
    assert kid == "a" and members[0][0] == "b"  # tie between a and c: input order
    assert members[0][1] == pytest.approx(0.05, abs=1e-6)
    assert res.groups == [["a", "b", "c"]]  # one connected group, representative first
    assert list(res.pairs.columns) == ["id_a", "id_b", "distance", "path"]
    assert res.pairs.iloc[0][["id_a", "id_b", "path"]].tolist() == ["a", "b", "embedding"]


def test_neighbors_map_is_sorted_and_covers_every_duplicate():
    X, ids = _blobs(n=200, dim=8)
    rng = np.random.default_rng(5)
    copies = X[:20] + 0.02 * rng.normal(size=(20, 8)).astype(np.float32)
    X2, ids2 = np.concatenate([X, copies]), ids + [f"near{i}" for i in range(20)]
    res = find_duplicates(X2, ids2, thresh=0.01)
    flat = [d for members in res.neighbors_map.values() for d, _ in members]
    assert sorted(flat) == sorted(res.duplicate_ids)
    assert set(res.neighbors_map) <= set(res.kept_ids)
    for members in res.neighbors_map.values():
        dists = [d for _, d in members]
        assert dists == sorted(dists)
    planted = {frozenset((f"s{i:03d}", f"near{i}")) for i in range(20)}
    found = {frozenset(p) for p in zip(res.pairs["id_a"], res.pairs["id_b"], strict=True)}
    assert planted <= found
    _valid(res, X2, ids2, "cosine")


def test_dense_thresholds_fall_back_to_an_exact_scan():
    X, ids = _blobs(n=120, dim=4)
    small = find_duplicates(X, ids, thresh=0.3, max_k=4)  # most rows truncated
    big = find_duplicates(X, ids, thresh=0.3, max_k=256)
    for res in (small, big):
        _valid(res, X, ids, "cosine")
    assert abs(len(small.kept_ids) - len(big.kept_ids)) <= 0.3 * len(big.kept_ids)


# -- choose_threshold ----------------------------------------------------------------------


def test_choose_threshold_lands_between_duplicate_and_natural_modes():
    rng = np.random.default_rng(0)
    natural = rng.normal(size=(600, 6)) @ rng.normal(size=(6, 32))  # 6-d manifold in 32-d
    natural = natural.astype(np.float32)
    ids = [f"n{i:03d}" for i in range(600)]
    nat_nn = np.sort(pairwise_distances(natural, natural, "euclidean"), 1)[:, 1]
    copies = natural[:40] + 0.01 * np.median(nat_nn) * rng.normal(size=(40, 32)) / np.sqrt(32)
    X = np.concatenate([natural, copies.astype(np.float32)])
    ids = ids + [f"dup{i:02d}" for i in range(40)]
    choice = choose_threshold(X, ids, metric="euclidean")
    dup_d = np.linalg.norm(copies - natural[:40], axis=1)
    assert dup_d.max() < choice.thresh < np.quantile(nat_nn, 0.05)
    assert choice.est_precision >= 0.9
    assert 4 <= choice.intrinsic_dim <= 8  # the manifold is 6-d
    res = find_duplicates(X, ids, thresh=choice.thresh, metric="euclidean")
    planted = {f"dup{i:02d}" for i in range(40)}
    assert planted <= set(res.duplicate_ids)
    assert len(set(res.duplicate_ids) - planted) <= 2 * choice.expected_false + 3
    assert {"thresh", "est_precision", "est_recall"} <= set(choice.curve.columns)
    assert "thresh=" in choice.describe()


def test_choose_threshold_flags_almost_nothing_without_duplicates():
    X, ids = _blobs(n=500, dim=8)
    choice = choose_threshold(X, ids)
    assert choice.flagged <= 3
    assert choice.strict_thresh <= choice.thresh <= choice.loose_thresh


# -- exact duplicates ----------------------------------------------------------------------


def test_exact_groups_from_byte_and_pixel_hashes():
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    content = ["h1", "h1", "h2", "h3", None, "h5", "h5"]
    pixels = ["p1", "p1", "p1", "p4", "p1", "p5", "p5"]
    got = exact_duplicate_groups(ids, content, pixels)
    assert got.to_dict("list") == {
        "group": [0, 0, 0, 0, 1, 1],
        "sample_id": ["a", "b", "c", "e", "f", "g"],
        "match": ["bytes", "bytes", "pixels", "pixels", "bytes", "bytes"],
        "first": [True, False, False, False, True, False],
    }
    bytes_only = exact_duplicate_groups(ids, content)
    assert bytes_only["sample_id"].tolist() == ["a", "b", "f", "g"]
    none = exact_duplicate_groups(["x", "y"], ["1", "2"], ["3", "4"])
    assert none.empty and list(none.columns) == ["group", "sample_id", "match", "first"]


# -- plots ---------------------------------------------------------------------------------


def test_plots_are_png_from_points_or_pca():
    X, ids = _blobs(n=80)
    X = np.concatenate([X, X[:3]])
    ids = ids + ["c0", "c1", "c2"]
    res = find_duplicates(X, ids, thresh=0.0)
    assert visualize_duplicates(None, ids, res, vectors=X)[:8] == b"\x89PNG\r\n\x1a\n"
    pts = pca_2d(X)
    assert pts.shape == (83, 2)
    assert visualize_unique(pts, ids, find_unique(X, ids, 10))[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="points2d"):
        visualize_unique(None, ids, ids[:3])
    assert isinstance(res.pairs, pd.DataFrame)
