"""Box IoU and greedy per-sample matching, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagster_brain.algorithms.matching import MATCH_COLUMNS, iou_matrix, match_detections


def frame(rows, pred: bool = False) -> pd.DataFrame:
    cols = ["sample_id", "label_id", "label", "box"] + (["confidence"] if pred else [])
    return pd.DataFrame(rows, columns=cols)


def test_iou_matrix_hand_computed():
    a = [[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]]
    b = [[0.1, 0.0, 0.2, 0.2], [0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.2, 0.2]]
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    # overlap 0.1 x 0.2 = 0.02; union 0.04 + 0.04 - 0.02 = 0.06
    assert iou[0, 0] == pytest.approx(1 / 3)
    assert iou[0, 1] == pytest.approx(0.04 / 0.16)  # contained
    assert iou[0, 2] == pytest.approx(1.0)
    assert iou[1, 0] == 0.0 and iou[1, 2] == 0.0  # disjoint
    # 0.5..0.6 vs 0..0.4: disjoint too; an empty side gives an empty matrix
    assert iou[1, 1] == 0.0
    assert iou_matrix(np.empty((0, 4)), b).shape == (0, 3)


def test_greedy_by_confidence_not_by_iou():
    gt = frame([("s", "g", "cat", [0.0, 0.0, 0.2, 0.2])])
    pred = frame(
        [
            ("s", "close", "cat", [0.0, 0.0, 0.2, 0.2], 0.6),
            ("s", "sure", "cat", [0.02, 0.0, 0.2, 0.2], 0.9),
        ],
        pred=True,
    )
    m = match_detections(gt, pred)
    assert list(m.columns) == MATCH_COLUMNS
    pair = m[m["match"] == "same_class"].iloc[0]
    assert pair["pred_label_id"] == "sure"  # most confident first, as COCO
    left = m[m["match"] == "unmatched_pred"].iloc[0]
    assert left["pred_label_id"] == "close" and left["max_iou"] == pytest.approx(1.0)


def test_same_class_first_then_cross_class_pass():
    gt = frame([("s", "g1", "cat", [0.0, 0.0, 0.2, 0.2]), ("s", "g2", "cat", [0.5, 0.5, 0.2, 0.2])])
    pred = frame(
        [
            ("s", "dog", "dog", [0.0, 0.0, 0.2, 0.2], 0.95),
            ("s", "cat", "cat", [0.0, 0.0, 0.18, 0.2], 0.6),
            ("s", "dog2", "dog", [0.5, 0.5, 0.2, 0.2], 0.8),
        ],
        pred=True,
    )
    m = match_detections(gt, pred).set_index("pred_label_id")
    assert m.loc["cat", "gt_label_id"] == "g1" and m.loc["cat", "match"] == "same_class"
    assert m.loc["dog2", "gt_label_id"] == "g2" and m.loc["dog2", "match"] == "cross_class"
    assert m.loc["dog", "match"] == "unmatched_pred"
    # class-agnostic: the most confident prediction takes g1 whatever its class
    a = match_detections(gt, pred, class_aware=False).set_index("pred_label_id")
    assert a.loc["dog", "gt_label_id"] == "g1" and a.loc["dog", "match"] == "cross_class"


def test_samples_are_matched_separately_and_thresholded():
    gt = frame([("s1", "g", "cat", [0.0, 0.0, 0.2, 0.2])])
    pred = frame(
        [
            ("s2", "other_sample", "cat", [0.0, 0.0, 0.2, 0.2], 0.9),
            ("s1", "third", "cat", [0.1, 0.0, 0.2, 0.2], 0.9),  # IoU 1/3
        ],
        pred=True,
    )
    m = match_detections(gt, pred, iou_thresh=0.5)
    assert set(m["match"]) == {"unmatched_gt", "unmatched_pred"}
    g = m[m["match"] == "unmatched_gt"].iloc[0]
    assert g["max_iou"] == pytest.approx(1 / 3)
    assert m.loc[m["pred_label_id"] == "other_sample", "max_iou"].item() == 0.0
    m = match_detections(gt, pred, iou_thresh=0.3)
    assert m.loc[m["match"] == "same_class", "pred_label_id"].item() == "third"
    assert m.loc[m["match"] == "same_class", "iou"].item() == pytest.approx(1 / 3)


def test_empty_frames():
    m = match_detections(frame([]), frame([], pred=True))
    assert m.empty and list(m.columns) == MATCH_COLUMNS
