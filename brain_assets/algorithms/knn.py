"""Exact k-nearest neighbours by blocked matrix products (BLAS), never an N x N matrix."""

from __future__ import annotations

from typing import Literal

import numpy as np

Metric = Literal["cosine", "euclidean", "dotproduct"]
METRICS: tuple[str, ...] = ("cosine", "euclidean", "dotproduct")

# Bytes of one block of the distance matrix; 128 MiB keeps peak memory bounded at any N.
DEFAULT_BLOCK_BYTES = 128 * 1024 * 1024


def check_vectors(
    X: np.ndarray, ids: list[str] | None = None, what: str = "embeddings"
) -> np.ndarray:
    """Return ``X`` as a C-contiguous float32 (n, d) array; errors name the offending id."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array, got shape {X.shape}")
    if ids is not None and len(ids) != X.shape[0]:
        raise ValueError(f"{what}: {X.shape[0]} vectors for {len(ids)} ids")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        who = repr(ids[bad[0]]) if ids is not None else f"row {bad[0]}"
        raise ValueError(f"{what}: non-finite (NaN or inf) vector for {who}")
    return X


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _block_rows(n_cols: int, block_bytes: int) -> int:
    return max(1, min(8192, block_bytes // max(1, 4 * n_cols)))


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
    k_eff = min(k, n - 1 if (self_query and exclude_self) else n)
    if k < 1 or k_eff < 1:
        raise ValueError(f"k={k} neighbours requested from {n} vectors")
    if metric == "cosine":
        Xn, Qn = normalize_rows(X), (None if self_query else normalize_rows(Q))
        Qn = Xn if self_query else Qn
    else:
        Xn, Qn = X, Q
    x_sq = (Xn * Xn).sum(1) if metric == "euclidean" else None
    rows = _block_rows(n, block_bytes)
    out_d = np.empty((Q.shape[0], k_eff), dtype=np.float32)
    out_i = np.empty((Q.shape[0], k_eff), dtype=np.int64)
    for start in range(0, Q.shape[0], rows):
        stop = min(start + rows, Q.shape[0])
        sims = Qn[start:stop] @ Xn.T  # (b, n) similarities: larger is nearer
        if metric == "euclidean":
            q_sq = (Qn[start:stop] * Qn[start:stop]).sum(1)[:, None]
            sims = -(q_sq + x_sq[None, :] - 2.0 * sims)  # negative squared distance
        if self_query and exclude_self:
            r = np.arange(stop - start)
            sims[r, start + r] = -np.inf
        part = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]
        part_s = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_s, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        s = np.take_along_axis(part_s, order, axis=1)
        if metric == "cosine":
            d = 1.0 - s
        elif metric == "euclidean":
            d = np.sqrt(np.maximum(-s, 0.0))
        else:
            d = -s
        out_d[start:stop] = d
        out_i[start:stop] = idx
    if metric == "cosine":
        np.clip(out_d, 0.0, 2.0, out=out_d)
    return out_d, out_i
