"""Queries reuse the similarity index loaded once per process, and never a stale one."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from brain_env import use_brain_env
from conftest import sample_frame

import dagster_brain as fob
from dagster_brain.algorithms.knn import pairwise_distances
from dagster_brain.similarity import compute, index
from dagster_brain.similarity.index import HANDLES, INDEX_CACHE, clear_index_cache

N, D = 40, 8


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path, request):
    use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    clear_index_cache()
    yield
    clear_index_cache()


@pytest.fixture
def loads(monkeypatch):
    """How many times the index was loaded from the store and its backend."""
    calls = []
    real = compute.load_index

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(compute, "load_index", counting)
    return calls


@pytest.fixture
def dataset(store):
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(N)]))
    return fob.Dataset("toy", store)


def vectors(seed=0):
    return np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)


def build(dataset, X, key="sim"):
    fob.compute_similarity(dataset, embeddings=X, brain_key=key, overwrite=True).close()
    settle(dataset.store)


def settle(store):
    """Date the store's files an hour back, as if written long ago: later queries may then
    skip reading the run record while the files stay unchanged (any write changes them)."""
    for path in (store.db_path, store.db_path.with_name(store.db_path.name + ".wal")):
        if path.exists():
            old = path.stat().st_mtime - 3600
            os.utime(path, (old, old))


def brute(X, q, ids, k):
    """The k nearest of ``ids`` (rows of X) to vector q, by cosine distance."""
    d = pairwise_distances(q[None], X, "cosine")[0]
    order = np.argsort(d, kind="stable")[:k]
    return [ids[i] for i in order], d[order]


def answer(dataset, q, k=5, key="sim"):
    view = fob.sort_by_similarity(dataset, q, k=k, brain_key=key)
    return list(view.ids), view.scores["distance"].to_numpy()


def check(dataset, X, ids, q, k=5, key="sim"):
    got_ids, got_d = answer(dataset, q, k, key)
    want_ids, want_d = brute(X, q, ids, k)
    assert got_ids == want_ids
    assert np.allclose(got_d, want_d, atol=1e-5)


ALL = [f"s{i:03d}" for i in range(N)]


def test_later_queries_do_not_reload(dataset, loads, monkeypatch):
    X = vectors()
    build(dataset, X)
    stamps = []
    real_stamp = index.run_stamp
    monkeypatch.setattr(index, "run_stamp", lambda *a: stamps.append(a[2]) or real_stamp(*a))
    for i in range(3):
        check(dataset, X, ALL, X[i])
    dataset.sort_by_similarity("s004", k=3, brain_key="sim")
    idx = dataset.load_brain_results("sim")
    assert idx.sort_by_similarity("s005", k=3).sample_ids[0] == "s005"
    idx.close()
    assert loads == ["sim"]  # loaded once, reused five times
    assert stamps == ["sim"]  # the store files did not change: the record is not re-read
    assert len(INDEX_CACHE) == 1


def test_recent_writes_are_checked_against_the_record(dataset, loads, monkeypatch):
    X = vectors()
    fob.compute_similarity(dataset, embeddings=X, brain_key="sim").close()  # files just written
    monkeypatch.setattr(index, "STAT_MARGIN_S", 3600.0)
    stamps = []
    real_stamp = index.run_stamp
    monkeypatch.setattr(index, "run_stamp", lambda *a: stamps.append(a[2]) or real_stamp(*a))
    for i in range(3):
        check(dataset, X, ALL, X[i])
    assert loads == ["sim"] and stamps == ["sim"] * 3


def test_updates_through_another_handle_are_seen(dataset, loads):
    X = vectors()
    build(dataset, X)
    check(dataset, X, ALL, X[0])
    other = compute.load_index(dataset.store, "toy", "sim")  # not from the cache
    other.remove_from_index(sample_ids=["s001", "s002"])
    keep = [i for i in range(N) if i not in (1, 2)]
    check(dataset, X[keep], [ALL[i] for i in keep], X[1])
    whole = fob.sort_by_similarity(dataset, X[1], brain_key="sim")  # every member, sorted
    assert list(whole.ids) == brute(X[keep], X[1], [ALL[i] for i in keep], N)[0]
    new = vectors(seed=7)[:1]
    other.add_to_index(new, ["s002"])
    other.close()
    keep = [i for i in range(N) if i != 1]
    Y = X.copy()
    Y[2] = new[0]
    check(dataset, Y[keep], [ALL[i] for i in keep], new[0])
    assert answer(dataset, new[0], k=1)[0] == ["s002"]


def test_updates_from_another_process_are_seen(dataset, tmp_path):
    X = vectors()
    build(dataset, X)
    check(dataset, X, ALL, X[3])
    new = vectors(seed=3)[:2]
    np.save(tmp_path / "new.npy", new)
    script = textwrap.dedent(
        f"""
        import numpy as np
        import dagster_brain as fob
        from dagster_brain.store import Store
        ds = fob.Dataset("toy", Store({str(dataset.store.data_dir)!r}))
        idx = ds.load_brain_results("sim")
        idx.remove_from_index(sample_ids=["s003"])
        idx.add_to_index(np.load({str(tmp_path / "new.npy")!r}), ["s010", "s011"])
        idx.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    Y = X.copy()
    Y[10], Y[11] = new
    keep = [i for i in range(N) if i != 3]
    check(dataset, Y[keep], [ALL[i] for i in keep], X[3], k=N - 1)
    check(dataset, Y[keep], [ALL[i] for i in keep], new[1])


def test_rebuild_delete_and_rename_are_seen(dataset, loads):
    def queried_with_one_load(X, q1, q2, key="sim"):
        before = len(loads)
        check(dataset, X, ALL, q1, key=key)
        check(dataset, X, ALL, q2, key=key)
        assert loads[before:] == [key]  # reloaded once after the change, then reused

    X = vectors()
    build(dataset, X)
    queried_with_one_load(X, X[0], X[1])
    Z = vectors(seed=1)
    build(dataset, Z)  # a rebuild: new run id and collection
    queried_with_one_load(Z, Z[0], X[0])
    dataset.rename_brain_run("sim", "moved")
    with pytest.raises(Exception, match="no brain run 'sim'"):
        answer(dataset, X[0], key="sim")
    queried_with_one_load(Z, Z[5], Z[6], key="moved")
    dataset.delete_brain_run("moved")
    with pytest.raises(Exception, match="no brain run 'moved'"):
        answer(dataset, X[0], key="moved")
    build(dataset, X, key="moved")  # the same key again, other vectors
    queried_with_one_load(X, X[9], Z[9], key="moved")


def test_least_recently_used_is_closed_and_cache_can_be_cleared(dataset, monkeypatch):
    monkeypatch.setattr(INDEX_CACHE, "size", 2)
    closed = []
    real_close = index.SimilarityIndex.close

    def spy(self):
        closed.append(self.brain_key)
        real_close(self)

    monkeypatch.setattr(index.SimilarityIndex, "close", spy)
    X = vectors()
    for key in ("a", "b", "c"):
        build(dataset, X, key=key)
    closed.clear()
    open_before = len(HANDLES)  # clients other tests of this process left open
    answer(dataset, X[0], key="a")
    answer(dataset, X[0], key="b")
    assert len(HANDLES) - open_before == 2  # the cache keeps a and b open
    answer(dataset, X[0], key="c")  # evicts a
    assert closed.count("a") == 2  # the query's own handle, then the cached one
    assert len(INDEX_CACHE) == 2 and len(HANDLES) - open_before == 2
    check(dataset, X, ALL, X[1], key="a")  # loaded again, right answer
    clear_index_cache()
    assert len(INDEX_CACHE) == 0 and len(HANDLES) == open_before


@pytest.mark.parametrize("n, k", [(60, 5), (300, 10)])
def test_trustworthiness_matches_sklearn(n, k):
    from sklearn.decomposition import PCA
    from sklearn.manifold import trustworthiness

    from dagster_brain.algorithms.visualization import trustworthiness_at_k

    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, 32)).astype(np.float32)
    X[: n // 3] += 4.0  # two groups: some neighbourhoods survive, others do not
    P = PCA(n_components=2, random_state=0).fit_transform(X).astype(np.float32)
    assert trustworthiness_at_k(X, P, k=k) == pytest.approx(
        trustworthiness(X, P, n_neighbors=k), abs=1e-6
    )
    assert trustworthiness_at_k(X, X, k=k) == pytest.approx(1.0)


def test_pca_points_are_the_plain_pca_of_the_vectors(dataset):
    from sklearn.decomposition import PCA

    X = vectors()
    out = fob.compute_visualization(dataset, embeddings=X, method="pca", brain_key="viz")
    want = PCA(n_components=2, random_state=51).fit(X).transform(X)
    got = out.results.set_index("sample_id").loc[ALL, ["x", "y"]].to_numpy()
    assert np.array_equal(got, want.astype(float))
    assert out.record.config["trustworthiness_rows"] == N


def test_a_backend_one_process_locks_is_not_kept_open(dataset, loads, monkeypatch):
    from dagster_brain.similarity.backends.exact import SklearnBackend

    monkeypatch.setattr(SklearnBackend, "embedded", classmethod(lambda cls, s: "locked"))
    X = vectors()
    build(dataset, X)
    open_before = len(HANDLES)  # clients other tests of this process left open
    check(dataset, X, ALL, X[0])
    check(dataset, X, ALL, X[1])
    assert loads == ["sim", "sim"] and len(INDEX_CACHE) == 0 and len(HANDLES) == open_before
