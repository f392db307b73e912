import math

import numpy as np
import pandas as pd
import pytest

from dagster_brain.algorithms.mistakenness import (
    ProbabilityWarning,
    align,
    confident_learning_mistakenness,
    label_indices,
    probabilities,
    reference_mistakenness,
)

CLASSES = ["cat", "dog", "fox"]


def _confident_oof(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True labels and confident probabilities (0.75-0.95 on the true class)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    top = rng.uniform(0.75, 0.95, n)
    split = rng.uniform(0.2, 0.8, n)
    P = np.empty((n, 3))
    for i in range(n):
        others = [c for c in range(3) if c != y[i]]
        P[i, y[i]] = top[i]
        P[i, others[0]] = (1 - top[i]) * split[i]
        P[i, others[1]] = (1 - top[i]) * (1 - split[i])
    return y, P


def test_planted_flip_ranks_first():
    y, P = _confident_oof()
    noisy = y.copy()
    noisy[37] = (y[37] + 1) % 3
    scores, is_issue = confident_learning_mistakenness(P, noisy, CLASSES)
    assert scores.shape == (200,) and ((scores >= 0) & (scores <= 1)).all()
    assert int(np.argmax(scores)) == 37
    assert is_issue[37] and is_issue.sum() <= 3
    assert scores[is_issue].min() > scores[~is_issue].max()  # flagged issues come first
    ids = [f"s{i}" for i in range(200)]
    preds = [CLASSES[c] for c in P.argmax(axis=1)]
    ref = reference_mistakenness(preds, P.max(axis=1), [CLASSES[c] for c in noisy], ids=ids)
    assert int(np.argmax(ref)) == 37


def test_confident_learning_tolerates_absent_class():
    y, P = _confident_oof(60)
    keep = y != 2  # no sample annotated "fox", but the column stays
    scores, is_issue = confident_learning_mistakenness(P[keep], y[keep], CLASSES)
    assert np.isfinite(scores).all() and not is_issue.any()


def test_reference_hand_checked():
    pred = ["cat", "dog", "fox"]
    gt = ["cat", "cat", "fox"]
    conf = [0.9, 0.8, 0.3]
    # agree -> 1 - conf; disagree -> conf
    np.testing.assert_allclose(reference_mistakenness(pred, conf, gt), [0.1, 0.8, 0.7])

    inf = float("inf")
    logits = np.array([[0.0, 0.0, -inf], [0.0, 0.0, 0.0], [-inf, -inf, 0.0]])
    got = reference_mistakenness(pred, None, gt, logits=logits, use_logits=True)
    # certainty = 1 - H/log 3: [1 - log2/log3, 0, 1]
    sure = [1 - math.log(2) / math.log(3), 0.0, 1.0]
    np.testing.assert_allclose(got, [1 - sure[0], sure[1], 1 - sure[2]], atol=1e-9)


def test_reference_rejects_bad_confidence_naming_sample():
    with pytest.raises(ValueError, match="'b'"):
        reference_mistakenness(["cat", "dog"], [0.5, float("nan")], ["cat", "dog"], ids=["a", "b"])


def test_probabilities_softmax_and_renormalisation_warns():
    ids = ["a", "b"]
    P = probabilities(
        np.array([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]]), None, None, CLASSES, ids
    )
    np.testing.assert_allclose(P, [[1 / 3] * 3, [0.5, 0.25, 0.25]])

    with pytest.warns(ProbabilityWarning, match="'b'"):
        P = probabilities(
            [[0.2, 0.3, 0.5], [0.2, 0.2, 0.2]], None, None, CLASSES, ids, kind="probs"
        )
    np.testing.assert_allclose(P[1], [1 / 3] * 3)
    with pytest.raises(ValueError, match="'b'"):
        probabilities(
            [[0.2, 0.3, 0.5], [0.2, 0.2, 0.2]],
            None,
            None,
            CLASSES,
            ids,
            kind="probs",
            renormalize=False,
        )


def test_probabilities_errors_name_the_sample():
    with pytest.raises(ValueError, match=r"'b'.*expected 3.*3 classes"):
        probabilities([[0.0, 1.0, 2.0], [0.0, 1.0]], None, None, CLASSES, ["a", "b"])
    with pytest.raises(ValueError, match="'a'.*NaN"):
        probabilities([[0.0, np.nan, 2.0]], None, None, CLASSES, ["a"])


def test_probabilities_falls_back_to_confidence():
    with pytest.warns(ProbabilityWarning, match="'b'"):
        P = probabilities([[0.0, 0.0, 0.0], None], [0.4, 0.6], ["cat", "fox"], CLASSES, ["a", "b"])
    np.testing.assert_allclose(P[1], [0.2, 0.2, 0.6])


def test_align_skips_and_counts_missing_predictions():
    gt = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": ["cat", "dog", "fox", None]})
    pred = pd.DataFrame(
        {
            "sample_id": ["c", "a", "e"],
            "label": ["fox", "dog", "cat"],
            "confidence": [0.9, 0.8, 0.7],
        }
    )
    (g, p), skipped = align(gt, pred)
    assert g["sample_id"].tolist() == p["sample_id"].tolist() == ["a", "c"]
    assert p["confidence"].tolist() == [0.8, 0.9]
    # "d" has neither a ground-truth label nor a prediction: in neither list
    assert skipped == {"no_prediction": ["b"], "no_ground_truth": ["e"]}
    idx = label_indices(g["label"], CLASSES, g["sample_id"].tolist())
    assert idx.tolist() == [0, 2]
    with pytest.raises(ValueError, match="'a'"):
        align(pd.concat([gt, gt.head(1)]), pred)
