"""An approximate k-nearest-neighbour graph from a faiss IVF index, for large collections.

The exact graph (:mod:`knn_graph`) costs O(n² · d); above :data:`APPROX_THRESHOLD` items
this module builds the lists from an inverted-file index instead:

- ``nlist ≈ 4 · sqrt(n)`` k-means lists (at least 39 training points per list), trained on a
  sample; cosine searches unit-length rows by inner product, euclidean by L2;
- the lists hold 8-bit scalar-quantised codes (a quarter of the vectors' memory), so each
  search returns ``k / 2`` more candidates than needed; their distances are recomputed per
  pair, as the exact graph computes them, and each list keeps the ``k`` nearest by
  (distance, row);
- ``nprobe`` is doubled from 1 until recall@k of those lists on a sample of rows (their
  true lists found by exact search against all rows) reaches the target (0.95 by default),
  then bisected down to the smallest value (within 1/8) that still reaches it.

The recall of the finished graph on the sample is returned with it (``KnnGraph.recall_at_k``)
so that readers and the asset metadata can say how close to exact it is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dagster_brain.algorithms.knn import Metric, best_candidates, check_vectors, normalize_rows
from dagster_brain.algorithms.knn_graph import (
    KnnGraph,
    _check_params,
    _empty,
    _index_dtype,
    _nearest,
    _pair_distances,
    _unique_ids,
    _width,
    build_knn_graph,
)
from dagster_brain.progress import progress

# Items above which the automatic mode builds the approximate graph. Chosen by measurement on
# this project's 2-core machine, shared with other jobs (benchmarks/knn.py's clustered data,
# dim 512, k 16, cosine, target recall 0.95, seeds 0..2, 2026-12-05; mean seconds):
#   n        5k    10k    14k    20k    40k
#   exact   0.54   1.81   3.99   5.78   27.0
#   IVF     2.28   4.92   3.56   2.65   9.76
# The exact blocked GEMM becomes the slower one between 10k and 14k (about 13k); rounded up
# to 15k so that the exact graph is kept wherever the two are within noise of each other.
APPROX_THRESHOLD = 15_000
# Default recall@k the calibration of nprobe aims at.
TARGET_RECALL = 0.95
# Rows whose true lists the calibration computes by exact search.
RECALL_SAMPLE = 1_000
# Rows added to / searched in the faiss index at a time (bounds the prepared copies).
_CHUNK = 65_536
# faiss k-means wants at least 39 training points per list; the sample holds this many.
_TRAIN_PER_LIST = 40
_KMEANS_ITER = 10


@dataclass(frozen=True)
class AnnStats:
    """How an approximate graph was built."""

    nlist: int
    nprobe: int
    recall_at_k: float  # on ``sample`` rows, against their exact lists
    sample: int
    seconds: float


def use_exact(n: int, exact: bool | None, threshold: int = APPROX_THRESHOLD) -> bool:
    """Whether a graph of ``n`` items is built exactly: ``exact`` when set, else ``n <=
    threshold``."""
    return (n <= threshold) if exact is None else bool(exact)


def build_graph(
    X: np.ndarray,
    ids: Sequence[str],
    k: int,
    metric: Metric = "cosine",
    *,
    exact: bool | None = None,
    threshold: int = APPROX_THRESHOLD,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> tuple[KnnGraph, AnnStats | None]:
    """The kNN graph of the rows of ``X``: exact (``build_knn_graph``) or approximate
    (:func:`ann_knn_graph`), as :func:`use_exact` decides. Stats are None for exact."""
    if use_exact(len(X), exact, threshold):
        return build_knn_graph(X, ids, k, metric), None
    return ann_knn_graph(X, ids, k, metric, target_recall=target_recall, seed=seed)


def ann_knn_graph(
    X: np.ndarray,
    ids: Sequence[str],
    k: int,
    metric: Metric = "cosine",
    *,
    target_recall: float = TARGET_RECALL,
    sample: int = RECALL_SAMPLE,
    seed: int = 0,
    nlist: int | None = None,
) -> tuple[KnnGraph, AnnStats]:
    """Approximate kNN graph of the rows of ``X`` (cosine or euclidean), its recall@k measured
    on ``sample`` rows."""
    started = time.perf_counter()
    ids = _unique_ids(ids, "embeddings")
    X = check_vectors(X, ids)
    if _width(k, len(X)) == 0:
        _check_params(k, metric)
        return _empty(ids, metric, k), AnnStats(1, 1, 1.0, 0, 0.0)
    plan, index = plan_ann(
        X, k, metric, target_recall=target_recall, sample=sample, seed=seed, nlist=nlist
    )
    n = len(X)
    nbr = np.empty((n, plan.width), dtype=_index_dtype(n))  # -1 (not found) fits too
    dist = np.empty((n, plan.width), dtype=np.float32)
    desc = (
        f"kNN graph (IVF-SQ8, nprobe {plan.nprobe}/{plan.nlist}): {plan.width} {metric} "
        f"neighbours of {n:,} rows"
    )
    with progress(desc, n, "rows") as bar:
        for start in range(0, n, _CHUNK):
            rows = slice(start, min(start + _CHUNK, n))
            nbr[rows], dist[rows] = ann_lists(X, index, plan, rows)
            bar.update(rows.stop - rows.start)
    index.reset()  # frees the index's codes before the exact searches in finish_ann
    return finish_ann(X, ids, nbr, dist, plan, started)


@dataclass(frozen=True, eq=False)
class AnnPlan:
    """A trained, filled IVF index's search settings and its recall sample: what each part
    of an approximate graph build needs besides the vectors and the index."""

    k: int
    width: int  # neighbours per row, min(k, n - 1)
    metric: Metric
    nlist: int
    nprobe: int
    candidates: int  # per row, re-ranked down to width
    sample_rows: np.ndarray  # rows whose true lists were computed exactly
    truth: np.ndarray  # (sample, width) their true neighbours
    seconds: float  # training, filling and calibration


def plan_ann(
    X: np.ndarray,
    k: int,
    metric: Metric = "cosine",
    *,
    target_recall: float = TARGET_RECALL,
    sample: int = RECALL_SAMPLE,
    seed: int = 0,
    nlist: int | None = None,
):
    """An IVF-SQ8 index holding every row of ``X``, with ``nprobe`` calibrated to
    ``target_recall`` on ``sample`` rows. Returns (plan, faiss index)."""
    import faiss

    started = time.perf_counter()
    _check_params(k, metric)
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"approximate knn graph: metric {metric!r} is not cosine or euclidean")
    n, dim = X.shape
    w = _width(k, n)
    nlist = int(nlist or round(4 * np.sqrt(n)))
    nlist = max(1, min(nlist, n // _TRAIN_PER_LIST))
    rng = np.random.default_rng(seed)
    if metric == "cosine":
        quantizer, kind = faiss.IndexFlatIP(dim), faiss.METRIC_INNER_PRODUCT
    else:
        quantizer, kind = faiss.IndexFlatL2(dim), faiss.METRIC_L2
    index = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, kind
    )
    index.cp.seed = seed
    index.cp.niter = _KMEANS_ITER
    index.cp.max_points_per_centroid = _TRAIN_PER_LIST
    train = np.sort(rng.choice(n, size=min(n, _TRAIN_PER_LIST * nlist), replace=False))
    rows = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    truth, _ = _nearest(X, rows, w, metric)  # before the index holds its copy of the vectors
    index.train(np.ascontiguousarray(_prepared(X, train, metric)))
    for start in range(0, n, _CHUNK):
        index.add(np.ascontiguousarray(_prepared(X, slice(start, start + _CHUNK), metric)))
    c = min(n - 1, w + _margin(w))
    plan = AnnPlan(k, w, metric, nlist, 1, c, rows, truth, 0.0)
    Q = _prepared(X, rows, metric)

    def reaches(p: int) -> bool:
        got = _reranked(X, rows, _search(index, Q, rows, c, p), w, metric)[0]
        return _recall(got, truth) >= target_recall

    low, nprobe = 0, 1  # low: largest nprobe known to miss the target
    while nprobe < nlist and not reaches(nprobe):
        low, nprobe = nprobe, min(2 * nprobe, nlist)
    while nprobe - low > max(1, nprobe // 8):  # bisect down to within 1/8
        mid = (low + nprobe) // 2
        low, nprobe = (low, mid) if reaches(mid) else (mid, nprobe)
    seconds = time.perf_counter() - started
    return replace(plan, nprobe=nprobe, seconds=seconds), index


def ann_lists(X: np.ndarray, index, plan: AnnPlan, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour lists of the rows ``rows`` of ``X`` from a planned index (-1 where the
    probed lists held too few; :func:`finish_ann` searches those exactly)."""
    r = np.arange(rows.start, rows.stop)
    cand = _search(index, _prepared(X, rows, plan.metric), r, plan.candidates, plan.nprobe)
    return _reranked(X, r, cand, plan.width, plan.metric)


def finish_ann(
    X: np.ndarray,
    ids: list[str],
    nbr: np.ndarray,
    dist: np.ndarray,
    plan: AnnPlan,
    started: float,
) -> tuple[KnnGraph, AnnStats]:
    """The graph from every row's lists (rows short of neighbours searched exactly), its
    recall on the plan's sample."""
    short = np.flatnonzero((nbr < 0).any(axis=1))
    if short.size:  # the probed lists held fewer than w other items: search those exactly
        nbr[short], dist[short] = _nearest(X, short, plan.width, plan.metric)
    recall = _recall(nbr[plan.sample_rows], plan.truth)
    graph = KnnGraph(
        ids=ids, neighbors=nbr, distances=dist, metric=plan.metric, k=plan.k, exact=False,
        recall_at_k=round(recall, 4),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    stats = AnnStats(plan.nlist, plan.nprobe, recall, plan.sample_rows.size, seconds)
    return graph, stats


def _prepared(X: np.ndarray, rows: np.ndarray | slice, metric: Metric) -> np.ndarray:
    """Rows as the index holds them: unit length for cosine."""
    part = X[rows]
    return normalize_rows(part) if metric == "cosine" else part


def _search(index, Q: np.ndarray, rows: np.ndarray, w: int, nprobe: int) -> np.ndarray:
    """The ``w`` nearest other indexed rows of ``rows`` (their prepared vectors ``Q``); -1
    pads rows whose probed lists held too few."""
    index.nprobe = nprobe
    _, idx = index.search(np.ascontiguousarray(Q), w + 1)
    own = idx == rows[:, None]
    # drop the row itself, or the last candidate when identical vectors crowded it out
    drop = np.where(own.any(axis=1), own.argmax(axis=1), w)
    keep = np.ones(idx.shape, dtype=bool)
    keep[np.arange(len(rows)), drop] = False
    return idx[keep].reshape(len(rows), w)


def _margin(w: int) -> int:
    """Candidates fetched beyond ``w`` per row: the 8-bit codes order near-ties loosely."""
    return max(2, w // 2)


def _reranked(
    X: np.ndarray, rows: np.ndarray, cand: np.ndarray, w: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ``w`` nearest of each row's candidates (-1: none) by distance computed per pair
    (as the exact graph does), ties by row; rows short of ``w`` candidates keep -1 there."""
    nbr = np.full((rows.size, w), -1, dtype=cand.dtype)
    dist = np.full((rows.size, w), np.inf, dtype=np.float32)
    step = max(1, (1 << 20) // max(1, cand.shape[1]))
    for start in range(0, rows.size, step):
        sl = slice(start, start + step)
        c = cand[sl]
        ok = c >= 0
        pr, pc = np.nonzero(ok)
        d = np.full(c.shape, np.inf, dtype=np.float32)
        d[pr, pc] = _pair_distances(X, rows[sl][pr], c[pr, pc], metric)  # type: ignore[arg-type]
        nbr[sl], dist[sl] = best_candidates(d, c, w)
    return nbr, dist


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true neighbours found in its list."""
    if not truth.size:
        return 1.0
    hits = sum(np.isin(g, t).sum() for g, t in zip(got, truth, strict=True))
    return float(hits / truth.size)
