"""Similarity queries through the notebook API, and PCA visualization runs.

    python benchmarks/queries.py [--json OUT.json] [--n 2000] [--dim 512] [--queries 20]
        [--pca-sizes 1900,20000] [--seed 0]

Measured in one run, printed as one table (every section in a fresh subprocess, so that its
peak RSS, ``ru_maxrss``, is its own; it includes the interpreter, imports and the data):

- ``query first call``: the first ``fob.sort_by_similarity(ds, id, k=10)`` after the index
  (``n x dim``, sklearn backend) was built in another process: loads the index;
- ``N queries, load each`` (the previous code path): ``load_index``, query, ``close`` for
  every query: each one reads the run record, the members and the backend's vectors;
- ``N queries, repeated``: the loaded index is reused; the store was written less than a
  second ago, so each query re-reads the run record to check that the index is unchanged;
- ``N queries, repeated, settled``: the same once the store's files are older than a second:
  unchanged files prove the record unchanged, and the query reads nothing from the store;
- ``pca n x dim``: ``fob.compute_visualization(ds, embeddings=X, method="pca")`` in all
  (writing the embeddings key, the run, the PNG and HTML plots; after one untimed run on 60
  points, so imports are not counted), with the run's own timings:
  PCA fit + transform, plots, trustworthiness@10 (on a 1,000-point sample), and, for
  comparison, ``sklearn.manifold.trustworthiness`` on the 5,000-point sample the previous
  code used.

Data are float32 Gaussian vectors with a fixed seed. These machines are shared: compare rows
within one run (the 1-minute load average is shown).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _dataset(data_dir: Path, name: str, n: int):
    import pandas as pd

    import dagster_brain as fob
    from dagster_brain.store import Store

    store = Store(data_dir)
    if name not in store.list_datasets():
        ids = [f"s{i:06d}" for i in range(n)]
        frame = pd.DataFrame(
            {
                "sample_id": ids,
                "filepath": [f"/bench/{i}.png" for i in ids],
                "tags": [[] for _ in ids],
                "content_hash": [f"h{i}" for i in ids],
            }
        )
        store.write_samples(name, frame)
    return fob.Dataset(name, store)


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_build(args: argparse.Namespace) -> dict:
    import dagster_brain as fob

    ds = _dataset(args.data_dir, "q", args.n)
    X = _vectors(args.n, args.dim, args.seed)
    t = time.perf_counter()
    fob.compute_similarity(ds, embeddings=X, brain_key="sim", backend="sklearn").close()
    return {"build_s": time.perf_counter() - t}


def worker_queries(args: argparse.Namespace) -> dict:
    import dagster_brain as fob
    from dagster_brain.similarity.compute import load_index
    from dagster_brain.similarity.index import INDEX_CACHE, clear_index_cache

    ds = _dataset(args.data_dir, "q", args.n)
    ids = [f"s{i:06d}" for i in range(args.queries)]

    def run(clear: bool) -> float:
        t = time.perf_counter()
        for q in ids:
            if clear:  # the previous code path: load the index, query it, close it
                index = load_index(ds.store, "q", "sim")
                index.sort_by_similarity(q, k=10)
                index.close()
            else:
                fob.sort_by_similarity(ds, q, k=10, brain_key="sim")
        return time.perf_counter() - t

    t = time.perf_counter()
    first = fob.sort_by_similarity(ds, ids[0], k=10, brain_key="sim")
    first_s = time.perf_counter() - t
    assert first.ids[0] == ids[0]
    clear_index_cache()  # else the cached client would be reused by load_index
    load_each = run(clear=True)
    fob.sort_by_similarity(ds, ids[0], k=10, brain_key="sim")  # into the cache again
    from dagster_brain.similarity import index

    margin, index.STAT_MARGIN_S = index.STAT_MARGIN_S, 1e9  # as if just written: re-read
    loads = INDEX_CACHE.loads
    repeated = run(clear=False)
    index.STAT_MARGIN_S = margin
    loads_repeated = INDEX_CACHE.loads - loads
    time.sleep(1.1)  # the store's files are now older than the one-second margin
    settled = run(clear=False)
    return {
        "first_s": first_s,
        "load_each_s": load_each,
        "repeated_s": repeated,
        "settled_s": settled,
        "loads_repeated": loads_repeated,
        "peak_mb": _peak_mb(),
    }


def worker_pca(args: argparse.Namespace) -> dict:
    import dagster_brain as fob
    from dagster_brain.algorithms.visualization import trustworthiness_at_k

    n = args.size
    warm = _dataset(args.data_dir, f"warm{n}", 60)  # imports and first-use costs, not timed
    fob.compute_visualization(
        warm, embeddings=_vectors(60, args.dim, 9), method="pca", brain_key="pca"
    )
    ds = _dataset(args.data_dir, f"v{n}", n)
    X = _vectors(n, args.dim, args.seed + 1)
    t = time.perf_counter()
    out = fob.compute_visualization(ds, embeddings=X, method="pca", brain_key="pca")
    total = time.perf_counter() - t
    timings = out.summary["timings"]
    peak = _peak_mb()
    # the previous code: sklearn's trustworthiness on up to 5,000 sampled points
    from sklearn.manifold import trustworthiness

    P = out.results[["x", "y"]].to_numpy(np.float32)
    idx = np.arange(n)
    if n > 5000:
        idx = np.random.default_rng(51).choice(n, size=5000, replace=False)
    t = time.perf_counter()
    old = trustworthiness(X[idx], P[idx], n_neighbors=10)
    old_s = time.perf_counter() - t
    t = time.perf_counter()
    new_all = trustworthiness_at_k(X, P, k=10)  # same sample as before, counted ranks
    new_all_s = time.perf_counter() - t
    return {
        "total_s": total,
        "pca_s": timings["fit_s"] + timings["transform_s"],
        "plots_s": timings["plots_s"],
        "trust_s": timings["trustworthiness_s"],
        "trust": out.summary["trustworthiness_at_10"],
        "trust_5000_sklearn_s": old_s,
        "trust_5000_sklearn": float(old),
        "trust_5000_counted_s": new_all_s,
        "trust_5000_counted": new_all,
        "peak_mb": peak,
    }


WORKERS = {"build": worker_build, "queries": worker_queries, "pca": worker_pca}


def _sub(kind: str, args: argparse.Namespace, **extra) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--data-dir",
        str(args.data_dir),
        "--n",
        str(args.n),
        "--dim",
        str(args.dim),
        "--queries",
        str(args.queries),
        "--seed",
        str(args.seed),
    ]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    env = {**os.environ, "BRAIN_CONFIG_PATH": str(args.data_dir / "none.json")}
    for var in ("DAGSTER_HOME", "BRAIN_DAGSTER_STORAGE_DIR"):
        env.setdefault(var, str(args.data_dir / "home"))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--n", type=int, default=2000, help="indexed vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--pca-sizes", default="1900,20000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_queries_") as tmp:
        args.data_dir = Path(tmp) / "data"
        build = _sub("build", args)
        q = _sub("queries", args)
        pcas = {int(s): _sub("pca", args, size=int(s)) for s in args.pca_sizes.split(",") if s}
    nq, shape = args.queries, f"{args.n}x{args.dim}"
    rows = [
        {"row": f"query first call ({shape}, sklearn)", "time_s": q["first_s"], "peak_mb": None},
        {"row": f"{nq} queries, load each (before)", "time_s": q["load_each_s"]},
        {"row": f"{nq} queries, repeated", "time_s": q["repeated_s"]},
        {"row": f"{nq} queries, repeated, settled", "time_s": q["settled_s"]},
    ]
    rows[0]["peak_mb"] = q["peak_mb"]
    for n, r in pcas.items():
        rows.append(
            {
                "row": f"pca {n}x{args.dim} (compute_visualization)",
                "time_s": r["total_s"],
                "peak_mb": r["peak_mb"],
                "detail": r,
            }
        )
    load = os.getloadavg()[0]
    print(f"load average (1 min): {load:.2f}; index built in {build['build_s']:.2f} s")
    print(f"{'row':<46} {'time_s':>8} {'peak_MB':>8}")
    for r in rows:
        mb = f"{r['peak_mb']:.0f}" if r.get("peak_mb") else ""
        print(f"{r['row']:<46} {r['time_s']:>8.3f} {mb:>8}")
    for n, r in pcas.items():
        print(
            f"  pca {n}: pca {r['pca_s']:.3f} s, plots {r['plots_s']:.3f} s, trustworthiness "
            f"{r['trust_s']:.3f} s (1,000-point sample: {r['trust']:.4f}); on the previous "
            f"5,000-point sample: sklearn {r['trust_5000_sklearn_s']:.3f} s "
            f"({r['trust_5000_sklearn']:.4f}), counted ranks {r['trust_5000_counted_s']:.3f} s "
            f"({r['trust_5000_counted']:.4f})"
        )
    print(f"repeated queries loaded the index {q['loads_repeated']} times")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "queries": q, "build": build, "pca": pcas}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
