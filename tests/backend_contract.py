"""The contract every VectorBackend adapter passes (used by each backend's test module)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dagster_brain.algorithms.knn import pairwise_distances
from dagster_brain.similarity.backends.base import VectorBackend

MakeBackend = Callable[[str, int, str], VectorBackend]  # (collection, dim, metric) -> backend

# Ids are data, never code: each backend gets these through its filters and deletes.
HOSTILE_IDS = [
    "it's",
    'say "hi"',
    "x'] or id not in ['y",
    'x"] or id not in ["y',
    "a') OR ('1'='1",
    "back\\slash\\",
    "new\nline",
    "100%_like",
    "[bracket]",
    "ünïcødé/猫/003",
    "semi;colon -- comment",
    "tab\tand {brace}",
]


def brute_force(ids: list[str], X: np.ndarray, Q: np.ndarray, k: int, metric: str):
    """Exact top-k ids and distances with numpy."""
    D = pairwise_distances(Q, X, metric).astype(np.float64)
    order = np.argsort(D, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(D, order, axis=1)


def recall_at_k(got: list[list[str]], want: list[list[str]]) -> float:
    """Mean overlap of the returned and the true top-k sets."""
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


def check_contract(
    make: MakeBackend,
    metric: str = "cosine",
    n: int = 300,
    dim: int = 16,
    k: int = 10,
    min_recall: float = 1.0,
    seed: int = 0,
) -> None:
    """Adds, overwrites, removes, fetches, queries (with and without a view), and drops."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"id_{i:04d}" for i in range(n)]
    # hostile ids among those removed below and among those kept (and in the view)
    half = len(HOSTILE_IDS) // 2
    ids[100 : 100 + half] = HOSTILE_IDS[:half]
    ids[n - (len(HOSTILE_IDS) - half) :] = HOSTILE_IDS[half:]
    ids[n - 30 : n - 30 + half] = [f"{h}#kept" for h in HOSTILE_IDS[:half]]
    backend = make("contract_test", dim, metric)
    try:
        backend.upsert(ids[:200], X[:200])
        backend.upsert(ids[200:], X[200:])
        assert backend.count() == n
        # overwrite: id_0000 gets a new vector, count unchanged
        X[0] = rng.normal(size=dim).astype(np.float32)
        backend.upsert(ids[:1], X[:1])
        assert backend.count() == n
        got_ids, got = backend.fetch([ids[0], "missing", ids[5]])
        assert got_ids == [ids[0], ids[5]]
        assert np.allclose(got, X[[0, 5]], atol=1e-5)
        odd = [ids[100], ids[n - 1], ids[n - 30]]  # hostile ids fetch themselves only
        got_ids, got = backend.fetch(odd)
        assert sorted(got_ids) == sorted(odd)
        assert np.allclose(got[[got_ids.index(i) for i in odd]], X[[100, n - 1, n - 30]], atol=1e-5)
        # remove 50 (and one that does not exist)
        gone = set(ids[100:150])
        backend.delete([*sorted(gone), "never_there"])
        keep = [i for i, s in enumerate(ids) if s not in gone]
        kept_ids, KX = [ids[i] for i in keep], X[keep]
        assert backend.count() == len(keep)
        all_ids, all_vecs = backend.fetch(None)
        assert sorted(all_ids) == sorted(kept_ids)
        Q = rng.normal(size=(20, dim)).astype(np.float32)
        want, want_d = brute_force(kept_ids, KX, Q, k, metric)
        got, got_d = backend.query(Q, k)
        assert all(len(g) == k for g in got)
        assert recall_at_k(got, want) >= min_recall
        if min_recall == 1.0:
            assert np.allclose(np.vstack(got_d), want_d, atol=1e-3)
        for d in got_d:
            assert np.all(np.diff(d) >= -1e-5)  # nearest first
        # restricted to a view
        view = kept_ids[::3] + [i for i in kept_ids[-30:] if i not in kept_ids[::3]]
        VX = KX[[kept_ids.index(i) for i in view]]
        want_v, _ = brute_force(view, VX, Q, 5, metric)
        got_v, _ = backend.query(Q, 5, allowed=view)
        assert all(set(g) <= set(view) for g in got_v)
        assert recall_at_k(got_v, want_v) >= min_recall
        # querying with an indexed vector finds itself first (distance ~0 for cosine/euclidean)
        if metric != "dotproduct":
            self_got, self_d = backend.query(KX[:3], 1)
            assert [g[0] for g in self_got] == kept_ids[:3]
            assert np.allclose(np.concatenate(self_d), 0.0, atol=1e-3)
    finally:
        backend.drop()
        backend.close()
    fresh = make("contract_test", dim, metric)
    try:
        assert fresh.count() == 0  # drop removed everything
    finally:
        fresh.drop()
        fresh.close()
