"""Index state is the backend's: sizes come from the backend's own count and ids, and an index
whose backend lacks vectors its run recorded is refused with a clear error (not an
IndexError); `brain doctor` names it and rebuilds it to the same answers."""

import numpy as np
import pandas as pd
import pytest
from brain_env import use_brain_env
from conftest import sample_frame
from memory_backend import _COLLECTIONS, MemoryBackend

import dagster_brain as fob
from dagster_brain import doctor
from dagster_brain.similarity.backends import registry
from dagster_brain.similarity.index import IndexIncomplete, SimilarityError

N, D = 30, 6


@pytest.fixture(autouse=True)
def memory_backend(monkeypatch, tmp_path, request):
    config = use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    config.set_backend_param("memory", "metric", "cosine")
    monkeypatch.setitem(registry.BACKENDS, MemoryBackend.name, MemoryBackend)
    yield
    _COLLECTIONS.clear()


@pytest.fixture
def dataset(store):
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(N)]))
    return fob.Dataset("toy", store)


def build(dataset):
    X = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    return fob.compute_similarity(dataset, embeddings=X, backend="memory", brain_key="sim")


def collection(dataset) -> dict:
    return _COLLECTIONS[dataset.store.get_run("toy", "sim").config["index"]["collection"]]


def test_sizes_come_from_the_backend(dataset):
    index = build(dataset)
    assert (index.total_index_size, index.index_size, index.missing_size) == (N, N, 0)
    index.backend.delete(["s000", "s001", "s002"])  # behind the run record's back
    reloaded = dataset.load_brain_results("sim")
    assert len(reloaded.members) == N  # the record still lists them
    assert reloaded.total_index_size == N - 3 and reloaded.index_size == N - 3
    assert reloaded.missing_size == 3
    reloaded.use_view(["s000", "s001", "s005"])
    assert reloaded.index_size == 1 and reloaded.missing_size == 2


def test_a_dropped_collection_is_a_clear_error_everywhere(dataset):
    build(dataset)
    collection(dataset).clear()  # the collection is gone
    index = dataset.load_brain_results("sim")
    assert index.total_index_size == 0 and index.missing_size == N
    fix = r"brain doctor --dataset toy --repair.*re-materialise brain key 'sim'"
    for call in (
        lambda: index.sort_by_similarity("s003", k=5),
        lambda: index.sort_by_similarity(np.ones(D), k=5),
        lambda: index.sort_by_similarity(np.ones(D)),
        lambda: index.get_embeddings(sample_ids=["s003"]),
        lambda: fob.compute_near_duplicates(dataset, similarity="sim", verify=False),
    ):
        with pytest.raises(IndexIncomplete, match=r"similarity index 'sim' on 'toy'.*" + fix):
            call()
    assert issubclass(IndexIncomplete, SimilarityError)  # the CLI shows it as one line


def test_a_short_index_is_found_and_rebuilt_to_the_same_answers(dataset):
    index = build(dataset)
    before = index.sort_by_similarity("s010", k=6).to_frame()
    far = index.sort_by_similarity("s010", k=4, reverse=True).to_frame()
    index.backend.delete([f"s{i:03d}" for i in range(0, N, 2)])
    with pytest.raises(IndexIncomplete, match="holds 15 of the 30 vectors"):
        dataset.load_brain_results("sim").sort_by_similarity("s010", k=6)
    (f,) = doctor.examine(dataset.store, "toy")
    assert f.code == "index_short" and f.brain_key == "sim" and f.repairable
    assert "holds 15 of the 30 vectors the run recorded" in f.what
    assert [x.code for x in doctor.quick_check(dataset.store, "toy")] == ["index_short"]
    (done,) = doctor.repair(dataset.store, [f])
    assert done.startswith("rebuilt index 'sim' of 'toy' from embeddings key 'sim_embeddings'")
    assert doctor.examine(dataset.store) == []
    again = dataset.load_brain_results("sim")
    pd.testing.assert_frame_equal(again.sort_by_similarity("s010", k=6).to_frame(), before)
    pd.testing.assert_frame_equal(
        again.sort_by_similarity("s010", k=4, reverse=True).to_frame(), far
    )


def test_extra_vectors_are_found(dataset):
    index = build(dataset)
    index.backend.upsert(["ghost"], np.ones((1, D), np.float32))
    (f,) = doctor.examine(dataset.store, "toy")
    assert f.code == "index_extra" and "1 vectors the run does not record" in f.what


def test_changed_embeddings_are_not_rebuilt_silently(dataset):
    index = build(dataset)
    index.backend.delete(["s000"])
    store = dataset.store
    emb = store.read_embeddings("toy", "sim_embeddings")
    store.write_embeddings("toy", "sim_embeddings", emb.sample_ids, emb.vectors + 1.0)
    (f,) = doctor.examine(store, "toy")
    assert f.code == "index_short" and not f.repairable
    assert "changed since the index was built" in f.fix
    assert doctor.repair(store, [f]) == []
