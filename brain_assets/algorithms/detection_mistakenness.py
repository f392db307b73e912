"""Detection mistakenness: which ground-truth boxes look wrong, and which objects look missing.

Two matching passes (both :func:`~dagster_brain.algorithms.matching.match_detections`):

1. **strict**, at ``iou_thresh`` (0.5): same-class pairs first, then cross-class pairs among
   the leftovers. A cross-class pair is a GT box a prediction of another class sits on.
2. **loose**, at ``loc_iou_thresh`` (0.1), on what the strict pass left: a pair here is one
   object whose GT box and predicted box disagree (e.g. a box shifted by half its width has
   IoU about 1/3 with the object's prediction and is found here, not in the strict pass).

Scores and flags (all in ``[0, 1]`` or bool):

- ``mistakenness`` (GT, label wrong): for a strict match, the prediction's confidence when its
  class differs and ``1 - confidence`` when it agrees (the reference's classification rule,
  applied to matched boxes); 0 for GT boxes with no strict match (no evidence on the class).
- ``mistakenness_loc`` (GT, box wrong): ``(1 - IoU) * confidence`` with the matched prediction
  (strict or loose, any class: box quality does not depend on the class), so only confident
  predictions can accuse a box; 0 when unmatched.
- ``possible_spurious`` (GT): no prediction of any class and any confidence overlaps the box
  by IoU >= ``loc_iou_thresh``. Unlike the reference (every unmatched GT box, precision ~0.53),
  a GT box that a low-IoU or low-confidence prediction still supports is not flagged.
- ``possible_missing`` (prediction): confidence >= ``missing_conf`` and no GT box of any class
  overlaps it by IoU >= ``loc_iou_thresh`` (so neither a mislocated GT box nor a duplicate
  prediction of an annotated object counts as missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from dagster_brain.algorithms.matching import (
    check_boxes,
    check_confidence,
    iou_matrix,
    match_detections,
)

SpuriousRule = Literal["no_overlap", "unmatched"]

DEFAULT_IOU_THRESH = 0.5  # COCO's match IoU; the same object's two boxes nearly always pass it
DEFAULT_LOC_IOU_THRESH = 0.1  # below this two boxes are not plausibly the same object
# Predictions of real objects from a working detector sit well above 0.5 while background false
# positives sit well below it; the reference's 0.95 keeps only the top sliver of true objects
# (recall ~0.17 on the shapes demo, and users asked for it to be a parameter: brain #111).
DEFAULT_MISSING_CONF = 0.5


@dataclass(frozen=True)
class DetectionMistakes:
    """Per-object and per-sample results of :func:`detection_mistakenness`."""

    gt: pd.DataFrame
    """One row per GT box: ``sample_id, label_id, label, mistakenness, mistakenness_loc,
    possible_spurious, pred_label_id, pred_label, iou, match`` (the matched prediction)."""
    pred: pd.DataFrame
    """One row per prediction: ``sample_id, label_id, label, confidence, possible_missing,
    gt_label_id, iou, match``."""
    samples: pd.DataFrame
    """One row per sample: ``sample_id, mistakenness, mistakenness_loc`` (maxima over its GT
    boxes) and ``possible_missing, possible_spurious`` (counts)."""
    copied: pd.DataFrame | None = None
    """With ``copy_missing=True``: each missing prediction as a new GT label (``sample_id,
    label_id = "copied:<prediction id>", label, box, confidence, copied_from_prediction``)."""
    params: dict = field(default_factory=dict)


def detection_mistakenness(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    iou_thresh: float = DEFAULT_IOU_THRESH,
    loc_iou_thresh: float = DEFAULT_LOC_IOU_THRESH,
    missing_conf: float = DEFAULT_MISSING_CONF,
    spurious_rule: SpuriousRule = "no_overlap",
    copy_missing: bool = False,
) -> DetectionMistakes:
    """Score GT boxes for wrong labels / wrong boxes / no object, and flag missing objects.

    ``gt`` and ``pred`` are label frames (``sample_id, label_id, label, box`` with relative
    ``[x, y, w, h]``; ``pred`` also ``confidence``). ``spurious_rule="unmatched"`` is the
    reference's rule (every GT box without a strict match), kept for comparison.
    """
    if not 0.0 < loc_iou_thresh <= iou_thresh <= 1.0:
        raise ValueError(
            f"need 0 < loc_iou_thresh <= iou_thresh <= 1, got {loc_iou_thresh}, {iou_thresh}"
        )
    if not 0.0 <= missing_conf <= 1.0:
        raise ValueError(f"missing_conf must be in [0, 1], got {missing_conf}")
    if spurious_rule not in ("no_overlap", "unmatched"):
        raise ValueError(
            f"spurious_rule must be 'no_overlap' or 'unmatched', not {spurious_rule!r}"
        )
    gboxes, pboxes = check_boxes(gt, "ground truth"), check_boxes(pred, "predictions")
    conf = check_confidence(pred)

    strict = match_detections(gt, pred, iou_thresh, class_aware=True)
    left_g = strict.loc[strict["match"] == "unmatched_gt", "gt_label_id"]
    left_p = strict.loc[strict["match"] == "unmatched_pred", "pred_label_id"]
    gid, pid = gt["label_id"].astype(str), pred["label_id"].astype(str)
    loose = match_detections(
        gt[gid.isin(left_g).to_numpy()], pred[pid.isin(left_p).to_numpy()], loc_iou_thresh
    )
    matched = pd.concat(
        [
            strict[strict["match"].isin(["same_class", "cross_class"])].assign(strict=True),
            loose[loose["match"].isin(["same_class", "cross_class"])].assign(strict=False),
        ],
        ignore_index=True,
    )
    # Leftovers of the loose pass; "lone" ones also overlap nothing on the other side at all
    # (any class, any confidence, matched or not: the loose pass saw only strict leftovers).
    lone_g = pd.Index(loose.loc[loose["match"] == "unmatched_gt", "gt_label_id"])
    lone_p = pd.Index(loose.loc[loose["match"] == "unmatched_pred", "pred_label_id"])

    # -- per GT box ------------------------------------------------------------------------
    by_gt = matched.set_index("gt_label_id")
    g_ids = gid.to_numpy()
    m = by_gt.reindex(g_ids)
    disagree = (m["match"] == "cross_class").to_numpy()
    is_strict = m["strict"].eq(True).to_numpy()
    c, iou = m["confidence"].to_numpy(dtype=np.float64), m["iou"].to_numpy(dtype=np.float64)
    mistakenness = np.where(is_strict, np.where(disagree, c, 1.0 - c), 0.0)
    loc = np.nan_to_num((1.0 - iou) * c, nan=0.0)
    if spurious_rule == "unmatched":
        spurious = ~is_strict
    else:
        spurious = np.isin(g_ids, lone_g) & ~_overlaps_any(
            gt, gboxes, pred, pboxes, loc_iou_thresh, g_ids, lone_g
        )
    gt_out = pd.DataFrame(
        {
            "sample_id": gt["sample_id"].astype(str).to_numpy(),
            "label_id": g_ids,
            "label": gt["label"].astype(str).to_numpy(),
            "mistakenness": mistakenness,
            "mistakenness_loc": loc,
            "possible_spurious": spurious,
            "pred_label_id": m["pred_label_id"].to_numpy(),
            "pred_label": m["pred_label"].to_numpy(),
            "iou": iou,
            "match": _match_kind(m["match"], is_strict),
        }
    )

    # -- per prediction --------------------------------------------------------------------
    p_ids = pid.to_numpy()
    mp = matched.set_index("pred_label_id").reindex(p_ids)
    lone = np.isin(p_ids, lone_p) & ~_overlaps_any(
        pred, pboxes, gt, gboxes, loc_iou_thresh, p_ids, lone_p
    )
    missing = lone & (conf >= missing_conf)
    p_strict = mp["strict"].eq(True).to_numpy()
    pred_out = pd.DataFrame(
        {
            "sample_id": pred["sample_id"].astype(str).to_numpy(),
            "label_id": p_ids,
            "label": pred["label"].astype(str).to_numpy(),
            "confidence": conf,
            "possible_missing": missing,
            "gt_label_id": mp["gt_label_id"].to_numpy(),
            "iou": mp["iou"].to_numpy(dtype=np.float64),
            "match": _match_kind(mp["match"], p_strict),
        }
    )

    # -- per sample ------------------------------------------------------------------------
    g_agg = gt_out.groupby("sample_id", sort=False).agg(
        mistakenness=("mistakenness", "max"),
        mistakenness_loc=("mistakenness_loc", "max"),
        possible_spurious=("possible_spurious", "sum"),
    )
    p_agg = pred_out.groupby("sample_id", sort=False).agg(
        possible_missing=("possible_missing", "sum")
    )
    samples = g_agg.join(p_agg, how="outer").reset_index(names="sample_id")
    samples[["mistakenness", "mistakenness_loc"]] = samples[
        ["mistakenness", "mistakenness_loc"]
    ].fillna(0.0)
    for col in ("possible_missing", "possible_spurious"):
        samples[col] = samples[col].fillna(0).astype(np.int64)
    samples = samples[
        ["sample_id", "mistakenness", "mistakenness_loc", "possible_missing", "possible_spurious"]
    ]

    copied = None
    if copy_missing:
        src = pred[missing]
        copied = pd.DataFrame(
            {
                "sample_id": src["sample_id"].astype(str).to_numpy(),
                "label_id": ("copied:" + src["label_id"].astype(str)).to_numpy(),
                "label": src["label"].astype(str).to_numpy(),
                "box": [list(map(float, b)) for b in pboxes[missing]],
                "confidence": conf[missing],
                "copied_from_prediction": src["label_id"].astype(str).to_numpy(),
            }
        )
    params = {
        "iou_thresh": iou_thresh,
        "loc_iou_thresh": loc_iou_thresh,
        "missing_conf": missing_conf,
        "spurious_rule": spurious_rule,
        "copy_missing": copy_missing,
    }
    return DetectionMistakes(gt_out, pred_out, samples, copied, params)


def _match_kind(kind: pd.Series, strict: np.ndarray) -> np.ndarray:
    """``same_class`` / ``cross_class`` (strict), ``loose_same_class`` ..., or ``unmatched``."""
    return np.array(
        [
            "unmatched" if not isinstance(k, str) else k if s else f"loose_{k}"
            for k, s in zip(kind, strict, strict=True)
        ],
        dtype=object,
    )


def _overlaps_any(
    a: pd.DataFrame,
    a_boxes: np.ndarray,
    b: pd.DataFrame,
    b_boxes: np.ndarray,
    thresh: float,
    a_ids: np.ndarray,
    which: pd.Index,
) -> np.ndarray:
    """For each row of ``a`` listed in ``which``: does any ``b`` box of its sample reach IoU?"""
    out = np.zeros(len(a), dtype=bool)
    rows = np.flatnonzero(np.isin(a_ids, which))
    if not len(rows) or not len(b):
        return out
    b_by = pd.Series(np.arange(len(b))).groupby(b["sample_id"].astype(str).to_numpy()).indices
    a_sam = a["sample_id"].astype(str).to_numpy()
    for r in rows:
        bi = b_by.get(a_sam[r])
        if bi is not None and (iou_matrix(a_boxes[r], b_boxes[bi]) >= thresh).any():
            out[r] = True
    return out
