"""Incremental kNN graph: equal to a rebuild after every add / remove / replace."""

import duckdb
import numpy as np
import pytest

from dagster_brain.algorithms import knn_graph
from dagster_brain.algorithms.knn_graph import KnnGraph, build_knn_graph, update_knn_graph
from dagster_brain.algorithms.uniqueness import uniqueness_from_graph, uniqueness_scores

METRICS = ["cosine", "euclidean", "dotproduct"]


def exact_distances(X, metric):
    """Brute-force (n, n) distances in float64."""
    X = np.asarray(X, dtype=np.float64)
    if metric == "euclidean":
        return np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    if metric == "dotproduct":
        return -(X @ X.T)
    norms = np.linalg.norm(X, axis=1)
    norms[norms == 0] = 1.0
    return np.clip(1.0 - (X @ X.T) / np.outer(norms, norms), 0.0, 2.0)


def assert_matches_brute_force(graph, X, ids, k, metric):
    """Same ids and distances as brute force; neighbours differ only where distances tie."""
    assert graph.ids == list(ids) and graph.k == k and graph.metric == metric
    n = len(ids)
    D = exact_distances(X, metric)
    np.fill_diagonal(D, np.inf)
    w = max(0, min(k, n - 1))
    want = np.sort(D, axis=1)[:, :w]
    assert graph.neighbors.shape == (n, w)
    assert np.allclose(graph.distances, want, atol=1e-5, rtol=1e-6)
    # every listed neighbour really is at the distance listed for its rank
    listed = np.take_along_axis(D, graph.neighbors, axis=1)
    assert np.allclose(listed, want, atol=1e-5, rtol=1e-6)
    assert all(len(set(row)) == w for row in graph.neighbors.tolist())


def make_data(rng, n, d=16):
    """Gaussian rows, a third of them in tight clusters, and planted exact duplicates."""
    X = rng.normal(size=(n, d)).astype(np.float32)
    centres = rng.normal(scale=3.0, size=(4, d))
    members = rng.choice(n, size=n // 3, replace=False)
    X[members] = centres[members % 4] + rng.normal(scale=0.05, size=(members.size, d))
    dupes = rng.choice(n, size=(n // 20, 2), replace=False)
    X[dupes[:, 1]] = X[dupes[:, 0]]
    X[dupes[0, 0]] = X[dupes[1, 0]] = X[dupes[2, 0]]  # a group of 6 identical rows
    return X


class Collection:
    """The true collection alongside the incrementally updated graph."""

    def __init__(self, X, ids, k, metric):
        self.X, self.ids, self.k, self.metric = X, list(ids), k, metric
        self.graph = build_knn_graph(X, ids, k, metric)

    def update(self, remove=(), add=(), X_add=None):
        graph, X_new = update_knn_graph(
            self.graph, self.X, remove_ids=remove, add_ids=add, X_add=X_add
        )
        gone = set(remove) | set(add)
        keep = [i for i, item in enumerate(self.ids) if item not in gone]
        self.ids = [self.ids[i] for i in keep] + list(add)
        self.X = np.vstack([self.X[keep], X_add]) if len(add) else self.X[keep]
        assert np.array_equal(X_new, self.X)
        self.graph = graph
        assert_matches_brute_force(graph, self.X, self.ids, self.k, self.metric)
        # ties are broken by row index, so an update is identical to a rebuild
        ref = build_knn_graph(self.X, self.ids, self.k, self.metric)
        assert np.array_equal(graph.neighbors, ref.neighbors)
        assert np.array_equal(graph.distances, ref.distances)


@pytest.fixture
def small_blocks(monkeypatch):
    """Many score blocks and candidate chunks, so their boundaries are exercised."""
    monkeypatch.setattr(knn_graph, "_BLOCK_BYTES", 4 * 100 * 64)  # 64 columns per block
    monkeypatch.setattr(knn_graph, "_CAND_CHUNK", 64)


@pytest.mark.parametrize("metric", METRICS)
def test_incremental_equals_rebuild_over_a_sequence(metric, small_blocks):
    rng = np.random.default_rng(7)
    X = make_data(rng, 600)
    X[5] = 0.0  # a zero vector: at cosine distance 1 from everything
    ids = [f"s{i}" for i in range(600)]
    c = Collection(X[:300], ids[:300], 4, metric)
    assert_matches_brute_force(c.graph, c.X, c.ids, 4, metric)
    for start in (300, 400, 500):  # three batches, one after another
        batch = X[start : start + 100].copy()
        batch[:3] = c.X[rng.choice(len(c.ids), 3)]  # duplicates of items already there
        c.update(add=ids[start : start + 100], X_add=batch)
    c.update(remove=list(rng.choice(c.ids, 120, replace=False)))
    replaced = list(rng.choice(c.ids, 20, replace=False))
    removed = [i for i in c.ids if i not in replaced][:15]
    new = replaced + [f"n{i}" for i in range(10)]
    c.update(remove=removed, add=new, X_add=rng.normal(size=(30, 16)).astype(np.float32))
    assert set(replaced) <= set(c.ids[-30:])  # replaced items move to the end
    got = uniqueness_from_graph(c.graph)
    want, _, _ = uniqueness_scores(c.X, c.ids, k=4, metric=metric)
    assert np.allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("metric", METRICS)
def test_k1_and_small_collections(metric):
    rng = np.random.default_rng(11)
    X = make_data(rng, 80, d=8)
    ids = [f"s{i}" for i in range(80)]
    c = Collection(X[:40], ids[:40], 1, metric)
    c.update(add=ids[40:], X_add=X[40:])
    c = Collection(X[:50], ids[:50], 5, metric)
    c.update(remove=ids[2:50])  # everything but 2
    assert c.graph.neighbors.tolist() == [[1], [0]]
    c.update(add=ids[50:53], X_add=X[50:53])  # 5 items: lists widen from 1 to 4
    c.update(add=ids[53:], X_add=X[53:])  # and to k=5
    c.update(remove=c.ids[:-1])
    assert c.graph.neighbors.shape == (1, 0)
    c.update(remove=c.ids)
    assert c.graph.ids == [] and c.X.shape == (0, 8)
    c.update(add=ids[:10], X_add=X[:10])


def test_start_from_nothing_equals_build():
    rng = np.random.default_rng(2)
    X = make_data(rng, 100)
    ids = [f"s{i}" for i in range(100)]
    want = build_knn_graph(X, ids, 3, "euclidean")
    for start in (None, build_knn_graph(np.empty((0, 16)), [], 3, "euclidean")):
        graph, X_new = update_knn_graph(start, None, add_ids=ids, X_add=X, k=3, metric="euclidean")
        assert np.array_equal(graph.neighbors, want.neighbors)
        assert np.array_equal(graph.distances, want.distances)
        assert np.array_equal(X_new, X)


def test_hand_computed_line_with_ties():
    # points on a line: 0, 1, 3, 6; item c (3) is at distance 3 from both a and d
    X = np.array([[0.0], [1.0], [3.0], [6.0]], dtype=np.float32)
    g = build_knn_graph(X, list("abcd"), 2, "euclidean")
    # c's 2nd place is a tie between a and d: the earlier row wins
    assert g.neighbors.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert g.distances.tolist() == [[1, 3], [1, 2], [2, 3], [3, 5]]
    g, _ = update_knn_graph(g, X, add_ids=["e"], X_add=[[4.0]])  # a, b untouched
    assert g.neighbors.tolist() == [[1, 2], [0, 2], [4, 1], [4, 2], [2, 3]]
    assert g.distances.tolist() == [[1, 3], [1, 2], [1, 2], [2, 3], [1, 2]]
    g, _ = update_knn_graph(g, [[0.0], [1.0], [3.0], [6.0], [4.0]], remove_ids=["c"])
    assert g.ids == list("abde")
    assert g.neighbors.tolist() == [[1, 3], [0, 3], [3, 1], [2, 1]]
    assert g.distances.tolist() == [[1, 4], [1, 3], [2, 5], [2, 3]]


def test_exact_duplicates_are_at_distance_zero():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 64)) * rng.uniform(0.01, 100.0, size=(40, 1))
    X = np.vstack([X, X]).astype(np.float32)  # row i and row i + 40 are identical
    for metric in ("cosine", "euclidean"):
        g = build_knn_graph(X, [str(i) for i in range(80)], 2, metric)
        assert (g.neighbors[:, 0] == (np.arange(80) + 40) % 80).all()
        assert (g.distances[:, 0] == 0.0).all()


def test_replacing_an_id_moves_it_to_the_end():
    X = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    g = build_knn_graph(X, list("abc"), 1, "euclidean")
    g, X_new = update_knn_graph(g, X, add_ids=["a"], X_add=[[2.5]])
    assert g.ids == ["b", "c", "a"]
    assert X_new.ravel().tolist() == [1.0, 3.0, 2.5]
    assert g.neighbors.tolist() == [[2], [2], [1]]


def test_frame_round_trip_through_duckdb():
    rng = np.random.default_rng(5)
    X = make_data(rng, 60)
    g = build_knn_graph(X, [f"s{i}" for i in range(60)], 3, "cosine")
    df = g.to_frame()
    assert list(df.columns) == ["item_id", "neighbor_ids", "distances"]
    assert df["neighbor_ids"][0] == [g.ids[j] for j in g.neighbors[0]]
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE knn AS SELECT * FROM df")
        back = conn.execute("SELECT * FROM knn").df()
    for frame in (df, back):
        h = KnnGraph.from_frame(frame, k=3, metric="cosine")
        assert h.ids == g.ids
        assert np.array_equal(h.neighbors, g.neighbors)
        assert np.array_equal(h.distances, g.distances)
    small = build_knn_graph(X[:2], ["a", "b"], 3, "cosine")
    assert KnnGraph.from_frame(small.to_frame(), k=3, metric="cosine").neighbors.tolist() == [
        [1],
        [0],
    ]


def test_stored_form_holds_row_numbers_and_reads_back_in_any_row_order():
    import pyarrow as pa

    from dagster_brain.algorithms.knn_graph import graph_from_arrow, graph_to_arrow

    X = np.random.default_rng(6).normal(size=(40, 8)).astype(np.float32)
    g = build_knn_graph(X, [f"s{i:02d}" for i in range(40)], 4, "euclidean")
    table = graph_to_arrow(g)
    assert table.column_names == ["item_id", "row", "neighbor_rows", "distances"]
    assert table.schema.field("neighbor_rows").type == pa.list_(pa.int32(), 4)
    # row 7's neighbours are row numbers of the stored table
    assert table.column("neighbor_rows")[7].as_py() == g.neighbors[7].tolist()
    with duckdb.connect() as conn:
        conn.register("t", table)
        conn.execute("CREATE TABLE knn AS SELECT * FROM t")
        back = conn.sql("SELECT * FROM knn").to_arrow_table()
        shuffled = conn.sql("SELECT * FROM knn ORDER BY item_id DESC").to_arrow_table()
    for stored in (table, back, shuffled):
        h = graph_from_arrow(stored, k=4, metric="euclidean")
        assert h.ids == g.ids
        assert np.array_equal(h.neighbors, g.neighbors)
        assert np.array_equal(h.distances, g.distances)
    # graphs stored before neighbours were row numbers (lists of ids) still read
    old = pa.table(
        {
            "item_id": g.ids,
            "neighbor_ids": [[g.ids[j] for j in row] for row in g.neighbors],
            "distances": g.distances.tolist(),
        }
    )
    h = graph_from_arrow(old, k=4, metric="euclidean")
    assert np.array_equal(h.neighbors, g.neighbors) and h.ids == g.ids
    # a stored row outside the table, or rows not numbered 0..n-1, are refused
    bad = table.set_column(2, "neighbor_rows", pa.FixedSizeListArray.from_arrays(
        pa.array(np.where(np.arange(160) == 29, 40, g.neighbors.ravel()).astype(np.int32)), 4
    ))  # fmt: skip
    with pytest.raises(ValueError, match="'s07' lists a row outside"):
        graph_from_arrow(bad, k=4, metric="euclidean")
    twice = table.set_column(1, "row", pa.array(np.zeros(40, dtype=np.int32)))
    with pytest.raises(ValueError, match="not numbered"):
        graph_from_arrow(twice, k=4, metric="euclidean")
    with pytest.raises(ValueError, match="'s00' has 4 neighbours, expected 5"):
        graph_from_arrow(table, k=5, metric="euclidean")


def test_errors_name_the_id():
    X = np.eye(4, dtype=np.float32)
    ids = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="duplicate id 'b'"):
        build_knn_graph(X, ["a", "b", "b", "d"], 2)
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="'c'"):
        build_knn_graph(bad, ids, 2)
    g = build_knn_graph(X, ids, 2)
    with pytest.raises(ValueError, match="cannot remove 'zz'"):
        update_knn_graph(g, X, remove_ids=["a", "zz"])
    with pytest.raises(ValueError, match="duplicate id 'e'"):
        update_knn_graph(g, X, add_ids=["e", "e"], X_add=np.ones((2, 4)))
    with pytest.raises(ValueError, match="'f'"):
        update_knn_graph(g, X, add_ids=["e", "f"], X_add=[[1, 0, 0, 0], [np.inf, 0, 0, 0]])
    with pytest.raises(ValueError, match="dimension"):
        update_knn_graph(g, X, add_ids=["e"], X_add=np.ones((1, 3)))
    with pytest.raises(ValueError, match="k=3 differs"):
        update_knn_graph(g, X, add_ids=["e"], X_add=np.ones((1, 4)), k=3)
    with pytest.raises(ValueError, match="k is required"):
        update_knn_graph(None, None, add_ids=["e"], X_add=np.ones((1, 4)))
    with pytest.raises(ValueError, match="unknown metric"):
        build_knn_graph(X, ids, 2, "manhattan")
    df = g.to_frame()
    df.at[0, "neighbor_ids"] = ["b", "zz"]
    with pytest.raises(ValueError, match="unknown neighbour id 'zz'"):
        KnnGraph.from_frame(df, k=2, metric="cosine")
    with pytest.raises(ValueError, match="'a' lists itself"):
        KnnGraph(ids, np.array([[0, 1], [0, 2], [0, 1], [0, 1]]), np.zeros((4, 2)), "cosine", 2)
