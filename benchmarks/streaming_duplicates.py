"""In-memory vs streamed duplicates and unique on milvus-lite, a Milvus server and LanceDB:
time, peak RSS, planted-pair recall/precision.

    python benchmarks/streaming_duplicates.py            # 200,000 x 128
    python benchmarks/streaming_duplicates.py --quick    # 20,000 x 128, under 2 minutes
    python benchmarks/streaming_duplicates.py --backends milvus-server,lancedb \
        --tasks duplicates --json artifacts/streaming_duplicates.json

N x 128 Gaussian-mixture vectors with 1% planted near-copies go into each backend with its
default indexing (Milvus and LanceDB build an approximate index from 100,000 rows;
``--exact`` keeps them exact); each (backend, task, mode) runs in its own subprocess so that
``ru_maxrss`` is its own. ``milvus-server`` starts a Milvus 2.3.5 standalone server on a free
loopback port (tests/milvus_server.py; its own memory is not in the peak RSS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


BACKENDS = ("milvus", "milvus-server", "lancedb")


@contextlib.contextmanager
def milvus_server(data_dir: Path) -> Iterator[str]:
    """A Milvus server started as the tests start theirs (tests/milvus_server.py): its URI."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from milvus_server import milvus_server as start

    with start(data_dir) as uri:
        yield uri


def open_backend(kind: str, root: Path, uri: str | None, args: argparse.Namespace):
    """The benchmark's collection on ``kind`` (``--exact``: no approximate index;
    ``--index-threshold``: the rows from which one is built, else the backend's default)."""
    opts = {} if args.index_threshold is None else {"index_threshold": args.index_threshold}
    if kind.startswith("milvus"):
        from dagster_brain.similarity.backends.milvus_backend import MilvusBackend

        return MilvusBackend(
            "bench", DIM, "cosine", root, uri=uri, batch_size=5000, exact_search=args.exact, **opts
        )
    from dagster_brain.similarity.backends.lancedb_backend import LanceDBBackend

    if args.exact:
        opts["index_threshold"] = 10**9
    return LanceDBBackend("bench", DIM, "cosine", root, **opts)


def child(
    kind: str,
    mode: str,
    task: str,
    root: Path,
    args: argparse.Namespace,
    uri: str | None,
) -> dict:
    """One measurement in this process: returns its result and peak RSS."""
    from dagster_brain.algorithms.duplicates import find_duplicates, find_unique
    from dagster_brain.similarity.streaming import VectorSource, stream_duplicates, stream_unique

    n, count, batch = args.n, args.count, args.batch
    backend = open_backend(kind, root, uri, args)
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
    out["index"] = backend.describe().get("index_type") or ("exact" if backend.exact else "ann")
    backend.close()
    return out


def run_child(
    kind: str, mode: str, task: str, root: Path, args: argparse.Namespace, uri: str | None
) -> dict:
    """One measurement in a subprocess (its own peak RSS)."""
    cmd = [sys.executable, __file__, "--n", str(args.n), "--count", str(args.count)]
    cmd += ["--batch", str(args.batch), *(["--exact"] if args.exact else [])]
    if args.index_threshold is not None:
        cmd += ["--index-threshold", str(args.index_threshold)]
    cmd += ["--child", kind, mode, task, str(root), uri or "-"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        print(done.stderr[-2000:])
        raise SystemExit(f"{kind} {mode} {task} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pair_set(pairs: list) -> set[tuple[str, str]]:
    """Unordered pairs as sorted tuples."""
    return {tuple(sorted(p)) for p in pairs}


def score(res: dict, planted: set) -> dict:
    """Planted-pair recall and precision of a duplicates result."""
    got, want = pair_set(res["pairs"]), pair_set(planted)
    hit = len(got & want)
    return {
        "recall": round(hit / len(want), 4),
        "precision": round(hit / max(len(got), 1), 4),
        "pairs_found": len(got),
        "duplicates": res["duplicates"],
    }


def bench_backend(
    kind: str, root: Path, args: argparse.Namespace, data: tuple, uri: str | None
) -> list[dict]:
    """Load the vectors into ``kind``, then every (task, mode): one row each."""
    X, ids, planted = data
    t0 = time.perf_counter()
    backend = open_backend(kind, root, uri, args)
    backend.upsert(ids, X)  # builds the approximate index once past its threshold
    index = backend.describe().get("index_type") or ("exact" if backend.exact else "ann")
    backend.close()
    load_s = time.perf_counter() - t0
    print(f"{kind}: loaded {args.n} x {DIM} in {load_s:.1f} s (index {index})", flush=True)
    rows, results = [], {}
    for task in args.tasks.split(","):
        for mode in ("memory", "streamed"):
            res = run_child(kind, mode, task, root, args, uri)
            results[(task, mode)] = res
            row = {
                "backend": kind,
                "n": args.n,
                "task": task,
                "mode": mode,
                "index": res["index"],
                "load_s": round(load_s, 1),
                "seconds": round(res["seconds"], 1),
                "peak_rss_mb": round(res["peak_rss_mb"]),
                "passes": res.get("passes"),
            }
            if task == "duplicates":
                row.update(score(res, planted))
            rows.append(row)
            print(json.dumps(row), flush=True)
        memory, streamed = results[(task, "memory")], results[(task, "streamed")]
        if task == "duplicates":
            same = pair_set(memory["pairs"]) == pair_set(streamed["pairs"])
        else:
            same = memory["unique"] == streamed["unique"]
        for row in rows[-2:]:
            row["same_as_memory"] = same
    return rows


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """The rows as a markdown table."""
    print(f"\n{args.n} x {DIM}, thresh {THRESH} (cosine), {args.count} unique, batch {args.batch}")
    print(
        "| backend | index | load s | task | mode | seconds | peak RSS MB | passes | recall "
        "| precision | same as in-memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['index']} | {r['load_s']} | {r['task']} | {r['mode']} | "
            f"{r['seconds']} | "
            f"{r['peak_rss_mb']} | {r['passes'] or '-'} | {r.get('recall', '-')} | "
            f"{r.get('precision', '-')} | {r['same_as_memory']} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--count", type=int, default=100, help="unique items to pick")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="20,000 vectors, 50 unique picks")
    ap.add_argument("--backends", default="milvus,lancedb", help=f"any of {', '.join(BACKENDS)}")
    ap.add_argument("--tasks", default="duplicates,unique")
    ap.add_argument("--exact", action="store_true", help="no approximate index (brute force)")
    ap.add_argument("--index-threshold", type=int, help="rows from which the index is built")
    ap.add_argument("--json", help="write the table's rows to this file")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n, args.count = 20_000, 50
    if args.child:
        kind, mode, task, root, uri = args.child
        res = child(kind, mode, task, Path(root), args, None if uri == "-" else uri)
        print(json.dumps(res))
        return
    kinds = args.backends.split(",")
    unknown = sorted(set(kinds) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"unknown backends {unknown}: choose from {', '.join(BACKENDS)}")
    data = make_data(args.n)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            server = kind == "milvus-server"
            where = milvus_server(Path(tmp) / "server") if server else contextlib.nullcontext()
            with where as uri:
                rows += bench_backend(kind, Path(tmp) / kind, args, data, uri)
    print_table(rows, args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
