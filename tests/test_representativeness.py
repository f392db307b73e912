"""Representativeness: hand-computed scores, planted clusters against a ring of outliers, the
downweighting of a clump of copies, the run (shared kNN graph, check, CLI, API, YAML)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import sample_frame

from dagster_brain.algorithms.representativeness import (
    default_clusters,
    downweight,
    representativeness_scores,
)
from dagster_brain.methods.representativeness import (
    RepresentativenessSpec,
    run_representativeness,
)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def clusters_and_ring(seed: int = 0, dim: int = 16, per: int = 50, ring: int = 24):
    """4 clusters of ``per`` points around known centres, and ``ring`` outliers, each on its
    own random direction away from every centre."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:4] * 10.0  # orthogonal
    X = np.concatenate([c + 0.8 * rng.normal(size=(per, dim)) for c in centres])
    truth = np.repeat(np.arange(4), per)
    out = []
    while len(out) < ring:
        v = rng.normal(size=dim)
        v /= np.linalg.norm(v)
        if np.max(centres @ v / 10.0) < 0.3:  # far from every centre
            out.append(10.0 * v)
    ring_rows = np.asarray(out).reshape(-1, dim)
    return np.concatenate([X, ring_rows]).astype(np.float32), truth, centres


# -- the maths -----------------------------------------------------------------------------


def test_hand_computed_scores_on_two_clusters():
    # unit vectors at 0, +10, -10 degrees (cluster A) and 90, 100 degrees (cluster B)
    deg = np.radians([0.0, 10.0, -10.0, 90.0, 100.0])
    X = np.stack([np.cos(deg), np.sin(deg)], 1)
    rep = representativeness_scores(X, list("abcde"), n_clusters=2)
    # A's centre is (1, 0): d = 0, 1 - cos 10deg, 1 - cos 10deg; B's is at 95deg: 1 - cos 5deg
    d_max = 1 - np.cos(np.radians(10))
    b = (1 - (1 - np.cos(np.radians(5))) / d_max) * np.sqrt(2 / 3)
    np.testing.assert_allclose(rep.scores, [1.0, 0.0, 0.0, b, b], atol=1e-5)  # float32
    assert rep.cluster[0] == rep.cluster[1] == rep.cluster[2] != rep.cluster[3] == rep.cluster[4]
    assert sorted(rep.sizes.tolist()) == [2, 3]


def test_downweight_scales_by_the_nearest_higher_ranked_neighbour():
    raw = np.array([1.0, 0.5, 0.5, 0.25])
    nbr = np.array([[1, 2], [0, 2], [1, 0], [0, 1]])
    dist = np.array([[0.1, 0.2], [0.1, 0.3], [0.3, 0.2], [0.0, 0.5]])
    got = downweight(raw, nbr, dist)
    # tau = median nearest distance = 0.1; 0: no higher neighbour; 1: item 0 at 0.1;
    # 2: items 1 (a tie, earlier row) at 0.3 and 0 at 0.2 -> 0.2; 3: a copy of item 0
    want = [1.0, 0.5 * (1 - np.exp(-1)), 0.5 * (1 - np.exp(-2)), 0.0]
    np.testing.assert_allclose(got, want)


def test_cluster_cores_outrank_a_ring_of_outliers():
    X, truth, centres = clusters_and_ring()
    ids = [f"i{i:03d}" for i in range(len(X))]
    rep = representativeness_scores(X, ids, n_clusters=4)
    members, ring = rep.scores[:200], rep.scores[200:]
    assert auroc(members, ring) >= 0.97
    # the 4 clusters are found exactly
    for c in range(4):
        assert len(set(rep.cluster[:200][truth == c])) == 1
    # the member nearest each true centre is in the top quarter of its cluster (the fitted
    # centre is the members' mean, a little off the true one)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    for c in range(4):
        rows = np.flatnonzero(truth == c)
        best = rows[np.argmax(U[rows] @ centres[c])]
        assert rep.scores[best] >= np.quantile(rep.scores[rows], 0.75)
    assert rep.scores.min() == 0.0 and rep.scores.max() == 1.0
    # the data-chosen cluster count ranks the same way
    auto = representativeness_scores(X, ids)
    assert auto.n_clusters == default_clusters(len(X)) == 11
    assert auroc(auto.scores[:200], auto.scores[200:]) >= 0.9


def test_downweight_keeps_one_of_a_clump_of_copies():
    X, _, centres = clusters_and_ring(ring=0)
    X[:6] = centres[0]  # six exact copies at cluster 0's centre
    ids = [f"i{i:03d}" for i in range(len(X))]
    from dagster_brain.algorithms.knn_graph import nearest_lists

    nbr, dist = nearest_lists(X, 5, "cosine")
    plain = representativeness_scores(X, ids, n_clusters=4)
    down = representativeness_scores(
        X, ids, n_clusters=4, method="cluster-center-downweight", neighbors=nbr, distances=dist
    )
    assert np.allclose(plain.scores[:6], plain.scores[:6].max())  # tied at the top
    assert down.scores[0] == pytest.approx(down.scores[:6].max())  # one keeps its place
    second = np.sort(down.scores[:6])[-2]
    others = np.sort(down.scores[6:])[::-1]
    assert second == 0.0  # the other copies fall to the bottom
    assert (others == 0).sum() == 1  # beside them only the item farthest from any centre


def test_bad_inputs_are_refused_with_the_item():
    X = np.eye(4, dtype=np.float32)
    X[2] = 0.0
    with pytest.raises(ValueError, match="zero embedding for item 'c'"):
        representativeness_scores(X, list("abcd"), n_clusters=2)
    X[2, 0] = np.nan
    with pytest.raises(ValueError, match="'c'"):
        representativeness_scores(X, list("abcd"))
    with pytest.raises(ValueError, match="neighbour lists"):
        representativeness_scores(np.eye(4), list("abcd"), method="cluster-center-downweight")


# -- the run -------------------------------------------------------------------------------


@pytest.fixture
def embedded(store, tmp_path):
    X, _, _ = clusters_and_ring(seed=1, per=20, ring=10)
    frame = sample_frame([str(tmp_path / f"{i}.png") for i in range(len(X))])
    store.write_samples("toy", frame)
    ids = frame["sample_id"].tolist()
    store.write_embeddings("toy", "e", ids, X)
    return store, X, ids


def test_run_reads_the_shared_graph_and_passes_its_check(embedded):
    from dagster_brain.checks import check_results
    from dagster_brain.methods.knn_graph import KnnGraphSpec, run_knn_graph

    store, X, ids = embedded
    spec = RepresentativenessSpec(
        kind="representativeness",
        dataset="toy",
        brain_key="rep",
        embeddings="e",
        method="cluster-center-downweight",
        n_clusters=4,
    )
    before = run_representativeness(spec, store)
    assert before.summary["shared_graph"] is False
    run_knn_graph(
        KnnGraphSpec(kind="knn_graph", dataset="toy", brain_key="g", embeddings="e"), store
    )
    after = run_representativeness(spec, store)
    assert after.record.upstream["knn_graph"] == "g"
    np.testing.assert_allclose(
        before.results["representativeness"], after.results["representativeness"]
    )
    res = after.results
    assert len(res) == 90 and res["representativeness"].between(0, 1).all()
    assert res["representativeness"].iloc[:80].mean() > res["representativeness"].iloc[80:].mean()
    assert check_results(store, spec)[0]
    assert after.summary["clusters"] == 4


def test_run_refuses_more_clusters_than_items(embedded):
    store, _, _ = embedded
    spec = RepresentativenessSpec(
        kind="representativeness", dataset="toy", brain_key="rep", embeddings="e", n_clusters=500
    )
    with pytest.raises(ValueError, match="brain key 'rep'.*n_clusters=500 exceeds the 90 items"):
        run_representativeness(spec, store)


def test_cli_api_and_yaml(embedded):
    import dagster_brain.api as api
    from dagster_brain.cli import main
    from dagster_brain.specs import SpecError, parse_specs

    store, _, _ = embedded
    out = CliRunner().invoke(
        main,
        [
            "compute",
            "representativeness",
            "toy",
            "--set",
            "embeddings=e",
            "--set",
            "n_clusters=4",
            "--data-dir",
            str(store.data_dir),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "representativeness toy/representativeness: 90 rows" in out.output
    ds = api.Dataset("toy", store)
    run = api.compute_representativeness(ds, embeddings="e", method="cluster-center-downweight")
    assert run.record.method == "cluster-center-downweight"
    top = ds.load_brain_view("representativeness").sort_by("representativeness", reverse=True)
    assert len(top) == 90
    base = {
        "datasets": [{"name": "toy", "source": {"type": "demo", "name": "digits"}}],
        "embeddings": [{"key": "e", "dataset": "toy"}],
    }
    entry = {"brain_key": "rep", "dataset": "toy", "kind": "representativeness", "embeddings": "e"}
    parsed = parse_specs({**base, "brain_runs": [{**entry, "method": "cluster-center-downweight"}]})
    assert parsed.brain_runs[0].method == "cluster-center-downweight"
    with pytest.raises(SpecError, match="brain_runs\\[0\\].method"):
        parse_specs({**base, "brain_runs": [{**entry, "method": "centre"}]})
