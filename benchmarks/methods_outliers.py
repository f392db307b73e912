"""Outliers: planted out-of-distribution items among handwritten digits; AUROC / AP of the
``outlier`` score (and of ``class_outlier``) per kind and rate, against a 1-NN baseline.

    python benchmarks/methods_outliers.py [--quick] [--seeds 0 1 2] [--json OUT]

The inliers are scikit-learn's 1,797 digits (8 x 8, 16 grey levels), each item's embedding
its 64 pixels. Planted at ``rate`` (1%, 2%, 5% of the inliers), one kind per run:
``noise`` (uniform random pixels), ``photo`` (8 x 8 grey crops of scikit-learn's bundled
``china.jpg`` / ``flower.jpg``, another data set's images, rescaled to 0-16) and ``inverted``
(digits with their grey levels flipped, 16 - x). Planted items get a random digit label for
the per-class score. Scores come from ``algorithms/outliers.py`` with the method's default
k = 16 and the euclidean metric (the vectors are pixels, whose brightness matters: cosine
ignores it and is shown beside, with no bar); the baseline ranks by the distance to the
nearest neighbour alone. k = 16 was chosen on tuning seeds 100-101 (the smallest k of 5, 8,
10, 16, 24, 32 with mean AUROC >= 0.95 on every kind and rate there); the report uses seeds
0-2. The bar (issue 15): the ``outlier`` AUROC averaged over seeds is >= 0.95 for every kind
and rate. Planted items that cluster (5% inverted digits, many smooth photo crops) are the
hard case: a smaller k sees them as each other's neighbours.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits, load_sample_images
from sklearn.metrics import average_precision_score, roc_auc_score

from dagster_brain.algorithms.knn_graph import build_knn_graph
from dagster_brain.algorithms.outliers import class_outlier_scores, outliers_from_graph

KINDS = ("noise", "photo", "inverted")
RATES = (0.01, 0.02, 0.05)
SEEDS = (0, 1, 2)
K = 16  # the method's default
METRIC = "euclidean"
BAR = 0.95


def _photo_crops(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random 8 x 8 grey crops (from 16-64 px squares) of the bundled photographs."""
    images = [im.mean(axis=2) for im in load_sample_images().images]
    out = np.empty((n, 64))
    for i in range(n):
        img = images[rng.integers(len(images))]
        side = int(rng.integers(16, 65))
        y, x = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        crop = img[y : y + side, x : x + side]
        step = side // 8
        small = crop[: 8 * step, : 8 * step].reshape(8, step, 8, step).mean(axis=(1, 3))
        out[i] = (small.ravel() - small.min()) / max(np.ptp(small), 1e-9) * 16
    return out


def planted(kind: str, rate: float, seed: int):
    """(vectors, ids, labels, is_planted): the digits and ``rate`` of them planted as ``kind``."""
    rng = np.random.default_rng(seed)
    digits = load_digits()
    X, y = digits.data.astype(np.float64), digits.target.astype(str)
    n = max(1, round(rate * len(X)))
    if kind == "noise":
        extra = rng.uniform(0, 16, size=(n, 64))
    elif kind == "photo":
        extra = _photo_crops(n, rng)
    elif kind == "inverted":
        extra = 16 - X[rng.choice(len(X), n, replace=False)]
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    V = np.vstack([X, extra]).astype(np.float32)
    labels = np.r_[y, rng.integers(0, 10, n).astype(str)]
    truth = np.r_[np.zeros(len(X), bool), np.ones(n, bool)]
    order = rng.permutation(len(V))
    ids = [f"s{i:05d}" for i in range(len(V))]
    return V[order], ids, labels[order].tolist(), truth[order]


def measure(kind: str, rate: float, seed: int) -> dict:
    """AUROC / AP of the outlier score, the class score and the 1-NN baseline on one draw."""
    V, ids, labels, truth = planted(kind, rate, seed)
    t0 = time.perf_counter()
    graph = build_knn_graph(V, ids, K, METRIC)
    glob = outliers_from_graph(graph, K)
    seconds = time.perf_counter() - t0
    per = class_outlier_scores(V, ids, labels, k=K, metric=METRIC, graph=graph).scores
    cos = outliers_from_graph(build_knn_graph(V, ids, K, "cosine"), K)
    nn = graph.distances[:, 0].astype(np.float64)
    return {
        "kind": kind,
        "rate": rate,
        "seed": seed,
        "items": len(ids),
        "planted": int(truth.sum()),
        "auroc": float(roc_auc_score(truth, glob.score)),
        "ap": float(average_precision_score(truth, glob.score)),
        "flag_recall": float(glob.flagged[truth].mean()),
        "flag_precision": float(truth[glob.flagged].mean()) if glob.flagged.any() else 0.0,
        "class_auroc": float(roc_auc_score(truth, per.score)),
        "class_ap": float(average_precision_score(truth, per.score)),
        "cosine_auroc": float(roc_auc_score(truth, cos.score)),
        "nn_auroc": float(roc_auc_score(truth, nn)),
        "nn_ap": float(average_precision_score(truth, nn)),
        "seconds": seconds,
    }


def run(quick: bool = False, seeds=SEEDS) -> dict:
    """Rows per draw, means per (kind, rate), and the bar: mean outlier AUROC >= 0.95."""
    t0 = time.perf_counter()
    seeds = tuple(seeds)[:1] if quick else tuple(seeds)
    rows = [measure(kind, rate, s) for kind in KINDS for rate in RATES for s in seeds]
    means = []
    for kind in KINDS:
        for rate in RATES:
            mine = [r for r in rows if r["kind"] == kind and r["rate"] == rate]
            mean = {
                m: float(np.mean([r[m] for r in mine]))
                for m in mine[0]
                if m not in ("kind", "rate", "seed")
            }
            means.append({"kind": kind, "rate": rate, **mean})
    bars = {
        f"outlier AUROC >= {BAR} on {m['kind']} at {m['rate']:.0%}": m["auroc"] >= BAR
        for m in means
    }
    return {
        "seeds": list(seeds),
        "k": K,
        "metric": METRIC,
        "rows": rows,
        "means": means,
        "bars": bars,
        "passed": all(bars.values()),
        "seconds": time.perf_counter() - t0,
    }


def table(result: dict) -> str:
    """The means as a text table, then the bars."""
    head = (
        f"{'kind':<9}{'rate':>6}{'n':>6}{'AUROC':>8}{'AP':>7}{'flagP':>7}{'flagR':>7}"
        f"{'clsAUROC':>10}{'clsAP':>7}{'1nnAUROC':>10}{'1nnAP':>7}{'cosAUROC':>10}"
    )
    lines = [head]
    for m in result["means"]:
        lines.append(
            f"{m['kind']:<9}{m['rate']:>6.0%}{m['planted']:>6.0f}{m['auroc']:>8.3f}{m['ap']:>7.3f}"
            f"{m['flag_precision']:>7.2f}{m['flag_recall']:>7.2f}{m['class_auroc']:>10.3f}"
            f"{m['class_ap']:>7.3f}{m['nn_auroc']:>10.3f}{m['nn_ap']:>7.3f}"
            f"{m['cosine_auroc']:>10.3f}"
        )
    lines.append(
        f"seeds {result['seeds']}, k={result['k']}, {result['metric']}, {result['seconds']:.1f} s"
    )
    for bar, ok in result["bars"].items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {bar}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    result = run(quick=args.quick, seeds=args.seeds)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
