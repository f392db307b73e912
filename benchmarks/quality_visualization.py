"""Visualization quality on the digits demo pixels: trustworthiness@10 and time per stage.

    python benchmarks/quality_visualization.py [--json OUT.json] [--plots DIR] [--seed 51]

Data: scikit-learn ``load_digits()`` (1,797 8x8 images, 64 pixel features, 10 classes).
Rows, all in one process and in this order (UMAP's numba JIT is paid by the first UMAP row):

- ``pca``: PCA to 2-D;
- ``umap (cold)``: the first UMAP in the process, so ``fit_s`` includes the JIT;
- ``umap (warm)``: the same call again (the steady-state cost);
- ``umap max_fit=600``: fit on 600 sampled rows, ``transform`` the other 1,197 (its first
  ``transform`` compiles too);
- ``tsne``: scikit-learn Barnes-Hut t-SNE (perplexity 30).

Per row: ``fit_s``, ``transform_s``, ``total_s`` (from ``Reduction.timings``), trustworthiness
at k=10 (``trust_s`` = its own cost) and the silhouette of the digit classes in the 2-D points
(higher = classes better separated). These machines are shared: compare rows within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import silhouette_score

from dagster_brain.algorithms.visualization import (
    reduce,
    scatter_html,
    scatter_png,
    trustworthiness_at_k,
)

RUNS = (
    ("pca", "pca", {}),
    ("umap (cold)", "umap", {}),
    ("umap (warm)", "umap", {}),
    ("umap max_fit=600", "umap", {"max_fit": 600}),
    ("tsne", "tsne", {}),
)


def visualization_quality(seed: int = 51, plot_dir: Path | None = None) -> list[dict]:
    """One row per reducer run on the digits pixels (see module docstring)."""
    digits = load_digits()
    X = digits.data.astype(np.float32)
    y = digits.target
    ids = [f"digit_{i:04d}" for i in range(len(X))]
    rows = []
    for name, method, kwargs in RUNS:
        r = reduce(X, ids, method, seed=seed, **kwargs)
        t0 = time.perf_counter()
        trust = trustworthiness_at_k(X, r.points, k=10)
        trust_s = time.perf_counter() - t0
        rows.append(
            {
                "run": name,
                "method": method,
                "n": len(ids),
                "fit_size": r.fit_size,
                "fit_s": round(r.timings["fit_s"], 3),
                "transform_s": round(r.timings["transform_s"], 3),
                "total_s": round(r.timings["total_s"], 3),
                "trustworthiness@10": round(trust, 4),
                "trust_s": round(trust_s, 3),
                "silhouette_digits": round(float(silhouette_score(r.points, y)), 4),
            }
        )
        if plot_dir is not None:
            plot_dir.mkdir(parents=True, exist_ok=True)
            stem = name.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
            t0 = time.perf_counter()
            png = scatter_png(r.points, labels=y, title=f"digits: {name}")
            page = scatter_html(r.points, ids, labels=y, title=f"digits: {name}")
            rows[-1]["plots_s"] = round(time.perf_counter() - t0, 3)
            (plot_dir / f"{stem}.png").write_bytes(png)
            (plot_dir / f"{stem}.html").write_text(page)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--plots", type=Path, help="write a PNG and an HTML page per run here")
    parser.add_argument("--seed", type=int, default=51)
    args = parser.parse_args(argv)
    rows = visualization_quality(seed=args.seed, plot_dir=args.plots)
    cols = list(rows[0])
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
