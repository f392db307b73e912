"""Detection mistakenness: which ground-truth boxes look wrong, and which objects look missing.

Two rules, both returning :class:`DetectionMistakes`:

- :func:`detection_mistakenness`, the project's default (chosen on generated detection
  families, ``benchmarks/quality_detection.py --choose``).
- :func:`reference_detection_mistakenness`, the FiftyOne Brain's rule, reproduced exactly.

**Default.** Two matching passes (both :func:`~dagster_brain.algorithms.matching.match_detections`):

1. **strict**, at ``iou_thresh`` (0.5): same-class pairs first, then cross-class pairs among
   the leftovers. A cross-class pair is a GT box a prediction of another class sits on.
2. **loose**, at ``loc_iou_thresh`` (0.05), on what the strict pass left: a pair here is one
   object whose GT box and predicted box disagree (e.g. a box shifted by half its width has
   IoU about 1/3 with the object's prediction and is found here, not in the strict pass).

- ``mistakenness`` (GT, label wrong), strict matches only: with logits, ``1 - p`` where ``p`` is
  the probability ``softmax(logits)`` gives the *annotated* class; without, ``(1 + c) / 2`` when
  the classes differ and ``(1 - c) / 2`` when they agree (``c`` = confidence), so every
  disagreement ranks above every agreement whatever the detector's calibration. 0 for GT
  boxes with no strict match (no evidence on the class).
- ``mistakenness_loc`` (GT, box wrong): ``(1 - IoU) * c`` with the matched prediction (strict or
  loose, any class), so only confident predictions can accuse a box; 0 when unmatched.
- ``possible_spurious`` (GT): ``spurious_rule="no_overlap"``: no strict match and no prediction
  of any class and any confidence overlaps the box by IoU >= 0.1 (:data:`SPURIOUS_IOU`);
  ``"unmatched"``: the reference's rule (every GT box without a strict match).
- ``possible_missing`` (prediction): matched in neither pass (so not the prediction of a
  mislocated GT box), overlaps no GT box by IoU >= ``missing_iou`` (0.5; so not a duplicate
  box of an annotated object), and its confidence is at least the cutoff.
  ``missing_conf="auto"`` (default) picks the cutoff from the data
  (:func:`auto_missing_cutoff`); a number is a fixed cutoff.

**Reference.** One class-agnostic greedy match at IoU ``iou_thresh`` (0.5). For each matched
GT box, with ``c`` the matched prediction's confidence (with ``use_logits``:
``exp(-H(softmax(logits)))``, natural-log entropy): ``mistakenness = (1 - c) / 2`` if the labels
agree else ``(1 + c) / 2``; ``mistakenness_loc = (c (2i - 1) + 1) / 2`` with
``i = (1 - IoU) / (1 - iou_thresh)``. Unmatched predictions with confidence (always the stored
confidence) ``> missing_conf`` (0.95) are ``possible_missing``; every unmatched GT box is
``possible_spurious``. Per sample: maxima over matched GT boxes (NaN where there is none;
the reference writes -1) and counts.
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
from dagster_brain.algorithms.mistakenness import certainty, softmax

SpuriousRule = Literal["no_overlap", "unmatched"]

DEFAULT_IOU_THRESH = 0.5  # COCO's match IoU; chosen against 0.4 / 0.6 on the tuning seeds
# Loose (second) pass: leftovers overlapping this much are one object with a wrong box.
DEFAULT_LOC_IOU_THRESH = 0.05
# A GT box without a strict match that a prediction overlaps this much is not spurious.
SPURIOUS_IOU = 0.1
# A missing-object candidate overlaps no GT box by this IoU or more (not a duplicate box).
DEFAULT_MISSING_IOU = 0.5
# Estimated precision the auto cutoff must reach (benchmarks/quality_detection.py --choose).
DEFAULT_MISSING_PRECISION = 0.95
# Quantile of real objects' confidences above which false positives are taken to be rare.
DEFAULT_MISSING_ANCHOR = 0.1
# The cutoff is never below this quantile of real objects' confidences.
FLOOR_Q = 0.01
# Matched predictions needed before the auto cutoff trusts their confidences; with fewer it
# falls back to FALLBACK_MISSING_CONF.
MIN_MATCHED = 20
FALLBACK_MISSING_CONF = 0.95
REFERENCE_MISSING_CONF = 0.95
REFERENCE_IOU = 0.5


@dataclass(frozen=True)
class DetectionMistakes:
    """Per-object and per-sample results of the detection mistakenness rules."""

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


def detection_probabilities(pred: pd.DataFrame, classes: list[str] | None) -> np.ndarray:
    """``softmax(logits)`` of every prediction, ``(n, len(classes))``, columns in ``classes`` order.

    Raises naming the label id and sample for a prediction with no ``logits``, logits of the
    wrong length, or NaN / ``+inf`` values.
    """
    if not classes:
        raise ValueError("logits need the predictions field's class list (none is declared)")
    ids = pred["label_id"].astype(str).to_numpy()
    sam = pred["sample_id"].astype(str).to_numpy()
    col = pred["logits"].tolist() if "logits" in pred.columns else [None] * len(pred)
    out = np.empty((len(pred), len(classes)), dtype=np.float64)
    for r, value in enumerate(col):
        if not isinstance(value, (list, tuple, np.ndarray)):
            raise ValueError(
                f"prediction {ids[r]!r} of sample {sam[r]!r} has no logits (use_logits needs "
                "them on every prediction)"
            )
        arr = np.asarray(value, dtype=np.float64).ravel()
        if arr.shape != (len(classes),):
            raise ValueError(
                f"prediction {ids[r]!r} of sample {sam[r]!r}: {arr.size} logits, expected "
                f"{len(classes)} (one per class of the field, in its order)"
            )
        if np.isnan(arr).any() or np.isposinf(arr).any():
            raise ValueError(f"prediction {ids[r]!r} of sample {sam[r]!r}: NaN or +inf logits")
        out[r] = arr
    return softmax(out) if len(out) else out


def auto_missing_cutoff(
    matched_conf: np.ndarray,
    candidate_conf: np.ndarray,
    target_precision: float = DEFAULT_MISSING_PRECISION,
    anchor: float = DEFAULT_MISSING_ANCHOR,
) -> float:
    """Lowest confidence cutoff whose estimated precision for "missing object" is the target.

    Matched predictions show how confident the detector is on real objects (fraction
    ``F(t)`` at or above ``t``). Candidates (predictions that overlap no GT box) mix real
    unannotated objects, which follow the same distribution, with false positives. The number
    of real objects among the ``N(t)`` candidates above ``t`` is estimated as ``K F(t)`` with
    ``K = N(m) / F(m)`` with ``m`` the ``anchor`` quantile of real objects' confidences (false
    positives are assumed rare above it); the estimated precision is ``K F(t) / N(t)``. The
    cutoff is not set below the 1% quantile of real objects' confidences.
    Depends only on the order of confidences, so it holds on uncalibrated detectors.
    Returns ``inf`` when no cutoff reaches the target (nothing is flagged).
    """
    real = np.sort(np.asarray(matched_conf, dtype=np.float64))
    cand = np.sort(np.asarray(candidate_conf, dtype=np.float64))
    if len(real) < MIN_MATCHED:
        return FALLBACK_MISSING_CONF
    if not len(cand):
        return float("inf")
    ts = np.unique(cand)
    n_above = len(cand) - np.searchsorted(cand, ts, side="left")
    f_above = (len(real) - np.searchsorted(real, ts, side="left")) / len(real)
    # Real unannotated objects among the candidates, from those above the anchor quantile.
    q = np.quantile(real, anchor)
    k = (len(cand) - np.searchsorted(cand, q, side="left")) / np.mean(real >= q)
    precision = k * f_above / n_above
    # Never below the confidence of (almost) every real object: under it the detector has
    # shown no real object, so nothing there supports a "missing" flag.
    ok = np.flatnonzero((precision >= target_precision) & (ts >= np.quantile(real, FLOOR_Q)))
    return float(ts[ok[0]]) if len(ok) else float("inf")


def detection_mistakenness(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    iou_thresh: float = DEFAULT_IOU_THRESH,
    loc_iou_thresh: float = DEFAULT_LOC_IOU_THRESH,
    missing_conf: float | Literal["auto"] = "auto",
    spurious_rule: SpuriousRule = "no_overlap",
    copy_missing: bool = False,
    use_logits: bool = False,
    classes: list[str] | None = None,
    missing_precision: float = DEFAULT_MISSING_PRECISION,
    missing_iou: float = DEFAULT_MISSING_IOU,
    missing_anchor: float = DEFAULT_MISSING_ANCHOR,
    loose_any_class: bool = True,
) -> DetectionMistakes:
    """Score GT boxes for wrong labels / wrong boxes / no object, and flag missing objects.

    ``gt`` and ``pred`` are label frames (``sample_id, label_id, label, box`` with relative
    ``[x, y, w, h]``; ``pred`` also ``confidence``, and ``logits`` in ``classes`` order when
    ``use_logits``). See the module docstring for the rules.
    """
    if not 0.0 < loc_iou_thresh <= iou_thresh <= 1.0:
        raise ValueError(
            f"need 0 < loc_iou_thresh <= iou_thresh <= 1, got {loc_iou_thresh}, {iou_thresh}"
        )
    if missing_conf != "auto" and not 0.0 <= float(missing_conf) <= 1.0:
        raise ValueError(f"missing_conf must be 'auto' or in [0, 1], got {missing_conf!r}")
    if spurious_rule not in ("no_overlap", "unmatched"):
        raise ValueError(
            f"spurious_rule must be 'no_overlap' or 'unmatched', not {spurious_rule!r}"
        )
    gboxes, pboxes = check_boxes(gt, "ground truth"), check_boxes(pred, "predictions")
    conf = check_confidence(pred)
    probs = detection_probabilities(pred, classes) if use_logits else None

    strict = match_detections(gt, pred, iou_thresh, class_aware=True)
    left_g = strict.loc[strict["match"] == "unmatched_gt", "gt_label_id"]
    left_p = strict.loc[strict["match"] == "unmatched_pred", "pred_label_id"]
    gid, pid = gt["label_id"].astype(str), pred["label_id"].astype(str)
    loose_kinds = ["same_class", "cross_class"] if loose_any_class else ["same_class"]
    loose = match_detections(
        gt[gid.isin(left_g).to_numpy()], pred[pid.isin(left_p).to_numpy()], loc_iou_thresh
    )
    matched = pd.concat(
        [
            strict[strict["match"].isin(["same_class", "cross_class"])].assign(strict=True),
            loose[loose["match"].isin(loose_kinds)].assign(strict=False),
        ],
        ignore_index=True,
    )
    # Predictions left by the loose pass; "lone" ones also overlap no GT box (any class,
    # matched or not) by missing_iou: a duplicate box of an annotated object is not lone.
    lone_p = pd.Index(loose.loc[~loose["match"].isin(loose_kinds), "pred_label_id"].dropna())

    # -- per GT box ------------------------------------------------------------------------
    by_gt = matched.set_index("gt_label_id")
    g_ids = gid.to_numpy()
    m = by_gt.reindex(g_ids)
    disagree = (m["match"] == "cross_class").to_numpy()
    is_strict = m["strict"].eq(True).to_numpy()
    c, iou = m["confidence"].to_numpy(dtype=np.float64), m["iou"].to_numpy(dtype=np.float64)
    if probs is not None:
        p_gt = _gt_class_probability(gt, m["pred_label_id"], pid, probs, classes)
        label_score = 1.0 - p_gt
    else:
        label_score = np.where(disagree, 1.0 + c, 1.0 - c) / 2.0
    mistakenness = np.where(is_strict, label_score, 0.0)
    loc = np.nan_to_num(np.clip(1.0 - iou, 0.0, 1.0) * c, nan=0.0)  # IoU may round above 1
    if spurious_rule == "unmatched":
        spurious = ~is_strict
    else:
        unmatched = pd.Index(g_ids[~is_strict])
        spurious = ~is_strict & ~_overlaps_any(
            gt, gboxes, pred, pboxes, SPURIOUS_IOU, g_ids, unmatched
        )
    gt_out = _gt_frame(gt, g_ids, mistakenness, loc, spurious, m, iou, is_strict)

    # -- per prediction --------------------------------------------------------------------
    p_ids = pid.to_numpy()
    mp = matched.set_index("pred_label_id").reindex(p_ids)
    lone = np.isin(p_ids, lone_p) & ~_overlaps_any(
        pred, pboxes, gt, gboxes, missing_iou, p_ids, lone_p
    )
    p_strict = mp["strict"].eq(True).to_numpy()
    if missing_conf == "auto":
        cutoff = auto_missing_cutoff(conf[p_strict], conf[lone], missing_precision, missing_anchor)
    else:
        cutoff = float(missing_conf)
    missing = lone & (conf >= cutoff)
    pred_out = _pred_frame(pred, p_ids, conf, missing, mp, _match_kind(mp["match"], p_strict))

    samples = _samples(gt_out, pred_out, fill=0.0)
    params = {
        "rule": "default",
        "iou_thresh": iou_thresh,
        "loc_iou_thresh": loc_iou_thresh,
        "missing_conf": missing_conf,
        "missing_cutoff": cutoff,
        "missing_precision": missing_precision,
        "missing_iou": missing_iou,
        "missing_anchor": missing_anchor,
        "loose_any_class": loose_any_class,
        "spurious_rule": spurious_rule,
        "copy_missing": copy_missing,
        "use_logits": use_logits,
    }
    copied = _copied(pred, pboxes, conf, missing) if copy_missing else None
    return DetectionMistakes(gt_out, pred_out, samples, copied, params)


def reference_detection_mistakenness(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    *,
    use_logits: bool = False,
    classes: list[str] | None = None,
    iou_thresh: float = REFERENCE_IOU,
    missing_conf: float = REFERENCE_MISSING_CONF,
    copy_missing: bool = False,
) -> DetectionMistakes:
    """The reference's detection rule (module docstring); ``iou_thresh`` / ``missing_conf``
    are its fixed 0.5 / 0.95 unless given (users asked for them as parameters)."""
    if not 0.0 < iou_thresh < 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1), got {iou_thresh}")
    if not 0.0 <= missing_conf <= 1.0:
        raise ValueError(f"missing_conf must be in [0, 1], got {missing_conf}")
    _, pboxes = check_boxes(gt, "ground truth"), check_boxes(pred, "predictions")
    conf = check_confidence(pred)
    sure = conf
    if use_logits:
        sure = certainty(detection_probabilities(pred, classes))

    m_all = match_detections(gt, pred, iou_thresh, class_aware=False)
    matched = m_all[m_all["match"].isin(["same_class", "cross_class"])]
    gid, pid = gt["label_id"].astype(str).to_numpy(), pred["label_id"].astype(str).to_numpy()
    m = matched.set_index("gt_label_id").reindex(gid)
    has = m["match"].notna().to_numpy()
    p_row = pd.Series(np.arange(len(pred)), index=pid)
    rows = p_row.reindex(m["pred_label_id"].where(has, "")).to_numpy()
    c = np.full(len(gt), np.nan)
    c[has] = sure[rows[has].astype(np.int64)]
    iou = m["iou"].to_numpy(dtype=np.float64)
    agree = (m["match"] == "same_class").to_numpy()
    mistakenness = np.where(agree, 1.0 - c, 1.0 + c) / 2.0
    i = (1.0 - iou) / (1.0 - iou_thresh)
    loc = (c * (2.0 * i - 1.0) + 1.0) / 2.0
    gt_out = _gt_frame(gt, gid, mistakenness, loc, ~has, m, iou, has)

    mp = matched.set_index("pred_label_id").reindex(pid)
    p_has = mp["match"].notna().to_numpy()
    missing = ~p_has & (conf > missing_conf)
    pred_out = _pred_frame(pred, pid, conf, missing, mp, _match_kind(mp["match"], p_has))
    samples = _samples(gt_out, pred_out, fill=np.nan)
    params = {
        "rule": "reference",
        "iou_thresh": iou_thresh,
        "missing_conf": missing_conf,
        "copy_missing": copy_missing,
        "use_logits": use_logits,
    }
    copied = _copied(pred, pboxes, conf, missing) if copy_missing else None
    return DetectionMistakes(gt_out, pred_out, samples, copied, params)


def _gt_class_probability(
    gt: pd.DataFrame,
    matched_pred: pd.Series,
    pid: pd.Series,
    probs: np.ndarray,
    classes: list[str] | None,
) -> np.ndarray:
    """Probability the matched prediction's logits give each GT box's class (NaN if none)."""
    col = {str(k): j for j, k in enumerate(classes or [])}
    rows = pd.Series(np.arange(len(pid)), index=pid.to_numpy()).reindex(
        matched_pred.fillna("").to_numpy()
    )
    out = np.full(len(gt), np.nan)
    labels = gt["label"].astype(str).to_numpy()
    ids = gt["label_id"].astype(str).to_numpy()
    for r, (row, label) in enumerate(zip(rows.to_numpy(), labels, strict=True)):
        if np.isnan(row):
            continue
        if label not in col:
            raise ValueError(
                f"ground truth {ids[r]!r}: class {label!r} is not in the field's class list"
            )
        out[r] = probs[int(row), col[label]]
    return out


def _gt_frame(gt, g_ids, mistakenness, loc, spurious, m, iou, kind_mask) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": gt["sample_id"].astype(str).to_numpy(),
            "label_id": g_ids,
            "label": gt["label"].astype(str).to_numpy(),
            "mistakenness": np.asarray(mistakenness, dtype=np.float64),
            "mistakenness_loc": np.asarray(loc, dtype=np.float64),
            "possible_spurious": np.asarray(spurious, dtype=bool),
            "pred_label_id": m["pred_label_id"].to_numpy(),
            "pred_label": m["pred_label"].to_numpy(),
            "iou": iou,
            "match": _match_kind(m["match"], kind_mask),
        }
    )


def _pred_frame(pred, p_ids, conf, missing, mp, kind) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": pred["sample_id"].astype(str).to_numpy(),
            "label_id": p_ids,
            "label": pred["label"].astype(str).to_numpy(),
            "confidence": conf,
            "possible_missing": np.asarray(missing, dtype=bool),
            "gt_label_id": mp["gt_label_id"].to_numpy(),
            "iou": mp["iou"].to_numpy(dtype=np.float64),
            "match": kind,
        }
    )


def _samples(gt_out: pd.DataFrame, pred_out: pd.DataFrame, fill: float) -> pd.DataFrame:
    """Per-sample maxima (``fill`` where a sample has no scored GT box) and flag counts."""
    g_agg = gt_out.groupby("sample_id", sort=False).agg(
        mistakenness=("mistakenness", "max"),
        mistakenness_loc=("mistakenness_loc", "max"),
        possible_spurious=("possible_spurious", "sum"),
    )
    p_agg = pred_out.groupby("sample_id", sort=False).agg(
        possible_missing=("possible_missing", "sum")
    )
    samples = g_agg.join(p_agg, how="outer").reset_index(names="sample_id")
    scores = ["mistakenness", "mistakenness_loc"]
    samples[scores] = samples[scores].astype(np.float64).fillna(fill)
    for col in ("possible_missing", "possible_spurious"):
        samples[col] = samples[col].fillna(0).astype(np.int64)
    return samples[["sample_id", *scores, "possible_missing", "possible_spurious"]]


def _copied(pred, pboxes, conf, missing) -> pd.DataFrame:
    src = pred[missing]
    return pd.DataFrame(
        {
            "sample_id": src["sample_id"].astype(str).to_numpy(),
            "label_id": ("copied:" + src["label_id"].astype(str)).to_numpy(),
            "label": src["label"].astype(str).to_numpy(),
            "box": [list(map(float, b)) for b in pboxes[missing]],
            "confidence": conf[missing],
            "copied_from_prediction": src["label_id"].astype(str).to_numpy(),
        }
    )


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
