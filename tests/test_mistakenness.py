import math

import numpy as np
import pandas as pd
import pytest

from dagster_brain.algorithms.mistakenness import (
    STRUCTURE_GAIN,
    ProbabilityWarning,
    align,
    confident_learning_mistakenness,
    label_indices,
    label_noise_model,
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
    # one flip is no structure: the score is one minus the probability of the annotated class
    np.testing.assert_allclose(scores, 1 - P[np.arange(200), noisy], rtol=0, atol=1e-15)
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
    # (1 - c) / 2 when prediction and annotation agree, (1 + c) / 2 when they differ; an
    # annotation with no prediction scores 1.0; a prediction with no annotation disagrees.
    pred = ["cat", "dog", "fox", None, "dog"]
    gt = ["cat", "cat", "fox", "dog", None]
    conf = [0.9, 0.8, 0.3, None, 0.6]
    got = reference_mistakenness(pred, conf, gt)
    np.testing.assert_allclose(got, [0.05, 0.9, 0.35, 1.0, 0.8], rtol=0, atol=1e-12)


def test_reference_logits_hand_checked():
    # c = exp(-H), H the natural-log entropy of softmax(logits), written out by hand here.
    inf = float("inf")
    z = [2.0, 1.0, 0.0]
    total = math.exp(2.0) + math.exp(1.0) + math.exp(0.0)
    p = [math.exp(2.0) / total, math.exp(1.0) / total, 1.0 / total]
    h = -(p[0] * math.log(p[0]) + p[1] * math.log(p[1]) + p[2] * math.log(p[2]))
    c = math.exp(-h)
    assert abs(h - 0.8323955818399389) < 1e-12 and abs(c - 0.4350059447738993) < 1e-12
    rows = [z, z, [0.0, 0.0, -inf], [0.0, 0.0, 0.0], [-inf, -inf, 0.0], None]
    pred = ["cat", "cat", "dog", "fox", "fox", None]
    gt = ["cat", "dog", "fox", "fox", "fox", "cat"]
    got = reference_mistakenness(pred, None, gt, logits=rows, use_logits=True)
    expected = [
        (1 - c) / 2,  # agree: 0.28249702761305034
        (1 + c) / 2,  # disagree: 0.7175029723869497
        (1 + 0.5) / 2,  # H = ln 2, c = 1/2, disagree
        (1 - 1 / 3) / 2,  # H = ln 3, c = 1/3, agree
        0.0,  # one-hot: c = 1, agree
        1.0,  # no prediction
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'b'.*no logits"):
        reference_mistakenness(
            ["cat", "dog"], None, ["cat", "dog"], [z, None], use_logits=True, ids=["a", "b"]
        )
    with pytest.raises(ValueError, match="'a'.*no label and no prediction"):
        reference_mistakenness([None], [None], [None], ids=["a"])


def test_perfect_model_on_12_classes_flags_nothing_and_ranks_flips_first():
    classes = [f"class {j}" for j in range(12)]
    y = np.arange(600) % 12
    P = np.full((600, 12), 0.05 / 11)
    P[np.arange(600), y] = 0.95
    scores, is_issue = confident_learning_mistakenness(P, y, classes)
    assert not is_issue.any()
    np.testing.assert_allclose(scores, 0.05, atol=1e-12)  # correct labels score low

    noisy = y.copy()
    flips = np.arange(0, 600, 50)  # 12 planted flips, one per class
    noisy[flips] = (y[flips] + 1) % 12
    scores, is_issue = confident_learning_mistakenness(P, noisy, classes)
    assert set(np.flatnonzero(is_issue)) == set(flips)
    assert scores[flips].min() > 0.9 and np.delete(scores, flips).max() < 0.1


def _mixture(noise: str, seed: int, n: int = 1500, c: int = 6, flip: float = 0.15):
    """Out-of-sample probabilities of a Gaussian mixture whose classes come in close pairs."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((c, 8))
    means[1::2] = 0.7 * means[0::2] + 0.3 * means[1::2]  # (0, 1), (2, 3), ... confusable
    y = rng.integers(0, c, n)
    x = means[y] + 0.6 * rng.standard_normal((n, 8))
    logits = -((x[:, None, :] - means[None]) ** 2).sum(axis=2) / (2 * 0.6**2)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    noisy = y.copy()
    who = rng.choice(n, int(flip * n), replace=False)
    if noise == "pairs":
        noisy[who] = y[who] ^ 1  # flip to the confusable partner
    else:
        noisy[who] = (y[who] + rng.integers(1, c, who.size)) % c
    return probs, noisy, noisy != y


def test_default_is_never_worse_than_self_confidence():
    from sklearn.metrics import average_precision_score

    classes = list(range(6))
    # Uniform flips: no structure, so the ranking is exactly cleanlab's self-confidence.
    P, noisy, flipped = _mixture("uniform", seed=3)
    noise = label_noise_model(P, noisy)
    assert not noise.structured
    scores, _ = confident_learning_mistakenness(P, noisy, classes, noise=noise)
    np.testing.assert_array_equal(scores, 1 - P[np.arange(len(noisy)), noisy])

    # Flips into the confusable partner: the noise posterior ranks them better.
    P, noisy, flipped = _mixture("pairs", seed=3)
    noise = label_noise_model(P, noisy)
    assert noise.structured and noise.gain > STRUCTURE_GAIN
    scores, _ = confident_learning_mistakenness(P, noisy, classes, noise=noise)
    self_confidence = 1 - P[np.arange(len(noisy)), noisy]
    ap_default = average_precision_score(flipped, scores)
    ap_sc = average_precision_score(flipped, self_confidence)
    assert ap_default > ap_sc
    # The estimated transition puts the wrong labels of each class on its partner.
    off = noise.shape.argmax(axis=1)
    assert off.tolist() == [1, 0, 3, 2, 5, 4]


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
