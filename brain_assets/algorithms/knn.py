"""Exact k-nearest neighbours by blocked matrix products (BLAS), never an N x N matrix.

The cost is the GEMM (2·n_queries·n·d flop); everything else is kept to a few cheap passes
over each block of scores so that the total stays close to the GEMM's own time:

- scores are "larger is nearer" similarities written into one preallocated block buffer
  (fresh 100 MB temporaries per block cost more in page faults than the selection itself);
- the top-k of a row is found without sorting or partitioning the whole row: the row is split
  into ``g`` strided groups (column ``c`` belongs to group ``c % g``), and the k-th largest
  group maximum is a lower bound on the row's k-th largest score (k different groups each
  hold an element at least that large). Only the few scores at or above that bound (usually
  k plus a handful) are gathered and sorted. Strided groups keep neighbours that sit next to
  each other (data sorted by class or cluster) in different groups;
- rows where that bound lets through too many candidates (heavy ties, e.g. many identical
  vectors) or too few (NaN from overflow) fall back to ``np.argpartition`` on those rows only;
- the selection runs on a small thread pool over row chunks (numpy releases the GIL in the
  reductions and comparisons), while the GEMM uses BLAS's own threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

Metric = Literal["cosine", "euclidean", "dotproduct"]
METRICS: tuple[str, ...] = ("cosine", "euclidean", "dotproduct")

# Bytes of one block of the score matrix; 128 MiB keeps peak memory bounded at any N (the
# boolean candidate mask adds a quarter of that).
DEFAULT_BLOCK_BYTES = 128 * 1024 * 1024
# Below this many scores per block, threads cost more than they save.
_THREAD_MIN_SCORES = 1 << 20


def check_vectors(
    X: np.ndarray, ids: list[str] | None = None, what: str = "embeddings"
) -> np.ndarray:
    """Return ``X`` as a C-contiguous float32 (n, d) array; errors name the offending id."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array, got shape {X.shape}")
    if ids is not None and len(ids) != X.shape[0]:
        raise ValueError(f"{what}: {X.shape[0]} vectors for {len(ids)} ids")
    # a row sum in float64 is NaN or inf exactly when the row holds one (float32 values
    # cannot overflow it): no (n, d) mask
    with np.errstate(invalid="ignore"):  # inf - inf
        bad = np.flatnonzero(~np.isfinite(X.sum(axis=1, dtype=np.float64)))
    if bad.size:
        who = repr(ids[bad[0]]) if ids is not None else f"row {bad[0]}"
        raise ValueError(f"{what}: non-finite (NaN or inf) vector for {who}")
    return X


# Rows converted to float64 at a time by the blocked helpers below (32 MiB at d = 512).
ROW_BLOCK = 8_192


def row_sq_norms(X: np.ndarray) -> np.ndarray:
    """Each row's squared L2 norm in float64, a block of rows at a time (never a float64
    copy of all of ``X``)."""
    out = np.empty(len(X), dtype=np.float64)
    for start in range(0, len(X), ROW_BLOCK):
        block = np.asarray(X[start : start + ROW_BLOCK], dtype=np.float64)
        out[start : start + len(block)] = np.einsum("ij,ij->i", block, block)
    return out


def blocked_rows(X: np.ndarray, fn, width: int) -> np.ndarray:
    """``fn`` applied to float64 blocks of rows of ``X`` (each giving ``width`` columns per
    row), stacked: the memory of one block, not of a float64 copy of ``X``."""
    out = np.empty((len(X), width), dtype=np.float64)
    for start in range(0, len(X), ROW_BLOCK):
        block = np.asarray(X[start : start + ROW_BLOCK], dtype=np.float64)
        out[start : start + len(block)] = fn(block).reshape(len(block), width)
    return out


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _block_rows(n_cols: int, block_bytes: int) -> int:
    return max(1, min(8192, block_bytes // max(1, 4 * n_cols)))


def _n_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def pairwise_distances(Q: np.ndarray, X: np.ndarray, metric: Metric = "cosine") -> np.ndarray:
    """Distances between every row of ``Q`` and every row of ``X`` (small inputs only).

    cosine: 1 - cos(q, x) in [0, 2]; euclidean: L2 distance; dotproduct: -<q, x>.
    """
    Q = np.asarray(Q, dtype=np.float32)
    X = np.asarray(X, dtype=np.float32)
    if metric == "cosine":
        return 1.0 - normalize_rows(Q) @ normalize_rows(X).T
    if metric == "euclidean":
        sq = (Q * Q).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2.0 * (Q @ X.T)
        return np.sqrt(np.maximum(sq, 0.0))
    if metric == "dotproduct":
        return -(Q @ X.T)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def _groups(n: int, k: int) -> int:
    """Number of strided groups for the threshold, or 0 to use a plain partition.

    At least 16·k groups keep the candidates near k per row; at least 4 columns per group
    make the group maxima much cheaper than partitioning the row.
    """
    g = min(max(16 * k, n // 8), 64 * k, n // 4)
    return g if g >= 16 * k else 0


def _partition_rows(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, columns) of each row of ``S``, largest first, by partitioning."""
    n = S.shape[1]
    part = np.argpartition(S, n - k, axis=1)[:, n - k :]
    vals = np.take_along_axis(S, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)


def best_candidates(values: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` candidates (``cand``, -1: none) with the lowest ``values`` (inf for
    the missing ones), ties by the lower candidate: (candidates, values), with -1 and inf
    where a row has fewer than ``k``."""
    key = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
    order = np.lexsort((key, values), axis=-1)[:, :k]
    best = np.take_along_axis(values, order, 1)
    return np.where(np.isfinite(best), np.take_along_axis(cand, order, 1), -1), best


def select_top_k_rows(
    S: np.ndarray, M: np.ndarray, k: int, out_s: np.ndarray, out_i: np.ndarray
) -> None:
    """Write the top-k (scores, columns) of each row of ``S`` (largest first) into the outputs.

    ``M`` is a boolean scratch buffer of ``S``'s shape.
    """
    b, n = S.shape
    if k == 1:  # one pass; ties keep the lowest column
        best = S.argmax(axis=1)
        out_i[:, 0] = best
        out_s[:, 0] = S[np.arange(b), best]
        return
    g = _groups(n, k)
    if not g:
        out_s[:], out_i[:] = _partition_rows(S, k)
        return
    L = n // g
    gmax = S[:, : L * g].reshape(b, L, g).max(axis=1)
    tail = n - L * g
    if tail:
        np.maximum(gmax[:, :tail], S[:, L * g :], out=gmax[:, :tail])
    thr = np.partition(gmax, g - k, axis=1)[:, g - k]
    np.greater_equal(S, thr[:, None], out=M)
    cap = 8 * k + 64  # candidates per row beyond which a row is partitioned instead
    bad = np.zeros(b, dtype=bool)
    if np.count_nonzero(M) > b * cap:  # heavy ties: keep the flat index arrays small
        bad = np.count_nonzero(M, axis=1) > cap
        M[bad] = False
    flat = np.flatnonzero(M)
    rows = flat // n
    cols = flat - rows * n
    vals = S.ravel()[flat]
    counts = np.bincount(rows, minlength=b)
    bad |= (counts < k) | (counts > cap)  # too few: NaN scores
    starts = np.cumsum(counts) - counts
    order = np.lexsort((-vals, rows))  # by row, then largest first, then lowest column
    good = np.flatnonzero(~bad)
    pick = order[starts[good, None] + np.arange(k)]
    out_s[good] = vals[pick]
    out_i[good] = cols[pick]
    if bad.any():
        sel = np.flatnonzero(bad)
        out_s[sel], out_i[sel] = _partition_rows(S[sel], k)


def top_k_scores(
    Q: np.ndarray,
    X: np.ndarray,
    k: int,
    *,
    bias: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    exclude_self: bool = False,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest scores ``(Q @ X.T) * scale (+ bias)`` per row of ``Q``, largest first.

    ``Q`` and ``X`` are prepared float32 matrices (normalised for cosine, or ``X`` as it is
    with ``scale`` its inverse row norms); ``scale`` multiplies and ``bias`` is added to every
    column (``-|x|^2 / 2`` turns the score into a euclidean ranking). With
    ``exclude_self``, query row ``i`` is row ``i`` of ``X`` and never its own neighbour.
    Ties keep the lower column first. Returns ``(scores, indices)`` of shape (n_queries, k).
    """
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    X = np.ascontiguousarray(X, dtype=np.float32)
    nq, n = Q.shape[0], X.shape[0]
    if not 1 <= k <= n - int(exclude_self):
        raise ValueError(f"k={k} neighbours requested from {n} vectors")
    out_s = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    if nq == 0:
        return out_s, out_i
    rows = min(nq, _block_rows(n, block_bytes))
    S = np.empty((rows, n), dtype=np.float32)
    M = np.empty((rows, n), dtype=bool)
    threads = _n_threads() if rows * n >= _THREAD_MIN_SCORES else 1
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    XT = X.T
    try:
        for start in range(0, nq, rows):
            stop = min(start + rows, nq)
            b = stop - start
            Sb, Mb = S[:b], M[:b]
            np.matmul(Q[start:stop], XT, out=Sb)
            if scale is not None:
                np.multiply(Sb, scale[None, :], out=Sb)
            if bias is not None:
                np.add(Sb, bias[None, :], out=Sb)
            if exclude_self:
                r = np.arange(b)
                Sb[r, start + r] = -np.inf
            if pool is None or b < 2 * threads:
                select_top_k_rows(Sb, Mb, k, out_s[start:stop], out_i[start:stop])
                continue
            edges = np.linspace(0, b, threads + 1).astype(int)
            jobs = [
                pool.submit(
                    select_top_k_rows,
                    Sb[lo:hi],
                    Mb[lo:hi],
                    k,
                    out_s[start + lo : start + hi],
                    out_i[start + lo : start + hi],
                )
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)
            ]
            for job in jobs:
                job.result()
    finally:
        if pool is not None:
            pool.shutdown()
    return out_s, out_i


def exact_knn(
    X: np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    metric: Metric = "cosine",
    exclude_self: bool = True,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``X`` for each query row, nearest first.

    With ``queries=None`` the queries are the rows of ``X`` themselves and, when
    ``exclude_self`` is true, each row's own index is excluded (by index, so exact duplicates
    of a row are still returned as its neighbours at distance 0).
    Returns ``(distances, indices)``, both of shape (n_queries, k).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    X = check_vectors(X)
    self_query = queries is None
    Q = X if self_query else check_vectors(queries, what="queries")
    n = X.shape[0]
    skip_self = self_query and exclude_self
    k_eff = min(k, n - 1 if skip_self else n)
    if k < 1 or k_eff < 1:
        raise ValueError(f"k={k} neighbours requested from {n} vectors")
    bias = None
    if metric == "cosine":
        X = normalize_rows(X)
        Q = X if self_query else normalize_rows(Q)
    elif metric == "euclidean":
        bias = -0.5 * np.einsum("ij,ij->i", X, X)
    s, idx = top_k_scores(Q, X, k_eff, bias=bias, exclude_self=skip_self, block_bytes=block_bytes)
    if metric == "cosine":
        d = np.subtract(1.0, s, out=s)
        np.clip(d, 0.0, 2.0, out=d)
    elif metric == "euclidean":
        # |q - x|^2 = |q|^2 - 2 (q.x - |x|^2 / 2)
        q_sq = np.einsum("ij,ij->i", Q, Q)[:, None]
        d = np.sqrt(np.maximum(q_sq - 2.0 * s, 0.0), dtype=np.float32)
    else:
        d = np.negative(s, out=s)
    return d.astype(np.float32, copy=False), idx
