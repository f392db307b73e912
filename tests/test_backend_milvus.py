"""MilvusBackend on milvus-lite (in-process) and on a real Milvus 2.3.5 standalone server.

The server comes from tests/milvus_server.py (scripts/milvus_server.sh: its own venv, a free
loopback port, stopped at the end of the session).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from backend_contract import brute_force, check_contract, recall_at_k

from dagster_brain.similarity.backends.base import METRICS, BackendUnavailable
from dagster_brain.similarity.backends.milvus_backend import MilvusBackend
from dagster_brain.similarity.backends.registry import backend_class


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("metric", METRICS)
def test_contract_milvus_lite(tmp_path, metric):
    check_contract(lambda c, d, m: MilvusBackend(c, d, m, tmp_path), metric=metric)


def test_contract_large_views_scan_exactly(tmp_path):
    # views above max_filter_ids skip the `id in [...]` filter and scan the fetched vectors
    check_contract(lambda c, d, m: MilvusBackend(c, d, m, tmp_path, max_filter_ids=10))


@pytest.mark.parametrize("metric", METRICS)
def test_contract_milvus_server(milvus_uri, tmp_path, metric):
    check_contract(lambda c, d, m: MilvusBackend(c, d, m, tmp_path, uri=milvus_uri), metric=metric)


def test_registry_finds_milvus():
    assert backend_class("milvus") is MilvusBackend


def _persists(make) -> None:
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(30, 6)) * 4).astype(np.float32)
    ids = [f'odd "id" {i}' for i in range(30)]  # quotes survive the filter expression
    first = make()
    first.upsert(ids, X)
    first.close()
    again = make()
    try:
        assert again.count() == 30
        got_ids, got = again.fetch(None)
        assert got_ids == sorted(ids)
        assert np.allclose(got, X[[ids.index(s) for s in got_ids]], atol=1e-6)
        view_ids, _ = again.query(X[:2], 3, allowed=ids[:2])
        assert [row[0] for row in view_ids] == ids[:2]
    finally:
        again.drop()
        again.close()


def test_lite_reopen_gives_same_vectors(tmp_path):
    # batch_size=7: fetch(None) pages by key cursor (ids with quotes in the expression)
    _persists(lambda: MilvusBackend("persist", 6, "cosine", tmp_path, batch_size=7))
    assert not (tmp_path / "milvus_persist.db").exists()  # drop removed the folder


def test_server_reopen_gives_same_vectors(milvus_uri, tmp_path):
    _persists(
        lambda: MilvusBackend("persist", 6, "euclidean", tmp_path, uri=milvus_uri, batch_size=7)
    )


def test_distances_follow_the_shared_convention(tmp_path):
    X = np.array([[3, 4], [1, 0]], np.float32)
    q = np.array([[1, 0]], np.float32)
    want = {"cosine": [0.0, 0.4], "euclidean": [0.0, np.sqrt(20)], "dotproduct": [-3.0, -1.0]}
    for metric, expected in want.items():
        backend = MilvusBackend(f"conv_{metric}", 2, metric, tmp_path)
        try:
            backend.upsert(["a", "b"], X)
            _, dist = backend.query(q, 2)
            assert np.allclose(np.sort(dist[0]), expected, atol=1e-5), metric
        finally:
            backend.drop()
            backend.close()


def test_unreachable_uri_raises_backend_unavailable(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(BackendUnavailable, match=rf"similarity backend 'milvus' at {uri}"):
        MilvusBackend("nowhere", 4, "cosine", tmp_path, uri=uri, timeout=2)


def test_dimension_mismatch_names_collection(tmp_path):
    backend = MilvusBackend("dims", 4, "cosine", tmp_path)
    try:
        with pytest.raises(ValueError, match="'dims'.*dimension 3"):
            backend.upsert(["a"], np.ones((1, 3), np.float32))
        with pytest.raises(ValueError, match="'dims'.*dimension 5"):
            backend.query(np.ones((1, 5), np.float32), 1)
    finally:
        backend.close()
    with pytest.raises(ValueError, match="collection 'dims' holds 4-d vectors, not 8-d"):
        MilvusBackend("dims", 8, "cosine", tmp_path)
    with pytest.raises(ValueError, match="collection 'dims' uses metric 'COSINE'"):
        MilvusBackend("dims", 4, "euclidean", tmp_path)
    MilvusBackend("dims", 4, "cosine", tmp_path).close()  # failed opens released the folder


# -- approximate index past index_threshold -------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_contract_with_forced_ann_index_lite(tmp_path, metric):
    opened = []

    def make(c, d, m):
        opened.append(MilvusBackend(c, d, m, tmp_path, build_index=True))
        return opened[-1]

    check_contract(make, metric=metric, min_recall=0.9)
    assert opened[0].current_index == "IVF_FLAT"  # the contract's queries used IVF


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Embedding-like vectors: 20 clusters with unit noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim)) * 3
    return (centers[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _grows_past_threshold(make, back_to_flat: bool = True) -> None:
    """An existing FLAT collection past the threshold opens as it is and swaps at its first
    query; rows written after the swap are read and found; exact_search puts FLAT back."""
    X = clustered(3000, 32)
    ids = [f"s{i}" for i in range(3000)]
    Q = X[::30] + 0.05 * np.random.default_rng(1).normal(size=(100, 32)).astype(np.float32)
    want, want_d = brute_force(ids, X, Q, 10, "cosine")
    flat = make(exact_search=True)  # a FLAT collection, as earlier versions made them
    flat.upsert(ids[:2900], X[:2900])
    assert flat.current_index == "FLAT" and flat.exact
    flat.close()
    with pytest.raises(ValueError, match="uses metric 'COSINE'"):
        make(metric="euclidean")  # the metric check reads the index the collection has
    grown = make(index_threshold=2800)
    try:
        assert grown.current_index == "FLAT" and grown.exact  # opened as it was
        grown.query(Q[:1], 1)  # first query: 2,900 rows >= 2,800, swapped once, here
        assert grown.current_index == "IVF_FLAT" and not grown.exact
        grown.upsert(ids[2900:], X[2900:])  # after the swap: growing next to indexed rows
        assert grown.current_index == "IVF_FLAT"
        assert grown.fetch(None)[0] == sorted(ids)  # every page read, not just the first
        got, got_d = grown.query(Q, 10)
        assert recall_at_k(got, want) >= 0.95
        hits = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g == w]
        assert np.allclose(np.vstack([got_d[i] for i in hits]), want_d[hits], atol=1e-4)
        new_ids, _ = grown.query(X[2990:2995], 1)
        assert [g[0] for g in new_ids] == ids[2990:2995]
        view = ids[::7]  # views are scanned exactly while the index is approximate
        got_v, _ = grown.query(Q, 5, allowed=view)
        assert got_v == brute_force(view, X[::7], Q, 5, "cosine")[0]
    finally:
        if not back_to_flat:
            grown.drop()
        grown.close()
    if not back_to_flat:
        return
    exact = make(exact_search=True)
    try:
        assert exact.current_index == "IVF_FLAT" and exact.exact  # FLAT again at first query
        got, got_d = exact.query(Q, 10)
        assert exact.current_index == "FLAT" and exact.describe()["index_type"] == "FLAT"
        assert got == want and np.allclose(np.vstack(got_d), want_d, atol=1e-4)
    finally:
        exact.drop()
        exact.close()


def test_lite_index_grows_past_threshold(tmp_path):
    def make(metric="cosine", **opts):
        return MilvusBackend("grow", 32, metric, tmp_path, **opts)

    _grows_past_threshold(make)


def test_server_index_grows_past_threshold(milvus_uri, tmp_path):
    def make(metric="cosine", **opts):
        return MilvusBackend("grow", 32, metric, tmp_path, uri=milvus_uri, **opts)

    _grows_past_threshold(make, back_to_flat=False)  # each swap costs a server ~8 s


def test_unknown_index_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="index_type must be one of HNSW, IVF_FLAT, IVF_SQ8"):
        MilvusBackend("bad", 4, "cosine", tmp_path, index_type="DISKANN")
