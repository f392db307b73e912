"""Outliers: hand-computed robust z and scores, planted out-of-distribution points found, the
per-class statistic, the shared kNN graph, the asset's thumbnails and check."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame, write_images
from sklearn.metrics import roc_auc_score

from dagster_brain.algorithms.knn_graph import build_knn_graph
from dagster_brain.algorithms.outliers import (
    MAD_TO_SIGMA,
    Z_FLAG,
    class_outlier_scores,
    outlier_scores,
    robust_z,
    scores_from_distances,
    z_to_score,
)
from dagster_brain.api import Dataset, compute_outliers
from dagster_brain.methods import METHODS
from dagster_brain.methods.knn_graph import KnnGraphSpec, run_knn_graph
from dagster_brain.methods.outliers import OutliersSpec, run_outliers


def planted(n_in=490, n_out=10, dim=16, seed=0):
    """Inliers in 5 tight clusters, ``n_out`` points in random other directions (last)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, 5, n_in)
    inl = 5 * centres[which] + 0.6 * rng.normal(size=(n_in, dim))
    out = 5 * rng.normal(size=(n_out, dim)) / np.sqrt(dim) * 1.5
    X = np.vstack([inl, out]).astype(np.float32)
    truth = np.r_[np.zeros(n_in, bool), np.ones(n_out, bool)]
    return X, [f"s{i:03d}" for i in range(len(X))], truth, which


# -- the statistic, by hand ------------------------------------------------------------------


def test_robust_z_and_scores_by_hand():
    # median 3, absolute deviations (2, 1, 0, 1, 97): MAD 1
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    np.testing.assert_allclose(z, np.array([-2, -1, 0, 1, 97]) / MAD_TO_SIGMA)
    # k-distance = row mean; score z / (z + 3.5) above the median, 0 below
    got = scores_from_distances(np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4, 4], [99, 101]]))
    np.testing.assert_allclose(got.k_distance, [1, 2, 3, 4, 100])
    z4 = 97 / MAD_TO_SIGMA
    np.testing.assert_allclose(
        got.score, [0, 0, 0, (1 / 1.4826) / (1 / 1.4826 + 3.5), z4 / (z4 + 3.5)]
    )
    assert got.flagged.tolist() == [False, False, False, False, True]
    # the flag threshold maps to 0.5
    assert z_to_score(np.array([Z_FLAG]))[0] == 0.5 and z_to_score(np.array([-2.0]))[0] == 0


def test_mad_zero_falls_back_to_the_mean_deviation():
    # over half equal: MAD 0; mean absolute deviation 1/5 * 5 = 1 -> sigma 1.2533
    z = robust_z(np.array([0.0, 0.0, 0.0, 0.0, 5.0]))
    np.testing.assert_allclose(z, [0, 0, 0, 0, 5 / 1.2533])


def test_identical_samples_get_defined_scores():
    X = np.ones((12, 4), np.float32)
    ids = [f"s{i}" for i in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero anywhere
        got = outlier_scores(X, ids, k=3)
        per = class_outlier_scores(X, ids, ["a"] * 6 + ["b"] * 6, k=3)
    for s in (got, per.scores):
        assert np.isfinite(s.score).all() and (s.score == 0).all() and not s.flagged.any()


def test_planted_outliers_are_found():
    X, ids, truth, _ = planted()
    for metric in ("cosine", "euclidean"):
        got = outlier_scores(X, ids, k=5, metric=metric)
        assert roc_auc_score(truth, got.score) >= 0.95
        assert 0 <= got.score.min() and got.score.max() < 1
        top = np.argsort(-got.score)[: truth.sum()]
        assert truth[top].mean() >= 0.8  # most of the 10 planted are the top 10
        assert got.flagged[truth].mean() >= 0.8 and got.flagged[~truth].mean() < 0.02


def test_one_class_equals_global_and_a_misplaced_item_is_a_class_outlier():
    X, ids, _, which = planted(n_out=0)
    glob = outlier_scores(X, ids, k=5)
    one = class_outlier_scores(X, ids, ["all"] * len(ids), k=5)
    np.testing.assert_array_equal(one.scores.score, glob.score)
    # labels = clusters; one item of cluster 0 labelled as cluster 1: typical globally (it
    # sits inside cluster 0), the most atypical of class 1
    labels = [f"c{w}" for w in which]
    j = int(np.flatnonzero(which == 0)[0])
    labels[j] = "c1"
    per = class_outlier_scores(X, ids, labels, k=5)
    assert glob.score[j] < 0.5 and not glob.flagged[j]
    in_c1 = np.array([lab == "c1" for lab in labels])
    assert per.scores.score[j] == per.scores.score[in_c1].max() and per.scores.flagged[j]


def test_a_class_of_one_and_unlabelled_items_have_no_class_score():
    X, ids, _, _ = planted(n_in=30, n_out=0)
    labels = ["a"] * 28 + ["b", None]
    per = class_outlier_scores(X, ids, labels, k=3)
    assert per.too_small == ["b"]
    assert np.isnan(per.scores.score[28:]).all() and np.isfinite(per.scores.score[:28]).all()


# -- the brain run ---------------------------------------------------------------------------


@pytest.fixture
def embedded(store, tmp_path):
    X, ids, truth, which = planted(n_in=196, n_out=4)
    paths = write_images(tmp_path / "img", len(ids), size=16)
    store.write_samples(
        "toy",
        sample_frame(paths),
        labels={
            "ground_truth": (
                "classification",
                None,
                pd.DataFrame(
                    {
                        "sample_id": ids,
                        "label_id": [f"l{i}" for i in range(len(ids))],
                        "label": [f"c{w}" for w in which] + ["c0"] * 4,
                    }
                ),
            )
        },
    )
    store.write_embeddings("toy", "e", ids, X)
    return store, X, ids, truth


def test_run_reads_the_shared_graph_with_the_same_scores(embedded):
    store, X, ids, truth = embedded
    spec = OutliersSpec(kind="outliers", dataset="toy", brain_key="o", embeddings="e")
    own = run_outliers(spec, store)
    assert own.summary["shared_graph"] is False
    assert roc_auc_score(truth, own.results["outlier"]) >= 0.95
    run_knn_graph(
        KnnGraphSpec(kind="knn_graph", dataset="toy", brain_key="g", embeddings="e"), store
    )
    shared = run_outliers(spec, store)
    assert shared.summary["shared_graph"] is True and shared.record.upstream["knn_graph"] == "g"
    np.testing.assert_allclose(shared.results["outlier"], own.results["outlier"], rtol=1e-6)
    expected = outlier_scores(X, ids, k=spec.k).score
    np.testing.assert_allclose(own.results["outlier"], expected, rtol=1e-6)


def test_api_with_a_label_field_checks_and_thumbnails(embedded):
    from dagster_brain.checks import check_results

    store, X, ids, truth = embedded
    out = compute_outliers(Dataset("toy", store), embeddings="e", label_field="ground_truth", k=4)
    res = out.results
    assert {"outlier", "class_outlier", "label", "is_outlier", "class_is_outlier"} <= set(res)
    assert len(res) == len(ids) and res["class_outlier"].between(0, 1).all()
    graph = build_knn_graph(X, ids, 4, "cosine")
    want = class_outlier_scores(X, ids, res["label"].tolist(), k=4, graph=graph).scores.score
    np.testing.assert_allclose(res["class_outlier"], want, rtol=1e-6)
    spec = OutliersSpec(
        kind="outliers",
        dataset="toy",
        brain_key="outliers",
        embeddings="e",
        k=4,
        label_field="ground_truth",
    )
    passed, meta = check_results(store, spec)
    assert passed and meta["expected_rows"] == len(ids)
    meta = METHODS["outliers"].asset_metadata(out)
    assert meta["thumbnails"].value.startswith("![outlier: top and bottom items](data:image/")
    top = res.nlargest(4, "outlier")["sample_id"].tolist()
    assert ", ".join(top) in meta["thumbnails"].value  # the grid's caption lists the top items


def test_a_detections_field_is_refused_for_whole_samples(embedded):
    store, _, ids, _ = embedded
    boxes = pd.DataFrame(
        {
            "sample_id": ids[:2],
            "label_id": ["b0", "b1"],
            "label": ["x", "y"],
            "box": [[0.1, 0.1, 0.2, 0.2]] * 2,
        }
    )
    store.write_labels("toy", "boxes", "detections", None, boxes)
    spec = OutliersSpec(
        kind="outliers", dataset="toy", brain_key="o", embeddings="e", label_field="boxes"
    )
    with pytest.raises(ValueError, match="brain key 'o'.*'boxes' holds detections"):
        run_outliers(spec, store)


def test_too_few_items_is_refused_with_the_key(store, tmp_path):
    store.write_samples("one", sample_frame([str(tmp_path / "a.png")]))
    store.write_embeddings("one", "e", ["s000"], np.ones((1, 3), np.float32))
    spec = OutliersSpec(kind="outliers", dataset="one", brain_key="o", embeddings="e")
    with pytest.raises(ValueError, match="brain key 'o': outliers need at least 2"):
        run_outliers(spec, store)


def test_the_asset_shows_thumbnails_and_passes_its_check(embedded):
    import dagster as dg

    from dagster_brain.checks import build_run_check
    from dagster_brain.factory import build_brain_asset
    from dagster_brain.resources.store import BrainStoreResource

    store, _, ids, _ = embedded
    spec = OutliersSpec(
        kind="outliers", dataset="toy", brain_key="o", embeddings="e", label_field="ground_truth"
    )
    result = dg.materialize(
        [build_brain_asset(spec), build_run_check(spec)],
        resources={"store": BrainStoreResource(data_dir=str(store.data_dir))},
    )
    assert result.success
    meta = result.asset_materializations_for_node("toy__brain__o")[0].metadata
    assert meta["dagster/row_count"].value == len(ids)
    assert meta["thumbnails"].value.startswith("![outlier: top and bottom items](data:image/")
    assert [e.passed for e in result.get_asset_check_evaluations()] == [True]
