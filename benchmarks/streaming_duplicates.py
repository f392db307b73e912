"""In-memory vs streamed duplicates and unique on milvus-lite and LanceDB: time, peak RSS,
planted-pair recall/precision.

    python benchmarks/streaming_duplicates.py            # 200,000 x 128
    python benchmarks/streaming_duplicates.py --quick    # 20,000 x 128, under 2 minutes

N x 128 Gaussian-mixture vectors with 1% planted near-copies go into a milvus-lite file and a
LanceDB table; each (backend, mode) runs in its own subprocess so that ``ru_maxrss`` is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 128
THRESH = 0.01  # cosine; planted copies sit near 0.0001, natural neighbours near 0.1+


def make_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 200), DIM))
    X = (centres[rng.integers(len(centres), size=n)] + 0.6 * rng.normal(size=(n, DIM))).astype(
        np.float32
    )
    n_copy = n // 100
    src = rng.choice(n - n_copy, n_copy, replace=False)
    X[n - n_copy :] = X[src] + 0.002 * rng.normal(size=(n_copy, DIM)).astype(np.float32)
    ids = [f"i{i:07d}" for i in range(n)]
    planted = {(ids[s], ids[n - n_copy + j]) for j, s in enumerate(src)}
    return X, ids, planted


def open_backend(kind: str, root: Path):
    if kind == "milvus":
        from dagster_brain.similarity.backends.milvus_backend import MilvusBackend

        return MilvusBackend("bench", DIM, "cosine", root, batch_size=5000)
    from dagster_brain.similarity.backends.lancedb_backend import LanceDBBackend

    return LanceDBBackend("bench", DIM, "cosine", root, index_threshold=10**9)


def child(kind: str, mode: str, task: str, root: Path, n: int, count: int, batch: int) -> dict:
    """One measurement in this process: returns its result and peak RSS."""
    from dagster_brain.algorithms.duplicates import find_duplicates, find_unique
    from dagster_brain.similarity.streaming import VectorSource, stream_duplicates, stream_unique

    backend = open_backend(kind, root)
    ids = [f"i{i:07d}" for i in range(n)]
    t0 = time.perf_counter()
    out: dict = {}
    if mode == "memory":
        got, X = backend.fetch(ids)
        if task == "duplicates":
            res = find_duplicates(X, got, thresh=THRESH, metric="cosine")
        else:
            out["unique"] = find_unique(X, got, count, metric="cosine")
    else:
        source = VectorSource(backend, ids, batch=batch)
        if task == "duplicates":
            res = stream_duplicates(source, THRESH, "cosine")
        else:
            out["unique"] = stream_unique(source, count, "cosine")
        out["passes"] = source.passes
    out["seconds"] = time.perf_counter() - t0
    if task == "duplicates":
        out["pairs"] = [
            list(p) for p in zip(res.all_pairs["id_a"], res.all_pairs["id_b"], strict=True)
        ]
        out["duplicates"] = len(res.duplicate_ids)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--count", type=int, default=100, help="unique items to pick")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="20,000 vectors, 50 unique picks")
    ap.add_argument("--backends", default="milvus,lancedb")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n, args.count = 20_000, 50
    if args.child:
        kind, mode, task, root, _ = args.child
        res = child(kind, mode, task, Path(root), args.n, args.count, args.batch)
        print(json.dumps(res))
        return
    X, ids, planted = make_data(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for kind in args.backends.split(","):
            root = Path(tmp) / kind
            t0 = time.perf_counter()
            backend = open_backend(kind, root)
            backend.upsert(ids, X)
            backend.close()
            print(
                f"{kind}: loaded {args.n} x {DIM} in {time.perf_counter() - t0:.1f} s", flush=True
            )
            results = {}
            for task in ("duplicates", "unique"):
                for mode in ("memory", "streamed"):
                    cmd = [sys.executable, __file__, "--n", str(args.n), "--count"]
                    cmd += [str(args.count), "--batch", str(args.batch)]
                    cmd += ["--child", kind, mode, task, str(root), "x"]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if done.returncode:
                        print(done.stderr[-2000:])
                        raise SystemExit(f"{kind} {mode} {task} failed")
                    res = json.loads(done.stdout.strip().splitlines()[-1])
                    results[(task, mode)] = res
                    extra = ""
                    if task == "duplicates":
                        got = {tuple(sorted(p)) for p in res["pairs"]}
                        want = {tuple(sorted(p)) for p in planted}
                        hit = len(got & want)
                        extra = (
                            f"recall {hit / len(want):.3f}, precision "
                            f"{hit / max(len(got), 1):.3f}, {res['duplicates']} duplicates"
                        )
                    rows.append(
                        f"| {kind} | {task} | {mode} | {res['seconds']:.1f} | "
                        f"{res['peak_rss_mb']:.0f} | {res.get('passes', '-')} | {extra} |"
                    )
                    print(rows[-1], flush=True)
            same_d = {tuple(sorted(p)) for p in results[("duplicates", "memory")]["pairs"]} == {
                tuple(sorted(p)) for p in results[("duplicates", "streamed")]["pairs"]
            }
            same_u = (
                results[("unique", "memory")]["unique"] == results[("unique", "streamed")]["unique"]
            )
            print(f"{kind}: same pairs {same_d}, same unique picks {same_u}", flush=True)
    print(f"\n{args.n} x {DIM}, thresh {THRESH} (cosine), {args.count} unique, batch {args.batch}")
    print("| backend | task | mode | seconds | peak RSS MB | passes | planted pairs |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
