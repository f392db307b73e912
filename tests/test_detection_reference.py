"""The reference's detection rule against a hand-computed table; logits; the auto missing cutoff."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dagster_brain.algorithms.detection_mistakenness import (
    detection_mistakenness,
    reference_detection_mistakenness,
)

CLASSES = ["cat", "dog"]


@pytest.fixture
def scene() -> tuple[pd.DataFrame, pd.DataFrame]:
    gt = pd.DataFrame(
        [
            ("s1", "g1", "cat", [0.0, 0.0, 0.4, 0.4]),
            ("s1", "g2", "dog", [0.5, 0.5, 0.4, 0.4]),
            ("s2", "g3", "cat", [0.0, 0.0, 0.5, 0.5]),
            ("s2", "g4", "dog", [0.05, 0.0, 0.5, 0.5]),
            ("s3", "g5", "dog", [0.2, 0.2, 0.2, 0.2]),
        ],
        columns=["sample_id", "label_id", "label", "box"],
    )
    pred = pd.DataFrame(
        [
            ("s1", "p1", "cat", [0.0, 0.0, 0.4, 0.32], 0.9, [2.0, 0.0]),  # IoU 0.8 with g1
            ("s1", "p2", "cat", [0.5, 0.5, 0.4, 0.24], 0.7, [0.5, 0.5]),  # IoU 0.6 with g2
            ("s1", "p3", "dog", [0.05, 0.6, 0.2, 0.2], 0.97, [0.0, 1.0]),  # unmatched, > 0.95
            ("s1", "p4", "dog", [0.3, 0.05, 0.1, 0.1], 0.95, [0.0, 3.0]),  # unmatched, = 0.95
            # IoU 1 with g4 (dog), 0.818 with g3 (cat): class-agnostic, highest IoU wins
            ("s2", "p5", "cat", [0.05, 0.0, 0.5, 0.5], 0.6, [1.0, -1.0]),
        ],
        columns=["sample_id", "label_id", "label", "box", "confidence", "logits"],
    )
    return gt, pred


def _certainty(logits: list[float]) -> float:
    """exp(-entropy(softmax(logits))), natural logs, worked out by hand."""
    e = [math.exp(v) for v in logits]
    p = [v / sum(e) for v in e]
    return math.exp(sum(q * math.log(q) for q in p))


def _loc(c: float, iou: float) -> float:
    i = (1 - iou) / (1 - 0.5)
    return (c * (2 * i - 1) + 1) / 2


@pytest.mark.parametrize("use_logits", [False, True])
def test_reference_rule_hand_computed(scene, use_logits):
    gt, pred = scene
    res = reference_detection_mistakenness(gt, pred, use_logits=use_logits, classes=CLASSES)
    if use_logits:
        c1, c2, c5 = _certainty([2, 0]), 0.5, _certainty([1, -1])
    else:
        c1, c2, c5 = 0.9, 0.7, 0.6
    expected = {  # label_id: (mistakenness, mistakenness_loc, iou, spurious)
        "g1": ((1 - c1) / 2, _loc(c1, 0.8), 0.8, False),  # labels agree
        "g2": ((1 + c2) / 2, _loc(c2, 0.6), 0.6, False),  # cat on a dog box
        "g3": (math.nan, math.nan, math.nan, True),  # p5 went to g4
        "g4": ((1 + c5) / 2, _loc(c5, 1.0), 1.0, False),
        "g5": (math.nan, math.nan, math.nan, True),
    }
    g = res.gt.set_index("label_id")
    for lid, (m, loc, iou, spurious) in expected.items():
        np.testing.assert_allclose(g.loc[lid, "mistakenness"], m, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g.loc[lid, "mistakenness_loc"], loc, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g.loc[lid, "iou"], iou, rtol=0, atol=1e-12)
        assert bool(g.loc[lid, "possible_spurious"]) is spurious
    # missing uses the stored confidence (> 0.95 strictly), with or without logits
    p = res.pred.set_index("label_id")
    assert p.index[p["possible_missing"]].tolist() == ["p3"]
    s = res.samples.set_index("sample_id")
    np.testing.assert_allclose(
        s["mistakenness"].to_numpy(), [(1 + c2) / 2, (1 + c5) / 2, math.nan], atol=1e-12
    )
    assert s["possible_missing"].tolist() == [1, 0, 0]
    assert s["possible_spurious"].tolist() == [0, 1, 1]


def test_reference_logits_change_scores_and_are_required(scene):
    gt, pred = scene
    plain = reference_detection_mistakenness(gt, pred)
    logit = reference_detection_mistakenness(gt, pred, use_logits=True, classes=CLASSES)
    assert plain.gt.loc[1, "mistakenness"] != pytest.approx(logit.gt.loc[1, "mistakenness"])
    bad = pred.copy()
    bad.at[4, "logits"] = None
    with pytest.raises(ValueError, match="'p5' of sample 's2' has no logits"):
        reference_detection_mistakenness(gt, bad, use_logits=True, classes=CLASSES)
    with pytest.raises(ValueError, match="'p1'.*2 logits, expected 3"):
        reference_detection_mistakenness(gt, pred, use_logits=True, classes=[*CLASSES, "cow"])


def test_default_uses_probability_of_the_annotated_class(scene):
    gt, pred = scene
    plain = detection_mistakenness(gt, pred).gt.set_index("label_id")
    logit = detection_mistakenness(gt, pred, use_logits=True, classes=CLASSES)
    g = logit.gt.set_index("label_id")
    # g2 (dog) is matched by p2 across classes: logits [0.5, 0.5] give dog probability 1/2
    assert plain.loc["g2", "mistakenness"] == pytest.approx((1 + 0.7) / 2)
    assert g.loc["g2", "mistakenness"] == pytest.approx(0.5)
    # g1 (cat) matched by p1, logits [2, 0]: 1 - e^2 / (e^2 + 1)
    assert g.loc["g1", "mistakenness"] == pytest.approx(1 - math.e**2 / (math.e**2 + 1))
    assert logit.params["use_logits"] is True
    with pytest.raises(ValueError, match="'p1' of sample 's1' has no logits"):
        detection_mistakenness(
            gt, pred.assign(logits=[None] * len(pred)), use_logits=True, classes=CLASSES
        )


def _uncalibrated_family(seed: int = 7, n_images: int = 150):
    """Isolated objects; 10% unannotated; 20% low-confidence false positives per object;
    every confidence squashed into [0.3, 0.7] (a fixed 0.95 cutoff finds nothing)."""
    rng = np.random.default_rng(seed)
    gt, pred, missing = [], [], set()
    for im in range(n_images):
        cells = rng.permutation(16)
        n = 4
        for k in range(n):
            cx, cy = divmod(int(cells[k]), 4)
            box = [cx * 0.25 + 0.05, cy * 0.25 + 0.05, 0.12, 0.12]
            pid = f"p{len(pred)}"
            pred.append((f"s{im}", pid, "a", box, rng.beta(9, 1.5)))
            if rng.random() < 0.1:
                missing.add(pid)
            else:
                gt.append((f"s{im}", f"g{len(gt)}", "a", box))
        for k in range(n, n + rng.binomial(n, 0.2)):
            cx, cy = divmod(int(cells[k]), 4)
            box = [cx * 0.25 + 0.05, cy * 0.25 + 0.05, 0.12, 0.12]
            pred.append((f"s{im}", f"p{len(pred)}", "a", box, rng.beta(1.5, 6)))
    gt = pd.DataFrame(gt, columns=["sample_id", "label_id", "label", "box"])
    pred = pd.DataFrame(pred, columns=["sample_id", "label_id", "label", "box", "confidence"])
    pred["confidence"] = 0.3 + 0.4 * pred["confidence"]
    return gt, pred, missing


def test_auto_missing_cutoff_on_uncalibrated_confidences():
    gt, pred, missing = _uncalibrated_family()
    res = detection_mistakenness(gt, pred)
    flagged = set(res.pred.loc[res.pred["possible_missing"], "label_id"])
    tp = len(flagged & missing)
    assert tp / len(flagged) >= 0.9 and tp / len(missing) >= 0.8
    assert 0.3 < res.params["missing_cutoff"] < 0.7
    ref = reference_detection_mistakenness(gt, pred)
    assert not ref.pred["possible_missing"].any()  # nothing reaches 0.95
    # a fixed cutoff low enough for this detector lets the false positives in
    fixed = detection_mistakenness(gt, pred, missing_conf=0.35)
    low = set(fixed.pred.loc[fixed.pred["possible_missing"], "label_id"])
    assert len(low & missing) / len(low) < 0.7  # swamped by the false positives
