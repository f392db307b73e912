"""LanceDBBackend on an embedded table in a temp folder: exact scans, and the forced ANN index.

LanceDB Cloud (``uri="db://..."``) is not testable here; only its failure mode is: an
unreachable host raises BackendUnavailable naming it.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from backend_contract import brute_force, check_contract, recall_at_k

from dagster_brain.similarity.backends.base import METRICS, BackendUnavailable
from dagster_brain.similarity.backends.lancedb_backend import LanceDBBackend
from dagster_brain.similarity.backends.registry import backend_class


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Embedding-like vectors: 20 clusters with unit noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim)) * 3
    return (centers[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("metric", METRICS)
def test_contract_exact(tmp_path, metric):
    opened = []

    def make(c, d, m):
        opened.append(LanceDBBackend(c, d, m, tmp_path))
        return opened[-1]

    check_contract(make, metric=metric)
    assert all(b.exact for b in opened)


@pytest.mark.parametrize("metric", METRICS)
def test_contract_with_forced_ann_index(tmp_path, metric):
    opened = []

    def make(c, d, m):
        opened.append(LanceDBBackend(c, d, m, tmp_path, build_index=True))
        return opened[-1]

    check_contract(make, metric=metric, min_recall=0.95)
    assert opened[0].exact is False  # the contract's queries went through the index


def test_contract_large_views_scan_exactly(tmp_path):
    # views above max_filter_ids skip the `where` prefilter and scan the fetched vectors
    check_contract(lambda c, d, m: LanceDBBackend(c, d, m, tmp_path, max_filter_ids=10))


def test_registry_finds_lancedb():
    assert backend_class("lancedb") is LanceDBBackend


def test_index_built_at_threshold_keeps_recall_and_sees_new_rows(tmp_path):
    X = clustered(3000, 32)
    ids = [f"s{i}" for i in range(3000)]
    backend = LanceDBBackend("ann", 32, "cosine", tmp_path, index_threshold=2000)
    try:
        backend.upsert(ids[:1500], X[:1500])
        assert backend.exact  # below the threshold: brute force
        backend.upsert(ids[1500:2500], X[1500:2500])
        assert not backend.exact  # 2,500 rows >= 2,000: IVF_HNSW_SQ index in use
        # the two upserts' fragments were compacted into one when the index was built
        assert backend.table.stats()["fragment_stats"]["num_fragments"] == 1
        backend.upsert(ids[2500:], X[2500:])  # rows added after the index was built
        Q = X[::30] + 0.05 * np.random.default_rng(1).normal(size=(100, 32)).astype(np.float32)
        want, want_d = brute_force(ids, X, Q, 10, "cosine")
        got, got_d = backend.query(Q, 10)
        assert recall_at_k(got, want) >= 0.95
        hits = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g == w]
        assert np.allclose(np.vstack([got_d[i] for i in hits]), want_d[hits], atol=1e-4)
        new_ids, _ = backend.query(X[2900:2905], 1)
        assert [g[0] for g in new_ids] == ids[2900:2905]
        view = ids[::7]
        got_v, _ = backend.query(Q, 5, allowed=view)
        want_v, _ = brute_force(view, X[::7], Q, 5, "cosine")
        assert recall_at_k(got_v, want_v) >= 0.95
    finally:
        backend.close()
    again = LanceDBBackend("ann", 32, "cosine", tmp_path)
    try:
        assert not again.exact  # the index persists with the table
        assert again.count() == 3000
    finally:
        again.drop()
        again.close()


def test_reopen_gives_same_vectors(tmp_path):
    X = np.random.default_rng(2).normal(size=(50, 6)).astype(np.float32)
    ids = [f"it's #{i}" for i in range(50)]  # quotes survive the SQL filters
    first = LanceDBBackend("persist", 6, "euclidean", tmp_path)
    first.upsert(ids, X)
    first.close()
    again = LanceDBBackend("persist", 6, "euclidean", tmp_path)
    try:
        got_ids, got = again.fetch(None)
        assert got_ids == sorted(ids)
        assert np.array_equal(got, X[[ids.index(s) for s in got_ids]])
        assert again.fetch([ids[3], "nope", ids[1]])[0] == [ids[3], ids[1]]
        again.delete(ids[:10])
        assert again.count() == 40
    finally:
        again.drop()
        again.close()


def test_distances_follow_the_shared_convention(tmp_path):
    X = np.array([[3, 4], [1, 0]], np.float32)
    q = np.array([[1, 0]], np.float32)
    want = {"cosine": [0.0, 0.4], "euclidean": [0.0, np.sqrt(20)], "dotproduct": [-3.0, -1.0]}
    for metric, expected in want.items():
        backend = LanceDBBackend(f"conv_{metric}", 2, metric, tmp_path)
        try:
            backend.upsert(["a", "b"], X)
            _, dist = backend.query(q, 2)
            assert np.allclose(np.sort(dist[0]), expected, atol=1e-5), metric
        finally:
            backend.drop()
            backend.close()


def test_unreachable_cloud_host_raises_backend_unavailable(tmp_path):
    host = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(BackendUnavailable, match=rf"similarity backend 'lancedb' at {host}"):
        LanceDBBackend(
            "nowhere", 4, "cosine", tmp_path, uri="db://brain", api_key="k", host_override=host
        )


def test_dimension_mismatch_names_table(tmp_path):
    backend = LanceDBBackend("dims", 4, "cosine", tmp_path)
    try:
        with pytest.raises(ValueError, match="'dims'.*dimension 3"):
            backend.upsert(["a"], np.ones((1, 3), np.float32))
        with pytest.raises(ValueError, match="'dims'.*dimension 5"):
            backend.query(np.ones((1, 5), np.float32), 1)
    finally:
        backend.close()
    with pytest.raises(ValueError, match="table 'dims' holds 4-d vectors, not 8-d"):
        LanceDBBackend("dims", 8, "cosine", tmp_path)


def test_deep_queries_through_the_index_keep_recall(tmp_path):
    # streamed duplicates ask up to 257 neighbours: ef follows k (at least 2 * k)
    X = clustered(3000, 32)
    ids = [f"s{i}" for i in range(3000)]
    backend = LanceDBBackend("deep", 32, "cosine", tmp_path, build_index=True, ef=16)
    try:
        backend.upsert(ids, X)
        assert not backend.exact
        Q = X[::150]
        want, _ = brute_force(ids, X, Q, 200, "cosine")
        got, _ = backend.query(Q, 200)
        assert recall_at_k(got, want) >= 0.95
    finally:
        backend.close()
