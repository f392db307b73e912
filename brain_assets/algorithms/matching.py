"""Greedy (COCO-style) matching of predicted to ground-truth boxes, per sample.

Boxes are ``[x, y, w, h]`` in relative coordinates, as in the store's ``labels`` table. This is
the one matching routine for evaluation code: mistakenness, evaluation metrics and benchmarks
all call :func:`match_detections` so that "matched" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

MATCH_COLUMNS = [
    "sample_id",
    "gt_label_id",
    "pred_label_id",
    "gt_label",
    "pred_label",
    "confidence",
    "iou",
    "match",
    "max_iou",
]
"""Columns of :func:`match_detections`' result.

``match`` is ``"same_class"``, ``"cross_class"``, ``"unmatched_gt"`` or ``"unmatched_pred"``.
``iou`` is the matched pair's IoU (NaN when unmatched). ``max_iou`` is, for unmatched rows, the
highest IoU of that object with any object on the other side of the same sample (any class,
any confidence, matched or not; 0 when there is none), and NaN for matched rows.
"""

_BOX_TOL = 1e-6  # rounding slack for boxes converted from pixels


def iou_matrix(boxes_a: np.ndarray | Sequence, boxes_b: np.ndarray | Sequence) -> np.ndarray:
    """Pairwise intersection-over-union of ``[x, y, w, h]`` boxes: shape ``(len(a), len(b))``."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    ax0, ay0, aw, ah = a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4]
    bx0, by0, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    iw = np.minimum(ax0 + aw, bx0 + bw) - np.maximum(ax0, bx0)
    ih = np.minimum(ay0 + ah, by0 + bh) - np.maximum(ay0, by0)
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    union = aw * ah + bw * bh - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def check_boxes(df: pd.DataFrame, what: str) -> np.ndarray:
    """The ``box`` column as an ``(n, 4)`` array; a bad box raises naming its label id."""
    for col in ("sample_id", "label_id", "label", "box"):
        if col not in df.columns:
            raise ValueError(f"{what}: no {col!r} column")
    ids = df["label_id"].astype(str).to_numpy()
    dup = pd.Index(ids).duplicated()
    if dup.any():
        raise ValueError(f"{what}: duplicate label id {ids[np.flatnonzero(dup)[0]]!r}")
    null = df["label"].isna().to_numpy()
    if null.any():
        raise ValueError(f"{what}: label {ids[np.flatnonzero(null)[0]]!r} has no class ('label')")
    rows = []
    for label_id, box in zip(ids, df["box"], strict=True):
        arr = None if box is None else np.asarray(box, dtype=np.float64).ravel()
        if arr is None or arr.shape != (4,):
            raise ValueError(f"{what}: label {label_id!r} box {box!r} is not [x, y, w, h]")
        rows.append(arr)
    boxes = np.vstack(rows) if rows else np.empty((0, 4))
    x, y, w, h = boxes.T
    bad = ~np.isfinite(boxes).all(axis=1)
    bad |= (w <= 0) | (h <= 0)
    bad |= (x < -_BOX_TOL) | (y < -_BOX_TOL) | (x + w > 1 + _BOX_TOL) | (y + h > 1 + _BOX_TOL)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what}: label {ids[i]!r} box {boxes[i].tolist()} is empty or outside [0, 1] "
            "(expected relative [x, y, w, h] with w, h > 0)"
        )
    return boxes


def check_confidence(pred: pd.DataFrame, what: str = "predictions") -> np.ndarray:
    """The ``confidence`` column as floats; missing or non-finite values raise naming the field."""
    if "confidence" not in pred.columns:
        raise ValueError(f"{what}: no 'confidence' field; detection matching needs it")
    conf = pd.to_numeric(pred["confidence"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(conf)
    if bad.any():
        label_id = pred["label_id"].astype(str).to_numpy()[np.flatnonzero(bad)[0]]
        raise ValueError(f"{what}: label {label_id!r} has no 'confidence' value")
    return conf


def _greedy(
    iou: np.ndarray,
    order: np.ndarray,
    allowed: np.ndarray,
    gt_free: np.ndarray,
    pred_free: np.ndarray,
    thresh: float,
) -> list[tuple[int, int]]:
    """Each free prediction, most confident first, takes the free allowed GT of highest IoU."""
    pairs = []
    for j in order:
        if not pred_free[j]:
            continue
        cand = np.where(allowed[:, j] & gt_free & (iou[:, j] >= thresh), iou[:, j], -1.0)
        i = int(np.argmax(cand)) if cand.size else -1
        if i >= 0 and cand[i] >= 0:
            gt_free[i] = pred_free[j] = False
            pairs.append((i, j))
    return pairs


def match_detections(
    gt: pd.DataFrame,
    pred: pd.DataFrame,
    iou_thresh: float = 0.5,
    class_aware: bool = True,
) -> pd.DataFrame:
    """Match predictions to ground truth within each sample; one row per pair or leftover.

    Frames have ``sample_id, label_id, label, box`` (relative ``[x, y, w, h]``); ``pred`` also
    ``confidence``. Predictions are visited in decreasing confidence and each takes the free
    ground-truth box of highest IoU ``>= iou_thresh`` (COCO). With ``class_aware`` the first
    pass allows only same-class pairs and a second, class-agnostic pass matches the leftovers,
    so a prediction of another class on a GT box comes back as a ``"cross_class"`` match (a
    possible mislabel). Without it one class-agnostic pass is made. See :data:`MATCH_COLUMNS`.
    """
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    gboxes, pboxes = check_boxes(gt, "ground truth"), check_boxes(pred, "predictions")
    conf = check_confidence(pred)
    gids, pids = gt["label_id"].astype(str).to_numpy(), pred["label_id"].astype(str).to_numpy()
    glab, plab = gt["label"].astype(str).to_numpy(), pred["label"].astype(str).to_numpy()
    gsam, psam = gt["sample_id"].astype(str).to_numpy(), pred["sample_id"].astype(str).to_numpy()
    g_by = pd.Series(np.arange(len(gt))).groupby(gsam, sort=False).indices if len(gt) else {}
    p_by = pd.Series(np.arange(len(pred))).groupby(psam, sort=False).indices if len(pred) else {}
    empty = np.empty(0, dtype=np.int64)

    # Global row indices of each output row (-1 = none), its IoU, kind and max_iou.
    out_g, out_p, out_iou, out_kind, out_max = [], [], [], [], []
    for sample in dict.fromkeys([*g_by, *p_by]):
        gi, pi = g_by.get(sample, empty), p_by.get(sample, empty)
        iou = iou_matrix(gboxes[gi], pboxes[pi])
        same = glab[gi][:, None] == plab[pi][None, :]
        order = np.argsort(-conf[pi], kind="stable")
        gt_free, pred_free = np.ones(len(gi), bool), np.ones(len(pi), bool)
        passes = [same, np.ones_like(same)] if class_aware else [np.ones_like(same)]
        for allowed in passes:
            for i, j in _greedy(iou, order, allowed, gt_free, pred_free, iou_thresh):
                out_g.append(gi[i])
                out_p.append(pi[j])
                out_iou.append(iou[i, j])
                out_kind.append("same_class" if same[i, j] else "cross_class")
                out_max.append(np.nan)
        for i in np.flatnonzero(gt_free):
            out_g.append(gi[i])
            out_p.append(-1)
            out_iou.append(np.nan)
            out_kind.append("unmatched_gt")
            out_max.append(float(iou[i].max()) if len(pi) else 0.0)
        for j in np.flatnonzero(pred_free):
            out_g.append(-1)
            out_p.append(pi[j])
            out_iou.append(np.nan)
            out_kind.append("unmatched_pred")
            out_max.append(float(iou[:, j].max()) if len(gi) else 0.0)

    g_idx, p_idx = np.asarray(out_g, dtype=np.int64), np.asarray(out_p, dtype=np.int64)
    has_g, has_p = g_idx >= 0, p_idx >= 0

    def pick(values: np.ndarray, idx: np.ndarray, has: np.ndarray, fill) -> np.ndarray:
        out = np.full(len(idx), fill, dtype=object if fill is None else np.float64)
        out[has] = values[idx[has]]
        return out

    sample_ids = np.where(has_g, pick(gsam, g_idx, has_g, None), pick(psam, p_idx, has_p, None))
    return pd.DataFrame(
        {
            "sample_id": sample_ids,
            "gt_label_id": pick(gids, g_idx, has_g, None),
            "pred_label_id": pick(pids, p_idx, has_p, None),
            "gt_label": pick(glab, g_idx, has_g, None),
            "pred_label": pick(plab, p_idx, has_p, None),
            "confidence": pick(conf, p_idx, has_p, np.nan),
            "iou": np.asarray(out_iou, dtype=np.float64),
            "match": np.asarray(out_kind, dtype=object),
            "max_iou": np.asarray(out_max, dtype=np.float64),
        },
        columns=MATCH_COLUMNS,
    )
