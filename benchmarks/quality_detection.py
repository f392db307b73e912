"""Detection mistakenness on the shapes demo: how well each score and flag finds planted errors.

    python benchmarks/quality_detection.py [--seed 51]

``make_shapes_demo`` is written to a temporary folder; its COCO ``annotations.json`` and
``predictions.json`` are read as label frames (label ids ``ground_truth:<annotation id>`` and
``predictions:<1-based result index>``, as the COCO ingester names them; boxes divided by the
image size) and ``truth.json`` says which labels were planted. Rows:

- ``mislabel`` / ``localisation``: ``mistakenness`` / ``mistakenness_loc`` over all GT boxes,
  positives = planted ``mislabeled`` / ``shifted`` boxes: AUROC, AP, P@k with k = #planted.
- ``missing`` / ``spurious``: the boolean flags, positives = planted ``missing`` predictions /
  ``spurious`` GT boxes: precision and recall.

Methods: ``ours`` = :func:`detection_mistakenness` with its defaults; ``reference`` = the
reference's rules (§13 of the brain reference): one class-agnostic match at IoU 0.5, label
score ``confidence`` if classes differ else ``1 - confidence``, localisation ``1 - IoU`` for
matched boxes, missing = unmatched prediction with confidence > 0.95, spurious = every
unmatched GT box.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from dagster_brain.algorithms.detection_mistakenness import detection_mistakenness
from dagster_brain.algorithms.matching import match_detections
from dagster_brain.ingest.demo import make_shapes_demo


def load_shapes(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """GT and prediction label frames (relative boxes) and the parsed truth."""
    ann = json.loads((root / "annotations.json").read_text())
    preds = json.loads((root / "predictions.json").read_text())
    truth = json.loads((root / "truth.json").read_text())
    images = {im["id"]: im for im in ann["images"]}
    cats = {c["id"]: c["name"] for c in ann["categories"]}

    def rel(image_id: int, bbox: list[float]) -> list[float]:
        im = images[image_id]
        w, h = im["width"], im["height"]
        return [bbox[0] / w, bbox[1] / h, bbox[2] / w, bbox[3] / h]

    def sample(image_id: int) -> str:
        return images[image_id]["file_name"].rsplit(".", 1)[0]

    gt = pd.DataFrame(
        {
            "sample_id": [sample(a["image_id"]) for a in ann["annotations"]],
            "label_id": [f"ground_truth:{a['id']}" for a in ann["annotations"]],
            "label": [cats[a["category_id"]] for a in ann["annotations"]],
            "box": [rel(a["image_id"], a["bbox"]) for a in ann["annotations"]],
        }
    )
    pred = pd.DataFrame(
        {
            "sample_id": [sample(p["image_id"]) for p in preds],
            "label_id": [f"predictions:{n}" for n in range(1, len(preds) + 1)],
            "label": [cats[p["category_id"]] for p in preds],
            "box": [rel(p["image_id"], p["bbox"]) for p in preds],
            "confidence": [p["score"] for p in preds],
        }
    )
    return gt, pred, truth


def reference_rules(gt: pd.DataFrame, pred: pd.DataFrame) -> dict[str, pd.Series]:
    """The reference's detection rules, built on the shared matcher (class-agnostic, IoU 0.5)."""
    m = match_detections(gt, pred, 0.5, class_aware=False)
    pairs = m[m["match"].isin(["same_class", "cross_class"])].set_index("gt_label_id")
    pairs = pairs.reindex(gt["label_id"])
    c = pairs["confidence"].to_numpy()
    same = (pairs["match"] == "same_class").to_numpy()
    mist = np.where(same, 1 - c, c)
    loose = m[m["match"] == "unmatched_pred"]
    missing = set(loose.loc[loose["confidence"] > 0.95, "pred_label_id"])
    spurious = set(m.loc[m["match"] == "unmatched_gt", "gt_label_id"])
    return {
        "mistakenness": pd.Series(np.nan_to_num(mist, nan=0.0), index=gt["label_id"]),
        "mistakenness_loc": pd.Series(
            np.nan_to_num(1 - pairs["iou"].to_numpy(), nan=0.0), index=gt["label_id"]
        ),
        "possible_missing": pred["label_id"].isin(missing).set_axis(pred["label_id"]),
        "possible_spurious": gt["label_id"].isin(spurious).set_axis(gt["label_id"]),
    }


def _ranking(score: pd.Series, positives: set[str]) -> dict:
    y = score.index.isin(list(positives)).astype(int)
    k = int(y.sum())
    top = np.argsort(-score.to_numpy(), kind="stable")[:k]
    return {
        "auroc": float(roc_auc_score(y, score)),
        "ap": float(average_precision_score(y, score)),
        "p_at_k": float(y[top].mean()) if k else float("nan"),
        "k": k,
    }


def _flags(flag: pd.Series, positives: set[str]) -> dict:
    y = flag.index.isin(list(positives))
    f = flag.to_numpy(dtype=bool)
    tp = int((f & y).sum())
    return {
        "precision": tp / f.sum() if f.sum() else float("nan"),
        "recall": tp / y.sum() if y.sum() else float("nan"),
        "flagged": int(f.sum()),
        "k": int(y.sum()),
    }


def detection_quality(seed: int = 51) -> list[dict]:
    """One row per (method, error kind) with ranking or flag metrics on the shapes demo."""
    with tempfile.TemporaryDirectory() as tmp:
        make_shapes_demo(Path(tmp) / "shapes", seed=seed)
        gt, pred, truth = load_shapes(Path(tmp) / "shapes")
    planted = {k: {e["label_id"] for e in truth[k]} for k in ("mislabeled", "shifted", "missing")}
    planted["spurious"] = {e["label_id"] for e in truth["spurious"]}

    res = detection_mistakenness(gt, pred)
    ours = {
        "mistakenness": res.gt.set_index("label_id")["mistakenness"],
        "mistakenness_loc": res.gt.set_index("label_id")["mistakenness_loc"],
        "possible_missing": res.pred.set_index("label_id")["possible_missing"],
        "possible_spurious": res.gt.set_index("label_id")["possible_spurious"],
    }
    rows = []
    for method, s in (("ours", ours), ("reference", reference_rules(gt, pred))):
        base = {"seed": seed, "method": method}
        rows.append(
            {**base, "error": "mislabel", **_ranking(s["mistakenness"], planted["mislabeled"])}
        )
        rows.append(
            {**base, "error": "localisation", **_ranking(s["mistakenness_loc"], planted["shifted"])}
        )
        rows.append(
            {**base, "error": "missing", **_flags(s["possible_missing"], planted["missing"])}
        )
        rows.append(
            {**base, "error": "spurious", **_flags(s["possible_spurious"], planted["spurious"])}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, nargs="+", default=[51])
    args = parser.parse_args()
    rows = [r for seed in args.seed for r in detection_quality(seed)]
    cols = [
        "seed",
        "method",
        "error",
        "k",
        "auroc",
        "ap",
        "p_at_k",
        "precision",
        "recall",
        "flagged",
    ]
    df = pd.DataFrame(rows).reindex(columns=cols)
    df["flagged"] = df["flagged"].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))


if __name__ == "__main__":
    main()
