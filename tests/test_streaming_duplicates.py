"""Duplicates and unique subsets read page by page from milvus-lite and LanceDB on disk (and
through their approximate indexes, and HNSW on a Milvus server): the same answers as the
in-memory path on planted data, bounded memory, refused options."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from brain_env import use_brain_env
from conftest import sample_frame

from dagster_brain.algorithms.duplicates import find_duplicates, find_unique
from dagster_brain.algorithms.knn import pairwise_distances
from dagster_brain.methods.similarity import run_similarity
from dagster_brain.similarity import runs as sim_runs
from dagster_brain.similarity.backends.lancedb_backend import LanceDBBackend
from dagster_brain.similarity.backends.milvus_backend import MilvusBackend
from dagster_brain.similarity.runs import run_duplicates, run_unique
from dagster_brain.similarity.streaming import (
    StreamingRefused,
    UniquePasses,
    VectorSource,
    stream_duplicates,
    stream_unique,
)
from dagster_brain.specs import DuplicatesSpec, SimilaritySpec, UniqueSpec

THRESH = {"cosine": 0.02, "euclidean": 0.2}


def planted(n=400, dim=16, seed=0):
    """Gaussian rows; rows 300..329 near-copies of earlier rows (pairs), 330..345 two
    near-copies each of 8 earlier rows (triples), 346..350 exact copies."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    src = rng.choice(290, 30 + 8 + 5, replace=False)
    X[300:330] = X[src[:30]] + 0.01 * rng.normal(size=(30, dim))
    for t, s in enumerate(src[30:38]):
        X[330 + 2 * t : 332 + 2 * t] = X[s] + 0.01 * rng.normal(size=(2, dim))
    X[346:351] = X[src[38:]]
    ids = [f"s{i:03d}" for i in range(n)]
    return X, ids, src


def make_backend(kind, tmp_path, metric, dim, **opts):
    if kind == "milvus":
        return MilvusBackend("dups", dim, metric, tmp_path, **opts)
    return LanceDBBackend("dups", dim, metric, tmp_path, **opts)


def same_result(got, want):
    """Kept/duplicate split, groups and pairs identical; distances to float32 rounding."""
    assert got.duplicate_ids == want.duplicate_ids
    assert got.kept_ids == want.kept_ids
    assert got.groups == want.groups
    assert got.thresh == want.thresh
    assert {k: [d for d, _ in v] for k, v in got.neighbors_map.items()} == {
        k: [d for d, _ in v] for k, v in want.neighbors_map.items()
    }
    for col in ("id_a", "id_b", "path"):
        assert got.pairs[col].tolist() == want.pairs[col].tolist()
    np.testing.assert_allclose(got.pairs["distance"], want.pairs["distance"], atol=1e-5)
    assert sorted(zip(got.all_pairs["id_a"], got.all_pairs["id_b"], strict=True)) == sorted(
        zip(want.all_pairs["id_a"], want.all_pairs["id_b"], strict=True)
    )
    g = got.all_pairs.sort_values(["id_a", "id_b"])["distance"].to_numpy()
    w = want.all_pairs.sort_values(["id_a", "id_b"])["distance"].to_numpy()
    np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("kind", ["milvus", "lancedb"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streamed_duplicates_equal_in_memory_on_planted_pairs_and_triples(tmp_path, kind, metric):
    X, ids, src = planted()
    backend = make_backend(kind, tmp_path, metric, X.shape[1])
    try:
        order = np.random.default_rng(3).permutation(len(ids))  # stored in another order
        backend.upsert([ids[i] for i in order], X[order])
        thresh = THRESH[metric]
        got = stream_duplicates(VectorSource(backend, ids, batch=37), thresh, metric)
        want = find_duplicates(X, ids, thresh=thresh, metric=metric)
        same_result(got, want)
        # the planted truth: every copy is a duplicate, each source kept or a duplicate
        copies = {ids[i] for i in range(300, 351)}
        assert copies <= set(got.duplicate_ids) | set(got.kept_ids)
        pairs = {
            tuple(sorted(p)) for p in zip(got.all_pairs["id_a"], got.all_pairs["id_b"], strict=True)
        }
        for c, s in zip(range(300, 330), src[:30], strict=True):
            assert tuple(sorted((ids[c], ids[s]))) in pairs
        for t, s in enumerate(src[30:38]):  # a triple: three pairs, one group of three
            a, b = ids[330 + 2 * t], ids[331 + 2 * t]
            assert {tuple(sorted(p)) for p in [(a, b), (a, ids[s]), (b, ids[s])]} <= pairs
            assert any(set(g) == {a, b, ids[s]} for g in got.groups)
        D = pairwise_distances(X, X, metric).astype(np.float64)
        assert len(pairs) == int(np.triu(D <= thresh, k=1).sum()) == 30 + 3 * 8 + 5
        assert len(got.duplicate_ids) == 30 + 2 * 8 + 5
        # a view: only its items and the pairs among them
        view = ids[:300:2] + ids[300:351]
        rows = [ids.index(i) for i in view]
        got_v = stream_duplicates(VectorSource(backend, view, batch=50), thresh, metric)
        same_result(got_v, find_duplicates(X[rows], view, thresh=thresh, metric=metric))
    finally:
        backend.close()


def planted_clusters(n=3000, dim=32, seed=0):
    """Embedding-like rows (30 clusters); the last 60 are near-copies of earlier rows and
    5 of those sources have a second, exact copy: the known pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim)) * 3
    X = (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, dim))).astype(np.float32)
    src = rng.choice(n - 65, 60, replace=False)
    X[n - 65 : n - 5] = X[src] + 0.01 * rng.normal(size=(60, dim))
    X[n - 5 :] = X[src[:5]]
    ids = [f"s{i:04d}" for i in range(n)]
    pairs = {tuple(sorted((ids[s], ids[n - 65 + j]))) for j, s in enumerate(src)}
    pairs |= {tuple(sorted((ids[s], ids[n - 5 + j]))) for j, s in enumerate(src[:5])}
    pairs |= {tuple(sorted((ids[n - 65 + j], ids[n - 5 + j]))) for j in range(5)}
    return X, ids, pairs


def streams_through_ann(backend, n: int = 3000) -> None:
    """Streamed duplicates through ``backend``'s approximate index: the known pairs, and the
    in-memory result."""
    X, ids, known = planted_clusters(n)
    backend.upsert(ids, X)
    assert not backend.exact  # past its (small) threshold: the approximate index answers
    got = stream_duplicates(VectorSource(backend, ids, batch=500), 0.002, "cosine")
    same_result(got, find_duplicates(X, ids, thresh=0.002, metric="cosine"))
    found = {tuple(p) for p in zip(got.all_pairs["id_a"], got.all_pairs["id_b"], strict=True)}
    assert found == known


@pytest.mark.parametrize("kind", ["milvus", "lancedb"])
def test_streamed_duplicates_through_an_ann_index_find_the_planted_pairs(tmp_path, kind):
    backend = make_backend(kind, tmp_path, "cosine", 32, index_threshold=1000)
    try:
        streams_through_ann(backend)
    finally:
        backend.close()


def test_streamed_duplicates_through_hnsw_on_a_milvus_server(milvus_uri, tmp_path):
    backend = MilvusBackend(
        "dups_ann", 32, "cosine", tmp_path, uri=milvus_uri, index_threshold=1000, index_type="HNSW"
    )
    try:
        streams_through_ann(backend, n=1500)
        assert backend.describe()["index_type"] == "HNSW"
    finally:
        backend.drop()
        backend.close()


@pytest.mark.parametrize("kind", ["milvus", "lancedb"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_streamed_unique_picks_are_the_in_memory_picks(tmp_path, kind, metric):
    X, ids, _ = planted(n=400, dim=8, seed=1)
    backend = make_backend(kind, tmp_path, metric, X.shape[1])
    try:
        backend.upsert(ids[::-1], X[::-1])
        for seed, count, buffer in [(0, 25, 16), (7, 60, 4096), (3, 40, 1)]:
            stats = UniquePasses()
            source = VectorSource(backend, ids, batch=45)
            got = stream_unique(source, count, metric, seed, buffer=buffer, stats=stats)
            assert got == find_unique(X, ids, count, metric=metric, seed=seed)
            assert sum(stats.picks_per_pass) == count and stats.passes == source.passes
            if buffer == 1:  # one pick per pass: the plain algorithm
                assert stats.passes == count + 1
            if buffer == 4096:  # everything in the buffer: 3 passes
                assert stats.passes == 3
        # every item but one: the exact copies come last, each item at most once
        got = stream_unique(VectorSource(backend, ids, batch=100), 399, metric, buffer=64)
        assert got == find_unique(X, ids, 399, metric=metric) and len(set(got)) == 399
    finally:
        backend.close()


@pytest.mark.timeout(120)
def test_streaming_keeps_no_array_of_all_vectors(tmp_path):
    n, dim = 6000, 256
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    X[2000:2030] = X[:30] + 0.001 * rng.normal(size=(30, dim))
    ids = [f"s{i:04d}" for i in range(n)]
    backend = LanceDBBackend("mem", dim, "cosine", tmp_path)  # no client threads to trace
    try:
        backend.upsert(ids, X)
        source = VectorSource(backend, ids, batch=64)
        all_bytes = X.nbytes  # 6 MB; a page is 64 KB (about 1 MB as query lists)

        def peak(fn) -> int:
            tracemalloc.start()
            try:
                fn()
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        stream_duplicates(source, 0.01, "cosine")  # imports and caches out of the count
        stream_unique(source, 30, "cosine", buffer=64)
        streamed = peak(lambda: stream_duplicates(source, 0.01, "cosine"))
        unique = peak(lambda: stream_unique(source, 30, "cosine", buffer=64))
        in_memory = peak(lambda: backend.fetch(ids))
        assert in_memory > all_bytes  # what the in-memory path holds at least
        assert streamed < all_bytes / 3, streamed
        assert unique < all_bytes / 3, unique
        got = stream_duplicates(source, 0.01, "cosine")
        assert len(got.duplicate_ids) == 30
    finally:
        backend.close()


def test_too_many_neighbours_within_thresh_are_refused(tmp_path):
    X = np.ones((40, 4), np.float32) + 1e-4 * np.arange(40)[:, None]
    ids = [f"s{i}" for i in range(40)]
    backend = LanceDBBackend("dense", 4, "euclidean", tmp_path)
    try:
        backend.upsert(ids, X)
        source = VectorSource(backend, ids, name="similarity index 'sim' on 'toy'")
        with pytest.raises(StreamingRefused, match=r"'sim' on 'toy'.*streaming: false"):
            stream_duplicates(source, 10.0, "euclidean", max_k=16)
        # a backend that lacks an item is refused
        with pytest.raises(ValueError, match="lacks 1 of 41"):
            stream_duplicates(VectorSource(backend, [*ids, "gone"]), 0.1, "euclidean")
    finally:
        backend.close()


# -- runs ----------------------------------------------------------------------------------


@pytest.fixture
def indexed(request, monkeypatch, tmp_path, store):
    """A dataset with planted duplicates and a similarity index on milvus-lite and LanceDB."""
    use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    X, ids, _ = planted()
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(len(ids))]))
    store.write_embeddings("toy", "e", ids, X)
    for backend in ("milvus", "lancedb"):
        spec = SimilaritySpec(
            kind="similarity", dataset="toy", brain_key=backend, embeddings="e", backend=backend
        )
        run_similarity(spec, store)
    return store, X, ids


@pytest.mark.parametrize("backend", ["milvus", "lancedb"])
def test_runs_stream_with_the_same_results(indexed, backend):
    store, X, ids = indexed
    base = {"kind": "duplicates", "dataset": "toy", "similarity": backend, "thresh": 0.02}
    plain = run_duplicates(DuplicatesSpec(brain_key="d_mem", streaming=False, **base), store)
    streamed = run_duplicates(DuplicatesSpec(brain_key="d_str", streaming=True, **base), store)
    assert plain.summary["streamed"] is False and streamed.summary["streamed"] is True
    assert streamed.record.upstream["streamed"] is True
    assert streamed.record.config["chosen"]["streamed"] is True
    assert plain.record.config["chosen"]["streamed"] is False
    same_result(streamed.summary["result"], plain.summary["result"])
    a, b = plain.results, streamed.results
    assert a.drop(columns="distance").equals(b.drop(columns="distance"))
    np.testing.assert_allclose(a["distance"], b["distance"], atol=1e-5)
    assert len(a) == 30 * 2 + 8 * 3 + 5 * 2
    assert streamed.summary["vectors"].shape == (len(ids), 2)  # plot points, not vectors

    ubase = {"kind": "unique", "dataset": "toy", "similarity": backend, "count": 20, "seed": 4}
    u_mem = run_unique(UniqueSpec(brain_key="u_mem", streaming=False, **ubase), store)
    u_str = run_unique(UniqueSpec(brain_key="u_str", streaming=True, **ubase), store)
    assert u_str.summary["streamed"] and not u_mem.summary["streamed"]
    assert u_str.results.equals(u_mem.results)
    assert u_str.results["sample_id"].tolist() == find_unique(X, ids, 20, seed=4)


def test_large_milvus_and_lancedb_runs_stream_by_default(indexed, monkeypatch):
    store, _, _ = indexed
    monkeypatch.setattr(sim_runs, "STREAM_ABOVE", 100)
    base = {"kind": "duplicates", "dataset": "toy", "similarity": "lancedb"}
    out = run_duplicates(DuplicatesSpec(brain_key="d1", thresh=0.02, **base), store)
    assert out.summary["streamed"] is True
    # thresh auto needs every vector: in memory, said so
    auto = run_duplicates(DuplicatesSpec(brain_key="d2", verify=False, **base), store)
    assert auto.summary["streamed"] is False
    assert auto.record.config["chosen"]["streamed"] is False
    monkeypatch.setattr(sim_runs, "STREAM_ABOVE", 1000)
    small = run_duplicates(DuplicatesSpec(brain_key="d3", thresh=0.02, **base), store)
    assert small.summary["streamed"] is False


def test_streaming_true_needs_an_explicit_thresh(indexed):
    store, _, _ = indexed
    base = {"kind": "duplicates", "dataset": "toy", "similarity": "milvus", "streaming": True}
    with pytest.raises(ValueError, match=r"brain key 'dups' on 'toy': streaming: true.*auto"):
        run_duplicates(DuplicatesSpec(brain_key="dups", **base), store)
    with pytest.raises(ValueError, match=r"'dups2'.*streaming: true.*fraction 0.1"):
        run_duplicates(DuplicatesSpec(brain_key="dups2", fraction=0.1, thresh=None, **base), store)
