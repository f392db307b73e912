"""Incremental visualization refresh vs a full UMAP fit: seconds and peak memory.

    nice -n 10 python benchmarks/visualization_incremental.py [--sizes 20000x128+1000 ...]

For each size ``NxD+B`` a store in a temporary folder gets N samples with D-dim vectors
(Gaussian clusters, seeded), then:

1. **full**: a UMAP visualization run of the N rows (fits the map, stores the reducer);
2. a batch of B new samples with vectors is added;
3. **incremental**: the same run again: it keeps the N points and places the B rows with the
   stored reducer (the script checks that it did);
4. **refit**: the same run with ``refit=True`` on all N + B rows, for the like-for-like cost.

Each run is timed in a fresh process (imports not counted; numba's compile time, which a
fresh Dagster run process also pays, is), whose peak RSS is reported. Times are wall seconds
of ``run_visualization`` (read, fit/place, plots, trustworthiness@10, commit).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DATASET, KEY, EMB = "bench", "viz", "vectors"


def clustered(n: int, d: int, seed: int, centres: int = 20) -> np.ndarray:
    """n rows of d-dim Gaussian clusters around seeded centres."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(12345).normal(size=(centres, d)) * 4
    return (means[rng.integers(0, centres, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def add_rows(root: str, ids: list[str], X: np.ndarray, first: bool) -> None:
    """Write samples and their vectors into the store at ``root``."""
    from dagster_brain.store import Store

    store = Store(Path(root))
    frame = pd.DataFrame({"sample_id": ids, "filepath": [f"/img/{i}.png" for i in ids]})
    frame["content_hash"] = ids
    store.write_samples(DATASET, frame)
    write = store.write_embeddings if first else store.update_embeddings
    write(DATASET, EMB, ids, X, model="bench")


def timed_run(root: str, refit: bool) -> tuple[float, float, bool, dict[str, float], float]:
    """(seconds, peak RSS MiB, incremental?, the run's timings, stored reducer MiB) of one
    visualization run; in a child process."""
    import umap  # noqa: F401  (import cost not counted)

    from dagster_brain.specs import VisualizationSpec
    from dagster_brain.store import Store
    from dagster_brain.visualization_runs import run_visualization

    spec = VisualizationSpec(
        brain_key=KEY, kind="visualization", dataset=DATASET, embeddings=EMB, refit=refit
    )
    store = Store(Path(root))
    t0 = time.perf_counter()
    out = run_visualization(spec, store)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    reducer = next(a["path"] for a in out.record.artifacts if a.get("role") == "reducer")
    size = Path(reducer).stat().st_size / 2**20
    return seconds, peak, bool(out.summary["incremental"]), out.summary["timings"], size


def in_child(fn, *args):
    """Run ``fn`` in a fresh process (its own peak RSS)."""
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def bench(n: int, d: int, batch: int) -> dict[str, Any]:
    """One size: full fit, incremental refresh, full refit."""
    X = clustered(n + batch, d, seed=0)
    ids = [f"s{i:07d}" for i in range(n + batch)]
    with tempfile.TemporaryDirectory() as root:
        add_rows(root, ids[:n], X[:n], first=True)
        full_s, full_mb, inc, full_steps, model_mb = in_child(timed_run, root, False)
        assert not inc
        add_rows(root, ids[n:], X[n:], first=False)
        inc_s, inc_mb, inc, steps, _ = in_child(timed_run, root, False)
        assert inc, "the refresh fitted the map again"
        refit_s, _, inc, refit_steps, _ = in_child(timed_run, root, True)
        assert not inc
    return {
        "N": n,
        "D": d,
        "batch": batch,
        "full_s": full_s,
        "incremental_s": inc_s,
        "refit_s": refit_s,
        "ratio": refit_s / inc_s,
        "full_rss_mib": full_mb,
        "incremental_rss_mib": inc_mb,
        "reducer_mib": model_mb,
        "steps": {
            name: {k: round(v, 2) for k, v in t.items() if k != "total_s"}
            for name, t in (("full", full_steps), ("incremental", steps), ("refit", refit_steps))
        },
    }


def parse_size(text: str) -> tuple[int, int, int]:
    """``20000x128+1000`` -> (20000, 128, 1000)."""
    rows, rest = text.split("x")
    dims, batch = rest.split("+")
    return int(rows), int(dims), int(batch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["20000x128+1000"])
    args = parser.parse_args(argv)
    head = (
        "| N | D | batch | full fit s (N) | incremental s | refit s (N+batch) | refit/incr | "
        "peak RSS full MiB | peak RSS incr MiB | reducer file MiB |"
    )
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    steps = []
    for size in args.sizes:
        r = bench(*parse_size(size))
        print(
            f"| {r['N']} | {r['D']} | {r['batch']} | {r['full_s']:.1f} | "
            f"{r['incremental_s']:.1f} | {r['refit_s']:.1f} | {r['ratio']:.1f}x | "
            f"{r['full_rss_mib']:.0f} | {r['incremental_rss_mib']:.0f} | {r['reducer_mib']:.1f} |",
            flush=True,
        )
        steps += [f"{size} {name} (s): {t}" for name, t in r["steps"].items()]
    print("\n".join(steps))


if __name__ == "__main__":
    sys.exit(main())
