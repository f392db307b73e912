"""Hardness: how uncertain the model is on each sample, in [0, 1]; no ground truth needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from dagster_brain.algorithms.mistakenness import probabilities

HardnessMethod = Literal["entropy", "margin"]


def hardness(
    probs_or_logits: np.ndarray,
    ids: Sequence[str],
    method: HardnessMethod = "entropy",
    from_logits: bool = True,
) -> np.ndarray:
    """Score each row in [0, 1] (1 = hardest) from its predicted class distribution.

    ``entropy`` (the default) is the Shannon entropy divided by ``log C``: 0 for a one-hot
    prediction, 1 for a uniform one. It is the default because it uses the whole
    distribution, so a sample split across many classes scores higher than one torn between
    two, and it is the uncertainty measure the reference describes. ``margin`` is
    ``1 - (p1 - p2)`` from the two largest probabilities: cheaper to read ("how close was the
    runner-up"), but blind to the rest of the distribution.

    ``from_logits=True`` applies a softmax to each row; otherwise rows are probabilities and
    are checked (and renormalised with a warning) as in
    :func:`dagster_brain.algorithms.mistakenness.probabilities`. Errors name the sample.
    """
    if method not in ("entropy", "margin"):
        raise ValueError(f"hardness method must be 'entropy' or 'margin', not {method!r}")
    ids = list(ids)
    X = np.asarray(probs_or_logits, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != len(ids):
        raise ValueError(f"hardness: {X.shape} scores do not match {len(ids)} sample ids")
    c = X.shape[1]
    if len(ids) == 0:
        return np.zeros(0)
    P = probabilities(X, None, None, range(c), ids, kind="logits" if from_logits else "probs")
    if c < 2:
        return np.zeros(len(ids))  # one class: nothing to be unsure about
    if method == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(P > 0, P * np.log(P), 0.0).sum(axis=1)
        return np.clip(h / np.log(c), 0.0, 1.0)
    top2 = np.sort(P, axis=1)[:, -2:]
    return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)
