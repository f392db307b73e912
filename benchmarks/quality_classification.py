"""Classification mistakenness on the digits demo: how well each scorer finds planted flips.

    python benchmarks/quality_classification.py [--seed 51]

The digits demo (``make_digits_demo``, made offline in a temporary folder) has 5% of its
ground-truth labels flipped to another digit and out-of-fold predictions whose logits are
log-probabilities. Every sample of the manifest (the 1,797 digits plus their 40 unflipped
near-duplicate copies) is scored; the positives are the flips listed in ``truth.json``.
Metrics: AUROC, average precision and precision@k with k = the number of planted flips.
Hardness (normalised entropy, no ground truth) is reported as an info line: it measures model
uncertainty, not label errors, so it is not expected to rank flips well.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from dagster_brain.algorithms.hardness import hardness
from dagster_brain.algorithms.mistakenness import (
    confident_learning_mistakenness,
    label_indices,
    probabilities,
    reference_mistakenness,
)
from dagster_brain.ingest.demo import make_digits_demo


def _metrics(method: str, scores: np.ndarray, positive: np.ndarray, seconds: float) -> dict:
    k = int(positive.sum())
    top = np.argsort(-scores, kind="stable")[:k]
    return {
        "method": method,
        "auroc": float(roc_auc_score(positive, scores)),
        "average_precision": float(average_precision_score(positive, scores)),
        "precision_at_k": float(positive[top].mean()),
        "k": k,
        "n": len(scores),
        "seconds": seconds,
    }


def classification_quality(seed: int = 51) -> list[dict]:
    """One row per scorer: AUROC, average precision, precision@k (k = planted flips)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = make_digits_demo(tmp, seed=seed)
        frame = pd.read_parquet(files.manifest)
        truth = files.load_truth()
    classes = truth["classes"]
    ids = frame["id"].tolist()
    flipped = {f["sample_id"] for f in truth["flips"]}
    positive = np.array([i in flipped for i in ids])
    logits = np.vstack(frame["logits"].to_numpy())
    rows = []

    t0 = time.perf_counter()
    ref = reference_mistakenness(
        frame["prediction"], frame["confidence"], frame["ground_truth"], ids=ids
    )
    rows.append(_metrics("reference (confidence)", ref, positive, time.perf_counter() - t0))

    t0 = time.perf_counter()
    ref_logits = reference_mistakenness(
        frame["prediction"],
        frame["confidence"],
        frame["ground_truth"],
        logits=logits,
        use_logits=True,
        ids=ids,
    )
    rows.append(_metrics("reference (use_logits)", ref_logits, positive, time.perf_counter() - t0))

    t0 = time.perf_counter()
    probs = probabilities(logits, frame["confidence"], frame["prediction"], classes, ids)
    gt = label_indices(frame["ground_truth"], classes, ids)
    cl, is_issue = confident_learning_mistakenness(probs, gt, classes, ids=ids)
    row = _metrics("confident learning", cl, positive, time.perf_counter() - t0)
    row["flagged"] = int(is_issue.sum())
    row["flag_precision"] = float(positive[is_issue].mean()) if is_issue.any() else 0.0
    row["flag_recall"] = float(is_issue[positive].mean())
    rows.append(row)

    t0 = time.perf_counter()
    hard = hardness(logits, ids)
    rows.append(_metrics("hardness (info)", hard, positive, time.perf_counter() - t0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=51)
    args = parser.parse_args()
    rows = classification_quality(seed=args.seed)
    print(f"digits demo, seed {args.seed}: {rows[0]['n']} samples, {rows[0]['k']} planted flips")
    print(f"{'method':<24} {'AUROC':>6} {'AP':>6} {'P@k':>6} {'secs':>6}")
    for r in rows:
        print(
            f"{r['method']:<24} {r['auroc']:6.3f} {r['average_precision']:6.3f} "
            f"{r['precision_at_k']:6.3f} {r['seconds']:6.2f}"
        )
    cl = next(r for r in rows if r["method"] == "confident learning")
    print(
        f"confident learning flagged {cl['flagged']} samples: "
        f"precision {cl['flag_precision']:.3f}, recall {cl['flag_recall']:.3f}"
    )


if __name__ == "__main__":
    main()
