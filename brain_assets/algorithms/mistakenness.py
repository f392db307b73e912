"""Classification mistakenness: how likely each ground-truth label is wrong, in [0, 1].

Two scorers share one input path (:func:`probabilities`, then :func:`label_indices`):

- :func:`confident_learning_mistakenness` (the default), on out-of-sample predicted
  probabilities: the score is one minus the probability of the annotated class, or, where
  :func:`label_noise_model` finds that wrong labels go to particular classes, the posterior
  probability that the annotation is wrong; cleanlab's confident learning sets the
  ``possible_label_issue`` flag.
- :func:`reference_mistakenness`: the reference's rule, kept for comparison. It only looks
  at the predicted label's confidence, not at the probability given to the annotated class.

Inputs are arrays aligned row by row; :func:`align` builds them from the store's label frames
and reports the samples it had to skip.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

ProbKind = Literal["logits", "probs"]
# Stored probabilities whose row sum is further than this from 1 are renormalised (or refused).
SUM_TOLERANCE = 1e-3


class ProbabilityWarning(UserWarning):
    """Stored probabilities had to be renormalised or filled in from a confidence."""


def _sample(ids: Sequence[str] | None, i: int) -> str:
    return repr(ids[i]) if ids is not None else f"at row {i}"


def _is_missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    return np.ndim(value) == 0 and isinstance(value, float) and np.isnan(value)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; ``-inf`` logits give probability 0."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)  # largest logit becomes 0: no overflow
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _from_confidence(conf, pred, index: dict, c: int, sample: str) -> np.ndarray:
    """A distribution with ``conf`` on the predicted class and the rest spread evenly."""
    if conf is None or _is_missing(conf) or pred is None or _is_missing(pred):
        raise ValueError(f"sample {sample}: no logits and no confidence/predicted label")
    conf = float(conf)
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"sample {sample}: confidence {conf} is outside [0, 1]")
    if pred not in index:
        raise ValueError(f"sample {sample}: predicted label {pred!r} is not in the class list")
    row = np.full(c, (1.0 - conf) / (c - 1) if c > 1 else 0.0)
    row[index[pred]] = conf
    return row


def probabilities(
    logits: np.ndarray | Sequence | None,
    confidence: Sequence[float] | None,
    labels_pred: Sequence | None,
    classes: Sequence,
    ids: Sequence[str],
    *,
    kind: ProbKind = "logits",
    renormalize: bool = True,
) -> np.ndarray:
    """(n, C) class probabilities, one row per id, columns in ``classes`` order.

    ``logits`` is an (n, C) array or a length-n sequence of per-sample rows (``None`` for a
    sample without them). ``kind="logits"`` applies a softmax; ``kind="probs"`` takes the rows
    as probabilities. A sample with no row gets ``confidence`` on its predicted label and the
    rest spread evenly over the other classes (with one :class:`ProbabilityWarning` for all).

    Probability rows whose sum is more than ``SUM_TOLERANCE`` from 1 are divided by their sum
    with a :class:`ProbabilityWarning` (``renormalize=False`` raises instead). Such rows are
    usually rounded exports or a softmax over a slightly different class list; dividing keeps
    the order of classes within the sample, and failing the whole run for it would be worse,
    but the warning names the first sample so that a truly wrong input is still noticed.

    Raises ``ValueError`` naming the sample for a row of the wrong length (it gives the
    expected class list length), NaN or ``+inf`` values, negative probabilities or a zero sum.
    """
    ids = list(ids)
    n, c = len(ids), len(classes)
    if kind not in ("logits", "probs"):
        raise ValueError(f"kind must be 'logits' or 'probs', not {kind!r}")
    if c < 1:
        raise ValueError("probabilities: empty class list")
    index = {label: j for j, label in enumerate(classes)}
    rows: list = [None] * n if logits is None else list(logits)
    if len(rows) != n:
        raise ValueError(f"probabilities: {len(rows)} logit rows for {n} sample ids")
    conf = [None] * n if confidence is None else list(confidence)
    pred = [None] * n if labels_pred is None else list(labels_pred)
    if len(conf) != n or len(pred) != n:
        raise ValueError(f"probabilities: confidence/labels_pred lengths differ from {n} ids")

    out = np.empty((n, c), dtype=np.float64)
    given = np.ones(n, dtype=bool)
    filled = []
    dense = isinstance(logits, np.ndarray) and logits.ndim == 2 and logits.dtype != object
    if dense and logits.shape[1] == c:  # fast path: no per-row checks needed for shape
        out[:] = logits
        bad = np.flatnonzero(np.isnan(out).any(axis=1) | np.isposinf(out).any(axis=1))
        if bad.size:
            raise ValueError(f"sample {ids[bad[0]]!r}: NaN or +inf in its {kind}")
        rows = []
    for i, row in enumerate(rows):
        if _is_missing(row):
            given[i] = False
            out[i] = _from_confidence(conf[i], pred[i], index, c, _sample(ids, i))
            filled.append(ids[i])
            continue
        arr = np.asarray(row, dtype=np.float64).ravel()
        if arr.shape[0] != c:
            raise ValueError(
                f"sample {ids[i]!r}: {arr.shape[0]} {kind} values, expected {c} "
                f"(the class list has {c} classes)"
            )
        if np.isnan(arr).any() or np.isposinf(arr).any():
            raise ValueError(f"sample {ids[i]!r}: NaN or +inf in its {kind}")
        out[i] = arr
    if filled:
        warnings.warn(
            f"{len(filled)} samples have no {kind}; using their confidence instead "
            f"(first: {filled[0]!r})",
            ProbabilityWarning,
            stacklevel=2,
        )
    if not given.any():
        return out

    sub = out[given]
    sub_ids = [i for i, g in zip(ids, given, strict=True) if g]
    if kind == "logits":
        if np.isneginf(sub).all(axis=1).any():
            bad = int(np.flatnonzero(np.isneginf(sub).all(axis=1))[0])
            raise ValueError(f"sample {sub_ids[bad]!r}: every logit is -inf")
        out[given] = softmax(sub)
        return out
    neg = np.flatnonzero((sub < -SUM_TOLERANCE).any(axis=1) | np.isinf(sub).any(axis=1))
    if neg.size:
        raise ValueError(f"sample {sub_ids[neg[0]]!r}: negative or infinite probability")
    sub = np.clip(sub, 0.0, None)
    sums = sub.sum(axis=1)
    if (sums <= 0).any():
        raise ValueError(f"sample {sub_ids[int(np.flatnonzero(sums <= 0)[0])]!r}: zero probs")
    off = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if off.size:
        msg = (
            f"{off.size} samples have probabilities not summing to 1 "
            f"(first: {sub_ids[off[0]]!r}, sum {sums[off[0]]:.4f})"
        )
        if not renormalize:
            raise ValueError(msg)
        warnings.warn(msg + "; renormalised", ProbabilityWarning, stacklevel=2)
    out[given] = sub / sums[:, None]  # also removes sub-tolerance drift
    return out


def label_indices(
    labels: Sequence, classes: Sequence, ids: Sequence[str], what: str = "ground truth"
) -> np.ndarray:
    """Column index of each label in ``classes``; an unknown label names its sample."""
    index = {label: j for j, label in enumerate(classes)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        if label not in index:
            raise ValueError(f"sample {ids[i]!r}: {what} label {label!r} is not in the classes")
        out[i] = index[label]
    return out


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Natural-log entropy of each row (``0 log 0 = 0``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)


def certainty(probs: np.ndarray) -> np.ndarray:
    """The reference's certainty of each probability row: ``exp(-entropy)``, in ``(0, 1]``."""
    return np.exp(-_entropy(np.asarray(probs, dtype=np.float64)))


def reference_mistakenness(
    pred_labels: Sequence,
    confidences: Sequence[float] | None,
    gt_labels: Sequence,
    logits: np.ndarray | Sequence | None = None,
    use_logits: bool = False,
    *,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """The reference's classification rule, in [0, 1] (higher = more likely wrong).

    With ``c`` the prediction's certainty, a sample whose predicted label equals its
    annotation scores ``(1 - c) / 2`` and one whose labels differ ``(1 + c) / 2``: a sure
    disagreement scores near 1, a sure agreement near 0 and an unsure prediction near 0.5.
    ``c`` is the stored confidence, or with ``use_logits=True`` ``exp(-H)`` where ``H`` is the
    natural-log entropy of ``softmax(logits)`` (1 for a one-hot distribution, ``1 / C`` for a
    uniform one over ``C`` classes). As in the reference, a sample with an annotation but no
    prediction (``None`` predicted label) scores 1.0, and one with a prediction but no
    annotation counts as a disagreement. The probability given to the annotated class is never
    used, which is why the default scorer beats this rule on planted flips.

    ``logits`` is an (n, C) array or a length-n sequence of rows (``None`` where a sample has
    no prediction). Raises ``ValueError`` naming the sample for a missing or out-of-range
    confidence, missing, NaN or ``+inf`` logits, or a sample with neither label.
    """
    pred = list(pred_labels)
    gt = list(gt_labels)
    n = len(pred)
    if len(gt) != n:
        raise ValueError(f"reference_mistakenness: {n} predictions for {len(gt)} labels")
    if ids is not None and len(ids) != n:
        raise ValueError(f"reference_mistakenness: {len(ids)} ids for {n} predictions")
    has_pred = np.array([not _is_missing(p) for p in pred], dtype=bool)
    has_gt = np.array([not _is_missing(g) for g in gt], dtype=bool)
    neither = np.flatnonzero(~has_pred & ~has_gt)
    if neither.size:
        raise ValueError(f"sample {_sample(ids, int(neither[0]))}: no label and no prediction")
    sure = np.zeros(n)
    if use_logits:
        if logits is None:
            raise ValueError("reference_mistakenness: use_logits=True needs logits")
        rows = list(logits)
        if len(rows) != n:
            raise ValueError(f"reference_mistakenness: {len(rows)} logit rows for {n} samples")
        for i in np.flatnonzero(has_pred):
            row = rows[i]
            if _is_missing(row):
                raise ValueError(f"sample {_sample(ids, int(i))}: use_logits=True but no logits")
            z = np.asarray(row, dtype=np.float64).ravel()
            if z.size == 0 or np.isnan(z).any() or np.isposinf(z).any() or np.isneginf(z).all():
                raise ValueError(
                    f"sample {_sample(ids, int(i))}: empty, NaN, +inf or all -inf logits"
                )
            sure[i] = certainty(softmax(z[None, :]))[0]
    else:
        if confidences is None:
            raise ValueError("reference_mistakenness: confidences are required")
        conf = list(confidences)
        if len(conf) != n:
            raise ValueError(f"reference_mistakenness: {len(conf)} confidences for {n} samples")
        for i in np.flatnonzero(has_pred):
            value = conf[i]
            c = np.nan if _is_missing(value) else float(value)
            if not 0.0 <= c <= 1.0:  # NaN fails too
                raise ValueError(
                    f"sample {_sample(ids, int(i))}: confidence {value!r} not in [0, 1]"
                )
            sure[i] = c
    agree = np.array(
        [hp and hg and p == g for p, g, hp, hg in zip(pred, gt, has_pred, has_gt, strict=True)],
        dtype=bool,
    )
    scores = np.where(agree, (1.0 - sure) / 2.0, (1.0 + sure) / 2.0)
    scores[~has_pred] = 1.0
    return scores


# Structured noise is used only when modelling it gains at least this many nats of held-out
# log-likelihood per unit of off-diagonal mass (chosen on tuning seeds, see the default below).
STRUCTURE_GAIN = 0.25
# Less off-diagonal mass than this many samples' worth: too little to see where flips go.
MIN_NOISY_FOR_STRUCTURE = 10


@dataclass(frozen=True)
class NoiseModel:
    """Where wrong labels go: ``T[true, annotated] = (1 - rate) I + rate * shape``.

    ``rate`` is the off-diagonal share of the soft joint of predicted and annotated classes:
    wrong labels plus the model's own uncertainty, so it is an upper bound on the noise rate
    rather than an estimate of it. Within the posterior it only scales how strongly the other
    classes count; the ranking without structure does not depend on it.
    """

    rate: float  # off-diagonal share of the soft joint, clipped to [1e-4, 0.5]
    shape: np.ndarray  # (C, C) rows: where a wrong label of each true class goes (0 diagonal)
    gain: float  # held-out nats per unit of off-diagonal mass that ``shape`` adds over uniform
    structured: bool  # gain >= STRUCTURE_GAIN: the score uses ``shape``

    def transition(self) -> np.ndarray:
        """T[true, annotated] with this model's shape, or uniform when not structured."""
        c = self.shape.shape[0]
        shape = self.shape if self.structured else (1.0 - np.eye(c)) / max(c - 1, 1)
        return self.rate * shape + (1.0 - self.rate) * np.eye(c)


def _soft_noise(probs: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, float]:
    """(shape, rate) from the soft joint ``J[k, j] = sum of P[i, k] over samples annotated j``.

    With probabilities of the true class and noise that depends only on the true class,
    ``J / J.sum()`` estimates the joint of true and annotated classes; one pseudo-count per
    row, spread evenly, keeps rows with no off-diagonal mass defined.
    """
    joint = np.zeros((c, c))
    np.add.at(joint.T, y, probs)  # joint[:, y_i] += probs[i]
    off = joint.copy()
    np.fill_diagonal(off, 0.0)
    rate = float(off.sum() / joint.sum()) if joint.sum() > 0 else 0.0
    shape = off + 1.0 / max(c - 1, 1)
    np.fill_diagonal(shape, 0.0)
    return shape / shape.sum(axis=1, keepdims=True), rate


def label_noise_model(probs: np.ndarray, gt_index: Sequence[int], *, seed: int = 0) -> NoiseModel:
    """Estimate how labels were corrupted and whether the corruption has structure.

    Two halves of the samples (a fixed random split) each estimate where wrong labels go;
    each half's estimate scores the other half's annotations under ``P @ T``. ``gain`` is how
    much better that held-out log-likelihood is with the estimated shape than with wrong
    labels spread evenly over the other classes, divided by the off-diagonal mass
    (``rate * n``). Uniform noise gives a gain near zero or below (model confusions between
    similar classes do not predict held-out labels); flips into confusable classes about one
    nat. Binary data, and data with less than ``MIN_NOISY_FOR_STRUCTURE`` samples' worth of
    off-diagonal mass, are never structured. Cost: O(n C + C^2).
    """
    P = np.asarray(probs, dtype=np.float64)
    y = np.asarray(gt_index, dtype=np.int64)
    n, c = P.shape
    shape, rate = _soft_noise(P, y, c)
    rate = float(np.clip(rate, 1e-4, 0.5))
    if c < 3 or rate * n < MIN_NOISY_FOR_STRUCTURE:
        return NoiseModel(rate, shape, 0.0, False)
    perm = np.random.default_rng(seed).permutation(n)
    halves = (perm[: n // 2], perm[n // 2 :])
    uniform = (1.0 - np.eye(c)) / (c - 1)
    gain = 0.0
    for fit, held in (halves, halves[::-1]):
        shape_h, rate_h = _soft_noise(P[fit], y[fit], c)
        rate_h = float(np.clip(rate_h, 1e-4, 0.5))
        for sign, sh in ((1.0, shape_h), (-1.0, uniform)):
            T = rate_h * sh + (1.0 - rate_h) * np.eye(c)
            like = (P[held] * T[:, y[held]].T).sum(axis=1)  # (P @ T)[i, y_i], O(n C)
            gain += sign * float(np.log(np.clip(like, 1e-300, None)).sum())
    gain /= rate * n
    return NoiseModel(rate, shape, gain, gain >= STRUCTURE_GAIN)


def confident_learning_mistakenness(
    probs: np.ndarray,
    gt_index: Sequence[int],
    classes: Sequence,
    *,
    ids: Sequence[str] | None = None,
    filter_by: str = "low_self_confidence",
    noise: NoiseModel | None = None,
    n_jobs: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1] (higher = more likely a wrong label) and an ``is_issue`` flag.

    ``probs`` must be out-of-sample (out-of-fold or held-out) predicted probabilities, rows in
    ``classes`` order; in-sample probabilities have memorised the noisy labels and hide them.

    Score: ``1 - P[annotated class]`` (cleanlab's self-confidence ranking) unless
    :func:`label_noise_model` finds structured noise (wrong labels going to particular
    classes, such as confusable pairs), in which case it is the posterior probability that
    the annotation is wrong, ``1 - P[y] T[y, y] / sum_k P[k] T[k, y]``, with the estimated
    transition ``T``. With uniform noise that posterior ranks exactly as self-confidence does,
    so the switch only changes the ranking where the data show structure.

    Flag: cleanlab's ``find_label_issues`` (``filter_by="low_self_confidence"``): per-class
    thresholds (the model's average probability for each class over the samples annotated
    with it) estimate how many labels are wrong, and that many samples, those with the lowest
    probability for their annotated class, are flagged. The flag does not change the score.

    How this was chosen (``benchmarks/quality_classification.py --choose``): on 17 generated
    data families (2 to 100 classes, 1-30 % flips, uniform and confusable-pair noise,
    imbalance to 1:50, accuracy 60-99 %, over- and under-confident models, a real model
    trained on noisy labels, the digits demo) and tuning seeds 0-4, every other candidate
    (normalized margin, confidence-weighted entropy, per-class adjusted probabilities, blends
    of self-confidence and margin, a rank ensemble, cleanlab's noise-matrix posterior, the old
    default: flag plus normalized margin) had a lower mean AP than self-confidence on 11 to 17
    families (the old default by up to 0.23); bumping flagged samples changed nothing. The
    noise posterior gained on the pair-noise families but lost a little on 11 others; its
    held-out likelihood gain separates the two cases (at most 0.05 on every family without
    pair noise, 0.92-1.36 on the three with it), hence the gate ``STRUCTURE_GAIN = 0.25``.
    ``n_jobs=1`` avoids a process pool.
    """
    from cleanlab.filter import find_label_issues

    P = np.asarray(probs, dtype=np.float64)
    y = np.asarray(gt_index)
    n, c = len(y), len(classes)
    if P.ndim != 2 or P.shape != (n, c):
        raise ValueError(f"confident learning: probs {P.shape} do not match ({n}, {c})")
    if ids is not None and len(ids) != n:
        raise ValueError(f"confident learning: {len(ids)} ids for {n} samples")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= c):
        raise ValueError(f"confident learning: ground-truth indices must be in [0, {c})")
    bad = np.flatnonzero(~np.isfinite(P).all(axis=1))
    if bad.size:
        raise ValueError(f"sample {_sample(ids, int(bad[0]))}: non-finite probabilities")
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)

    rows = np.arange(n)
    own = P[rows, y]
    noise = label_noise_model(P, y) if noise is None else noise
    if noise.shape.shape != (c, c):
        raise ValueError(f"confident learning: noise model for {noise.shape.shape[0]} classes")
    if noise.structured:
        T = noise.transition()
        like = P * T[:, y].T  # like[i, k] = P[i, k] * T[k, y_i]
        total = like.sum(axis=1)
        safe = np.where(total > 0, total, 1.0)
        scores = np.where(total > 0, 1.0 - like[rows, y] / safe, 1.0 - own)
    else:
        scores = 1.0 - own
    scores = np.clip(scores, 0.0, 1.0)
    if np.unique(y).size < 2 or n <= c:
        # Too little data to estimate per-class noise rates: flag only sure disagreements.
        is_issue = (P.argmax(axis=1) != y) & (own < 0.5)
    else:
        with warnings.catch_warnings():
            # Classes absent from the labels are expected on small subsets.
            warnings.filterwarnings("ignore", message=".*(class|labels).*", category=UserWarning)
            is_issue = find_label_issues(y, P, filter_by=filter_by, n_jobs=n_jobs).astype(bool)
    return scores, is_issue


def align(
    gt_frame: pd.DataFrame, pred_frame: pd.DataFrame
) -> tuple[tuple[pd.DataFrame, pd.DataFrame], dict[str, list[str]]]:
    """Join classification label frames by ``sample_id``; report what had to be skipped.

    Returns ``((gt, pred), skipped)``: both frames hold the same samples in the same order
    (sorted by id, index reset); ``skipped["no_prediction"]`` lists samples with a ground-truth
    label but no prediction, ``skipped["no_ground_truth"]`` the reverse. A null label counts
    as missing. Two labels for one sample in either frame is an error naming the sample.
    """
    frames = {}
    for what, df in (("ground truth", gt_frame), ("predictions", pred_frame)):
        if "sample_id" not in df or "label" not in df:
            raise ValueError(f"{what}: the frame needs 'sample_id' and 'label' columns")
        df = df[df["label"].notna()]
        dup = df["sample_id"].duplicated()
        if dup.any():
            sid = df.loc[dup, "sample_id"].iloc[0]
            raise ValueError(f"{what}: sample {sid!r} has more than one classification label")
        frames[what] = df.set_index("sample_id", drop=False)
    gt, pred = frames["ground truth"], frames["predictions"]
    both = sorted(set(gt.index) & set(pred.index))
    skipped = {
        "no_prediction": sorted(set(gt.index) - set(pred.index)),
        "no_ground_truth": sorted(set(pred.index) - set(gt.index)),
    }
    return (
        gt.loc[both].reset_index(drop=True),
        pred.loc[both].reset_index(drop=True),
    ), skipped
