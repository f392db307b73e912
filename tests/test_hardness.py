import math

import numpy as np
import pytest

from dagster_brain.algorithms.hardness import hardness
from dagster_brain.algorithms.mistakenness import ProbabilityWarning


def test_entropy_equals_hand_computed():
    probs = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    ids = ["a", "b", "c"]
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    got = hardness(probs, ids, from_logits=False)
    np.testing.assert_allclose(got, [h0, 0.0, 1.0], atol=1e-12)
    # the same distributions given as logits (log-probabilities; -inf for probability 0)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(hardness(np.log(probs), ids), got, atol=1e-12)


def test_margin_hand_checked():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])
    got = hardness(probs, ["a", "b", "c"], method="margin", from_logits=False)
    np.testing.assert_allclose(got, [1 - (0.7 - 0.2), 1.0, 0.0])


def test_hardness_checks_inputs():
    with pytest.raises(ValueError, match="'b'"):
        hardness(np.array([[0.0, 1.0], [np.nan, 0.0]]), ["a", "b"])
    with pytest.raises(ValueError, match="do not match"):
        hardness(np.zeros((2, 3)), ["a"])
    with pytest.raises(ValueError, match="method"):
        hardness(np.zeros((1, 3)), ["a"], method="variance")
    with pytest.warns(ProbabilityWarning):
        got = hardness(np.array([[0.5, 0.5, 0.5]]), ["a"], from_logits=False)
    np.testing.assert_allclose(got, [1.0])
