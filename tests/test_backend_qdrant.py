"""QdrantBackend in local mode (qdrant-client's embedded store in a temp folder).

The server path (``url=...``) is not testable here: no Qdrant server is installable from the
package registries this project reaches. Only its failure mode is tested: an unreachable URL
raises BackendUnavailable naming the URL.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from backend_contract import check_contract

from dagster_brain.similarity.backends.base import METRICS, BackendUnavailable
from dagster_brain.similarity.backends.qdrant_backend import QdrantBackend, point_id
from dagster_brain.similarity.backends.registry import backend_class


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("metric", METRICS)
def test_contract_local_mode(tmp_path, metric):
    check_contract(lambda c, d, m: QdrantBackend(c, d, m, tmp_path), metric=metric)


def test_contract_large_views_scan_exactly(tmp_path):
    # views above max_filter_ids skip the payload filter and scan the fetched vectors
    check_contract(lambda c, d, m: QdrantBackend(c, d, m, tmp_path, max_filter_ids=10))


def test_registry_finds_qdrant():
    assert backend_class("qdrant") is QdrantBackend


def test_reopen_gives_same_vectors_and_folder_lock_is_released(tmp_path):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(40, 8)) * 5).astype(np.float32)  # norms far from 1
    ids = [f"s{i}" for i in range(40)]
    first = QdrantBackend("persist", 8, "cosine", tmp_path)
    first.upsert(ids, X)
    with pytest.raises(BackendUnavailable, match=r"'qdrant' at .*qdrant_persist"):
        QdrantBackend("persist", 8, "cosine", tmp_path)  # folder locked while open
    first.close()
    again = QdrantBackend("persist", 8, "cosine", tmp_path, batch_size=16)  # scroll pages
    try:
        assert again.count() == 40
        got_ids, got = again.fetch(None)
        assert got_ids == sorted(ids)
        assert np.allclose(got, X[[ids.index(s) for s in got_ids]], atol=1e-5)
        assert again.describe()["exact"] is True
    finally:
        again.drop()
        again.close()
    assert not (tmp_path / "qdrant_persist").exists()


def test_string_ids_map_to_stable_uuids(tmp_path):
    assert point_id("a/b c") == point_id("a/b c") != point_id("a/b d")
    backend = QdrantBackend("odd_ids", 2, "euclidean", tmp_path)
    try:
        backend.upsert(["a/b c", "ü-1", "a/b c"], np.array([[0, 0], [3, 4], [1, 0]], np.float32))
        assert backend.count() == 2  # repeated id: the last one wins
        ids, dist = backend.query(np.zeros((1, 2), np.float32), 2)
        assert ids == [["a/b c", "ü-1"]]
        assert np.allclose(dist[0], [1.0, 5.0])  # L2 distance, not squared
    finally:
        backend.drop()
        backend.close()


def test_unreachable_url_raises_backend_unavailable(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(BackendUnavailable, match=rf"similarity backend 'qdrant' at {url}"):
        QdrantBackend("nowhere", 4, "cosine", tmp_path, url=url, timeout=2)


def test_dimension_mismatch_names_collection(tmp_path):
    backend = QdrantBackend("dims", 4, "cosine", tmp_path)
    try:
        with pytest.raises(ValueError, match="'dims'.*dimension 3"):
            backend.upsert(["a"], np.ones((1, 3), np.float32))
        with pytest.raises(ValueError, match="'dims'.*dimension 5"):
            backend.query(np.ones((1, 5), np.float32), 1)
    finally:
        backend.close()
    with pytest.raises(ValueError, match="collection 'dims' holds 4-d vectors, not 8-d"):
        QdrantBackend("dims", 8, "cosine", tmp_path)
    with pytest.raises(ValueError, match="collection 'dims' uses distance 'Cosine'"):
        QdrantBackend("dims", 4, "euclidean", tmp_path)
    # a failed open releases the folder lock
    QdrantBackend("dims", 4, "cosine", tmp_path).close()
