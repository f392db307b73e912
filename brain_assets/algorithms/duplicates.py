"""Duplicates and unique subsets on (ids, vectors): pure numpy / scipy, no Dagster.

- :func:`find_unique`: a maximally spread subset (farthest-point / k-center greedy).
- :func:`find_duplicates`: the reference semantics. Duplicates are pairs at distance
  ``<= thresh``; the kept items approximate the largest set whose pairwise distances all exceed
  ``thresh`` (greedy maximal independent set of the radius graph, fewest neighbours first, ties
  in input order); every other item is a duplicate of its nearest kept item. With ``fraction``
  the threshold is searched so that about that fraction of items is flagged.
- :func:`choose_threshold`: a near-duplicate threshold chosen from the data (see its docstring).
- :func:`exact_duplicate_groups`: byte- and pixel-identical groups from the store's hashes.
- :func:`visualize_duplicates`, :func:`visualize_unique`: PNG scatterplots.

Neighbours within a radius start from the exact 16-nearest lists of a kNN graph (built here, or
a stored one passed as ``graph=``: the results are the same), then grow with
:func:`~dagster_brain.algorithms.knn.exact_knn` (64, 256 by default) for the rows that need
more, so memory stays at ``n x max_k`` however dense the data; candidate distances near 0 and
near the radius are recomputed in float64, so identical vectors are at distance exactly 0.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dagster_brain.algorithms.knn import (
    ROW_BLOCK,
    blocked_rows,
    check_vectors,
    exact_knn,
    pairwise_distances,
    row_sq_norms,
)
from dagster_brain.algorithms.knn_graph import KnnGraph, nearest_lists

# Neighbours per item in the first pass of the radius graph (a stored graph needs this many).
FIRST_PASS_K = 16

DISTANCE_METRICS: tuple[str, ...] = ("cosine", "euclidean")
PAIR_COLUMNS = ["id_a", "id_b", "distance", "path"]
ALL_PAIR_COLUMNS = ["id_a", "id_b", "distance"]
GROUP_COLUMNS = ["group", "id", "type", "kept_id", "nearest_id", "distance"]


# -- shared helpers ------------------------------------------------------------------------


def _check_metric(metric: str) -> None:
    if metric not in DISTANCE_METRICS:
        raise ValueError(
            f"metric {metric!r} is not a distance; expected one of {DISTANCE_METRICS} "
            "(for normalised embeddings indexed by dot product, pass 'cosine')"
        )


def _prepare(vectors, ids: Sequence[str], metric: str) -> tuple[np.ndarray, list[str]]:
    _check_metric(metric)
    ids = [str(i) for i in ids]
    X = check_vectors(vectors, ids)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"duplicate id {dup!r}")
    return X, ids


def _scale(X: np.ndarray, metric: str) -> float:
    """Typical vector length (1 for cosine): sets the numerical tolerances."""
    if metric == "cosine" or len(X) == 0:
        return 1.0
    return float(np.sqrt(row_sq_norms(X).max())) or 1.0


def _tolerance(metric: str, scale: float) -> float:
    """float32 rounding of a blocked distance; candidates are then recomputed in float64."""
    return 1e-4 if metric == "cosine" else 2e-3 * scale


def pair_distances(X: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Float64 distances between rows ``a[i]`` and ``b[i]`` of ``X`` (in chunks)."""
    out = np.empty(len(a), dtype=np.float64)
    for lo in range(0, len(a), 65536):
        xa = X[a[lo : lo + 65536]].astype(np.float64)
        xb = X[b[lo : lo + 65536]].astype(np.float64)
        if metric == "cosine":
            na, nb = np.linalg.norm(xa, axis=1), np.linalg.norm(xb, axis=1)
            cos = (xa * xb).sum(1) / np.where(na * nb > 0, na * nb, 1.0)
            out[lo : lo + 65536] = np.clip(1.0 - cos, 0.0, 2.0)
        else:
            out[lo : lo + 65536] = np.linalg.norm(xa - xb, axis=1)
    out[out < 1e-9] = 0.0  # identical up to float64 rounding
    return out


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes for edges (a, b)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


@dataclass
class RadiusGraph:
    """Pairs ``a < b`` within ``radius`` (float64 distances ``d``).

    ``complete_below[i]`` is the radius up to which row ``i``'s neighbour list is complete
    (``inf`` unless the row hit ``max_k`` neighbours).
    """

    radius: float
    a: np.ndarray
    b: np.ndarray
    d: np.ndarray
    complete_below: np.ndarray

    @property
    def truncated(self) -> int:
        """Rows with more than ``max_k`` neighbours inside the radius."""
        return int(np.isfinite(self.complete_below).sum())

    def within(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.d <= t
        return self.a[m], self.b[m], self.d[m]


class _Neighbours:
    """The exact ``k0``-nearest lists, extended row by row when a radius needs more.

    ``graph``: a kNN graph of the rows of ``X`` (same order and metric, at least ``k0`` wide
    or complete) whose first ``k0`` columns replace the first pass.
    """

    def __init__(
        self, X: np.ndarray, metric: str, k0: int = FIRST_PASS_K, graph: KnnGraph | None = None
    ):
        self.X, self.metric = X, metric
        n = len(X)
        self.k = min(k0, n - 1)
        if self.k < 1:
            self.d, self.i = None, None
        elif graph is not None:
            _check_graph(graph, n, metric, self.k)
            self.i, self.d = graph.neighbors[:, : self.k], graph.distances[:, : self.k]
        else:
            self.i, self.d = nearest_lists(X, self.k, metric)  # type: ignore[arg-type]
        self.tol = _tolerance(metric, _scale(X, metric))

    def radius_graph(self, radius: float, max_k: int = 256) -> RadiusGraph:
        """All pairs within ``radius``; ``k`` grows 4x per round up to ``max_k`` per row."""
        n = len(self.X)
        empty = np.zeros(0, np.int64)
        complete = np.full(n, np.inf)
        if n < 2:
            return RadiusGraph(radius, empty, empty, np.zeros(0), complete)
        cand = radius + self.tol
        max_k = max(self.k, min(max_k, n - 1))
        rows_a, rows_b, dists = [], [], []
        rows, d, i, k = np.arange(n), self.d, self.i, self.k
        while True:
            r, c = np.nonzero(d <= cand)
            full = d[:, -1] <= cand  # there may be more neighbours beyond the k-th
            grow = full & (k < max_k)
            take = ~grow[r]
            rows_a.append(rows[r[take]])
            rows_b.append(i[r[take], c[take]])
            dists.append(d[r[take], c[take]])
            if k >= max_k:
                trunc = full & (k < n - 1)
                complete[rows[trunc]] = d[trunc, -1]
            if not grow.any():
                break
            rows, k = rows[grow], min(4 * k, max_k)
            d, i = self._query(rows, k)
        a, b = np.concatenate(rows_a), np.concatenate(rows_b)
        dist = np.concatenate(dists).astype(np.float64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keep = lo != hi
        code, first = np.unique(lo[keep] * np.int64(n) + hi[keep], return_index=True)
        a, b, dist = code // n, code % n, dist[keep][first]
        # float32 rounding matters only near 0 and near the radius: recompute those in float64
        near = (dist <= self.tol) | (np.abs(dist - radius) <= self.tol)
        dist[near] = pair_distances(self.X, a[near], b[near], self.metric)
        m = dist <= radius
        return RadiusGraph(radius, a[m], b[m], dist[m], complete)

    def _query(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest other rows of ``X`` for ``rows`` (self removed by index)."""
        d, i = exact_knn(self.X, k + 1, queries=self.X[rows], metric=self.metric)
        is_self = i == rows[:, None]
        drop = np.where(is_self.any(1), is_self.argmax(1), k)  # no self seen: drop the last
        keep = np.ones_like(is_self)
        keep[np.arange(len(rows)), drop] = False
        return d[keep].reshape(len(rows), k), i[keep].reshape(len(rows), k)


def _check_graph(graph: KnnGraph, n: int, metric: str, k: int) -> None:
    """Refuse a kNN graph that does not describe these ``n`` rows with ``k`` neighbours."""
    if len(graph.ids) != n or graph.metric != metric or graph.width < k:
        raise ValueError(
            f"kNN graph of {len(graph.ids)} items, {graph.metric}, {graph.width} neighbours "
            f"does not fit {n} vectors, {metric}, {k} neighbours"
        )


def _greedy_graph(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Greedy maximal independent set: fewest neighbours first, ties in input order."""
    deg = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
    order = np.lexsort((np.arange(n), deg))
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    srt = np.argsort(src, kind="stable")
    dst = dst[srt]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    removed = np.zeros(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    for v in order[deg[order] > 0]:
        if not removed[v]:
            keep[v] = True
            removed[dst[ptr[v] : ptr[v + 1]]] = True
    keep[deg == 0] = True
    return keep


def _greedy_scan(X: np.ndarray, order: np.ndarray, thresh: float, metric: str) -> np.ndarray:
    """Exact greedy independent set in ``order`` without a graph (dense thresholds)."""
    n = len(X)
    tol = 1e-6 if metric == "cosine" else 1e-6 * _scale(X, metric)
    keep = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for lo in range(0, n, 512):
        block = order[lo : lo + 512]
        if kept:
            d, _ = exact_knn(X[np.asarray(kept)], 1, queries=X[block], metric=metric)
            block = block[d[:, 0] > thresh + tol]
        if block.size == 0:
            continue
        dd = pairwise_distances(X[block], X[block], metric=metric)
        accepted: list[int] = []
        for j in range(len(block)):
            if not accepted or dd[j, accepted].min() > thresh + tol:
                accepted.append(j)
        kept.extend(block[accepted].tolist())
    keep[np.asarray(kept, dtype=np.int64)] = True
    return keep


# -- results -------------------------------------------------------------------------------


@dataclass
class DuplicatesResult:
    """What :func:`find_duplicates` (or the verified pipeline) found.

    ``kept_ids``: every non-duplicate, in input order. ``duplicate_ids``: in input order.
    ``neighbors_map``: kept id -> ``[(duplicate id, distance), ...]`` sorted by distance, only
    for kept items that have duplicates. ``groups``: connected groups (size >= 2) of the
    duplicate graph, representative (a kept item) first. ``pairs``: one row per duplicate,
    ``id_a`` = its kept item, ``id_b`` = the duplicate, ``distance`` (embedding), ``path`` = what
    confirmed it. ``checked``: for the verified pipeline, every candidate pair with its scores.

    ``all_pairs``: every duplicate pair, not only duplicate -> kept item: for
    :func:`find_duplicates` every unordered pair at distance ``<= thresh`` (the threshold
    chosen, with ``fraction``), for the verified pipeline every confirmed pair. Columns
    ``id_a`` (the earlier of the two in input order), ``id_b``, ``distance``; each pair once,
    sorted by distance, then input order; distances as in ``neighbors_map`` (float32: per pair
    for the first 16 neighbours, blocked kNN beyond; recomputed in float64 near 0 and near the
    threshold, so membership is exact).
    ``truncated_rows``: items whose neighbour list stopped at ``max_k`` inside the threshold;
    a pair of two such items may be missing from ``all_pairs`` (every pair with at least one
    other member is listed). 0: ``all_pairs`` is complete.
    """

    thresh: float
    metric: str
    duplicate_ids: list[str]
    kept_ids: list[str]
    neighbors_map: dict[str, list[tuple[str, float]]]
    groups: list[list[str]]
    pairs: pd.DataFrame
    fraction: float | None = None
    checked: pd.DataFrame | None = field(default=None, repr=False)
    all_pairs: pd.DataFrame = field(default_factory=lambda: _empty_pairs(), repr=False)
    truncated_rows: int = 0

    def __repr__(self) -> str:
        trunc = f", truncated_rows={self.truncated_rows}" if self.truncated_rows else ""
        return (
            f"DuplicatesResult(thresh={self.thresh:.4g}, metric={self.metric!r}, "
            f"duplicates={len(self.duplicate_ids)}, kept={len(self.kept_ids)}, "
            f"groups={len(self.groups)}, pairs={len(self.all_pairs)}{trunc})"
        )


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id_a": pd.Series(dtype=object),
            "id_b": pd.Series(dtype=object),
            "distance": pd.Series(dtype=np.float64),
        }
    )


def pairs_table(ids: Sequence[str], a: np.ndarray, b: np.ndarray, d: np.ndarray) -> pd.DataFrame:
    """Unordered pairs ``(ids[a[i]], ids[b[i]])`` at distance ``d[i]``, each once.

    ``id_a`` is the earlier of the two in input order; rows sorted by distance (NaN last),
    then input order of ``id_a``, ``id_b``. Self pairs are dropped.
    """
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    d = np.asarray(d, dtype=np.float64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    m = lo != hi
    lo, hi, d = lo[m], hi[m], d[m]
    if lo.size == 0:
        return _empty_pairs()
    n = int(hi.max()) + 1
    _, first = np.unique(lo * np.int64(n) + hi, return_index=True)
    lo, hi, d = lo[first], hi[first], d[first]
    o = np.lexsort((hi, lo, np.isnan(d), np.nan_to_num(d, nan=0.0)))
    return pd.DataFrame(
        {
            "id_a": pd.Series([ids[i] for i in lo[o]], dtype=object),
            "id_b": pd.Series([ids[i] for i in hi[o]], dtype=object),
            "distance": d[o],
        },
        columns=ALL_PAIR_COLUMNS,
    )


def build_result(
    ids: list[str],
    keep: np.ndarray,
    nearest: np.ndarray,
    nearest_d: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray],
    thresh: float,
    metric: str,
    paths: np.ndarray | None = None,
    fraction: float | None = None,
    edge_d: np.ndarray | None = None,
    truncated_rows: int = 0,
) -> DuplicatesResult:
    """Assemble a result from a keep mask and each duplicate's kept item (index, distance).

    ``edges`` (index arrays) are the duplicate pairs: they make ``all_pairs`` (distances
    ``edge_d``, NaN if not given) and, with the duplicate -> kept links, the connected
    ``groups``. ``paths[i]`` names what confirmed duplicate ``i``. ``truncated_rows``: see
    :class:`DuplicatesResult`.
    """
    n = len(ids)
    dup = np.flatnonzero(~keep)
    path_of = paths if paths is not None else np.full(n, "embedding", dtype=object)
    order = np.lexsort((nearest_d[dup], nearest[dup])) if dup.size else dup
    neighbors_map: dict[str, list[tuple[str, float]]] = {}
    for j in dup[order]:
        neighbors_map.setdefault(ids[nearest[j]], []).append((ids[j], float(nearest_d[j])))
    pairs = pd.DataFrame(
        {
            "id_a": [ids[nearest[j]] for j in dup],
            "id_b": [ids[j] for j in dup],
            "distance": nearest_d[dup].astype(float),
            "path": [str(path_of[j]) for j in dup],
        },
        columns=PAIR_COLUMNS,
    )
    a = np.concatenate([edges[0], dup]).astype(np.int64)
    b = np.concatenate([edges[1], nearest[dup]]).astype(np.int64)
    groups: list[list[str]] = []
    if a.size:
        label = _components(n, a, b)
        sizes = np.bincount(label)
        members: dict[int, list[int]] = {}
        for i in np.flatnonzero(sizes[label] > 1):
            members.setdefault(int(label[i]), []).append(int(i))
        n_dups = np.bincount(nearest[dup], minlength=n) if dup.size else np.zeros(n, int)
        for idx in members.values():
            kept_in = [i for i in idx if keep[i]]
            rep = max(kept_in, key=lambda i: (n_dups[i], -i)) if kept_in else idx[0]
            groups.append([ids[rep]] + [ids[i] for i in idx if i != rep])
        row = {i: r for r, i in enumerate(ids)}
        groups.sort(key=lambda g: row[g[0]])
    return DuplicatesResult(
        thresh=float(thresh),
        metric=metric,
        duplicate_ids=[ids[j] for j in dup],
        kept_ids=[ids[i] for i in np.flatnonzero(keep)],
        neighbors_map=neighbors_map,
        groups=groups,
        pairs=pairs,
        fraction=fraction,
        all_pairs=pairs_table(
            ids,
            edges[0],
            edges[1],
            edge_d if edge_d is not None else np.full(len(edges[0]), np.nan),
        ),
        truncated_rows=int(truncated_rows),
    )


def group_members(result: DuplicatesResult) -> pd.DataFrame:
    """One row per member of each of ``result.groups`` (connected components of the pairs).

    Columns: ``group`` (index in ``result.groups``), ``id``, ``type`` (``"nearest"``: a kept
    item, ``"duplicate"``: flagged), ``kept_id`` (the kept item the split assigns a duplicate
    to; itself for kept items), ``nearest_id`` and ``distance``: the member's nearest other
    member of its group among ``all_pairs`` and the split's links (ties: the earlier member of
    the group). Rows by group, representative first, then input order.
    """
    rows = [(g, m, pos) for g, members in enumerate(result.groups) for pos, m in enumerate(members)]
    frame = pd.DataFrame(rows, columns=["group", "id", "pos"])
    if frame.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=np.float64 if c == "distance" else object) for c in GROUP_COLUMNS}
        ).astype({"group": np.int64})
    cols = ["id_a", "id_b", "distance"]
    edges = pd.concat([result.all_pairs[cols], result.pairs[cols]], ignore_index=True)
    both = pd.concat(
        [
            edges.rename(columns={"id_a": "id", "id_b": "other"}),
            edges.rename(columns={"id_b": "id", "id_a": "other"}),
        ],
        ignore_index=True,
    )
    both["other_pos"] = both["other"].map(dict(zip(frame["id"], frame["pos"], strict=True)))
    both = both.sort_values(["distance", "other_pos"], na_position="last", kind="stable")
    nearest = both.drop_duplicates("id").set_index("id")
    kept = set(result.kept_ids)
    kept_of = {d: k for k, members in result.neighbors_map.items() for d, _ in members}
    frame["type"] = np.where(frame["id"].isin(kept), "nearest", "duplicate")
    frame["kept_id"] = [i if i in kept else kept_of.get(i) for i in frame["id"]]
    frame["nearest_id"] = frame["id"].map(nearest["other"])
    frame["distance"] = frame["id"].map(nearest["distance"]).astype(np.float64)
    return frame[GROUP_COLUMNS].astype({"group": np.int64})


# -- find_unique ---------------------------------------------------------------------------


def find_unique(
    vectors: np.ndarray, ids: Sequence[str], count: int, metric: str = "cosine", seed: int = 0
) -> list[str]:
    """``count`` ids that are maximally spread out (farthest-point / k-center greedy).

    Starts from the item farthest from the centroid, then repeatedly adds the item whose
    distance to its nearest chosen item is largest (a 2-approximation of the k-center
    problem). O(n * count * dim) time, O(n) extra memory. ``seed`` only breaks exact ties
    (reproducibly). Returns ids in the order chosen; ``count >= n`` returns all ids.
    """
    X, ids = _prepare(vectors, ids, metric)
    if count <= 0:
        raise ValueError(f"count must be >= 1, got {count}")
    n = len(ids)
    if count >= n:
        return list(ids)
    rank = np.random.default_rng(seed).permutation(n)  # breaks exact ties
    sq = row_sq_norms(X)
    norms = np.sqrt(sq)

    def dist_to(c: np.ndarray) -> np.ndarray:  # one mat-vec: no n x d temporaries
        dots = (X @ c.astype(np.float32)).astype(np.float64)
        if metric == "cosine":
            den = norms * float(np.linalg.norm(c))
            return 1.0 - dots / np.where(den > 0, den, 1.0)
        return np.sqrt(np.maximum(sq + float(c @ c) - 2.0 * dots, 0.0))

    def farthest(values: np.ndarray) -> int:
        ties = np.flatnonzero(values == values.max())
        return int(ties[np.argmin(rank[ties])])

    if metric == "cosine":  # the mean of the unit rows, a block at a time
        scale = 1.0 / np.where(norms > 0, norms, 1.0)
        centre = (scale.astype(np.float32) @ X).astype(np.float64) / n
    else:
        centre = X.mean(0, dtype=np.float64)
    j = farthest(dist_to(centre))
    chosen = [j]
    mind = dist_to(X[j])  # each item's distance to its nearest chosen item
    mind[j] = -np.inf
    for _ in range(count - 1):
        j = farthest(mind)
        chosen.append(j)
        mind = np.minimum(mind, dist_to(X[j]))
        mind[chosen] = -np.inf  # never again, even at distance 0 (exact copies)
    return [ids[j] for j in chosen]


# -- find_duplicates -----------------------------------------------------------------------


def _diameter(X: np.ndarray, metric: str) -> float:
    if metric == "cosine":
        return 2.0
    mean = X.mean(0, dtype=np.float64)
    far = blocked_rows(X, lambda b: ((b - mean) ** 2).sum(1), 1).max()
    return 2.0 * float(np.sqrt(far)) + 1e-9


def split_radius_graph(n: int, graph: RadiusGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept items of ``n`` (greedy over a complete radius graph's pairs), and for each
    item its nearest kept neighbour among its pairs and their distance (kept items: itself
    and 0)."""
    nearest = np.arange(n)
    nearest_d = np.zeros(n)
    keep = _greedy_graph(n, graph.a, graph.b)
    src = np.concatenate([graph.a, graph.b])
    dst = np.concatenate([graph.b, graph.a])
    dd = np.concatenate([graph.d, graph.d])
    m = ~keep[src] & keep[dst]
    src, dst, dd = src[m], dst[m], dd[m]
    o = np.lexsort((dst, dd, src))  # per duplicate: nearest first, ties by input order
    src, dst, dd = src[o], dst[o], dd[o]
    first = np.concatenate([[True], src[1:] != src[:-1]]) if src.size else src.astype(bool)
    nearest[src[first]] = dst[first]
    nearest_d[src[first]] = dd[first]
    return keep, nearest, nearest_d


def _duplicates_at(nb: _Neighbours, thresh: float, max_k: int):
    """keep mask, nearest kept index and distance per item, the radius graph at ``thresh``."""
    X, metric = nb.X, nb.metric
    n = len(X)
    graph = nb.radius_graph(thresh, max_k=max_k)
    if graph.truncated == 0:
        keep, nearest, nearest_d = split_radius_graph(n, graph)
    else:  # too dense for the graph: exact scan, then nearest kept by kNN
        nearest = np.arange(n)
        nearest_d = np.zeros(n)
        deg = np.bincount(graph.a, minlength=n) + np.bincount(graph.b, minlength=n)
        keep = _greedy_scan(X, np.lexsort((np.arange(n), deg)), thresh, metric)
        dup = np.flatnonzero(~keep)
        if dup.size:
            kept = np.flatnonzero(keep)
            _, i = exact_knn(X[kept], 1, queries=X[dup], metric=metric)
            nearest[dup] = kept[i[:, 0]]
            nearest_d[dup] = pair_distances(X, dup, nearest[dup], metric)
    return keep, nearest, nearest_d, graph


def find_duplicates(
    vectors: np.ndarray,
    ids: Sequence[str],
    thresh: float | None = None,
    fraction: float | None = None,
    metric: str = "cosine",
    *,
    max_k: int = 256,
    graph: KnnGraph | None = None,
) -> DuplicatesResult:
    """Near-duplicates by embedding distance; give exactly one of ``thresh`` or ``fraction``.

    ``thresh``: pairs at distance ``<= thresh`` are duplicates (so exact copies, at distance
    0, are duplicates at any threshold, ``thresh=0`` included). The kept items approximate the
    largest set with all pairwise distances ``> thresh`` (greedy, fewest neighbours first, ties
    in input order); each other item maps to its nearest kept item. ``all_pairs`` lists every
    pair within the threshold, from the same radius graph (see :class:`DuplicatesResult`).
    ``fraction`` in [0, 1]: the threshold is searched (bisection on the radius graph) so that
    about ``fraction * n`` items are flagged: 0 gives ``thresh=0`` (exact copies only), 1 keeps
    a single item. Neighbour lists stop at ``max_k`` per item; denser thresholds switch to an
    exact blocked scan, so memory stays O(n * max_k).
    ``graph``: a kNN graph of these items (``graph.ids == ids``, same metric, at least 16
    neighbours) read instead of computing the first pass; the result is the same.
    """
    if (thresh is None) == (fraction is None):
        raise ValueError(
            "give exactly one of thresh= (an embedding distance) or fraction= (the share of "
            f"items to flag, in [0, 1]); got thresh={thresh!r}, fraction={fraction!r}"
        )
    X, ids = _prepare(vectors, ids, metric)
    n = len(ids)
    if thresh is not None:
        thresh = float(thresh)
        if not thresh >= 0:  # NaN too
            raise ValueError(f"thresh must be a distance >= 0, got {thresh}")
    else:
        fraction = float(fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if n < 2:
        keep = np.ones(n, dtype=bool)
        idx = np.arange(n)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        return build_result(
            ids, keep, idx, np.zeros(n), empty, thresh or 0.0, metric, None, fraction
        )
    if graph is not None and graph.ids != ids:
        raise ValueError("kNN graph: its ids are not the duplicates' ids in the same order")
    nb = _Neighbours(X, metric, graph=graph)
    if thresh is None:
        thresh = _thresh_for_fraction(nb, fraction, max_k)
    keep, nearest, nearest_d, graph = _duplicates_at(nb, thresh, max_k)
    return build_result(
        ids,
        keep,
        nearest,
        nearest_d,
        (graph.a, graph.b),
        thresh,
        metric,
        None,
        fraction,
        edge_d=graph.d,
        truncated_rows=graph.truncated,
    )


def _thresh_for_fraction(nb: _Neighbours, fraction: float, max_k: int) -> float:
    """A threshold flagging about ``fraction`` of the items (bisection on the radius graph)."""
    n = len(nb.X)
    target = int(round(fraction * n))
    if target <= 0:
        return 0.0
    if target >= n - 1:
        return _diameter(nb.X, nb.metric)

    def flagged(graph: RadiusGraph, t: float) -> int:
        a, b, _ = graph.within(t)
        return n - int(_greedy_graph(n, a, b).sum())

    d1 = np.sort(nb.d[:, 0])
    hi = float(d1[min(n - 1, 2 * target)])
    top = _diameter(nb.X, nb.metric)
    while True:
        graph = nb.radius_graph(hi, max_k=max_k)
        if flagged(graph, hi) >= target or hi >= top:
            break
        hi = min(top, max(hi * 1.5, 1e-6))
    # candidate thresholds: the distinct edge distances (flags change only there)
    cands = np.unique(np.concatenate([[0.0], graph.d]))
    lo_i, hi_i = 0, len(cands) - 1
    best_t, best_err = cands[hi_i], abs(flagged(graph, cands[hi_i]) - target)
    while lo_i <= hi_i:
        mid = (lo_i + hi_i) // 2
        got = flagged(graph, cands[mid])
        err = abs(got - target)
        if err < best_err or (err == best_err and cands[mid] < best_t):
            best_t, best_err = cands[mid], err
        if got == target:
            break
        if got < target:
            lo_i = mid + 1
        else:
            hi_i = mid - 1
    return float(best_t)


# -- choose_threshold ----------------------------------------------------------------------


@dataclass
class ThresholdChoice:
    """A near-duplicate threshold chosen from the data, with its estimated trade-off.

    ``thresh``: the default (estimated precision >= ``1 - fdr`` among items it flags).
    ``strict_thresh``: below it fewer than ``floor`` natural items are expected (use it to
    confirm pairs by embedding alone). ``loose_thresh``: estimated precision 0.5 (a candidate
    cut for image verification). Counts are of items (both members of a pair count).
    ``curve``: thresh, flagged, expected_natural, est_precision, est_duplicates, est_recall.
    """

    thresh: float
    strict_thresh: float
    loose_thresh: float
    metric: str
    k: int
    intrinsic_dim: float
    n_items: int
    n_exact: int
    flagged: int
    expected_false: float
    est_precision: float
    est_recall: float
    curve: pd.DataFrame = field(repr=False)

    def describe(self) -> str:
        """One line for logs and metadata."""

        def pct(x: float) -> str:
            return "n/a" if math.isnan(x) else f"{x:.2f}"

        return (
            f"thresh={self.thresh:.4g} ({self.metric}): flags {self.flagged}/{self.n_items} "
            f"items ({self.n_exact} exact), ~{self.expected_false:.1f} natural expected, "
            f"est. precision {pct(self.est_precision)}, est. recall {pct(self.est_recall)} "
            f"(strict {self.strict_thresh:.4g}, loose {self.loose_thresh:.4g}, "
            f"intrinsic dim {self.intrinsic_dim:.1f})"
        )


def _expected_natural(t: float, s: np.ndarray, dim: float, k: int) -> float:
    """Items expected to have a natural neighbour within ``t`` (local Poisson model)."""
    u = np.clip(t / s, 0.0, 1.0)
    return float(-np.expm1((k - 1) * np.log1p(-np.minimum(u**dim, 1 - 1e-16))).sum())


def choose_threshold(
    vectors: np.ndarray,
    ids: Sequence[str],
    metric: str = "cosine",
    *,
    k: int = 10,
    fdr: float = 0.1,
    floor: float = 0.5,
    grid: int = 200,
    graph: KnnGraph | None = None,
) -> ThresholdChoice:
    """A default near-duplicate distance threshold for this data, with estimated precision/recall.

    Model: for a natural item, its ``k - 1`` nearest neighbours inside the radius ``s`` of its
    ``k``-th neighbour behave like a local Poisson process of intrinsic dimension ``D``, so
    ``P(d1 <= t | s) = 1 - (1 - (t/s)^D)^(k-1)``. ``D`` is the pooled maximum-likelihood
    (Levina-Bickel / MacKay-Ghahramani) estimate from neighbours 2..k-1, which a planted copy
    (neighbour 1) does not disturb. Summing that probability over items gives ``E(t)``, the
    number of items expected to have a *natural* neighbour within ``t``; the observed count
    ``N(t)`` of items whose nearest neighbour is within ``t`` also holds the duplicates. The
    default is the largest ``t`` with ``E(t) <= fdr * N(t)`` (Benjamini-Hochberg style:
    estimated precision ``1 - E/N >= 1 - fdr``) and at least ``strict_thresh``, where
    ``E = floor``. Local scales ``s`` keep dense regions (small digits) from borrowing a
    sparse region's (photos') threshold. Exact copies (distance ~0) are counted apart.
    Estimated recall is relative to the excess ``N - E`` at ``loose_thresh`` (precision 0.5):
    copies the embedding moves farther than natural neighbours are invisible here (see
    :mod:`dagster_brain.algorithms.verify`).
    ``graph``: a kNN graph of these items (``graph.ids == ids``) read instead of computing
    the ``k`` nearest neighbours; the result is the same.
    """
    X, ids = _prepare(vectors, ids, metric)
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    n = len(ids)
    k = min(int(k), n - 1)
    if k < 4:
        raise ValueError(f"choose_threshold needs at least 5 vectors, got {n}")
    if graph is not None and graph.ids != ids:
        raise ValueError("kNN graph: its ids are not the vectors' ids in the same order")
    if graph is not None:
        _check_graph(graph, n, metric, k)
        d = graph.distances[:, :k].astype(np.float64)
    else:
        d = nearest_lists(X, k, metric)[1].astype(np.float64)  # type: ignore[arg-type]
    tol = 1e-6 if metric == "cosine" else 1e-6 * _scale(X, metric)
    d1, s, inner = d[:, 0], d[:, -1], d[:, 1:-1]
    exact = d1 <= tol
    ok = (inner[:, 0] > tol) & (s > tol)
    if ok.sum() < 3:
        dim = 1.0
    else:
        logs = np.log(s[ok, None] / inner[ok]).sum(1) / (k - 3)
        dim = float(1.0 / max(logs.mean(), 1e-12))
    d1n = d1[~exact]
    sn = np.maximum(s[~exact] if d1n.size else s, tol)  # all exact: any scale will do
    d1s = np.sort(d1n)
    n_exact = int(exact.sum())

    def E(t: float) -> float:
        return _expected_natural(t, sn, dim, k)

    def N(t: float) -> int:
        return int(np.searchsorted(d1s, t, side="right"))

    # strict: E(t) = floor, by bisection in log t
    lo, hi = tol, float(np.max(sn))
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if E(mid) <= floor else (lo, mid)
    strict = lo
    top = float(np.median(d1n)) if d1n.size else strict
    ts = np.unique(np.geomspace(max(tol, min(strict, top) / 4), max(top, strict), grid))
    Es = np.array([E(t) for t in ts])
    Ns = np.array([N(t) for t in ts])
    prec = np.where(Ns > 0, 1 - Es / np.maximum(Ns, 1), np.nan)
    good = Ns > 0
    ok_bh = good & (Es <= fdr * Ns)
    thresh = max(strict, float(ts[ok_bh].max())) if ok_bh.any() else strict
    ok_loose = good & (Es <= 0.5 * Ns)
    loose = max(thresh, float(ts[ok_loose].max())) if ok_loose.any() else thresh
    excess = np.maximum(Ns - Es, 0.0)
    total = max(N(loose) - E(loose), 0.0)  # duplicates separable at all (precision 0.5)
    recall = np.clip(excess / total, 0, 1) if total > 0 else np.full(len(ts), np.nan)
    curve = pd.DataFrame(
        {
            "thresh": ts,
            "flagged": Ns + n_exact,
            "expected_natural": Es,
            "est_precision": prec,
            "est_duplicates": excess,
            "est_recall": recall,
        }
    )
    e_t, n_t = E(thresh), N(thresh)
    return ThresholdChoice(
        thresh=float(thresh),
        strict_thresh=float(strict),
        loose_thresh=float(loose),
        metric=metric,
        k=k,
        intrinsic_dim=dim,
        n_items=n,
        n_exact=n_exact,
        flagged=n_t + n_exact,
        expected_false=e_t,
        est_precision=float(1 - e_t / n_t) if n_t else float("nan"),
        est_recall=float(min(1.0, max(n_t - e_t, 0.0) / total)) if total > 0 else float("nan"),
        curve=curve,
    )


# -- exact duplicates ----------------------------------------------------------------------


def exact_duplicate_groups(
    ids: Sequence[str],
    content_hashes: Sequence[str | None],
    pixel_hashes: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """Groups of byte-identical (``content_hash``) or pixel-identical (``pixel_hash``) samples.

    One row per member of a group of two or more: ``group`` (0, 1, ... in order of first
    member), ``sample_id``, ``match`` = ``"bytes"`` if another member has the same bytes, else
    ``"pixels"`` (same decoded pixels, other bytes: a re-encoded copy), ``first`` (the group's
    first sample in input order). Missing hashes (None, NaN, "") match nothing.
    """
    ids = [str(i) for i in ids]
    n = len(ids)
    if len(content_hashes) != n or (pixel_hashes is not None and len(pixel_hashes) != n):
        raise ValueError(f"{n} ids but {len(content_hashes)} content hashes / pixel hashes")

    def codes(values) -> np.ndarray:
        s = pd.Series(list(values), dtype=object)
        s = s.where(s.notna() & (s.astype(str) != ""), None)
        c, _ = pd.factorize(s, use_na_sentinel=True)
        return c

    cb = codes(content_hashes)
    cp = codes(pixel_hashes) if pixel_hashes is not None else np.full(n, -1)
    a, b = [], []
    for c in (cb, cp):  # link each sample to the previous one with the same hash
        valid = np.flatnonzero(c >= 0)
        o = valid[np.argsort(c[valid], kind="stable")]
        same = c[o[1:]] == c[o[:-1]]
        a.append(o[1:][same])
        b.append(o[:-1][same])
    a, b = np.concatenate(a), np.concatenate(b)
    if a.size == 0:
        return pd.DataFrame(
            {
                "group": pd.Series(dtype="int64"),
                "sample_id": pd.Series(dtype=object),
                "match": pd.Series(dtype=object),
                "first": pd.Series(dtype=bool),
            }
        )
    label = _components(n, a, b)
    members = np.flatnonzero(np.bincount(label)[label] > 1)  # ascending input order
    frame = pd.DataFrame({"row": members, "label": label[members], "cb": cb[members]})
    n_same_bytes = frame.groupby(["label", "cb"])["row"].transform("size")
    group = pd.factorize(frame["label"])[0]  # numbered by first member
    out = pd.DataFrame(
        {
            "group": group.astype(np.int64),
            "sample_id": [ids[r] for r in members],
            "match": np.where((frame["cb"] >= 0) & (n_same_bytes > 1), "bytes", "pixels"),
            "first": ~pd.Series(group).duplicated().to_numpy(),
        }
    )
    return out.sort_values("group", kind="stable").reset_index(drop=True)


# -- plots ---------------------------------------------------------------------------------


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """(n, 2) projection on the two leading principal components (numpy SVD)."""
    X = np.asarray(vectors)
    if X.shape[0] < 2:
        return np.zeros((X.shape[0], 2))
    mean = X.mean(0, dtype=np.float64)
    cov = np.zeros((X.shape[1], X.shape[1]))
    for start in range(0, len(X), ROW_BLOCK):  # X^T X of the centred rows, block by block
        block = np.asarray(X[start : start + ROW_BLOCK], dtype=np.float64) - mean
        cov += block.T @ block
    _, vecs = np.linalg.eigh(cov)
    top = vecs[:, ::-1][:, :2]
    out = blocked_rows(X, lambda b: (b - mean) @ top, top.shape[1])
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def _points(points2d, vectors, n: int) -> np.ndarray:
    if points2d is None:
        if vectors is None:
            raise ValueError("give points2d (a 2-D projection) or vectors to project with PCA")
        points2d = pca_2d(vectors)
    P = np.asarray(points2d, dtype=np.float64)
    if P.shape != (n, 2):
        raise ValueError(f"points2d has shape {P.shape}, expected ({n}, 2)")
    return P


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # headless workers and CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.5, 5.5))


def visualize_duplicates(
    points2d: np.ndarray | None,
    ids: Sequence[str],
    result: DuplicatesResult,
    *,
    vectors: np.ndarray | None = None,
    title: str | None = None,
) -> bytes:
    """PNG scatterplot: duplicates (red) joined to their kept item (blue), others grey."""
    ids = [str(i) for i in ids]
    P = _points(points2d, vectors, len(ids))
    row = {i: r for r, i in enumerate(ids)}
    dups = np.array([row[i] for i in result.duplicate_ids if i in row], dtype=np.int64)
    kept = np.array([row[i] for i in result.neighbors_map if i in row], dtype=np.int64)
    other = np.setdiff1d(np.arange(len(ids)), np.concatenate([dups, kept]))
    fig, ax = _figure()
    ax.scatter(P[other, 0], P[other, 1], s=6, c="#bbbbbb", label=f"other ({len(other)})")
    for kid, members in result.neighbors_map.items():
        if kid not in row:
            continue
        for did, _ in members:
            if did in row:
                a, b = P[row[kid]], P[row[did]]
                ax.plot([a[0], b[0]], [a[1], b[1]], c="#e07070", lw=0.6, zorder=1)
    ax.scatter(P[kept, 0], P[kept, 1], s=14, c="#1f77b4", label=f"kept ({len(kept)})", zorder=2)
    ax.scatter(
        P[dups, 0], P[dups, 1], s=14, c="#d62728", label=f"duplicate ({len(dups)})", zorder=3
    )
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"duplicates at thresh={result.thresh:.3g} ({result.metric})")
    return _png(fig)


def visualize_unique(
    points2d: np.ndarray | None,
    ids: Sequence[str],
    unique_ids: Sequence[str],
    *,
    vectors: np.ndarray | None = None,
    title: str | None = None,
) -> bytes:
    """PNG scatterplot: the unique subset in its own colour over all points."""
    ids = [str(i) for i in ids]
    P = _points(points2d, vectors, len(ids))
    chosen = np.isin(np.asarray(ids, dtype=object), np.asarray(list(unique_ids), dtype=object))
    fig, ax = _figure()
    ax.scatter(P[~chosen, 0], P[~chosen, 1], s=6, c="#bbbbbb", label=f"other ({(~chosen).sum()})")
    ax.scatter(P[chosen, 0], P[chosen, 1], s=16, c="#2ca02c", label=f"unique ({chosen.sum()})")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"{chosen.sum()} unique items")
    return _png(fig)
