"""The approximate kNN graph (faiss IVF) against brute force, and how the exact one is kept."""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_frame

from dagster_brain.algorithms.ann_graph import build_graph, use_exact
from dagster_brain.algorithms.knn import pairwise_distances
from dagster_brain.algorithms.knn_graph import build_knn_graph
from dagster_brain.knn_graphs import find_graph, reads_approximate
from dagster_brain.methods.knn_graph import KnnGraphSpec, _metadata, plan_graphs, run_knn_graph
from dagster_brain.specs import DuplicatesSpec, SimilaritySpec, UniquenessSpec
from dagster_brain.store import row_hashes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from knn import clustered  # noqa: E402


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth, strict=True)]))


@pytest.fixture(scope="module")
def big():
    """20,000 clustered 32-d vectors, the last 1% noisy copies of other rows."""
    X = clustered(20_000, 32, seed=7)
    rng = np.random.default_rng(8)
    m = len(X) // 100
    src = rng.choice(len(X) - m, m, replace=False)
    X[-m:] = X[src] + 1e-3 * rng.standard_normal((m, 32), dtype=np.float32)
    return X, [f"s{i:05d}" for i in range(len(X))], src


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_approximate_graph_recall_against_brute_force(big, metric):
    X, ids, src = big
    graph, stats = build_graph(X, ids, 10, metric, threshold=1_000)
    assert stats is not None and not graph.exact
    assert graph.neighbors.dtype == np.int32 and graph.distances.dtype == np.float32
    truth = build_knn_graph(X, ids, 10, metric)  # exact, checked against brute force below
    measured = recall(graph.neighbors, truth.neighbors)
    assert measured >= 0.95
    assert abs(graph.recall_at_k - measured) <= 0.03 and graph.recall_at_k == round(
        stats.recall_at_k, 4
    )
    assert 1 <= stats.nprobe <= stats.nlist and stats.sample == 1_000
    # the listed distances are the true ones, ascending
    rows = np.arange(0, len(X), 97)
    a, b = X[rows, None].astype(np.float64), X[graph.neighbors[rows]].astype(np.float64)
    if metric == "euclidean":
        listed = np.sqrt(((a - b) ** 2).sum(-1))
    else:
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        listed = 1.0 - cos
    np.testing.assert_allclose(graph.distances[rows], listed, rtol=1e-5, atol=1e-6)
    assert (np.diff(graph.distances, axis=1) >= 0).all()
    # every planted copy and its source are each other's first neighbour
    m = len(src)
    copies = np.arange(len(X) - m, len(X))
    assert (graph.neighbors[copies, 0] == src).all()
    assert (graph.neighbors[src, 0] == copies).all()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_true_is_the_brute_force_graph_whatever_the_size(metric):
    X = clustered(600, 16, seed=3)
    ids = [f"s{i:03d}" for i in range(len(X))]
    graph, stats = build_graph(X, ids, 8, metric, exact=True, threshold=10)
    assert stats is None and graph.exact and graph.recall_at_k is None
    D = pairwise_distances(X, X, metric).astype(np.float32)
    np.fill_diagonal(D, np.inf)
    want = np.lexsort((np.broadcast_to(np.arange(len(X)), D.shape), D), axis=-1)[:, :8]
    assert np.array_equal(graph.neighbors, want)
    np.testing.assert_allclose(graph.distances, np.take_along_axis(D, want, 1), rtol=1e-6)


def test_size_decides_unless_the_spec_does():
    assert use_exact(15_000, None, 15_000) and not use_exact(15_001, None, 15_000)
    assert use_exact(10**6, True, 15_000) and not use_exact(10, False, 15_000)
    X = clustered(300, 8, seed=1)
    ids = [str(i) for i in range(len(X))]
    assert build_graph(X, ids, 4, threshold=299)[0].exact is False
    assert build_graph(X, ids, 4, threshold=300)[0].exact is True


@pytest.fixture
def embedded(store, tmp_path):
    X = clustered(120, 16, seed=5)
    ids = [f"s{i:03d}" for i in range(len(X))]
    store.write_samples("toy", sample_frame([str(tmp_path / f"{i}.png") for i in range(120)]))
    store.write_embeddings("toy", "e", ids, X)
    return store, X, ids


def test_exact_false_on_a_small_dataset_is_stored_with_its_recall(embedded):
    store, X, ids = embedded
    spec = KnnGraphSpec(
        kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=5, exact=False
    )
    out = run_knn_graph(spec, store)
    s = out.summary
    assert s["exact"] is False and 0.95 <= s["recall_at_k"] <= 1.0 and s["nprobe"] >= 1
    meta = _metadata(out)
    assert meta["exact"] is False and meta["recall_at_k"] == s["recall_at_k"]
    assert meta["nprobe"] == s["nprobe"] and meta["build_s"] >= 0 and meta["peak_rss"] > 0
    assert out.record.upstream["graph"]["exact"] is False
    # the nearest neighbour agrees with brute force on nearly every row
    D = pairwise_distances(X, X, "cosine").astype(np.float64)
    np.fill_diagonal(D, np.inf)
    assert np.mean(np.isclose(out.results["nearest_distance"], D.min(1), atol=1e-6)) >= 0.95

    hashes = row_hashes(ids, X)
    # exact readers do not see it; readers that accept an approximate graph do, and learn so
    assert find_graph(store, "toy", ids, hashes, "cosine", 3) is None
    key, graph = find_graph(store, "toy", ids, hashes, "cosine", 3, approximate=True)
    assert key == "g" and graph.exact is False and graph.recall_at_k == s["recall_at_k"]
    assert graph.width == 3

    # an exact graph of the same vectors is preferred, and is what exact readers get
    run_knn_graph(spec.model_copy(update={"brain_key": "g_exact", "exact": True}), store)
    for approximate in (False, True):
        key, graph = find_graph(store, "toy", ids, hashes, "cosine", 3, approximate=approximate)
        assert key == "g_exact" and graph.exact and graph.recall_at_k is None


def test_automatic_mode_approximate_above_the_threshold_and_not_updated_in_place(embedded):
    store, X, ids = embedded
    spec = KnnGraphSpec(kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=4)
    assert run_knn_graph(spec, store).summary["exact"] is True
    out = run_knn_graph(spec, store, threshold=50)
    assert out.summary["exact"] is False and out.summary["incremental"] is False
    assert out.record.upstream["update"] is None


def test_which_readers_may_read_an_approximate_graph_and_what_is_generated():
    u = UniquenessSpec(kind="uniqueness", dataset="d", brain_key="u", embeddings="e")
    sim = SimilaritySpec(kind="similarity", dataset="d", brain_key="sim", embeddings="e")
    auto = DuplicatesSpec(kind="duplicates", dataset="d", brain_key="a", similarity="sim")
    thresh = DuplicatesSpec(
        kind="duplicates", dataset="d", brain_key="t", similarity="sim", thresh=0.1
    )
    frac = DuplicatesSpec(
        kind="duplicates", dataset="d", brain_key="f", similarity="sim", thresh=None,
        fraction=0.1,
    )  # fmt: skip
    assert reads_approximate(u) and reads_approximate(thresh)
    assert not reads_approximate(auto) and not reads_approximate(frac)
    u2 = u.model_copy(update={"brain_key": "u2", "k": 5})
    (free,) = plan_graphs([u, u2, sim, thresh]).generated
    assert free.exact is None  # approximate when large
    (strict,) = plan_graphs([u, sim, auto]).generated
    assert strict.exact is True  # thresh: auto chooses its threshold from exact distances


def test_uniqueness_reads_an_approximate_graph_and_says_so(embedded):
    """Uniqueness may read an approximate graph: it records graph_exact false and the recall,
    its nearest neighbours agree with brute force, and its stored graph is never refreshed in
    place from those approximate lists (the next run without the graph recomputes)."""
    from dagster_brain.methods.uniqueness import run_uniqueness

    store, X, ids = embedded
    graph = KnnGraphSpec(kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=5)
    out = run_knn_graph(graph.model_copy(update={"exact": False}), store)
    spec = UniquenessSpec(kind="uniqueness", dataset="toy", brain_key="u", embeddings="e", k=3)
    first = run_uniqueness(spec, store)
    assert first.summary["shared_graph"] and first.summary["graph_exact"] is False
    assert first.summary["graph_recall_at_k"] == out.summary["recall_at_k"]
    assert first.record.upstream["graph_exact"] is False
    D = pairwise_distances(X, X, "cosine").astype(np.float64)
    np.fill_diagonal(D, np.inf)
    near = first.results.set_index("sample_id")["nearest_distance"].reindex(ids).to_numpy()
    assert np.mean(np.isclose(near, D.min(1), atol=1e-6)) >= 0.95
    store.delete_run("toy", "g")
    again = run_uniqueness(spec, store)
    assert not again.summary["incremental"] and again.summary["graph_exact"] is True
    assert np.allclose(
        again.results.set_index("sample_id")["nearest_distance"].reindex(ids), D.min(1), atol=1e-6
    )


def test_duplicates_with_a_thresh_read_an_approximate_graph_auto_does_not(embedded):
    """An explicit thresh may read the approximate graph (and says so); thresh auto computes
    its own neighbours rather than choose a threshold from approximate lists."""
    import dagster_brain as fob
    from dagster_brain.similarity.runs import run_duplicates

    store, X, ids = embedded
    graph = KnnGraphSpec(kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", k=16)
    run_knn_graph(graph.model_copy(update={"exact": False}), store)
    fob.compute_similarity(fob.Dataset("toy", store), embeddings="e", brain_key="sim").close()
    fixed = DuplicatesSpec(
        kind="duplicates", dataset="toy", brain_key="d", similarity="sim", thresh=0.05
    )
    out = run_duplicates(fixed, store)
    assert out.record.upstream["knn_graph"] == "g" and out.summary["graph_exact"] is False
    no_images = {"brain_key": "d2", "thresh": "auto", "verify": False}
    auto = run_duplicates(fixed.model_copy(update=no_images), store)
    assert "knn_graph" not in auto.record.upstream and auto.summary["graph_exact"] is True
