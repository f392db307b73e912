"""Where an approximate Milvus index starts to pay: FLAT vs IVF_FLAT vs HNSW by collection size.

    python benchmarks/milvus_index_threshold.py                       # milvus-lite
    python benchmarks/milvus_index_threshold.py --server              # a Milvus 2.3.5 server
    python benchmarks/milvus_index_threshold.py --sizes 25000,50000 --json out.json

For each size, N x 128 Gaussian-mixture vectors (the streaming benchmark's data) go into one
collection under FLAT; then each index type is built (timed: the first query of a backend
opened with ``build_index=True`` builds it) and ``--queries`` items ask for their 17 nearest,
as a streamed duplicates page does. ``pass_s`` estimates one streamed-duplicates pass over
the collection: build + N x (seconds per query). Recall@17 is against FLAT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming_duplicates import DIM, make_data, milvus_server  # noqa: E402

from dagster_brain.similarity.backends.milvus_backend import MilvusBackend  # noqa: E402

K = 17  # a streamed duplicates page asks 16 neighbours and the item itself


def measure(
    root: Path, uri: str | None, n: int, kind: str, queries: int, want: list | None
) -> tuple[dict, list]:
    """Build ``kind`` on the ``n``-row collection and time ``queries`` top-17 searches."""
    X, _, _ = make_data(n)
    Q = X[:: max(1, n // queries)][:queries]
    reset = MilvusBackend(f"t{n}", DIM, "cosine", root, uri=uri, exact_search=True)
    reset.query(Q[:1], K)  # back to FLAT (an approximate index, once built, is kept)
    reset.close()
    opts = {"exact_search": True} if kind == "FLAT" else {"build_index": True, "index_type": kind}
    backend = MilvusBackend(f"t{n}", DIM, "cosine", root, uri=uri, batch_size=5000, **opts)
    try:
        t0 = time.perf_counter()
        backend.query(Q[:1], K)  # the first query swaps the index
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        got, _ = backend.query(Q, K)
        per_query = (time.perf_counter() - t0) / len(Q)
    finally:
        backend.close()
    recall = (
        1.0
        if want is None
        else float(np.mean([len(set(a) & set(b)) / K for a, b in zip(got, want, strict=True)]))
    )
    row = {
        "n": n,
        "index": kind,
        "build_s": round(build, 2),
        "ms_per_query": round(1e3 * per_query, 3),
        "pass_s": round(build + n * per_query, 1),
        f"recall@{K}": round(recall, 4),
    }
    return row, got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="25000,50000,100000,200000")
    ap.add_argument("--kinds", default="FLAT,IVF_FLAT,HNSW")
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--server", action="store_true", help="a Milvus 2.3.5 standalone server")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        where = milvus_server(Path(tmp) / "server") if args.server else contextlib.nullcontext()
        with where as uri:
            for n in (int(s) for s in args.sizes.split(",")):
                X, ids, _ = make_data(n)
                root = Path(tmp) / f"n{n}"
                loader = MilvusBackend(
                    f"t{n}", DIM, "cosine", root, uri=uri, batch_size=5000, exact_search=True
                )
                loader.upsert(ids, X)
                loader.close()
                want = None
                for kind in args.kinds.split(","):
                    row, got = measure(root, uri, n, kind, args.queries, want)
                    want = got if kind == "FLAT" else want
                    rows.append({"backend": "milvus-server" if uri else "milvus-lite", **row})
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| backend | n | index | build s | ms/query | est. pass s | recall@17 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['n']} | {r['index']} | {r['build_s']} | "
            f"{r['ms_per_query']} | {r['pass_s']} | {r[f'recall@{K}']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
