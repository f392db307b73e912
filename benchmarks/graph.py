"""One kNN graph for uniqueness, duplicates and unique, against each computing its own.

    python benchmarks/graph.py [--n 50000] [--dim 512] [--count 100] [--seed 0] [--json OUT]

Two workers, each in a fresh subprocess (so that its peak RSS, ``ru_maxrss``, is its own; it
includes the interpreter and the worker's copy of the data):

- ``with graph``: ``build_knn_graph`` (k=16, cosine; the ``knn_graph`` brain method's default),
  then the three readers on it: uniqueness (k=3, the first 3 columns of the graph), duplicates
  with ``thresh=auto`` (``choose_threshold`` with k=10 and ``find_duplicates``' first pass read
  from the graph; rows whose 16th neighbour is inside the threshold still query for more) and
  unique (``find_unique``, k-center greedy: it uses no neighbours);
- ``without graph``: the same three as they run without a stored graph (uniqueness builds its
  own k=3 graph, ``choose_threshold`` and ``find_duplicates`` each compute their own lists).

``ratio`` = (graph build + the three readers on it) / graph build; target <= 1.15. The results
of both workers are compared (uniqueness scores, duplicate ids, pairs, unique picks): they
must be identical. Data: ``benchmarks/knn.py``'s clustered Gaussian mixture (fixed seed), with
1% of the rows replaced by near-copies of others (noise 1e-3 of the vector's scale) so that
duplicates has something to find. Machines are shared: compare rows within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATIO_TARGET = 1.15


def data(n: int, dim: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The clustered mixture of benchmarks/knn.py, 1% of rows near-copies of others."""
    sys.path.insert(0, str(HERE))
    from knn import clustered

    X = clustered(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    m = n // 100
    src = rng.choice(n - m, m, replace=False)
    scale = float(np.linalg.norm(X, axis=1).mean())
    X[n - m :] = X[src] + (1e-3 * scale / np.sqrt(dim)) * rng.normal(size=(m, dim))
    return X.astype(np.float32), [f"s{i:07d}" for i in range(n)]


def _timed(f, *args, **kw):
    t = time.perf_counter()
    out = f(*args, **kw)
    return out, time.perf_counter() - t


def worker(mode: str, n: int, dim: int, count: int, seed: int) -> dict:
    """Run one mode; returns its timings, peak RSS and a digest of its results."""
    from dagster_brain.algorithms.duplicates import choose_threshold, find_duplicates, find_unique
    from dagster_brain.algorithms.knn_graph import build_knn_graph
    from dagster_brain.algorithms.uniqueness import uniqueness_from_graph, uniqueness_scores
    from dagster_brain.knn_graphs import cut_graph

    X, ids = data(n, dim, seed)
    t: dict[str, float] = {}
    graph = None
    if mode == "with":
        graph, t["graph_build_s"] = _timed(build_knn_graph, X, ids, 16, "cosine")
        scores, t["uniqueness_s"] = _timed(uniqueness_from_graph, cut_graph(graph, 3))
    else:
        (scores, _, _), t["uniqueness_s"] = _timed(uniqueness_scores, X, ids, k=3)
    start = time.perf_counter()
    choice = choose_threshold(X, ids, metric="cosine", graph=graph)
    result = find_duplicates(X, ids, thresh=choice.thresh, metric="cosine", graph=graph)
    t["duplicates_s"] = time.perf_counter() - start
    picks, t["unique_s"] = _timed(find_unique, X, ids, count, metric="cosine")
    t["readers_s"] = t["uniqueness_s"] + t["duplicates_s"] + t["unique_s"]
    return {
        "mode": mode,
        **{k: round(v, 3) for k, v in t.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "digest": {
            "scores": _sha(np.asarray(scores, dtype=np.float64).tobytes()),
            "thresh": choice.thresh,
            "duplicates": result.duplicate_ids,
            "pairs": len(result.all_pairs),
            "pairs_sha": _sha(result.all_pairs[["id_a", "id_b"]].to_csv(index=False).encode()),
            "unique": picks,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--count", type=int, default=100, help="unique: items to pick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", choices=["with", "without"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.n, a.dim, a.count, a.seed)))
        return
    rows = {}
    for mode in ("with", "without"):
        cmd = [sys.executable, __file__, "--worker", mode, "--n", str(a.n), "--dim", str(a.dim)]
        cmd += ["--count", str(a.count), "--seed", str(a.seed)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=None)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    w, wo = rows["with"], rows["without"]
    g = w["graph_build_s"]
    ratio = (g + w["readers_s"]) / g
    same = w["digest"] == wo["digest"]
    print(f"# {a.n} x {a.dim}, cosine, unique count={a.count}, load {_load():.2f}")
    head = "| | graph build s | uniqueness s | duplicates s | unique s | all s | peak RSS MB |"
    print(head)
    print("|---|---|---|---|---|---|---|")
    print(
        f"| with one graph (k=16) | {g:.2f} | {w['uniqueness_s']:.2f} | {w['duplicates_s']:.2f} "
        f"| {w['unique_s']:.2f} | {g + w['readers_s']:.2f} | {w['peak_rss_mb']:.0f} |"
    )
    print(
        f"| without (today) | - | {wo['uniqueness_s']:.2f} | {wo['duplicates_s']:.2f} "
        f"| {wo['unique_s']:.2f} | {wo['readers_s']:.2f} | {wo['peak_rss_mb']:.0f} |"
    )
    print(
        f"ratio (graph + three readers) / graph = {ratio:.3f} (target <= {RATIO_TARGET}); "
        f"without / with = {wo['readers_s'] / (g + w['readers_s']):.2f}x; "
        f"identical results: {same}; duplicates {len(w['digest']['duplicates'])}, "
        f"pairs {w['digest']['pairs']}"
    )
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "ratio": ratio, "identical": same}, indent=1))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


if __name__ == "__main__":
    main()
