"""Visualization reducers, quality score and plots (UMAP kept below 4,096 points: JIT)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from sklearn.metrics import silhouette_score

from dagster_brain.algorithms.visualization import (
    Reduction,
    reduce,
    scatter_html,
    scatter_png,
    trustworthiness_at_k,
)


def blobs(n_per: int = 100, dim: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three clusters 10 apart with unit noise."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, dim) * 10
    X = np.vstack([c + rng.normal(size=(n_per, dim)) for c in centres])
    return X.astype(np.float32), np.repeat(np.arange(3), n_per)


def ids_for(n: int) -> list[str]:
    return [f"s{i:04d}" for i in range(n)]


@pytest.fixture(scope="module")
def clusters() -> tuple[np.ndarray, np.ndarray, list[str]]:
    X, y = blobs()
    return X, y, ids_for(len(X))


@pytest.fixture(scope="module")
def umap_run(clusters) -> Reduction:
    X, _, ids = clusters
    return reduce(X, ids, "umap", seed=51)


def test_pca_recovers_a_plane_in_10d():
    # Points on a 2-D plane embedded in 10-D: PCA to 2-D must preserve every distance, and
    # the first axis carries the larger (std 5 vs 1) spread, whatever the signs.
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.normal(size=(10, 2)))
    coords = rng.normal(size=(200, 2)) * [5.0, 1.0]
    X = coords @ basis.T + 3.0  # offset: PCA centres it
    r = reduce(X, ids_for(200), "pca")
    assert r.points.shape == (200, 2) and r.points.dtype == np.float32
    np.testing.assert_allclose(pdist(r.points), pdist(coords), rtol=1e-4, atol=1e-4)
    assert np.isclose(sum(r.params["explained_variance_ratio"]), 1.0, atol=1e-5)
    var = r.points.var(axis=0)
    np.testing.assert_allclose(var, coords.var(axis=0), rtol=0.05)  # coords axes are ~orthogonal
    assert var[0] > var[1]
    assert trustworthiness_at_k(X, r.points, k=10) > 0.999
    assert r.fit_size == 200 and set(r.timings) == {"fit_s", "transform_s", "total_s"}


def test_umap_keeps_clusters_apart(clusters, umap_run):
    X, y, ids = clusters
    assert umap_run.points.shape == (300, 2) and umap_run.ids == ids
    assert silhouette_score(umap_run.points, y) > 0.5
    assert trustworthiness_at_k(X, umap_run.points) > 0.85
    again = reduce(X, ids, "umap", seed=51)  # warm now: cheap
    np.testing.assert_array_equal(again.points, umap_run.points)


def test_umap_subsample_then_transform(clusters):
    X, y, ids = clusters
    r = reduce(X, ids, "umap", seed=51, max_fit=120)
    assert r.fit_size == 120 and r.points.shape == (300, 2)
    assert np.isfinite(r.points).all() and r.timings["transform_s"] > 0
    assert silhouette_score(r.points, y) > 0.5


def test_pca_subsample_is_close_to_full(clusters):
    X, _, ids = clusters
    full = reduce(X, ids, "pca")
    sub = reduce(X, ids, "pca", max_fit=150)
    assert sub.fit_size == 150 and full.fit_size == 300
    # Same plane up to sign/rotation within it: distances nearly agree.
    d_full, d_sub = pdist(full.points), pdist(sub.points)
    assert np.corrcoef(d_full, d_sub)[0, 1] > 0.99


def test_tsne_small_and_3d(clusters):
    X, y, ids = clusters
    r = reduce(X[:150:2], ids[:150:2], "tsne", perplexity=10)
    assert r.points.shape == (75, 2)
    assert silhouette_score(r.points, y[:150:2]) > 0.5
    r3 = reduce(X[::3], ids[::3], "tsne", num_dims=3, perplexity=10)
    assert r3.points.shape == (100, 3) and r3.num_dims == 3


def test_tsne_beyond_max_fit_places_rest_by_neighbours(clusters):
    X, y, ids = clusters
    r = reduce(X, ids, "tsne", perplexity=10, max_fit=100)
    assert r.fit_size == 100 and r.points.shape == (300, 2) and r.params["place_k"] == 5
    assert silhouette_score(r.points, y) > 0.5


def test_manual_points_array_and_dict():
    ids = ["a", "b", "c"]
    pts = np.array([[0, 1], [2, 3], [4, 5]], dtype=float)
    r = reduce(None, ids, "manual", points=pts)
    np.testing.assert_array_equal(r.points, pts.astype(np.float32))
    r = reduce(None, ids, "manual", points={"c": [4, 5], "a": [0, 1], "b": [2, 3], "x": [9, 9]})
    np.testing.assert_array_equal(r.points, pts.astype(np.float32))
    assert r.method == "manual" and r.fit_size == 0
    with pytest.raises(ValueError, match="no manual point for sample 'b'"):
        reduce(None, ids, "manual", points={"a": [0, 1], "c": [4, 5]})
    with pytest.raises(ValueError, match="sample 'b' has 3 values, expected 2"):
        reduce(None, ids, "manual", points={"a": [0, 1], "b": [1, 2, 3], "c": [4, 5]})
    with pytest.raises(ValueError, match=r"shape \(3, 3\), expected \(3, 2\)"):
        reduce(None, ids, "manual", points=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-finite manual point for sample 'c'"):
        reduce(None, ids, "manual", points=[[0, 1], [2, 3], [np.nan, 5]])
    with pytest.raises(ValueError, match="needs points"):
        reduce(None, ids, "manual")


def test_errors_name_the_problem():
    X, _ = blobs(n_per=4)
    ids = ids_for(12)
    with pytest.raises(ValueError, match="umap needs at least 16 samples, got 12"):
        reduce(X, ids, "umap")
    with pytest.raises(ValueError, match="tsne needs at least 91 samples, got 12"):
        reduce(X, ids, "tsne")
    with pytest.raises(ValueError, match="max_fit=10 is below the 31 samples tsne needs"):
        reduce(np.vstack([X] * 10), ids_for(120), "tsne", perplexity=10, max_fit=10)
    bad = X.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="'s0007'"):
        reduce(bad, ids, "pca")
    with pytest.raises(ValueError, match="num_dims must be 2 or 3, got 4"):
        reduce(X, ids, "pca", num_dims=4)
    with pytest.raises(ValueError, match="unknown method 'mds'"):
        reduce(X, ids, "mds")
    with pytest.raises(ValueError, match="duplicate sample id 's0001'"):
        reduce(X[:3], ["s0000", "s0001", "s0001"], "pca")
    with pytest.raises(ValueError, match="12 vectors for 11 ids"):
        reduce(X, ids[:11], "pca")
    with pytest.raises(ValueError, match="k=10 must be in"):
        trustworthiness_at_k(X, X[:, :2], k=10)


def test_scatter_png(umap_run, clusters):
    _, y, _ = clusters
    for labels in (None, [f"class {v}" for v in y], np.arange(300) % 25):
        png = scatter_png(umap_run.points, labels=labels, title="digits")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    png3 = scatter_png(np.random.default_rng(0).normal(size=(50, 3)))
    assert png3.startswith(b"\x89PNG")
    width, height = int.from_bytes(png3[16:20], "big"), int.from_bytes(png3[20:24], "big")
    assert (width, height) == (800, 800)


def test_scatter_html_is_self_contained(umap_run, clusters, tmp_path):
    _, y, ids = clusters
    thumbs = [str(tmp_path / f"{i}.png") for i in ids]
    page = scatter_html(umap_run.points, ids, labels=y, thumbnails=thumbs, title="<b>x</b>")
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", page).group(1))
    assert data["ids"] == ids and all(i in page for i in ids)
    assert data["srcs"][0].startswith("file:///") and data["thumbs"][0] == thumbs[0]
    for needle in (
        "pointerdown",
        "lassoSelect",
        "inside(",
        "new Blob",
        "export-txt",
        "export-json",
    ):
        assert needle in page
    assert "http" not in page and not re.search(r"<script[^>]+src", page)
    assert "<b>x</b>" not in page  # title escaped
    # An id that tries to close the script stays inside the JSON string.
    page = scatter_html(np.zeros((2, 3)), ["</script><script>alert(1)", "b"], labels=["u", None])
    assert page.count("</script>") == 1 and "first two dims" in page
    assert json.loads(re.search(r"const DATA = (\{.*?\});\n", page).group(1))["classes"] == [
        "None",
        "u",
    ]
    with pytest.raises(ValueError, match="2 points for 1 ids"):
        scatter_html(np.zeros((2, 2)), ["a"])
