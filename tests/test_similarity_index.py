"""The SimilarityIndex layer (bookkeeping, queries, lifecycle) on an in-memory backend."""

import numpy as np
import pytest
from brain_env import use_brain_env
from conftest import sample_frame
from memory_backend import _COLLECTIONS, MemoryBackend

import dagster_brain as fob
from dagster_brain.config import BrainConfig
from dagster_brain.similarity import compute
from dagster_brain.similarity.backends import registry
from dagster_brain.similarity.index import SimilarityError
from dagster_brain.store import StoreError

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


def vectors(seed=0):
    X = np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)
    X[7] = X[3] * 2.0  # same direction as s003
    return X


def brute(X, q, metric="cosine"):
    from dagster_brain.algorithms.knn import pairwise_distances

    d = pairwise_distances(q[None], X, metric)[0]
    return np.argsort(d, kind="stable"), np.sort(d)


def test_build_query_and_sizes(dataset):
    X = vectors()
    index = fob.compute_similarity(dataset, embeddings=X, backend="memory", brain_key="sim")
    assert index.total_index_size == N and index.index_size == N and index.missing_size == 0
    res = index.sort_by_similarity("s003", k=5)
    order, dist = brute(X, X[3])
    assert res.sample_ids[:2] == ["s003", "s007"] or res.sample_ids[:2] == ["s007", "s003"]
    assert [f"s{i:03d}" for i in order[:5]] == res.sample_ids or set(res.sample_ids[:2]) == {
        "s003",
        "s007",
    }
    assert np.allclose(res.distances, dist[:5], atol=1e-5)
    no_self = index.sort_by_similarity("s003", k=5, include_query=False)
    assert "s003" not in no_self.sample_ids and no_self.sample_ids[0] == "s007"
    far = index.sort_by_similarity(X[0], k=3, reverse=True)
    assert len(far.sample_ids) == 3
    o0, d0 = brute(X, X[0])
    assert far.sample_ids == [f"s{i:03d}" for i in o0[::-1][:3]]
    whole = index.sort_by_similarity(X[0])
    assert len(whole.sample_ids) == N and np.all(np.diff(whole.distances) >= 0)


def test_view_restricts_queries_and_sizes(dataset):
    index = fob.compute_similarity(dataset, embeddings=vectors(), backend="memory")
    view_ids = [f"s{i:03d}" for i in range(10)]
    index.use_view(view_ids)
    assert index.index_size == 10
    res = index.sort_by_similarity("s003", k=20)
    assert set(res.sample_ids) <= set(view_ids) and len(res.sample_ids) == 10
    index.clear_view()
    assert index.index_size == N


def test_add_remove_and_persistence(dataset):
    X = vectors()
    view = dataset.view([f"s{i:03d}" for i in range(20)])
    index = fob.compute_similarity(view, embeddings=X[:20], backend="memory", brain_key="sim")
    assert index.total_index_size == 20
    assert index.missing_size == 10  # the rest of the dataset has no vectors
    index.add_to_index(X[20:], [f"s{i:03d}" for i in range(20, N)])
    index.remove_from_index(sample_ids=["s000", "s001"])
    reloaded = dataset.load_brain_results("sim")
    assert reloaded.total_index_size == N - 2
    vecs, sids, lids = reloaded.get_embeddings(sample_ids=["s025", "s000"])
    assert list(sids) == ["s025"] and lids is None
    assert np.allclose(vecs[0], X[25])
    assert reloaded.config.backend == "memory" and reloaded.config.dim == D


def test_bad_input_is_refused(dataset):
    index = fob.compute_similarity(dataset, embeddings=vectors(), backend="memory")
    with pytest.raises(SimilarityError, match="dimension 6, got 3"):
        index.add_to_index(np.ones((1, 3)), ["s000"])
    bad = np.ones((1, D), np.float32)
    bad[0, 2] = np.nan
    with pytest.raises(SimilarityError, match="s001"):
        index.add_to_index(bad, ["s001"])
    with pytest.raises(SimilarityError, match="no vectors for sample ids"):
        index.sort_by_similarity(["s000", "nope"], k=2)
    with pytest.raises(SimilarityError, match="k must be positive"):
        index.sort_by_similarity("s000", k=0)
    with pytest.raises(SimilarityError, match="no text tower"):
        index.sort_by_similarity("a photo of a cat", k=2)
    with pytest.raises(SimilarityError, match="not in dataset"):
        index.add_to_index(np.ones((1, D)), ["ghost"])
    index.use_view([])
    with pytest.raises(SimilarityError, match="no vectors in the current view"):
        index.sort_by_similarity(np.ones(D), k=2)


def test_existing_key_with_other_config_needs_overwrite(dataset):
    fob.compute_similarity(dataset, embeddings=vectors(), backend="memory", brain_key="sim")
    with pytest.raises(SimilarityError, match="different config"):
        fob.compute_similarity(
            dataset,
            embeddings="sim_embeddings",
            backend="memory",
            brain_key="sim",
            metric="euclidean",
        )
    index = fob.compute_similarity(
        dataset,
        embeddings="sim_embeddings",
        backend="memory",
        brain_key="sim",
        metric="euclidean",
        overwrite=True,
    )
    assert index.config.metric == "euclidean"
    assert len(_COLLECTIONS) == 1  # the superseded collection was dropped


def test_failed_build_keeps_previous_index(dataset):
    first = fob.compute_similarity(dataset, embeddings=vectors(), backend="memory", brain_key="sim")
    with pytest.raises(ConnectionError, match="memory"):
        compute.build_index(
            compute.SimilaritySpec(
                brain_key="sim",
                kind="similarity",
                dataset="toy",
                embeddings="sim_embeddings",
                backend="memory",
            ),
            dataset.store,
            params={"fail_upsert_after": 0},
        )
    again = dataset.load_brain_results("sim")
    assert again.config.collection == first.config.collection
    assert again.total_index_size == N
    assert again.sort_by_similarity("s003", k=1).sample_ids == ["s003"]
    assert list(_COLLECTIONS) == [first.config.collection]  # half-built one dropped


def test_delete_run_drops_collection_and_sort_api(dataset):
    fob.compute_similarity(dataset, embeddings=vectors(), backend="memory", brain_key="sim")
    view = fob.sort_by_similarity(dataset, "s003", k=3, dist_field="d")
    assert view.ids[0] == "s003" and "d" in view.to_pandas()
    table = view.save("near_s003")
    assert dataset.store.load_view("toy", "near_s003")["sample_id"].tolist() == list(view.ids)
    assert table.startswith("views.")
    dataset.delete_brain_run("sim")
    assert not _COLLECTIONS
    with pytest.raises(StoreError):
        dataset.load_brain_results("sim")
    with pytest.raises(ValueError, match="no similarity index"):
        fob.sort_by_similarity(dataset, "s003")


def test_duplicates_and_unique_on_the_index(dataset):
    X = vectors()
    X[20] = X[5]  # exact copy
    index = fob.compute_similarity(dataset, embeddings=X, backend="memory", brain_key="sim")
    res = index.find_duplicates(thresh=1e-4)
    dup_pairs = {frozenset((k, d)) for k, v in index.neighbors_map.items() for d, _ in v}
    assert frozenset(("s005", "s020")) in dup_pairs
    assert frozenset(("s003", "s007")) in dup_pairs  # same direction: cosine distance 0
    assert len(index.duplicate_ids) == 2 and index.thresh == pytest.approx(1e-4)
    view = index.duplicates_view()
    assert set(view["type"]) == {"nearest", "duplicate"} and "sample_id" in view
    assert index.visualize_duplicates()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.duplicate_ids == index.duplicate_ids
    unique = index.find_unique(5)
    assert len(unique) == 5 and len(set(unique)) == 5 and index.unique_ids == unique
    assert index.visualize_unique()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="exactly one of thresh"):
        index.find_duplicates()


def test_entry_backend_params_beat_the_resource(dataset):
    """Under Dagster the step passes its resource's settings; the YAML entry's own
    ``backend_params`` win over them, and the resource (brain config) fills the rest."""
    from dagster_brain.methods.similarity import run_similarity
    from dagster_brain.resources.similarity import similarity_resources

    fob.compute_similarity(dataset, embeddings=vectors(), backend="memory", brain_key="first")
    config = BrainConfig(
        env={
            "BRAIN_CONFIG_PATH": "/nonexistent/none.json",
            "BRAIN_SIMILARITY_MEMORY_WHERE": "config://ram",
        }
    )
    resource = similarity_resources(config)["similarity_memory"]
    assert resource.params()["where"] == "config://ram"

    def spec(key, **backend_params):
        return compute.SimilaritySpec(
            brain_key=key,
            kind="similarity",
            dataset="toy",
            embeddings="first_embeddings",
            backend="memory",
            backend_params=backend_params,
        )

    own = spec("own", where="yaml://ram")
    outcome = run_similarity(own, dataset.store, params=resource.params())
    assert outcome.record.config["index"]["params"]["where"] == "yaml://ram"  # the entry's
    assert outcome.record.upstream["backend"]["where"] == "yaml://ram"
    # the incremental path reopens the index with the same precedence
    change = compute.SampleChange(sample_ids=["s001"])
    again = run_similarity(own, dataset.store, params=resource.params(), change=change)
    assert again.record.upstream["backend"]["where"] == "yaml://ram"
    # what the entry leaves out comes from the resource (the brain config)
    filled = run_similarity(
        spec("filled", fail_upsert_after=1000), dataset.store, params=resource.params()
    )
    params = filled.record.config["index"]["params"]
    assert params["where"] == "config://ram" and params["fail_upsert_after"] == 1000


def test_backend_handles_share_and_count_holders():
    """One client per collection in a process; the last holder closes it, even from threads."""
    import threading

    from dagster_brain.similarity.index import BackendHandles

    class Client:
        made = 0

        def __init__(self):
            Client.made += 1
            self.closed = 0

        def close(self):
            self.closed += 1

    handles = BackendHandles()
    key = ("memory", "/root", "c")
    a, b = handles.acquire(key, Client), handles.acquire(key, Client)
    assert a is b and Client.made == 1 and len(handles) == 1
    handles.release(a)
    assert a.closed == 0  # one holder left
    handles.release(b)
    assert a.closed == 1 and len(handles) == 0
    loose = Client()
    handles.release(loose)  # a client it never shared is closed at once
    assert loose.closed == 1

    Client.made = 0
    start = threading.Barrier(8)
    seen: list[object] = []
    first = handles.acquire(key, Client)  # held throughout: every thread must share it

    def work():
        start.wait()
        for _ in range(200):
            got = handles.acquire(key, Client)
            seen.append(got)
            handles.release(got)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Client.made == 1 and all(x is first for x in seen) and first.closed == 0
    handles.release(first)
    assert first.closed == 1 and len(handles) == 0


def test_a_crash_between_the_commit_and_the_drop_leaves_a_consistent_index(dataset, monkeypatch):
    """Killed after the new record is committed but before the old collection is dropped."""
    X = vectors()
    first = fob.compute_similarity(dataset, embeddings=X, backend="memory", brain_key="sim")
    old_collection = first.config.collection

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after the commit")

    X2 = vectors(seed=1)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(compute, "_drop_collection", crash)
        fob.compute_similarity(dataset, embeddings=X2, backend="memory", brain_key="sim")
    # the committed record points at the new, complete collection and answers from it
    index = dataset.load_brain_results("sim")
    assert index.config.collection != old_collection
    assert index.total_index_size == N
    order, dist = brute(X2, X2[5])
    res = index.sort_by_similarity("s005", k=4)
    assert res.sample_ids == [f"s{i:03d}" for i in order[:4]]
    assert np.allclose(res.distances, dist[:4], atol=1e-5)
    # the old collection is left behind (a leak, not a wrong answer); the next run works
    assert old_collection in _COLLECTIONS
    again = fob.compute_similarity(dataset, embeddings=X2, backend="memory", brain_key="sim")
    assert again.total_index_size == N and index.config.collection not in _COLLECTIONS


def test_index_plots_display_in_a_notebook(dataset):
    """visualize_* stay PNG bytes and Jupyter shows them as images (_repr_png_)."""
    from dagster_brain.display import PngBytes

    X = vectors()
    X[20] = X[5]
    index = fob.compute_similarity(dataset, embeddings=X, backend="memory", brain_key="sim")
    index.find_duplicates(thresh=1e-4)
    index.find_unique(5)
    for png in (index.visualize_duplicates(), index.visualize_unique()):
        assert isinstance(png, PngBytes) and png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png._repr_png_() == bytes(png)
