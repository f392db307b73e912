"""Duplicates and unique subsets on a backend's vectors without holding them all in memory.

The vectors are read in pages (:meth:`VectorBackend.iter_vectors`); memory is a few pages plus
O(n) small arrays (ids, one or two floats per item, the pairs found).

- :func:`stream_duplicates`: each page asks the backend for its items' 16 nearest (then 64,
  256 for items whose last neighbour is still within the threshold), keeps the pairs within
  ``thresh`` with their distances recomputed in float64 from the two vectors, and splits
  kept / duplicate items with the same code as
  :func:`~dagster_brain.algorithms.duplicates.find_duplicates`: where the backend's kNN is
  exact the kept/duplicate split, groups and pairs are the same.
- :func:`stream_unique`: k-center greedy, the same picks as
  :func:`~dagster_brain.algorithms.duplicates.find_unique`. Each pass over the pages applies
  the centres picked since the last pass and keeps the ``buffer`` items farthest from every
  centre with their vectors; further centres are picked from that buffer while the best of
  it is strictly farther than every item outside it, so one pass often yields many picks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dagster_brain.algorithms.duplicates import (
    FIRST_PASS_K,
    DuplicatesResult,
    RadiusGraph,
    _check_metric,
    build_result,
    pair_distances,
    split_radius_graph,
)
from dagster_brain.similarity.backends.base import VectorBackend

STREAM_ABOVE = 200_000  # items above which milvus / lancedb duplicates and unique stream
STREAM_BATCH = 4096  # vectors per page
UNIQUE_BUFFER = 4096  # candidate centres kept with their vectors between passes


class StreamingRefused(ValueError):
    """The streaming path cannot give the in-memory answer (the message says why)."""


@dataclass
class VectorSource:
    """The items ``ids`` (their order is the input order) of a backend, read page by page.

    ``name`` names the index in messages; ``on_missing(count)`` makes the error raised when
    the backend lacks some of the items.
    """

    backend: VectorBackend
    ids: list[str]
    batch: int = STREAM_BATCH
    name: str = ""
    on_missing: Callable[[int], Exception] | None = None
    pos: dict[str, int] = field(init=False, repr=False)
    passes: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.pos = {s: i for i, s in enumerate(self.ids)}
        if len(self.pos) != len(self.ids):
            raise ValueError(f"{self.name}: the item ids repeat")
        if self.batch < 1:
            raise ValueError(f"{self.name}: batch must be >= 1, got {self.batch}")

    def pages(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(item positions, float32 vectors) of every item, one backend page at a time."""
        self.passes += 1
        seen = np.zeros(len(self.ids), dtype=bool)
        for page_ids, X in self.backend.iter_vectors(self.batch):
            rows = np.fromiter((self.pos.get(s, -1) for s in page_ids), np.int64, len(page_ids))
            mine = rows >= 0  # the backend may hold items outside the view
            if not mine.all():
                rows, X = rows[mine], X[mine]
            if rows.size == 0:
                continue
            seen[rows] = True
            yield rows, np.asarray(X, dtype=np.float32)
        missing = int((~seen).sum())
        if missing:
            if self.on_missing is not None:
                raise self.on_missing(missing)
            raise ValueError(f"{self.name}: the backend lacks {missing} of {len(self.ids)} items")

    def fetch(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of items ``rows`` (positions), in that order."""
        out = np.empty((len(rows), self.backend.dim), dtype=np.float32)
        for start in range(0, len(rows), self.batch):
            chunk = rows[start : start + self.batch]
            want = [self.ids[r] for r in chunk]
            got, X = self.backend.fetch(want)
            if len(got) != len(want):
                missing = len(want) - len(got)
                if self.on_missing is not None:
                    raise self.on_missing(missing)
                raise ValueError(f"{self.name}: the backend lacks {missing} items")
            out[start : start + len(chunk)] = X
        return out


# -- duplicates ----------------------------------------------------------------------------


def _neighbour_lists(
    source: VectorSource, rows: np.ndarray, Q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each query item's ``k`` nearest other items (positions, -1 outside the view or when the
    backend returned fewer; distances, inf there), self removed by id."""
    got_ids, got_d = source.backend.query(Q, k + 1)
    m = len(rows)
    nbr = np.full((m, k), -1, dtype=np.int64)
    dist = np.full((m, k), np.inf, dtype=np.float32)
    pos = source.pos
    for r in range(m):
        ids_r, d_r = got_ids[r], got_d[r]
        me = source.ids[rows[r]]
        try:
            drop = ids_r.index(me)
        except ValueError:
            drop = k  # self not among them (exact copies tie with it): drop the last
        j = 0
        for c, (s, d) in enumerate(zip(ids_r, d_r, strict=True)):
            if c == drop or j >= k:
                continue
            nbr[r, j] = pos.get(s, -1)
            dist[r, j] = d
            j += 1
    return nbr, dist


def stream_duplicates(
    source: VectorSource, thresh: float, metric: str, *, max_k: int = 256
) -> DuplicatesResult:
    """Near-duplicates at distance ``<= thresh`` among ``source``'s items, page by page.

    Same semantics as :func:`~dagster_brain.algorithms.duplicates.find_duplicates` with
    ``thresh``; pair distances are float64. Items with more than ``max_k`` neighbours within
    ``thresh`` are refused (:class:`StreamingRefused`): the in-memory path scans those.
    """
    _check_metric(metric)
    thresh = float(thresh)
    if not thresh >= 0:
        raise ValueError(f"{source.name}: thresh must be a distance >= 0, got {thresh}")
    ids = source.ids
    n = len(ids)
    empty = np.zeros(0, np.int64)
    if n < 2:
        for _ in source.pages():  # still refuse an index that lacks its item
            pass
        return build_result(
            ids, np.ones(n, bool), np.arange(n), np.zeros(n), (empty, empty), thresh, metric
        )
    total = int(source.backend.count())  # neighbours may come from outside the view
    limit = source.backend.k_limit
    k0 = min(FIRST_PASS_K, total - 1)
    top = max(k0, min(max_k, total - 1))
    if limit is not None:
        top = min(top, limit - 1)
    A: list[np.ndarray] = []
    B: list[np.ndarray] = []
    D: list[np.ndarray] = []
    for rows, X in source.pages():
        # float32 rounding of the backend's distances (as the in-memory path allows)
        if metric == "cosine":
            tol = np.full(len(rows), 1e-4)
        else:
            tol = 2e-3 * (np.linalg.norm(X.astype(np.float64), axis=1) + thresh)
        cand_rows, cand_nbrs = [], []
        active = np.arange(len(rows))
        k = k0
        while active.size:
            nbr, dist = _neighbour_lists(source, rows[active], X[active], k)
            cand = dist <= (thresh + tol[active])[:, None]
            full = cand[:, -1]  # there may be more within thresh beyond the k-th
            if k >= top:
                trunc = full & (k < total - 1)
                if trunc.any():
                    first = ids[rows[active[np.argmax(trunc)]]]
                    raise StreamingRefused(
                        f"{source.name}: {int(trunc.sum())} items (first {first!r}) have more "
                        f"than {k} neighbours within thresh {thresh:g}; streaming cannot list "
                        "them all (lower thresh, or set streaming: false)"
                    )
            grow = full & (k < top)
            r, c = np.nonzero(cand & ~grow[:, None] & (nbr >= 0))
            cand_rows.append(active[r])
            cand_nbrs.append(nbr[r, c])
            active, k = active[grow], min(4 * k, top)
        qa = np.concatenate(cand_rows)
        if qa.size == 0:
            continue
        a, b = rows[qa], np.concatenate(cand_nbrs)
        keep = a != b
        qa, a, b = qa[keep], a[keep], b[keep]
        # float64 distances from the two vectors: the page's and the neighbour's (fetched)
        local = {int(p): i for i, p in enumerate(rows)}
        inside = np.fromiter((local.get(int(p), -1) for p in b), np.int64, len(b))
        need = np.unique(b[inside < 0])
        fetched = source.fetch(need) if need.size else np.empty((0, X.shape[1]), np.float32)
        XB = np.empty((len(b), X.shape[1]), dtype=np.float32)
        here = inside >= 0
        XB[here] = X[inside[here]]
        XB[~here] = fetched[np.searchsorted(need, b[~here])]
        both = np.vstack([X[qa], XB])
        m = len(qa)
        d = pair_distances(both, np.arange(m), np.arange(m, 2 * m), metric)
        within = d <= thresh
        A.append(np.minimum(a, b)[within])
        B.append(np.maximum(a, b)[within])
        D.append(d[within])
    a = np.concatenate(A) if A else empty
    b = np.concatenate(B) if B else empty
    d = np.concatenate(D) if D else np.zeros(0)
    code, first = np.unique(a * np.int64(n) + b, return_index=True)
    graph = RadiusGraph(thresh, code // n, code % n, d[first], np.full(n, np.inf))
    keep, nearest, nearest_d = split_radius_graph(n, graph)  # complete: no neighbour cap
    return build_result(
        ids,
        keep,
        nearest,
        nearest_d,
        (graph.a, graph.b),
        thresh,
        metric,
        edge_d=graph.d,
    )


# -- unique --------------------------------------------------------------------------------


def _dist_to(
    X: np.ndarray, sq: np.ndarray, norms: np.ndarray, c: np.ndarray, metric: str
) -> np.ndarray:
    """Distances of rows ``X`` (squared norms ``sq``, norms ``norms``) to ``c``: the same
    arithmetic as the in-memory ``find_unique``."""
    dots = (X @ c.astype(np.float32)).astype(np.float64)
    if metric == "cosine":
        den = norms * float(np.linalg.norm(c))
        return 1.0 - dots / np.where(den > 0, den, 1.0)
    return np.sqrt(np.maximum(sq + float(c @ c) - 2.0 * dots, 0.0))


def _best(values: np.ndarray, rank: np.ndarray) -> int:
    """Index of the largest value, exact ties to the smallest rank."""
    ties = np.flatnonzero(values == values.max())
    return int(ties[np.argmin(rank[ties])])


@dataclass
class UniquePasses:
    """What :func:`stream_unique` did: passes over the vectors, picks per pass."""

    passes: int = 0
    picks_per_pass: list[int] = field(default_factory=list)


def stream_unique(
    source: VectorSource,
    count: int,
    metric: str = "cosine",
    seed: int = 0,
    *,
    buffer: int = UNIQUE_BUFFER,
    stats: UniquePasses | None = None,
) -> list[str]:
    """``count`` maximally spread items (k-center greedy): the picks of
    :func:`~dagster_brain.algorithms.duplicates.find_unique` with the same ``seed``, reading
    the vectors page by page (``buffer`` candidate vectors kept between passes)."""
    _check_metric(metric)
    if count <= 0:
        raise ValueError(f"count must be >= 1, got {count}")
    ids = source.ids
    n = len(ids)
    if count >= n:
        return list(ids)
    buffer = max(1, int(buffer))
    stats = stats if stats is not None else UniquePasses()
    rank = np.random.default_rng(seed).permutation(n)
    sq = np.empty(n, dtype=np.float64)
    dim = source.backend.dim
    centre = np.zeros(dim, dtype=np.float64)
    for rows, X in source.pages():  # pass 1: norms and the centre
        block = X.astype(np.float64)
        sq[rows] = np.einsum("ij,ij->i", block, block)
        if metric == "cosine":
            nr = np.sqrt(sq[rows])
            scale = (1.0 / np.where(nr > 0, nr, 1.0)).astype(np.float32)
            centre += (scale @ X).astype(np.float64)
        else:
            centre += block.sum(0)
    norms = np.sqrt(sq)
    centre /= n
    stats.passes, stats.picks_per_pass = 1, [0]
    # pass 2: the item farthest from the centre (with its vector)
    far = np.empty(n, dtype=np.float64)
    for rows, X in source.pages():
        far[rows] = _dist_to(X, sq[rows], norms[rows], centre, metric)
    j = _best(far, rank)
    del far
    chosen = [j]
    pending = [(j, source.fetch(np.array([j]))[0])]
    mind = np.full(n, np.inf)
    stats.passes += 1
    stats.picks_per_pass.append(1)
    while len(chosen) < count:
        # one pass: apply the pending centres; keep the best `buffer` items with vectors
        buf_rows = np.zeros(0, np.int64)
        buf_X = np.empty((0, dim), np.float32)
        for rows, X in source.pages():
            m = mind[rows]
            for _, c in pending:
                m = np.minimum(m, _dist_to(X, sq[rows], norms[rows], c, metric))
            mind[rows] = m
            mind[chosen] = -np.inf  # never again, even at distance 0 (exact copies)
            cand_rows = np.concatenate([buf_rows, rows])
            cand_X = np.vstack([buf_X, X])
            o = np.lexsort((rank[cand_rows], -mind[cand_rows]))[:buffer]
            buf_rows, buf_X = cand_rows[o], cand_X[o]
        pending = []
        stats.passes += 1
        outside = np.ones(n, dtype=bool)
        outside[buf_rows] = False
        # every item outside the buffer is at most this far from the chosen ones, now and later
        bound = float(mind[outside].max()) if outside.any() else -np.inf
        bm = mind[buf_rows]
        picked = 0
        while len(chosen) < count:
            i = _best(bm, rank[buf_rows])
            if picked and not bm[i] > bound:
                break  # the next pick may be outside the buffer: another pass
            j = int(buf_rows[i])
            chosen.append(j)
            pending.append((j, buf_X[i].copy()))
            picked += 1
            bm = np.minimum(bm, _dist_to(buf_X, sq[buf_rows], norms[buf_rows], buf_X[i], metric))
            bm[np.isin(buf_rows, chosen)] = -np.inf
        stats.picks_per_pass.append(picked)
    return [ids[j] for j in chosen]


def pca_points(source: VectorSource) -> np.ndarray:
    """(n, 2) projection of the items on their two leading principal components (two
    passes; for plots)."""
    n, dim = len(source.ids), source.backend.dim
    total = np.zeros(dim)
    gram = np.zeros((dim, dim))
    for _, X in source.pages():
        block = X.astype(np.float64)
        total += block.sum(0)
        gram += block.T @ block
    mean = total / max(n, 1)
    cov = gram - n * np.outer(mean, mean)
    out = np.zeros((n, 2))
    if n < 2:
        return out
    _, vecs = np.linalg.eigh(cov)
    top = vecs[:, ::-1][:, :2]
    for rows, X in source.pages():
        out[rows] = (X.astype(np.float64) - mean) @ top
    return out
