"""Detection mistakenness on a small hand-built scene with one error of each kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dagster_brain.algorithms.detection_mistakenness import detection_mistakenness

W = 0.2  # box side


def box(x: float, y: float) -> list[float]:
    return [x, y, W, W]


@pytest.fixture
def scene() -> tuple[pd.DataFrame, pd.DataFrame]:
    gt = pd.DataFrame(
        [
            ("s1", "ok1", "circle", box(0.1, 0.1)),
            ("s1", "swapped", "square", box(0.5, 0.5)),  # the object is a triangle
            ("s2", "ok2", "square", box(0.1, 0.1)),
            ("s2", "shifted", "circle", box(0.6, 0.5)),  # object at x=0.5: moved W/2
            ("s3", "empty", "square", box(0.1, 0.6)),  # nothing there, no prediction
            ("s3", "weak", "circle", box(0.6, 0.1)),  # a low-IoU, low-confidence prediction
        ],
        columns=["sample_id", "label_id", "label", "box"],
    )
    pred = pd.DataFrame(
        [
            ("s1", "p_ok1", "circle", [0.11, 0.1, 0.19, 0.2], 0.9),
            ("s1", "p_swapped", "triangle", box(0.5, 0.5), 0.85),
            ("s2", "p_ok2", "square", box(0.1, 0.12), 0.8),
            ("s2", "p_shifted", "circle", box(0.5, 0.5), 0.9),
            ("s2", "p_missing", "triangle", box(0.1, 0.6), 0.8),  # no GT box
            ("s3", "p_background", "circle", box(0.3, 0.35), 0.2),  # low-confidence FP
            ("s3", "p_weak", "circle", box(0.7, 0.2), 0.1),  # IoU 1/7 with "weak"
        ],
        columns=["sample_id", "label_id", "label", "box", "confidence"],
    )
    return gt, pred


def test_each_error_kind_is_found(scene):
    gt, pred = scene
    # Too few matched predictions for the auto cutoff here: give the cutoff.
    res = detection_mistakenness(gt, pred, missing_conf=0.5)
    g = res.gt.set_index("label_id")
    p = res.pred.set_index("label_id")
    assert g["mistakenness"].idxmax() == "swapped"
    assert g.loc["swapped", "mistakenness"] == pytest.approx((1 + 0.85) / 2)
    assert g.loc["ok1", "mistakenness"] == pytest.approx((1 - 0.9) / 2)  # agrees
    assert g["mistakenness_loc"].idxmax() == "shifted"
    assert g.loc["shifted", "mistakenness_loc"] == pytest.approx((1 - 1 / 3) * 0.9)
    assert g.loc["shifted", "match"] == "loose_same_class"
    assert p[p["possible_missing"]].index.tolist() == ["p_missing"]
    assert g[g["possible_spurious"]].index.tolist() == ["empty"]
    assert not g.loc["weak", "possible_spurious"]  # a weak prediction still supports it
    assert not g.loc["shifted", "possible_spurious"]


def test_sample_summary(scene):
    res = detection_mistakenness(*scene, missing_conf=0.5)
    s = res.samples.set_index("sample_id")
    assert s.loc["s1", "mistakenness"] == pytest.approx((1 + 0.85) / 2)
    assert s.loc["s2", "mistakenness_loc"] == pytest.approx(0.6)
    assert s["possible_missing"].to_dict() == {"s1": 0, "s2": 1, "s3": 0}
    assert s["possible_spurious"].to_dict() == {"s1": 0, "s2": 0, "s3": 1}


def test_thresholds_are_parameters(scene):
    gt, pred = scene
    ref = detection_mistakenness(gt, pred, spurious_rule="unmatched", missing_conf=0.95)
    flagged = set(ref.gt.loc[ref.gt["possible_spurious"], "label_id"])
    assert flagged == {"empty", "weak", "shifted"}  # the reference's rule
    assert not ref.pred["possible_missing"].any()
    low = detection_mistakenness(gt, pred, missing_conf=0.15)
    assert set(low.pred.loc[low.pred["possible_missing"], "label_id"]) == {
        "p_missing",
        "p_background",
    }
    assert low.params["missing_conf"] == 0.15


def test_copy_missing(scene):
    gt, pred = scene
    assert detection_mistakenness(gt, pred).copied is None
    copied = detection_mistakenness(gt, pred, copy_missing=True, missing_conf=0.5).copied
    assert copied.to_dict("records") == [
        {
            "sample_id": "s2",
            "label_id": "copied:p_missing",
            "label": "triangle",
            "box": box(0.1, 0.6),
            "confidence": 0.8,
            "copied_from_prediction": "p_missing",
        }
    ]


@pytest.mark.parametrize(
    "bad",
    [[0.9, 0.1, 0.2, 0.2], [0.1, 0.1, 0.0, 0.2], [-0.1, 0.1, 0.2, 0.2], [0.1, np.nan, 0.1, 0.1]],
)
def test_bad_gt_box_names_label(scene, bad):
    gt, pred = scene
    gt.at[2, "box"] = bad
    with pytest.raises(ValueError, match="'ok2'"):
        detection_mistakenness(gt, pred)


def test_bad_prediction_box_and_confidence(scene):
    gt, pred = scene
    bad = pred.copy()
    bad.at[0, "box"] = [0.1, 0.1, 0.2]
    with pytest.raises(ValueError, match="'p_ok1'"):
        detection_mistakenness(gt, bad)
    with pytest.raises(ValueError, match="'confidence'"):
        detection_mistakenness(gt, pred.drop(columns="confidence"))
    nan = pred.copy()
    nan.loc[3, "confidence"] = np.nan
    with pytest.raises(ValueError, match="'p_shifted'.*'confidence'"):
        detection_mistakenness(gt, nan)
