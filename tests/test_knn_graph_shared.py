"""The shared kNN graph: readers give the same results with and without it, against brute force."""

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame

from dagster_brain.algorithms.duplicates import choose_threshold, find_duplicates
from dagster_brain.algorithms.knn import pairwise_distances
from dagster_brain.algorithms.knn_graph import build_knn_graph, reorder_graph
from dagster_brain.algorithms.uniqueness import uniqueness_from_graph, uniqueness_scores
from dagster_brain.knn_graphs import cut_graph
from dagster_brain.methods.knn_graph import KnnGraphSpec, run_knn_graph
from dagster_brain.methods.uniqueness import run_uniqueness
from dagster_brain.similarity.runs import run_duplicates
from dagster_brain.specs import DuplicatesSpec, SimilaritySpec, UniquenessSpec


def planted(n=300, dim=16, copies=30, seed=0):
    """Gaussian vectors with ``copies`` near-copies and 5 exact copies of earlier rows."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    src = rng.choice(n - copies - 5, copies + 5, replace=False)
    X[n - copies - 5 : n - 5] = X[src[:copies]] + 0.01 * rng.normal(size=(copies, dim))
    X[n - 5 :] = X[src[copies:]]
    return X, [f"s{i:03d}" for i in range(n)]


def brute_pairs(X, thresh, metric):
    D = pairwise_distances(X, X, metric).astype(np.float64)
    a, b = np.nonzero(np.triu(D <= thresh, k=1))
    return set(zip(a.tolist(), b.tolist(), strict=True))


def same_result(r1, r2):
    assert r1.duplicate_ids == r2.duplicate_ids
    assert r1.thresh == r2.thresh
    assert r1.groups == r2.groups and r1.neighbors_map == r2.neighbors_map
    pd.testing.assert_frame_equal(r1.pairs, r2.pairs)
    pd.testing.assert_frame_equal(r1.all_pairs, r2.all_pairs)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_duplicates_and_threshold_read_a_graph_with_identical_results(metric):
    X, ids = planted()
    thresh = 0.02 if metric == "cosine" else 0.2
    plain = find_duplicates(X, ids, thresh=thresh, metric=metric)
    # a wider graph built on another row order, put back in the duplicates' order
    perm = np.random.default_rng(1).permutation(len(ids))
    wide = build_knn_graph(X[perm], [ids[i] for i in perm], 24, metric)
    graph = reorder_graph(wide, ids)
    same_result(plain, find_duplicates(X, ids, thresh=thresh, metric=metric, graph=graph))
    # against brute force: every pair within the threshold, and only those
    pos = {item: i for i, item in enumerate(ids)}
    got = {
        tuple(sorted((pos[a], pos[b])))
        for a, b in zip(plain.all_pairs["id_a"], plain.all_pairs["id_b"], strict=True)
    }
    assert got == brute_pairs(X, thresh, metric) and len(got) >= 35
    for fraction in (0.05, 0.3):
        same_result(
            find_duplicates(X, ids, fraction=fraction, metric=metric),
            find_duplicates(X, ids, fraction=fraction, metric=metric, graph=graph),
        )
    c1 = choose_threshold(X, ids, metric=metric)
    c2 = choose_threshold(X, ids, metric=metric, graph=graph)
    assert (c1.thresh, c1.strict_thresh, c1.intrinsic_dim) == (
        c2.thresh,
        c2.strict_thresh,
        c2.intrinsic_dim,
    )


def test_a_graph_that_does_not_fit_is_refused():
    X, ids = planted(n=40, copies=4)
    narrow = build_knn_graph(X, ids, 8, "cosine")
    with pytest.raises(ValueError, match="8 neighbours"):
        find_duplicates(X, ids, thresh=0.1, graph=narrow)
    other = build_knn_graph(X, ids, 16, "euclidean")
    with pytest.raises(ValueError, match="euclidean"):
        find_duplicates(X, ids, thresh=0.1, graph=other)
    shuffled = reorder_graph(build_knn_graph(X, ids, 16, "cosine"), ids[::-1])
    with pytest.raises(ValueError, match="same order"):
        find_duplicates(X, ids, thresh=0.1, graph=shuffled)


def test_uniqueness_from_a_cut_graph_equals_its_own_graph():
    X, ids = planted(n=120)
    scores, _, _ = uniqueness_scores(X, ids, k=3)
    wide = build_knn_graph(X[::-1], ids[::-1], 16, "cosine")
    cut = cut_graph(reorder_graph(wide, ids), 3)
    assert cut.width == 3
    np.testing.assert_array_equal(uniqueness_from_graph(cut), scores)


@pytest.fixture
def embedded(store, tmp_path):
    X, ids = planted(n=80, dim=12, copies=6)
    store.write_samples("toy", sample_frame([str(tmp_path / f"{i}.png") for i in range(80)]))
    store.write_embeddings("toy", "e", ids, X)
    return store, X, ids


def test_runs_read_the_stored_graph_and_give_the_same_results(embedded, caplog):
    store, X, ids = embedded
    assert store.samples("toy")["sample_id"].tolist() == ids
    uspec = UniquenessSpec(kind="uniqueness", dataset="toy", brain_key="u", embeddings="e")
    before = run_uniqueness(uspec, store)
    assert before.summary["shared_graph"] is False
    from dagster_brain.methods.similarity import run_similarity

    run_similarity(
        SimilaritySpec(
            kind="similarity", dataset="toy", brain_key="sim", embeddings="e", backend="sklearn"
        ),
        store,
    )
    dspec = DuplicatesSpec(
        kind="duplicates", dataset="toy", brain_key="d", similarity="sim", verify=False
    )
    dup_before = run_duplicates(dspec, store)
    assert "knn_graph" not in dup_before.record.upstream and len(dup_before.results) >= 6

    gspec = KnnGraphSpec(kind="knn_graph", dataset="toy", brain_key="g", embeddings="e")
    out = run_knn_graph(gspec, store)
    assert out.summary["items"] == 80 and out.summary["k"] == 16 and out.summary["exact"]
    assert out.summary["build_seconds"] >= 0 and out.summary["peak_memory_mb"] >= 0
    # the stored nearest neighbour is the brute-force one
    D = pairwise_distances(X, X, "cosine").astype(np.float64)
    np.fill_diagonal(D, np.inf)
    np.testing.assert_allclose(out.results["nearest_distance"], D.min(1), atol=1e-5)

    with caplog.at_level(logging.INFO, logger="dagster_brain"):
        after = run_uniqueness(uspec, store)
        dup_after = run_duplicates(dspec, store)
    assert after.summary["shared_graph"] is True
    assert after.record.upstream["knn_graph"] == "g"
    pd.testing.assert_series_equal(before.results["uniqueness"], after.results["uniqueness"])
    assert dup_after.record.upstream["knn_graph"] == "g"
    pd.testing.assert_frame_equal(dup_before.results, dup_after.results)
    assert "kNN graph 'g'" in caplog.text

    # a changed vector makes the graph stale: the readers compute their own again
    X2 = X.copy()
    X2[0] += 1.0
    store.write_embeddings("toy", "e", ids, X2)
    fresh = run_uniqueness(uspec, store)
    assert fresh.summary["shared_graph"] is False
    # a refreshed graph is updated incrementally and equals a rebuild
    again = run_knn_graph(gspec, store)
    assert again.summary["incremental"] is True
    rebuilt = build_knn_graph(X2, ids, 16, "cosine")
    order = pd.Index(rebuilt.ids).get_indexer(ids)
    np.testing.assert_array_equal(
        again.results["kth_distance"].to_numpy(), rebuilt.distances[order, -1].astype(np.float64)
    )
    assert run_uniqueness(uspec, store).summary["shared_graph"] is True


def test_the_graph_asset_reports_its_metadata_and_passes_its_check(embedded, tmp_path):
    import dagster as dg

    from dagster_brain.checks import check_results
    from dagster_brain.factory import build_brain_asset
    from dagster_brain.resources.store import BrainStoreResource

    store, _, _ = embedded
    spec = KnnGraphSpec(
        kind="knn_graph", dataset="toy", brain_key="g", embeddings="e", metric="euclidean"
    )
    resources = {"store": BrainStoreResource(data_dir=str(tmp_path / "data"))}
    result = dg.materialize([build_brain_asset(spec)], resources=resources)
    assert result.success
    meta = {
        k: v.value
        for k, v in result.asset_materializations_for_node("toy__brain__g")[0].metadata.items()
    }
    assert (meta["N"], meta["k"], meta["metric"], meta["exact"]) == (80, 16, "euclidean", True)
    assert meta["recall_at_k"] == "exact" and meta["build_seconds"] >= 0
    assert meta["peak_memory_mb"] >= 0 and meta["dagster/row_count"] == 80
    assert check_results(store, spec)[0]
    assert store.get_run("toy", "g").table_names() == ["knn"]


def test_verified_duplicates_read_a_graph_with_identical_results(tmp_path):
    """The default duplicates path (candidates confirmed on the images) reads the graph too."""
    from PIL import Image

    from dagster_brain.algorithms.verify import find_verified_duplicates

    X, ids = planted(n=60, dim=12, copies=6)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(60, 24, 24, 3), dtype=np.uint8)
    pixels[48:54] = pixels[:6]  # rows 48-53 are image copies of rows 0-5
    paths = {}
    for i, sid in enumerate(ids):
        paths[sid] = str(tmp_path / f"{sid}.png")
        Image.fromarray(pixels[i]).save(paths[sid])
    graph = build_knn_graph(X, ids, 16, "cosine")
    plain = find_verified_duplicates(X, ids, paths, metric="cosine")
    shared = find_verified_duplicates(X, ids, paths, metric="cosine", graph=graph)
    same_result(plain, shared)
    found = set(zip(shared.all_pairs["id_a"], shared.all_pairs["id_b"], strict=True))
    assert found >= {(ids[i], ids[48 + i]) for i in range(6)}
    narrow = build_knn_graph(X, ids, 4, "cosine")  # too narrow for the first pass: not used
    same_result(plain, find_verified_duplicates(X, ids, paths, metric="cosine", graph=narrow))


def test_duplicates_and_unique_open_their_index_once_and_read_its_vectors_uncopied(
    embedded, monkeypatch
):
    from dagster_brain.methods.similarity import run_similarity
    from dagster_brain.similarity import runs
    from dagster_brain.specs import UniqueSpec

    store, X, ids = embedded
    spec = SimilaritySpec(
        kind="similarity", dataset="toy", brain_key="sim", embeddings="e", backend="sklearn"
    )
    run_similarity(spec, store)
    opened = []

    def counting(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    real = runs.load_index
    monkeypatch.setattr(runs, "load_index", counting)
    dspec = DuplicatesSpec(
        kind="duplicates", dataset="toy", brain_key="d", similarity="sim", thresh=0.01,
        verify=False,
    )  # fmt: skip
    assert len(runs.run_duplicates(dspec, store).results) >= 6
    assert len(opened) == 1
    uspec = UniqueSpec(kind="unique", dataset="toy", brain_key="u1", similarity="sim", count=5)
    out = runs.run_unique(uspec, store)
    assert len(opened) == 2 and len(out.results) == 5
    # the vectors are the index's own array, lent read-only, not a second copy
    assert np.shares_memory(out.summary["vectors"], opened[1].backend._X)
    assert not out.summary["vectors"].flags.writeable
