"""The sklearn (exact numpy + optional faiss IVF) backend, and the blocked kNN it runs on."""

from __future__ import annotations

import numpy as np
import pytest
from backend_contract import brute_force, check_contract, recall_at_k

from dagster_brain.algorithms.knn import exact_knn, pairwise_distances, top_k_scores
from dagster_brain.similarity.backends import exact
from dagster_brain.similarity.backends.exact import SklearnBackend


def clustered(n: int, dim: int, centers: int = 50, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture, rows in random order."""
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(centers, dim)).astype(np.float32) * 2
    return C[rng.integers(0, centers, n)] + rng.normal(size=(n, dim)).astype(np.float32)


@pytest.fixture
def make(tmp_path):
    def _make(collection: str, dim: int, metric: str, **params) -> SklearnBackend:
        return SklearnBackend(collection, dim, metric, tmp_path, **params)

    return _make


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dotproduct"])
def test_contract_exact(make, metric):
    check_contract(make, metric=metric, min_recall=1.0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dotproduct"])
def test_contract_approximate(make, metric):
    check_contract(lambda c, d, m: make(c, d, m, approximate=True), metric=metric, min_recall=0.95)


def test_approximate_recall_check_and_describe(make, monkeypatch):
    monkeypatch.setattr(exact, "_SCAN_CHUNK", 1000)  # exact scans merge several chunks
    X = clustered(6000, 32)
    ids = [f"s{i}" for i in range(len(X))]
    b = make("ann", 32, "cosine", approximate=True)
    assert SklearnBackend.exact is True and b.exact is False
    b.upsert(ids, X)
    assert b.describe()["index_built"] is False  # built lazily by the first query
    got, dist = b.query(X[:50], 10)
    assert [g[0] for g in got] == ids[:50]  # each finds itself first
    assert np.allclose([d[0] for d in dist], 0.0, atol=1e-5)
    assert b.recall_check(sample=500) >= 0.95
    info = b.describe()
    assert info["approximate"] and info["index_type"] == "faiss.IndexIVFFlat"
    assert info["index_built"] and info["nlist"] > 1 and info["nprobe"] >= 1
    assert info["recall"] >= 0.95 and (info["recall_k"], info["recall_sample"]) == (10, 500)
    want, _ = brute_force(ids, X, X[:200], 10, "cosine")
    assert recall_at_k(b.query(X[:200], 10)[0], want) >= 0.95
    # a change rebuilds the index on the next query; deleted ids never come back
    b.delete(ids[:100])
    got, _ = b.query(X[:100], 10)
    assert not set(ids[:100]) & {i for g in got for i in g}
    # automatic mode: exact up to the threshold, approximate above it
    auto = make("auto", 32, "cosine", approx_threshold=1000)
    auto.upsert(ids[:1000], X[:1000])
    assert auto.exact and not auto.describe()["approximate"]
    auto.upsert(ids[1000:1001], X[1000:1001])
    assert not auto.exact and auto.describe()["approximate"]
    assert auto.recall_check(sample=200) >= 0.95


def test_approximate_short_lists_fall_back_to_exact(make):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    ids = [f"p{i}" for i in range(400)]
    b = make("short", 8, "euclidean", approximate=True, nlist=10, nprobe=1)
    b.upsert(ids, X)
    Q = rng.normal(size=(30, 8)).astype(np.float32)
    got, dist = b.query(Q, 60)  # more than one list holds: every row is completed exactly
    want, want_d = brute_force(ids, X, Q, 60, "euclidean")
    assert all(len(g) == 60 for g in got)
    assert b.describe()["nprobe"] == 1 and not b.exact
    assert np.allclose(np.vstack(dist), want_d, atol=1e-4)


def test_persistence_reopen_and_drop(make, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 8)).astype(np.float32)
    ids = [f"id{i}" for i in range(500)]
    b = make("persist", 8, "euclidean")
    b.upsert(ids, X)
    b.delete(ids[:10])
    b.upsert(["id20"], X[:1])  # overwrite
    assert b.path == tmp_path / "persist.parquet" and b.path.exists()
    again = make("persist", 8, "euclidean")
    assert again.count() == 490
    got_ids, got = again.fetch(None)
    want_ids, want = b.fetch(None)
    assert got_ids == want_ids and np.array_equal(got, want)
    assert np.array_equal(again.fetch(["id20"])[1], X[:1])
    # queries after reopening agree with the original
    assert again.query(X[50:60], 5)[0] == b.query(X[50:60], 5)[0]
    again.drop()
    assert not b.path.exists() and make("persist", 8, "euclidean").count() == 0


def test_crash_during_write_keeps_previous_file(make, tmp_path, monkeypatch):
    X = np.eye(4, dtype=np.float32)
    b = make("crash", 4, "cosine")
    b.upsert(["a", "b"], X[:2])

    def broken(path, ids, vectors, meta):
        path.write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(exact, "_write_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        b.upsert(["c"], X[2:3])
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["crash.parquet"]  # no temp file left
    reopened = make("crash", 4, "cosine")
    assert reopened.fetch(None)[0] == ["a", "b"]


def test_saves_that_only_add_rows_append_part_files_and_reopen_the_same(
    make, tmp_path, monkeypatch
):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 6)).astype(np.float32)
    ids = [f"p{i:02d}" for i in range(60)]
    b = make("parts", 6, "euclidean")
    b.upsert(ids[:40], X[:40])
    written = []
    real = exact._write_parquet
    monkeypatch.setattr(
        exact, "_write_parquet", lambda p, i, v, m: (written.append(len(i)), real(p, i, v, m))
    )
    b.upsert(ids[40:50], X[40:50])  # only new rows: one part with those 10 rows
    b.upsert(ids[50:], X[50:])
    assert written == [10, 10]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["parts.1.1.parquet", "parts.1.2.parquet", "parts.parquet"]
    again = make("parts", 6, "euclidean")
    assert again.fetch(ids)[0] == ids and np.array_equal(again.fetch(ids)[1], X)
    # a changed row rewrites the whole collection as the next generation, parts removed
    again.upsert(["p03"], np.zeros((1, 6), np.float32))
    assert written[-1] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.parquet"]
    third = make("parts", 6, "euclidean")
    assert np.array_equal(third.fetch(["p03"])[1], [[0] * 6]) and third.count() == 60
    # parts of an earlier generation left by a crash are not read
    (tmp_path / "parts.1.1.parquet").write_bytes((tmp_path / "parts.parquet").read_bytes())
    assert make("parts", 6, "euclidean").count() == 60
    third.delete(["p00"])  # a delete rewrites too, and removes the stale part
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.parquet"]
    assert make("parts", 6, "euclidean").count() == 59
    # past _MAX_PARTS appended parts the next save compacts them into the base
    monkeypatch.setattr(exact, "_MAX_PARTS", 2)
    for i in range(3):
        third.upsert([f"q{i}"], np.ones((1, 6), np.float32))
    assert written[-3:] == [1, 1, 62]
    third.drop()
    assert list(tmp_path.iterdir()) == []


def test_a_reopened_index_reads_its_vectors_only_when_they_are_used(make, monkeypatch):
    """Appending to a reopened collection and saving it reads no vector from its files; the
    first query, fetch or delete reads them, and every answer is as if they had been read."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    ids = [f"r{i:02d}" for i in range(50)]
    b = make("lazy", 6, "cosine")
    b.upsert(ids[:30], X[:30])
    reads = []
    real = exact._read_parquet
    monkeypatch.setattr(exact, "_read_parquet", lambda *a, **k: (reads.append(1), real(*a, **k))[1])
    again = make("lazy", 6, "cosine")
    assert again.count() == 30 and reads == []
    again.upsert(ids[30:40], X[30:40])  # new rows only: kept aside, saved as a part
    again.upsert(ids[40:], X[40:])
    assert reads == [] and again.count() == 50
    got, vectors = again.fetch(ids)  # the first use of the vectors reads the files once
    assert reads == [1] and got == ids and np.array_equal(vectors, X)
    want, _ = brute_force(ids, X, X[:3], 5, "cosine")
    assert again.query(X[:3], 5)[0] == want
    # a delete of the last rows of an unread collection reads the vectors before they move
    third = make("lazy", 6, "cosine")
    third.delete(ids[45:])
    assert third.count() == 45
    assert np.array_equal(third.fetch(ids[:45])[1], X[:45])
    assert np.array_equal(make("lazy", 6, "cosine").fetch(ids[:45])[1], X[:45])


def test_index_files_of_earlier_versions_still_open(make, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    old = pa.table(
        {"id": ["a", "b", "c"], "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 4)}
    )  # vectors as lists of floats, no generation in the metadata
    pq.write_table(old, tmp_path / "old.parquet")
    b = make("old", 4, "euclidean")
    got_ids, got = b.fetch(None)
    assert got_ids == ["a", "b", "c"] and np.array_equal(got, X)
    b.upsert(["d"], np.ones((1, 4), np.float32))  # appended to the old file as a part
    reopened = make("old", 4, "euclidean")
    assert reopened.count() == 4 and np.array_equal(reopened.fetch(["a", "d"])[1], [X[0], [1] * 4])
    empty = make("empty", 4, "euclidean")
    empty.upsert(["x"], X[:1])
    empty.delete(["x"])
    assert make("empty", 4, "euclidean").count() == 0


def test_bulk_writes_once(make, monkeypatch):
    writes = []
    real = exact._write_parquet
    monkeypatch.setattr(exact, "_write_parquet", lambda *a: (writes.append(1), real(*a)))
    b = make("bulk", 3, "cosine")
    rng = np.random.default_rng(2)
    with b.bulk():
        for i in range(5):
            b.upsert([f"x{i}"], rng.normal(size=(1, 3)))
        b.delete(["x0"])
    assert len(writes) == 1 and make("bulk", 3, "cosine").count() == 4


def test_upsert_and_delete_bookkeeping(make):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 4)).astype(np.float32)
    ids = [f"v{i}" for i in range(1000)]
    b = make("book", 4, "euclidean")
    with b.bulk():
        b.upsert(ids, X)
        b.delete(ids[::3])  # holes everywhere, refilled from the end
        b.upsert(["v0", "v0", "new"], X[:3])  # repeated id: the last one wins
    alive = {i: X[j] for j, i in enumerate(ids) if j % 3}
    alive["v0"], alive["new"] = X[1], X[2]
    got_ids, got = b.fetch(None)
    assert got_ids == sorted(alive)
    assert np.array_equal(got, np.stack([alive[i] for i in got_ids]))


def test_every_vector_in_order_is_lent_without_a_copy_and_kept_from_later_writes(make):
    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = [f"v{i}" for i in range(10)]
    b = make("lent", 4, "euclidean")
    b.upsert(ids, X)
    got_ids, whole = b.fetch(ids)
    assert got_ids == ids and np.shares_memory(whole, b._X) and not whole.flags.writeable
    _, part = b.fetch(ids[:3])  # anything else is a copy
    assert not np.shares_memory(part, b._X)
    b.upsert(["v1"], np.full((1, 4), -1, np.float32))  # in place: copies the collection first
    b.delete(["v0"])  # fills the hole from the end
    assert np.array_equal(whole, X)  # what was lent is unchanged
    assert np.array_equal(b.fetch(["v1", "v9"])[1], [[-1] * 4, X[9]])
    # adopt: an empty collection takes the array itself, and never writes into it
    Y = X.copy()
    a = make("adopted", 4, "euclidean")
    a.adopt(ids, Y)
    assert np.shares_memory(a._X, Y) and a.count() == 10
    a.upsert(["v2"], np.zeros((1, 4), np.float32))
    assert np.array_equal(Y, X) and np.array_equal(a.fetch(["v2"])[1], [[0] * 4])
    with pytest.raises(ValueError, match="'adopted'.*empty collection"):
        a.adopt(ids, Y)
    assert make("adopted", 4, "euclidean").fetch(ids)[0] == ids  # saved once, reopened


def test_mean_center(make):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 8)).astype(np.float32) + 50.0  # a large shared offset
    ids = [f"m{i}" for i in range(200)]
    plain, centred = make("plain", 8, "cosine"), make("centred", 8, "cosine", mean_center=True)
    plain.upsert(ids, X)
    centred.upsert(ids, X)
    _, d_plain = plain.query(X[:5], 5)
    got, d_centred = centred.query(X[:5], 5)
    assert np.vstack(d_plain).max() < 0.02  # the offset makes everything look alike
    Xc = X - X.mean(axis=0)
    want, want_d = brute_force(ids, Xc, Xc[:5], 5, "cosine")
    assert got == want and np.allclose(np.vstack(d_centred), want_d, atol=1e-5)
    with pytest.raises(ValueError, match="mean_center applies to cosine only"):
        make("bad", 8, "euclidean", mean_center=True)


def test_bad_input(make):
    b = make("bad", 3, "cosine")
    with pytest.raises(ValueError, match=r"'x'.*expected \(1, 3\)"):
        b.upsert(["x"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="non-finite.*'y'"):
        b.upsert(["x", "y"], np.array([[1, 0, 0], [np.nan, 0, 0]]))
    with pytest.raises(ValueError, match="2 vectors for 3 ids"):
        b.upsert(["x", "y", "z"], np.ones((2, 3)))
    assert b.count() == 0  # nothing half-written
    b.upsert(["x"], np.ones((1, 3)))
    with pytest.raises(ValueError, match="k must be >= 1"):
        b.query(np.ones((1, 3)), 0)
    with pytest.raises(ValueError, match=r"expected \(n, 3\)"):
        b.query(np.ones((1, 2)), 1)
    with pytest.raises(ValueError, match="unknown parameters.*'url'"):
        make("bad", 3, "cosine", url="http://x")
    assert b.query(np.ones((1, 3)), 5)[0] == [["x"]]  # up to k
    assert b.query(np.ones((1, 3)), 5, allowed=["nope"])[0] == [[]]


# -- the blocked kNN fast path (thresholded selection) ---------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dotproduct"])
def test_fast_path_equals_brute_force(metric):
    X = clustered(6000, 16, seed=5)
    X = X[np.argsort(X[:, 0])]  # sorted rows: true neighbours sit next to each other
    dist, idx = exact_knn(X, 10, metric=metric, block_bytes=4 * 6000 * 700)
    D = pairwise_distances(X, X, metric).astype(np.float64)
    np.fill_diagonal(D, np.inf)
    want = np.sort(D, axis=1)[:, :10]
    assert np.allclose(dist, want, atol=1e-3)
    assert (idx == np.arange(6000)[:, None]).sum() == 0


def test_fast_path_ties_and_duplicates():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(6000, 8)).astype(np.float32)
    X[:1500] = X[0]  # 1,500 identical rows: far more ties than candidates allowed per row
    s, idx = top_k_scores(X, X, 10, exclude_self=True)
    assert np.all(np.diff(s, axis=1) <= 0)
    assert np.all(idx[:1500] < 1500)  # identical rows find each other
    want = -np.sort(-(X[1500:1600] @ X.T), axis=1)
    s2, _ = top_k_scores(X[1500:1600], X, 10)
    assert np.allclose(s2, want[:, :10], atol=1e-4)
