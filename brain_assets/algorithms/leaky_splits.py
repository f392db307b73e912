"""Leaky splits: near-duplicates whose two members sit in different splits.

Candidates are cross-split pairs only: each item's ``m`` nearest items of the other splits by
embedding (read from a kNN graph where it holds them) and by a shift-invariant image
descriptor, every cross-split pair within the embedding threshold, and cross-split hash
matches. They are confirmed as the duplicates run confirms its pairs
(:func:`dagster_brain.algorithms.verify.verify_pairs`: byte or pixel hash, shifted NCC, phash,
and embedding distance when a threshold is given), or by embedding distance alone without
images. A pair inside one split is never a leak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dagster_brain.algorithms.duplicates import _prepare, choose_threshold, pair_distances
from dagster_brain.algorithms.knn import exact_knn
from dagster_brain.algorithms.knn_graph import KnnGraph

UNASSIGNED = "unassigned"  # the split of items that have none
MAX_K = 256  # cross-split neighbours per item at most when widening to a radius
ITEM_COLUMNS = ["id", "split", "leak", "nearest_id", "nearest_split", "distance", "path"]
PAIR_COLUMNS = ["id_a", "split_a", "id_b", "split_b", "distance", "path"]


@dataclass
class LeakResult:
    """Per item: its split, whether it leaks, its nearest cross-split partner (the closest
    confirmed one when it leaks) and distance; the confirmed cross-split pairs; every
    candidate checked; the embedding threshold used."""

    items: pd.DataFrame  # ITEM_COLUMNS, in input order
    pairs: pd.DataFrame  # PAIR_COLUMNS (+ ncc, z, phash_dist when checked on images)
    checked: pd.DataFrame
    thresh: float | None


def cross_split_neighbours(
    X: np.ndarray,
    splits: np.ndarray,
    k: int,
    metric: str,
    rows: np.ndarray | None = None,
    graph: KnnGraph | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of the ``k`` nearest rows of another split for ``rows`` (default
    all), nearest first; -1 / inf pad rows with fewer candidates. ``graph`` (an exact kNN
    graph of the rows of ``X``, same order and metric) answers the rows whose list holds
    ``k`` cross-split neighbours; the others are searched."""
    n = len(X)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    idx = np.full((len(rows), k), -1, dtype=np.int64)
    dist = np.full((len(rows), k), np.inf, dtype=np.float64)
    todo = np.ones(len(rows), dtype=bool)
    if graph is not None and graph.exact and graph.metric == metric and len(graph.ids) == n:
        nb = graph.neighbors[rows].astype(np.int64)
        cross = splits[nb] != splits[rows][:, None]
        for r in np.flatnonzero(cross.sum(1) >= k):
            sel = np.flatnonzero(cross[r])[:k]
            idx[r], dist[r] = nb[r, sel], graph.distances[rows[r], sel]
            todo[r] = False
    for s in np.unique(splits[rows[todo]]):
        mine = np.flatnonzero(todo & (splits[rows] == s))
        others = np.flatnonzero(splits != s)
        w = min(k, len(others))
        if w == 0:
            continue
        d, i = exact_knn(X[others], w, queries=X[rows[mine]], metric=metric)  # type: ignore[arg-type]
        idx[mine, :w], dist[mine, :w] = others[i], d
    return idx, dist


def _pairs_from_lists(rows: np.ndarray, idx: np.ndarray, within: np.ndarray | None = None):
    a = np.repeat(rows, idx.shape[1])
    b = idx.reshape(-1)
    ok = b >= 0
    if within is not None:
        ok &= within.reshape(-1)
    return a[ok], b[ok]


def _radius_pairs(
    X: np.ndarray,
    splits: np.ndarray,
    idx: np.ndarray,
    dist: np.ndarray,
    radius: float,
    metric: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Every cross-split pair within ``radius``: the lists, widened 4x (up to ``MAX_K``) for
    rows whose last neighbour is still inside it."""
    rows = np.arange(len(X))
    parts = [_pairs_from_lists(rows, idx, dist <= radius)]
    k = idx.shape[1]
    full = np.isfinite(dist[:, -1]) & (dist[:, -1] <= radius)
    while full.any() and k < MAX_K:
        k = min(4 * k, MAX_K)
        grow = rows[full]
        i2, d2 = cross_split_neighbours(X, splits, k, metric, rows=grow)
        parts.append(_pairs_from_lists(grow, i2, d2 <= radius))
        full = np.zeros(len(X), dtype=bool)
        full[grow] = np.isfinite(d2[:, -1]) & (d2[:, -1] <= radius)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _hash_pairs(splits: np.ndarray, hashes: Sequence[str | None]) -> tuple[np.ndarray, ...]:
    """Cross-split pairs of items with the same (non-empty) hash."""
    frame = pd.DataFrame({"h": list(hashes), "row": np.arange(len(splits))}).dropna()
    frame = frame[frame["h"].astype(str) != ""]
    a, b = [], []
    for _, group in frame.groupby("h"):
        r = group["row"].to_numpy()
        if len(r) < 2:
            continue
        x, y = np.triu_indices(len(r), 1)
        cross = splits[r[x]] != splits[r[y]]
        a.append(r[x][cross])
        b.append(r[y][cross])
    empty = np.zeros(0, np.int64)
    return (np.concatenate(a) if a else empty, np.concatenate(b) if b else empty)


def find_leaks(
    vectors: np.ndarray,
    ids: Sequence[str],
    splits: Sequence[str],
    *,
    metric: str = "cosine",
    thresh: float | None = None,
    m: int = 5,
    graph: KnnGraph | None = None,
    filepaths: Mapping[str, str] | None = None,
    content_hashes: Sequence[str | None] | None = None,
    pixel_hashes: Sequence[str | None] | None = None,
    split_order: Sequence[str] | None = None,
    num_workers: int = 0,
) -> LeakResult:
    """Cross-split near-duplicates of the rows of ``vectors``.

    With ``filepaths`` the candidates are confirmed on the images (``path`` says how:
    ``hash:bytes``, ``hash:pixels``, ``shift-ncc``, ``phash``, or ``embedding`` when
    ``thresh`` is given); without, a pair leaks when its embedding distance is at most
    ``thresh`` (None: the data-chosen strict threshold of :func:`choose_threshold`).
    ``split_order`` orders each pair's splits (``split_a`` first; default: sorted).
    """
    X, ids = _prepare(vectors, ids, metric)
    S = np.asarray([str(s) for s in splits], dtype=object)
    n = len(ids)
    if len(S) != n:
        raise ValueError(f"{len(S)} split names for {n} items")
    order = list(split_order) if split_order is not None else sorted(set(S))
    missing = sorted(set(S) - set(order))
    order += missing
    rank = {s: r for r, s in enumerate(order)}
    usable = graph if graph is not None and graph.exact else None
    radius = thresh
    if radius is None and n >= 5:
        radius = choose_threshold(X, ids, metric, graph=usable).strict_thresh
    k = max(1, min(m, n - 1))
    idx, dist = cross_split_neighbours(X, S, k, metric, graph=usable)
    rows = np.arange(n)
    parts = [(*_pairs_from_lists(rows, idx), "embedding")]
    if radius is not None:
        parts.append((*_radius_pairs(X, S, idx, dist, radius, metric), "radius"))
    thumbs = None
    if filepaths is not None:
        from dagster_brain.algorithms.verify import image_descriptors, load_thumbnails

        thumbs = load_thumbnails(ids, filepaths, num_workers=num_workers)
        D = image_descriptors(thumbs.images)
        di, _ = cross_split_neighbours(D, S, k, "cosine")
        parts.append((*_pairs_from_lists(rows, di), "image"))
    for hashes in (content_hashes, pixel_hashes):
        if hashes is not None:
            parts.append((*_hash_pairs(S, hashes), "hash"))
    cands = _candidates(X, ids, parts, metric)
    if thumbs is not None:
        from dagster_brain.algorithms.verify import verify_pairs

        row = {i: r for r, i in enumerate(ids)}
        checked = verify_pairs(
            cands,
            filepaths,  # type: ignore[arg-type]
            content_hashes=_by_id(ids, content_hashes),
            pixel_hashes=_by_id(ids, pixel_hashes),
            embedding_thresh=thresh,
            thumbnails=thumbs,
        )
    else:
        checked = cands.copy()
        ok = checked["distance"].to_numpy(float) <= (np.inf if radius is None else radius)
        if radius is None:
            ok[:] = False
        checked["verified"] = ok
        checked["path"] = np.where(ok, "embedding", "")
    row = {i: r for r, i in enumerate(ids)}
    pairs = checked[checked["verified"]].copy()
    a = pairs["id_a"].map(row).to_numpy(np.int64)
    b = pairs["id_b"].map(row).to_numpy(np.int64)
    swap = np.array([rank[S[x]] > rank[S[y]] for x, y in zip(a, b, strict=True)], dtype=bool)
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    out = pd.DataFrame(
        {
            "id_a": [ids[i] for i in a],
            "split_a": S[a] if len(a) else np.zeros(0, dtype=object),
            "id_b": [ids[i] for i in b],
            "split_b": S[b] if len(b) else np.zeros(0, dtype=object),
            "distance": pairs["distance"].to_numpy(np.float64),
            "path": pairs["path"].to_numpy(dtype=object),
        }
    )
    for col in ("ncc", "z", "phash_dist"):
        if col in pairs:
            out[col] = pairs[col].to_numpy()
    out = out.sort_values(["distance", "id_a", "id_b"], kind="stable").reset_index(drop=True)
    return LeakResult(_items(ids, S, idx, dist, out), out, checked, radius)


def _by_id(ids: list[str], hashes: Sequence[str | None] | None) -> dict[str, str] | None:
    if hashes is None:
        return None
    return {i: h for i, h in zip(ids, hashes, strict=True) if isinstance(h, str) and h}


def _candidates(
    X: np.ndarray, ids: list[str], parts: list[tuple[np.ndarray, np.ndarray, str]], metric: str
) -> pd.DataFrame:
    """Unordered, de-duplicated candidate pairs with their embedding distance and sources."""
    n = len(ids)
    a = np.concatenate([p[0] for p in parts]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts]).astype(np.int64)
    src = np.concatenate([np.full(len(p[0]), p[2], dtype=object) for p in parts])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    frame = pd.DataFrame({"code": lo[keep] * np.int64(n) + hi[keep], "source": src[keep]})
    grouped = frame.groupby("code", sort=True)["source"].agg(lambda s: "+".join(sorted(set(s))))
    code = grouped.index.to_numpy(np.int64)
    a, b = code // n, code % n
    return pd.DataFrame(
        {
            "id_a": [ids[i] for i in a],
            "id_b": [ids[i] for i in b],
            "distance": pair_distances(X, a, b, metric),
            "source": grouped.to_numpy(dtype=object),
        }
    )


def _items(
    ids: list[str], S: np.ndarray, idx: np.ndarray, dist: np.ndarray, pairs: pd.DataFrame
) -> pd.DataFrame:
    """One row per item: the closest confirmed partner if it leaks, else the nearest item
    of another split by embedding."""
    n = len(ids)
    first = idx[:, 0] if idx.shape[1] else np.full(n, -1)
    near_id = np.array([ids[j] if j >= 0 else None for j in first], dtype=object)
    near_split = np.array([S[j] if j >= 0 else None for j in first], dtype=object)
    near_d = np.where(first >= 0, dist[:, 0] if idx.shape[1] else np.nan, np.nan)
    leak = np.zeros(n, dtype=bool)
    path = np.full(n, "", dtype=object)
    row = {i: r for r, i in enumerate(ids)}
    both = pd.concat(
        [
            pairs.rename(columns={"id_a": "me", "id_b": "other", "split_b": "other_split"}),
            pairs.rename(columns={"id_b": "me", "id_a": "other", "split_a": "other_split"}),
        ]
    ).sort_values(["distance", "other"], kind="stable")
    for me, hit in both.groupby("me", sort=False).head(1).set_index("me").iterrows():
        r = row[me]
        leak[r] = True
        near_id[r], near_split[r] = hit["other"], hit["other_split"]
        near_d[r], path[r] = float(hit["distance"]), hit["path"]
    return pd.DataFrame(
        {
            "id": ids,
            "split": S,
            "leak": leak,
            "nearest_id": near_id,
            "nearest_split": near_split,
            "distance": near_d.astype(np.float64),
            "path": path,
        }
    )
