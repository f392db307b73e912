"""MilvusBackend on milvus-lite (in-process) and on a real Milvus 2.3.5 standalone server.

The server comes from tests/milvus_server.py (scripts/milvus_server.sh: its own venv, a free
loopback port, stopped at the end of the session).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from backend_contract import check_contract

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
