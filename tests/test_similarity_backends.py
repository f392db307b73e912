"""The same similarity contract on all five backends (and the Milvus server), through the
public API: adds and removes, brute-force agreement, sort by id / vector / prompt, duplicates.

Backends run for real: sklearn in process, qdrant local mode, milvus-lite and a Milvus
standalone server, LanceDB on disk, and Pinecone's REST protocol served by tests/pinecone_stub.py
on 127.0.0.1 (Pinecone itself is a cloud service).
"""

import numpy as np
import pytest
from backend_contract import brute_force, recall_at_k
from brain_env import use_brain_env
from conftest import sample_frame
from PIL import Image
from tiny_models import make_tiny_clip

import dagster_brain as fob
from dagster_brain.similarity.backends.registry import BACKEND_METRICS, backend_class

BACKENDS = ["sklearn", "qdrant", "milvus", "lancedb", "pinecone", "milvus-server"]
N, DIM = 240, 24


@pytest.fixture(scope="module")
def pinecone_url():
    from pinecone_stub import DEFAULT_API_KEY, PineconeStub

    with PineconeStub() as stub:
        yield stub.url, DEFAULT_API_KEY


@pytest.fixture
def backend(request, monkeypatch, tmp_path):
    """(backend name, per-call params); connection settings go in a fresh brain config, as a
    user would set them (secrets included, which are never stored with the run)."""
    name = request.param
    config = use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    if name == "pinecone":
        url, key = request.getfixturevalue("pinecone_url")
        config.set_backend_param("pinecone", "host", url)
        config.set_backend_param("pinecone", "api_key", key)
    if name == "milvus-server":
        config.set_backend_param("milvus", "uri", request.getfixturevalue("milvus_uri"))
        name = "milvus"
    return name, {}


def make_dataset(store, n=N):
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(n)]))
    return fob.Dataset("toy", store)


def planted_vectors(seed=0):
    X = np.random.default_rng(seed).normal(size=(N, DIM)).astype(np.float32)
    X[200:205] = X[10:15]  # five exact copies
    return X


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_contract_against_brute_force(backend, store):
    name, params = backend
    ds = make_dataset(store)
    X = planted_vectors()
    view = ds.view([f"s{i:03d}" for i in range(220)])
    index = fob.compute_similarity(
        view, embeddings=X[:220], backend=name, brain_key="sim", **params
    )
    try:
        index.add_to_index(X[220:], [f"s{i:03d}" for i in range(220, N)])
        index.remove_from_index(sample_ids=[f"s{i:03d}" for i in range(0, 10)])
        assert index.total_index_size == N - 10
        keep = np.arange(10, N)
        ids = [f"s{i:03d}" for i in keep]
        Q = np.random.default_rng(1).normal(size=(8, DIM)).astype(np.float32)
        want, want_d = brute_force(ids, X[keep], Q, 10, "cosine")
        got, got_d = [], []
        for q in Q:
            res = index.sort_by_similarity(q, k=10)
            got.append(res.sample_ids)
            got_d.append(res.distances)
        min_recall = 1.0 if index.backend.exact else 0.95
        assert recall_at_k(got, want) >= min_recall
        if min_recall == 1.0:
            assert np.allclose(np.vstack(got_d), want_d, atol=1e-3)
        # by id: the query first, its planted copy right after
        res = index.sort_by_similarity("s012", k=3)
        assert set(res.sample_ids[:2]) == {"s012", "s202"}
        assert res.distances[1] == pytest.approx(0.0, abs=1e-4)
        # by several vectors: mean distance, exact
        multi = index.sort_by_similarity(Q[:2], k=5)
        want_m, _ = brute_force(ids, X[keep], Q[:2].mean(0, keepdims=True), 5, "cosine")
        assert len(multi.sample_ids) == 5
        # least similar, exact on every backend
        far = index.sort_by_similarity(Q[0], k=5, reverse=True)
        far_want = [w for w in brute_force(ids, X[keep], Q[:1], len(ids), "cosine")[0][0][::-1]]
        assert far.sample_ids == far_want[:5]
        # planted exact copies are found as duplicates on the index's own vectors
        index.find_duplicates(thresh=1e-4)
        pairs = {frozenset((k, d)) for k, v in index.neighbors_map.items() for d, _ in v}
        assert pairs == {frozenset((f"s{i:03d}", f"s{i + 190:03d}")) for i in range(10, 15)}
        assert len(index.find_unique(7)) == 7
        # reload through the brain run
        index.close()
        again = ds.load_brain_results("sim", **params)
        assert again.total_index_size == N - 10
        vecs, sids, _ = again.get_embeddings(sample_ids=["s203"])
        assert np.allclose(vecs[0], X[203], atol=1e-5)
        again.close()
    finally:
        ds.delete_brain_run("sim")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_sort_by_prompt_with_a_clip_model(backend, store, tmp_path, clip_dir):
    name, params = backend
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        arr = np.zeros((32, 32, 3), np.uint8)
        arr[..., i % 3] = rng.integers(80, 255)
        Image.fromarray(arr).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    store.write_samples("toy", sample_frame(paths))
    ds = fob.Dataset("toy", store)
    index = fob.compute_similarity(
        ds, model=str(clip_dir), backend=name, brain_key="clip", **params
    )
    try:
        assert index.supports_prompts
        res = index.sort_by_similarity("a red square", k=4)
        prompt_vec = index.get_model().embed_prompts(["a red square"])
        vecs, sids, _ = index.get_embeddings()
        want, _ = brute_force(list(sids), vecs, prompt_vec, 4, "cosine")
        assert res.sample_ids == want[0]
        view = fob.sort_by_similarity(ds, "s001", k=2, brain_key="clip")
        assert view.ids[0] == "s001"
    finally:
        index.close()
        ds.delete_brain_run("clip")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_static_metric_table_matches_adapters():
    for name, metrics in BACKEND_METRICS.items():
        assert tuple(backend_class(name).metrics) == metrics


def test_unreachable_backend_names_it_and_keeps_the_previous_index(
    store, monkeypatch, tmp_path, request
):
    from dagster_brain.similarity.backends.base import BackendUnavailable

    use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    ds = make_dataset(store)
    first = fob.compute_similarity(
        ds, embeddings=planted_vectors(), backend="qdrant", brain_key="sim"
    )
    first.close()
    with pytest.raises(BackendUnavailable, match=r"qdrant.*127\.0\.0\.1:9"):
        fob.compute_similarity(
            ds,
            embeddings="sim_embeddings",
            backend="qdrant",
            brain_key="sim",
            overwrite=True,
            url="http://127.0.0.1:9",
        )
    again = ds.load_brain_results("sim")
    try:
        assert again.config.collection == first.config.collection
        assert again.sort_by_similarity("s012", k=1).sample_ids == ["s012"]
    finally:
        again.close()


def test_text_settings_reach_the_adapters_as_their_types():
    """An environment variable gives "false" or "100000": the adapter gets False and 100000
    (bool("false") would be true); a value that is not one names the parameter."""
    from dagster_brain.similarity.backends.exact import SklearnBackend
    from dagster_brain.similarity.backends.milvus_backend import MilvusBackend
    from dagster_brain.similarity.index import _typed_settings

    got = _typed_settings(
        MilvusBackend, {"exact_search": "false", "index_threshold": "500", "uri": "x", "nlist": 8}
    )
    assert got == {"exact_search": False, "index_threshold": 500, "uri": "x", "nlist": 8}
    got = _typed_settings(
        SklearnBackend, {"approximate": "true", "approx_threshold": "1000", "min_recall": "0.9"}
    )
    assert got == {"approximate": True, "approx_threshold": 1000, "min_recall": 0.9}
    with pytest.raises(ValueError, match="nprobe='many' is not a valid int"):
        _typed_settings(MilvusBackend, {"nprobe": "many"})
