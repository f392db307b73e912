"""An exact k-nearest-neighbour graph of a collection, updated in place of a rebuild.

``update_knn_graph`` gives the same graph as ``build_knn_graph`` on the new collection for
O((n_add + n_dirty) · n · d) work instead of O(n² · d), where the dirty rows are those that
lost a neighbour to a removal:

- every dirty row is queried against the whole new collection;
- one blocked pass over the (n_add x n_new) scores gives both the candidates of each added
  row and, for every other row, the added items that may be nearer than its k-th neighbour;
  those rows keep their lists (their nearest kept items cannot have changed) and merge the
  added items in.

"Exact" means exact for the float32 vectors: candidates come from float32 GEMM scores
(``exact_knn``), a few more than needed, and their distances are recomputed per pair in
float64. A row is accepted only when a rounding bound on the GEMM proves that no item left
out could be nearer than its k-th neighbour; otherwise it is queried again with twice the
candidates (rows inside large groups of identical vectors take a few rounds). So the lists
never depend on how the products were blocked: each is the first k of all other items
ordered by (float32 distance, row index), exact duplicates are at distance 0 under every
metric, and an update stores exactly what a rebuild would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from dagster_brain.algorithms.knn import (
    METRICS,
    Metric,
    check_vectors,
    exact_knn,
    normalize_rows,
    select_top_k_rows,
    top_k_scores,
)
from dagster_brain.progress import progress, track

# Candidates fetched beyond k before the float64 re-ranking (doubled for unproven rows).
_EXTRA = 8
# Query rows x candidates per exact_knn call in the rounds that fetch more candidates.
_CAND_CHUNK = 1 << 22
# Bytes of one block of added-row scores (its selection mask adds a quarter).
_BLOCK_BYTES = 64 * 1024 * 1024
# float64 elements per chunk when recomputing pair distances (32 MiB).
_PAIR_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class KnnGraph:
    """Row ``i`` lists the nearest other items of ``ids[i]``, nearest first.

    ``k`` is the requested number of neighbours; the lists hold ``width = min(k, n - 1)``
    of them, so a graph of a small collection widens when it grows. ``exact`` is false for
    an approximate graph (``algorithms/ann_graph.py``), whose ``recall_at_k`` was measured on
    a sample of rows; an exact graph has no recall (None: every list is the true one).
    """

    ids: list[str]
    neighbors: np.ndarray  # (n, width) int32 row indices into ids (int64 past 2**31 items)
    distances: np.ndarray  # (n, width) float32, ascending along each row
    metric: Metric
    k: int
    exact: bool = True
    recall_at_k: float | None = None

    def __post_init__(self) -> None:
        ids = _unique_ids(self.ids, "knn graph")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {METRICS}")
        if self.k < 1:
            raise ValueError(f"knn graph: k must be at least 1, got {self.k}")
        nbr = np.asarray(self.neighbors, dtype=_index_dtype(len(ids)))
        dist = np.asarray(self.distances, dtype=np.float32)
        n, w = len(ids), _width(self.k, len(ids))
        if nbr.shape != (n, w) or dist.shape != (n, w):
            raise ValueError(
                f"knn graph: neighbors {nbr.shape} and distances {dist.shape} do not match "
                f"{n} ids with k={self.k} (expected ({n}, {w}))"
            )
        if nbr.size and (nbr.min() < 0 or nbr.max() >= n):
            raise ValueError(f"knn graph: neighbour index out of range [0, {n})")
        own = np.flatnonzero((nbr == np.arange(n)[:, None]).any(axis=1))
        if own.size:
            raise ValueError(f"knn graph: {ids[own[0]]!r} lists itself as a neighbour")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "neighbors", nbr)
        object.__setattr__(self, "distances", dist)

    @property
    def width(self) -> int:
        """Neighbours per row: ``min(k, n - 1)``."""
        return self.neighbors.shape[1]

    def to_frame(self) -> pd.DataFrame:
        """One row per item: ``item_id``, ``neighbor_ids`` and ``distances`` (lists)."""
        names = np.asarray(self.ids, dtype=object)
        return pd.DataFrame(
            {
                "item_id": list(self.ids),
                "neighbor_ids": names[self.neighbors].tolist(),
                "distances": self.distances.tolist(),
            }
        )

    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, k: int, metric: Metric) -> KnnGraph:
        """The graph stored by ``to_frame`` (e.g. reloaded from DuckDB or Parquet)."""
        missing = {"item_id", "neighbor_ids", "distances"} - set(df.columns)
        if missing:
            raise ValueError(f"knn graph frame: missing columns {sorted(missing)}")
        ids = [str(i) for i in df["item_id"]]
        n, w = len(ids), _width(k, len(ids))
        names = [list(v) for v in df["neighbor_ids"]]
        dists = [list(v) for v in df["distances"]]
        for item, nb, ds in zip(ids, names, dists, strict=True):
            if len(nb) != w or len(ds) != w:
                raise ValueError(
                    f"knn graph frame: {item!r} has {len(nb)} neighbours and {len(ds)} "
                    f"distances, expected {w} (k={k}, {n} items)"
                )
        flat = np.asarray([str(x) for row in names for x in row], dtype=object)
        pos = pd.Index(ids).get_indexer(flat) if flat.size else np.empty(0, dtype=np.int64)
        if (pos < 0).any():
            raise ValueError(f"knn graph frame: unknown neighbour id {flat[pos < 0][0]!r}")
        return cls(
            ids=ids,
            neighbors=pos.reshape(n, w),
            distances=np.asarray(dists, dtype=np.float32).reshape(n, w),
            metric=metric,
            k=k,
        )


def graph_to_arrow(graph: KnnGraph) -> pa.Table:
    """The graph as an Arrow table for storage: ``item_id``, ``row`` (its row number),
    ``neighbor_rows`` (the row numbers of its neighbours, nearest first) and ``distances``,
    both fixed-size lists of ``width`` values. Neighbours are numbers, not ids: a million
    items store 16 million int32 instead of 16 million strings."""
    n, w = len(graph.ids), graph.width
    dtype = _index_dtype(n)
    return pa.table(
        {
            "item_id": pa.array(graph.ids, pa.string()),
            "row": pa.array(np.arange(n, dtype=dtype)),
            "neighbor_rows": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(graph.neighbors, dtype=dtype).reshape(-1)), w
            ),
            "distances": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(graph.distances, dtype=np.float32).reshape(-1)), w
            ),
        }
    )


def graph_from_arrow(table: pa.Table, *, k: int, metric: Metric) -> KnnGraph:
    """The graph stored by :func:`graph_to_arrow`, in whatever row order the table comes
    back. Tables stored before neighbours were row numbers (``neighbor_ids``: lists of ids)
    are read too."""
    if "neighbor_rows" not in table.column_names:
        return _graph_from_id_lists(table, k=k, metric=metric)
    missing = {"item_id", "row", "distances"} - set(table.column_names)
    if missing:
        raise ValueError(f"knn graph table: missing columns {sorted(missing)}")
    ids = [str(i) for i in table.column("item_id").to_pylist()]
    n, w = len(ids), _width(k, len(ids))
    row = table.column("row").to_numpy()
    if not np.array_equal(np.sort(row), np.arange(n)):
        raise ValueError(f"knn graph table: its rows are not numbered 0..{n - 1}")
    nbr = _fixed_lists(table.column("neighbor_rows"), ids, w, "neighbours")
    dist = _fixed_lists(table.column("distances"), ids, w, "distances")
    if nbr.size and (nbr.min() < 0 or nbr.max() >= n):
        bad = int(np.flatnonzero(((nbr < 0) | (nbr >= n)).any(axis=1))[0])
        raise ValueError(f"knn graph table: {ids[bad]!r} lists a row outside [0, {n})")
    at = np.empty(n, dtype=np.int64)
    at[row] = np.arange(n)  # at[r]: where stored row r came back
    if not np.array_equal(at, np.arange(n)):
        ids = [ids[i] for i in at]
        nbr, dist = nbr[at], dist[at]
    return KnnGraph(ids=ids, neighbors=nbr, distances=dist, metric=metric, k=k)


def _fixed_lists(col: pa.ChunkedArray, ids: list[str], w: int, what: str) -> np.ndarray:
    """An (n, w) array from a column of lists of ``w`` numbers each."""
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        lengths = np.full(len(arr), arr.type.list_size)
    else:
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != w)
    if bad.size:
        raise ValueError(
            f"knn graph table: {ids[bad[0]]!r} has {lengths[bad[0]]} {what}, expected {w}"
        )
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), w)


def _graph_from_id_lists(table: pa.Table, *, k: int, metric: Metric) -> KnnGraph:
    """A graph stored with ``neighbor_ids`` (lists of neighbour ids): the earlier form."""
    missing = {"item_id", "neighbor_ids", "distances"} - set(table.column_names)
    if missing:
        raise ValueError(f"knn graph table: missing columns {sorted(missing)}")
    ids = [str(i) for i in table.column("item_id").to_pylist()]
    n, w = len(ids), _width(k, len(ids))
    names = _fixed_lists(table.column("neighbor_ids"), ids, w, "neighbours")
    pos = pd.Index(ids).get_indexer(names.ravel()) if names.size else np.empty(0, np.int64)
    if (pos < 0).any():
        raise ValueError(f"knn graph table: unknown neighbour id {names.ravel()[pos < 0][0]!r}")
    dist = _fixed_lists(table.column("distances"), ids, w, "distances").astype(np.float32)
    return KnnGraph(ids=ids, neighbors=pos.reshape(n, w), distances=dist, metric=metric, k=k)


def build_knn_graph(
    X: np.ndarray, ids: Sequence[str], k: int, metric: Metric = "cosine"
) -> KnnGraph:
    """Exact kNN graph of the rows of ``X`` (an item is never its own neighbour)."""
    ids = _unique_ids(ids, "embeddings")
    X = check_vectors(X, ids)
    _check_params(k, metric)
    n, w = len(ids), _width(k, len(ids))
    if w == 0:
        return _empty(ids, metric, k)
    nbr, dist = _nearest(X, np.arange(n), w, metric)
    return KnnGraph(ids=ids, neighbors=nbr, distances=dist, metric=metric, k=k)


def nearest_lists(
    X: np.ndarray, k: int, metric: Metric = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours, distances) of every row: the ``build_knn_graph`` lists without ids."""
    X = check_vectors(X, [str(i) for i in range(len(X))])
    _check_params(k, metric)
    w = _width(k, len(X))
    if w == 0:
        return np.zeros((len(X), 0), dtype=np.int64), np.zeros((len(X), 0), dtype=np.float32)
    return _nearest(X, np.arange(len(X)), w, metric)


def reorder_graph(graph: KnnGraph, ids: Sequence[str]) -> KnnGraph:
    """The same graph with its rows in the order of ``ids`` (the same set of items).

    Neighbour lists keep their order; only the row indices they hold are renumbered.
    """
    ids = _unique_ids(ids, "ids")
    if ids == graph.ids:
        return graph
    at = pd.Index(graph.ids).get_indexer(ids)
    if len(ids) != len(graph.ids) or (at < 0).any():
        missing = [i for i, a in zip(ids, at, strict=True) if a < 0][:1]
        raise ValueError(
            f"knn graph: cannot reorder {len(graph.ids)} items to {len(ids)} ids"
            + (f" ({missing[0]!r} is not in the graph)" if missing else "")
        )
    new_of_old = np.empty(len(ids), dtype=np.int64)
    new_of_old[at] = np.arange(len(ids))
    return KnnGraph(
        ids=ids,
        neighbors=new_of_old[graph.neighbors[at]],
        distances=graph.distances[at],
        metric=graph.metric,
        k=graph.k,
        exact=graph.exact,
        recall_at_k=graph.recall_at_k,
    )


def update_knn_graph(
    graph: KnnGraph | None,
    X: np.ndarray | None,
    *,
    remove_ids: Sequence[str] = (),
    add_ids: Sequence[str] = (),
    X_add: np.ndarray | None = None,
    k: int | None = None,
    metric: Metric | None = None,
) -> tuple[KnnGraph, np.ndarray]:
    """Remove and add items; returns the new graph and its vectors ``X_new``.

    ``X`` holds the vectors of ``graph.ids`` in that order. The new collection is the kept
    items in their old order followed by ``add_ids``; the result equals
    ``build_knn_graph(X_new, ids_new, k, metric)``.
    Adding an id that is already in the graph replaces it: its old vector is removed and the
    new one appended. Removing an id that is not in the graph is an error.
    ``graph=None`` starts from an empty collection and then needs ``k`` (``metric`` defaults
    to cosine); with a graph, ``k`` and ``metric`` may be omitted but must match it.
    """
    graph = _start(graph, X, k, metric)
    k, metric = graph.k, graph.metric
    old_ids = graph.ids
    remove_ids = _unique_ids(remove_ids, "remove_ids")
    add_ids = _unique_ids(add_ids, "add_ids")
    if X_add is None and add_ids:
        raise ValueError(f"update_knn_graph: {len(add_ids)} add_ids given without X_add")
    X_add = check_vectors(
        np.empty((0, 0)) if X_add is None else X_add, add_ids, what="added embeddings"
    )
    X = check_vectors(np.empty((0, X_add.shape[1])) if X is None else X, old_ids)
    if not old_ids:
        X = np.empty((0, X_add.shape[1]), dtype=np.float32)
    elif not add_ids:
        X_add = np.empty((0, X.shape[1]), dtype=np.float32)
    elif X_add.shape[1] != X.shape[1]:
        raise ValueError(f"added embeddings have dimension {X_add.shape[1]}, not {X.shape[1]}")

    old_pos = {item: i for i, item in enumerate(old_ids)}
    unknown = [item for item in remove_ids if item not in old_pos]
    if unknown:
        raise ValueError(f"cannot remove {unknown[0]!r}: not in the knn graph")
    drop = [old_pos[item] for item in (*remove_ids, *add_ids) if item in old_pos]
    keep = np.ones(len(old_ids), dtype=bool)
    keep[drop] = False
    kept = np.flatnonzero(keep)
    remap = np.full(len(old_ids), -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)

    ids_new = [old_ids[i] for i in kept] + add_ids
    X_kept = X if kept.size == len(X) else X[kept]  # nothing dropped: no gather
    X_new = _stacked(X_kept, X_add) if add_ids else X_kept
    n_kept, n_new = kept.size, len(ids_new)
    w = _width(k, n_new)
    if w == 0:
        return _empty(ids_new, metric, k), X_new

    norms = np.sqrt(np.einsum("ij,ij->i", X_new, X_new, dtype=np.float64))
    old_nbr = remap[graph.neighbors[kept]]  # -1 where the neighbour was dropped
    # rows that lost a neighbour, or whose lists are short because the collection was
    # small, are queried again; so is everything when more is added than kept
    dirty = (old_nbr < 0).any(axis=1) | (graph.width < w) | (len(add_ids) > n_kept)
    nbr = np.empty((n_new, w), dtype=np.int64)
    dist = np.empty((n_new, w), dtype=np.float32)
    clean = np.flatnonzero(~dirty)
    if clean.size:  # then the old lists are at least w long
        nbr[clean] = old_nbr[clean, :w]
        dist[clean] = graph.distances[kept[clean], :w]
    query = [np.flatnonzero(dirty)]
    if add_ids and not clean.size:
        query.append(np.arange(n_kept, n_new))
    elif add_ids:
        kth = np.full(n_kept, np.inf)
        kth[clean] = dist[clean, w - 1]
        added = np.arange(n_kept, n_new)
        approx, cand, hit_rows, hit_cols = _scan_added(X_new, n_kept, kth, w, metric, norms)
        nb, dd, ok = _finish(X_new, added, approx, cand, w, metric, norms, self_listed=False)
        nbr[added[ok]], dist[added[ok]] = nb[ok], dd[ok]
        query.append(added[~ok])
        _merge(X_new, hit_rows, hit_cols, nbr, dist, metric)
    query = np.concatenate(query)
    if query.size:
        nbr[query], dist[query] = _nearest(X_new, query, w, metric, norms)
    graph_new = KnnGraph(ids=ids_new, neighbors=nbr, distances=dist, metric=metric, k=k)
    return graph_new, X_new


def _stacked(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The rows of ``A`` then ``B``: a view when ``B``'s rows follow ``A``'s in one array
    (a key's vectors read in order, the added ones last), else a new array."""
    adjacent = (
        A.base is not None
        and A.base is B.base
        and A.flags.c_contiguous
        and B.flags.c_contiguous
        and A.dtype == B.dtype
        and A.shape[1:] == B.shape[1:]
        and B.ctypes.data == A.ctypes.data + A.nbytes
    )
    if not adjacent:
        return np.concatenate([A, B])
    return np.lib.stride_tricks.as_strided(A, (len(A) + len(B), *A.shape[1:]), writeable=False)


def _start(
    graph: KnnGraph | None, X: np.ndarray | None, k: int | None, metric: Metric | None
) -> KnnGraph:
    """The graph to update: ``graph`` itself, or an empty one for ``graph=None``."""
    if graph is None:
        if k is None:
            raise ValueError("update_knn_graph: k is required when there is no graph yet")
        metric = metric or "cosine"
        _check_params(k, metric)
        if X is not None and len(X):
            raise ValueError(f"update_knn_graph: {len(X)} vectors given for an empty graph")
        return _empty([], metric, k)
    if k is not None and k != graph.k:
        raise ValueError(f"update_knn_graph: k={k} differs from the graph's k={graph.k}")
    if metric is not None and metric != graph.metric:
        raise ValueError(
            f"update_knn_graph: metric {metric!r} differs from the graph's {graph.metric!r}"
        )
    if X is None and graph.ids:
        raise ValueError(f"update_knn_graph: the vectors of the {len(graph.ids)} items are needed")
    return graph


def _nearest(
    X: np.ndarray, rows: np.ndarray, w: int, metric: Metric, norms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``w`` nearest other rows of ``X`` to each of ``rows`` (sorted, unique), exactly."""
    n = len(X)
    if norms is None:
        norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    nbr = np.empty((rows.size, w), dtype=np.int64)
    dist = np.empty((rows.size, w), dtype=np.float32)
    todo = np.arange(rows.size)
    m = min(n, w + 1 + _EXTRA)  # + 1: the row itself is among the candidates
    desc = f"kNN graph: {w} {metric} neighbours of {rows.size:,} of {n:,} rows"
    with progress(desc, rows.size, "rows") as bar:
        while todo.size:
            step = max(1, _CAND_CHUNK // m)  # bounds memory when ties need many candidates
            proven = []
            for start in range(0, todo.size, step):
                part = todo[start : start + step]
                r = rows[part]
                approx, cand = _candidates(X, r, m, metric, norms)
                nb, dd, ok = _finish(X, r, approx, cand, w, metric, norms, self_listed=True)
                nbr[part[ok]], dist[part[ok]] = nb[ok], dd[ok]
                proven.append(ok)
                bar.update(int(ok.sum()))  # rows whose lists are final
            todo, m = todo[~np.concatenate(proven)], min(n, 2 * m)
    return nbr, dist


def _candidates(
    X: np.ndarray, r: np.ndarray, m: int, metric: Metric, norms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` best rows of ``X`` for rows ``r`` by float32 GEMM: (distances, indices).
    For cosine on part of the rows, ``X`` is scaled by its inverse norms inside the product
    instead of copied normalised (a recall sample of 1,000 rows against 1M x 512 would
    otherwise copy 2 GB); the lists are re-ranked exactly afterwards either way."""
    if metric != "cosine" or r.size == len(X):
        return exact_knn(X, m, queries=X if r.size == len(X) else X[r], metric=metric)
    inv = np.zeros(len(X), dtype=np.float32)
    np.divide(1.0, norms, out=inv, where=norms > 0, casting="unsafe")
    s, idx = top_k_scores(normalize_rows(X[r]), X, min(m, len(X)), scale=inv)
    return np.clip(1.0 - s, 0.0, 2.0).astype(np.float32), idx


def _finish(
    X: np.ndarray,
    r: np.ndarray,
    approx: np.ndarray,
    cand: np.ndarray,
    w: int,
    metric: Metric,
    norms: np.ndarray,
    *,
    self_listed: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ``w`` nearest of rows ``r`` from their ``m`` best GEMM candidates, ascending.

    ``self_listed``: the candidates were drawn from all rows, the row itself included.
    Returns (neighbours, distances, proven); a row is proven when every item left out is
    certainly farther than its w-th neighbour.
    """
    n, dim = X.shape
    m = approx.shape[1]
    lower, upper = _bounds(approx, norms[r], float(norms.max()), metric, dim)
    # the first w (+ 1 for the row itself) candidates are within upper[:, j] of the row:
    # only items that may be as near as that can be among the w nearest
    j = w if self_listed else w - 1
    possible = ~_above(lower, upper[:, j : j + 1]) & (cand != r[:, None])
    d = _exact(X, r, cand, possible, metric)  # inf where not possible, and for the row itself
    order = np.lexsort((cand, d), axis=-1)[:, :w]
    nb, dd = np.take_along_axis(cand, order, 1), np.take_along_axis(d, order, 1)
    if m == n - (0 if self_listed else 1):
        return nb, dd, np.ones(r.size, dtype=bool)
    return nb, dd, _above(lower[:, -1], dd[:, -1])


def _scan_added(
    X_new: np.ndarray,
    n_kept: int,
    kth: np.ndarray,
    w: int,
    metric: Metric,
    norms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One blocked pass over the scores between the added rows and all rows.

    Returns the ``m`` best GEMM candidates of each added row (approximate distances,
    ascending, and indices; the row itself left out) and the (kept row, added row) pairs
    where the added item may be within ``kth`` (the kept row's w-th distance; inf: skip).
    """
    n_new, dim = X_new.shape
    n_add = n_new - n_kept
    m = min(n_new - 1, w + _EXTRA)
    rel = _rel(dim)
    a_max = float(norms[n_kept:].max())
    # kept row j takes added item i when score(i, j) >= floor[j]: the GEMM bound, in score
    # space, on "may be within kth"
    q, kth = norms[:n_kept], _loosen(kth)
    if metric == "cosine":
        floor = 1.0 - (kth + rel)
    elif metric == "dotproduct":
        floor = -(kth + rel * q * a_max)
    else:
        floor = -(kth**2 + 2.0 * rel * (q**2 + a_max**2))
    floor = np.nextafter(floor.astype(np.float32), np.float32(-np.inf))  # round down
    floor[np.isinf(kth)] = np.inf
    # unit rows for cosine from the norms already at hand (no second norm per block)
    scale = np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]

    def rows(c0: int, c1: int) -> np.ndarray:
        return X_new[c0:c1] / scale[c0:c1] if metric == "cosine" else X_new[c0:c1]

    A = rows(n_kept, n_new)
    a_sq = np.square(norms[n_kept:]).astype(np.float32)[:, None]
    best_s = np.full((n_add, m), -np.inf, dtype=np.float32)
    best_i = np.zeros((n_add, m), dtype=np.int64)
    hits_a, hits_k = [], []
    cols = max(m, _BLOCK_BYTES // (4 * n_add))
    S = np.empty((n_add, min(cols, n_new)), dtype=np.float32)
    M = np.empty(S.shape, dtype=bool)  # scratch for the row selection
    blocks = range(0, n_new, cols)
    desc = f"kNN graph update: {n_add:,} added rows against {n_new:,}"
    for c0 in track(blocks, desc, unit="blocks"):
        c1 = min(c0 + cols, n_new)
        Sb = S[:, : c1 - c0]
        np.matmul(A, rows(c0, c1).T, out=Sb)
        if metric == "euclidean":  # -|a - x|^2, symmetric in both rows
            Sb *= 2.0
            Sb -= a_sq
            Sb -= np.square(norms[c0:c1]).astype(np.float32)[None, :]
        if c0 < n_kept:  # few columns have a hit: find them by their maxima first
            kc = min(c1, n_kept) - c0
            hot = np.flatnonzero(Sb[:, :kc].max(axis=0) >= floor[c0 : c0 + kc])
            ia, ih = np.nonzero(Sb[:, hot] >= floor[c0 + hot])
            hits_a.append(ia + n_kept)
            hits_k.append(hot[ih] + c0)
        own = np.arange(max(c0, n_kept), c1)  # added rows inside this block: not themselves
        Sb[own - n_kept, own - c0] = -np.inf
        mb = min(m, c1 - c0)
        block_s = np.empty((n_add, mb), dtype=np.float32)
        block_i = np.empty((n_add, mb), dtype=np.int64)
        select_top_k_rows(Sb, M[:, : c1 - c0], mb, block_s, block_i)
        all_s = np.concatenate([best_s, block_s], axis=1)
        all_i = np.concatenate([best_i, block_i + c0], axis=1)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :m]
        best_s = np.take_along_axis(all_s, order, 1)
        best_i = np.take_along_axis(all_i, order, 1)
    if metric == "cosine":
        approx = np.clip(1.0 - best_s, 0.0, 2.0)
    elif metric == "dotproduct":
        approx = -best_s
    else:
        approx = np.sqrt(np.maximum(-best_s, 0.0))
    return approx, best_i, np.concatenate(hits_k), np.concatenate(hits_a)


def _prepare(X: np.ndarray, metric: Metric) -> np.ndarray:
    """Rows as they enter the score product: unit length for cosine."""
    return normalize_rows(X) if metric == "cosine" else X


def _merge(
    X: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    nbr: np.ndarray,
    dist: np.ndarray,
    metric: Metric,
) -> None:
    """Merge candidate neighbours ``cols[i]`` of rows ``rows[i]`` into their lists."""
    if not rows.size:
        return
    w = nbr.shape[1]
    d = _pair_distances(X, rows, cols, metric).astype(np.float32)
    u = np.unique(rows)
    r_all = np.concatenate([np.repeat(u, w), rows])
    i_all = np.concatenate([nbr[u].ravel(), cols])
    d_all = np.concatenate([dist[u].ravel(), d])
    order = np.lexsort((i_all, d_all, r_all))
    first = np.searchsorted(r_all[order], u)  # every row has at least its w old entries
    pick = order[first[:, None] + np.arange(w)]
    nbr[u], dist[u] = i_all[pick], d_all[pick]


def _rel(dim: int) -> float:
    """Relative rounding bound of a float32 dot product of length ``dim``, with margin.

    A float32 dot product is off by at most about ``dim · 2^-24`` times the product of
    the norms; this is four times that, leaving room for the normalisation (cosine) and
    the norm terms (euclidean).
    """
    return 2.0 * (dim + 16) * 2.0**-23


def _bounds(
    approx: np.ndarray, q_norm: np.ndarray, x_max: float, metric: Metric, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on the exact distances behind float32 GEMM distances."""
    rel = _rel(dim)
    a = approx.astype(np.float64)
    if metric == "euclidean":
        slack = 2.0 * rel * (q_norm**2 + x_max**2)[:, None]
        return np.sqrt(np.maximum(a * a - slack, 0.0)), np.sqrt(a * a + slack)
    slack = rel if metric == "cosine" else rel * q_norm[:, None] * x_max
    return a - slack, a + slack


def _above(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a > b`` by more than float32 rounding of ``b`` could hide."""
    return a > _loosen(b)


def _loosen(b: np.ndarray) -> np.ndarray:
    """``b`` plus more than a float32 rounding step, so nothing beyond it rounds to ``b``."""
    return b + np.abs(b) * 2.0**-20 + 1e-30


def _exact(
    X: np.ndarray, rows: np.ndarray, cand: np.ndarray, mask: np.ndarray, metric: Metric
) -> np.ndarray:
    """float32 distances from ``rows[i]`` to ``cand[i, j]`` where ``mask``, else inf."""
    out = np.full(cand.shape, np.inf, dtype=np.float32)
    pr, pc = np.nonzero(mask)
    out[pr, pc] = _pair_distances(X, rows[pr], cand[pr, pc], metric)
    return out


def _pair_distances(X: np.ndarray, a: np.ndarray, b: np.ndarray, metric: Metric) -> np.ndarray:
    """Distance between rows ``a[i]`` and ``b[i]`` of ``X``, computed in float64.

    Per pair, so a value does not depend on the batch it is computed in; the metrics are
    those of ``pairwise_distances`` (a zero vector is at cosine distance 1).
    """
    out = np.empty(a.size, dtype=np.float64)
    step = max(1, _PAIR_CHUNK // max(1, X.shape[1]))
    for start in range(0, a.size, step):
        u = X[a[start : start + step]].astype(np.float64)
        v = X[b[start : start + step]].astype(np.float64)
        if metric == "euclidean":
            diff = u - v
            d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        elif metric == "dotproduct":
            d = -np.einsum("ij,ij->i", u, v)
        else:  # sqrt(s * s) == s exactly, so identical vectors are at distance 0
            norm2 = np.einsum("ij,ij->i", u, u) * np.einsum("ij,ij->i", v, v)
            cos = np.einsum("ij,ij->i", u, v) / np.sqrt(np.where(norm2 > 0, norm2, 1.0))
            d = np.clip(1.0 - cos, 0.0, 2.0)
        out[start : start + d.size] = d
    return out


def _index_dtype(n: int) -> type:
    """The neighbour index type of a graph of ``n`` items: int32 while it can hold them."""
    return np.int32 if n < 2**31 else np.int64


def _width(k: int, n: int) -> int:
    return max(0, min(k, n - 1))


def _empty(ids: list[str], metric: Metric, k: int) -> KnnGraph:
    n, w = len(ids), _width(k, len(ids))
    return KnnGraph(
        ids=ids,
        neighbors=np.zeros((n, w), dtype=np.int64),
        distances=np.zeros((n, w), dtype=np.float32),
        metric=metric,
        k=k,
    )


def _check_params(k: int, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if k < 1:
        raise ValueError(f"knn graph: k must be at least 1, got {k}")


def _unique_ids(ids: Sequence[str], what: str) -> list[str]:
    """``ids`` as a list; a repeated id is an error that names it."""
    ids = list(ids)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for item in ids:
            if item in seen:
                raise ValueError(f"{what}: duplicate id {item!r}")
            seen.add(item)
    return ids
