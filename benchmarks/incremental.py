"""A batch into a large index: incremental update vs full rebuild.

    python benchmarks/incremental.py --json OUT.json [--n 50000] [--batch 1000] [--dim 512]
        [--images 128]

Measured in one run, printed as one table:

- ``full rebuild``: a store holding the n + batch samples; write all their embeddings, build
  the similarity index (sklearn backend, exact) and compute uniqueness from scratch;
- ``incremental``: a store holding n samples with their embeddings, index and uniqueness run
  (prepared untimed); ingest the batch's samples, add its embeddings to the key
  (``update_embeddings``), update the index in place (``add_to_index``) and refresh
  uniqueness from its stored kNN graph (``update_knn_graph``).

Both end with the same data; the benchmark checks the incremental uniqueness scores equal the
rebuild's. Vectors are precomputed (a Gaussian mixture with low intrinsic dimension, as in
``knn.py``), so these rows time the store, the index and the scores alone. A rebuild also
re-embeds every image where an update embeds only the batch's: the default model's rate is
measured in the same run on ``--images`` real JPEGs (640x480, as in ``embeddings.py``) and
the ``end to end`` rows add (items embedded) / (that rate) to each mode. Each mode runs in a
fresh subprocess, so its peak RSS (``ru_maxrss``) is its own. Target: incremental <= 10% of
the rebuild.
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
sys.path.insert(0, str(REPO / "benchmarks"))
TARGET = 0.10
DATASET = "bench"
MODEL = "efficientnet-lite0"  # the default model's name: vectors as if it made them


def _samples(ids: list[str]):
    import pandas as pd

    return pd.DataFrame(
        {"sample_id": ids, "filepath": [f"/bench/{i}.jpg" for i in ids], "content_hash": ids}
    )


def _specs():
    from dagster_brain.specs import SimilaritySpec, UniquenessSpec

    sim = SimilaritySpec(brain_key="sim", kind="similarity", dataset=DATASET, embeddings="e")
    uniq = UniquenessSpec(brain_key="uniq", kind="uniqueness", dataset=DATASET, embeddings="e")
    return sim, uniq


def worker(mode: str, root: Path, n: int, batch: int) -> dict:
    """One mode, timed phase by phase (runs in its own process)."""
    from dagster_brain.methods import run_brain
    from dagster_brain.similarity.compute import SampleChange
    from dagster_brain.store import Store

    X = np.load(root / "vectors.npy", mmap_mode="r")
    ids = [f"s{i:07d}" for i in range(n + batch)]
    sim, uniq = _specs()
    times: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t
        return out

    if mode == "prepare":  # the store before the batch (untimed by the parent)
        store = Store(root / "incremental")
        store.write_samples(DATASET, _samples(ids[:n]))
        store.write_embeddings(DATASET, "e", ids[:n], np.asarray(X[:n]), model=MODEL)
        run_brain(sim, store)
        run_brain(uniq, store)
        return {"mode": mode}
    if mode == "full":
        store = Store(root / "full")
        timed("samples", lambda: store.write_samples(DATASET, _samples(ids)))
        timed(
            "embeddings",
            lambda: store.write_embeddings(DATASET, "e", ids, np.asarray(X), model=MODEL),
        )
        timed("index", lambda: run_brain(sim, store))
        out = timed("uniqueness", lambda: run_brain(uniq, store))
    else:
        store = Store(root / "incremental")
        new = ids[n:]
        timed("samples", lambda: store.write_samples(DATASET, _samples(new)))
        timed(
            "embeddings",
            lambda: store.update_embeddings(DATASET, "e", new, np.asarray(X[n:]), model=MODEL),
        )
        timed("index", lambda: run_brain(sim, store, change=SampleChange(new)))
        out = timed("uniqueness", lambda: run_brain(uniq, store))
        assert out.summary["incremental"], "the uniqueness refresh did not use its graph"
    scores = out.results.sort_values("sample_id")["uniqueness"].to_numpy()
    np.save(root / f"scores_{mode}.npy", scores)
    return {
        "mode": mode,
        "items": len(ids),
        "times_s": {k: round(v, 3) for k, v in times.items()},
        "total_s": round(sum(times.values()), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def embed_rate(root: Path, images: int) -> float:
    """Images per second of the default model on this machine (decode + model, batch 16)."""
    from embeddings import make_images

    from dagster_brain.embedding.models import load_model
    from dagster_brain.embedding.pipeline import embed_files

    folder = root / "images"
    folder.mkdir()
    paths = make_images(folder, images)
    model = load_model("efficientnet-lite0", device="auto")
    embed_files(model, paths[:16], [str(i) for i in range(16)], batch_size=16)  # warm-up
    t = time.perf_counter()
    embed_files(model, paths, [str(i) for i in range(len(paths))], batch_size=16)
    return len(paths) / (time.perf_counter() - t)


def _run(mode: str, root: Path, n: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--root", str(root)]
    cmd += ["--n", str(n), "--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    head = ("items", "embedded", "samples", "vectors", "index", "uniq", "model s", "total s")
    print(f"{'mode':<26}" + "".join(f"{h:>9}" for h in head) + f"{'peak MB':>9}{'x full':>8}")
    for r in rows:
        t = r["times_s"]
        cells = (
            r["items"],
            r["embedded"],
            t["samples"],
            t["embeddings"],
            t["index"],
            t["uniqueness"],
            r["model_s"],
            r["total_s"],
        )
        print(
            f"{r['mode']:<26}"
            + "".join(f"{c:>9}" if isinstance(c, int) else f"{c:>9.2f}" for c in cells)
            + f"{r['peak_rss_mb']:>9.0f}{r['ratio']:>8.3f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--n", type=int, default=50_000, help="items already indexed")
    p.add_argument("--batch", type=int, default=1_000, help="items in the new batch")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=128, help="JPEGs to time the model on (0: skip)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.root, args.n, args.batch)))
        return

    from knn import clustered

    with tempfile.TemporaryDirectory(prefix="brain-incremental-") as tmp:
        root = Path(tmp)
        np.save(root / "vectors.npy", clustered(args.n + args.batch, args.dim, args.seed))
        t = time.perf_counter()
        _run("prepare", root, args.n, args.batch)
        prepare_s = time.perf_counter() - t
        full = _run("full", root, args.n, args.batch)
        inc = _run("incremental", root, args.n, args.batch)
        same = np.allclose(
            np.load(root / "scores_full.npy"), np.load(root / "scores_incremental.npy"), atol=1e-6
        )
        rate = embed_rate(root, args.images) if args.images else None
    full["mode"], inc["mode"] = "full rebuild", "incremental"
    full["embedded"], inc["embedded"] = args.n + args.batch, args.batch
    rows = []
    for with_model in (False, True) if rate else (False,):
        pair = []
        for r in (full, inc):
            model_s = r["embedded"] / rate if with_model else 0.0
            mode = r["mode"] + (", end to end" if with_model else "")
            pair.append({**r, "mode": mode, "model_s": model_s, "total_s": r["total_s"] + model_s})
        for r in pair:
            r["ratio"] = r["total_s"] / pair[0]["total_s"]
        rows += pair
    ratios = {
        ("end_to_end" if "end to end" in r["mode"] else "store_index_scores"): r["ratio"]
        for r in rows
        if r["mode"].startswith("incremental")
    }
    print(
        f"{args.batch} new items into {args.n} x {args.dim} (sklearn index + uniqueness); "
        f"load {os.getloadavg()[0]:.1f}; untimed preparation {prepare_s:.1f} s"
        + (f"; model {rate:.1f} img/s on {args.images} JPEGs" if rate else "")
    )
    print_table(rows)
    print(
        "incremental / full: "
        + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
        + f" (target <= {TARGET}); scores equal to the rebuild's: {same}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "n": args.n,
                    "batch": args.batch,
                    "dim": args.dim,
                    "model_images_per_s": rate,
                    "rows": rows,
                    "ratios": ratios,
                    "target": TARGET,
                    "scores_equal": bool(same),
                },
                indent=2,
            )
        )
    if not same:
        sys.exit("incremental uniqueness differs from the rebuild")


if __name__ == "__main__":
    main()
