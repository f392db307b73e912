"""Classification mistakenness: how likely each ground-truth label is wrong, in [0, 1].

Two scorers share one input path (:func:`probabilities`, then :func:`label_indices`):

- :func:`confident_learning_mistakenness` (the default): confident learning with cleanlab on
  out-of-sample predicted probabilities. Per-class thresholds (the model's average
  self-confidence on each class) decide which labels are issues, so a class the model is
  generally unsure about does not flood the ranking.
- :func:`reference_mistakenness`: the reference's rule, kept for comparison. It only looks
  at the predicted label's confidence, not at the probability given to the annotated class.

Inputs are arrays aligned row by row; :func:`align` builds them from the store's label frames
and reports the samples it had to skip.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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


def _normalised_entropy(probs: np.ndarray) -> np.ndarray:
    c = probs.shape[1]
    if c < 2:
        return np.zeros(probs.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(probs > 0, probs * np.log(probs), 0.0).sum(axis=1)
    return np.clip(h / np.log(c), 0.0, 1.0)


def reference_mistakenness(
    pred_labels: Sequence,
    confidences: Sequence[float] | None,
    gt_labels: Sequence,
    logits: np.ndarray | None = None,
    use_logits: bool = False,
    *,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """The reference's classification rule, in [0, 1] (higher = more likely wrong).

    Each sample gets a certainty ``s`` for its *predicted* label. When the prediction and the
    annotation differ the score is ``s`` (a sure model that disagrees points at a wrong
    label); when they agree it is ``1 - s`` (an unsure model that agrees is weak support).
    By default ``s`` is the stored confidence. With ``use_logits=True``, ``s`` is one minus
    the normalised entropy of ``softmax(logits)``: a peaked distribution is sure, a flat one
    is not, whatever the top probability is. The probability given to the annotated class is
    never used, which is why confident learning beats this rule on planted flips.
    """
    pred = list(pred_labels)
    gt = list(gt_labels)
    n = len(pred)
    if len(gt) != n:
        raise ValueError(f"reference_mistakenness: {n} predictions for {len(gt)} labels")
    if ids is not None and len(ids) != n:
        raise ValueError(f"reference_mistakenness: {len(ids)} ids for {n} predictions")
    if use_logits:
        if logits is None:
            raise ValueError("reference_mistakenness: use_logits=True needs logits")
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[0] != n:
            raise ValueError(f"reference_mistakenness: logits {z.shape} for {n} samples")
        bad = np.flatnonzero(np.isnan(z).any(axis=1) | np.isposinf(z).any(axis=1))
        if bad.size:
            raise ValueError(f"sample {_sample(ids, int(bad[0]))}: NaN or +inf in its logits")
        sure = 1.0 - _normalised_entropy(softmax(z))
    else:
        if confidences is None:
            raise ValueError("reference_mistakenness: confidences are required")
        sure = np.asarray(list(confidences), dtype=np.float64)
        if sure.shape != (n,):
            raise ValueError(f"reference_mistakenness: {sure.shape} confidences for {n} samples")
        bad = np.flatnonzero(~((sure >= 0.0) & (sure <= 1.0)))  # NaN fails too
        if bad.size:
            raise ValueError(
                f"sample {_sample(ids, int(bad[0]))}: confidence {sure[bad[0]]} not in [0, 1]"
            )
    agree = np.array([p == g for p, g in zip(pred, gt, strict=True)], dtype=bool)
    return np.where(agree, 1.0 - sure, sure)


def confident_learning_mistakenness(
    probs: np.ndarray,
    gt_index: Sequence[int],
    classes: Sequence,
    *,
    ids: Sequence[str] | None = None,
    filter_by: str = "low_self_confidence",
    quality: str = "normalized_margin",
    n_jobs: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Confident-learning scores in [0, 1] and an ``is_issue`` flag per sample.

    ``probs`` must be out-of-sample (out-of-fold or held-out) predicted probabilities, rows
    in ``classes`` order; in-sample probabilities have memorised the noisy labels and hide
    them. cleanlab builds the confident joint: a sample counts as "really class j" when its
    probability for j reaches class j's threshold, the model's average probability for j over
    the samples annotated j (so each class gets its own bar). The off-diagonal mass of that
    joint estimates how many labels are wrong; ``filter_by="low_self_confidence"`` flags that
    many samples, those with the lowest probability for their annotated class.

    The label quality ``q`` is cleanlab's ``normalized_margin``: the probability of the
    annotated class minus the largest other class probability, rescaled to [0, 1]. It also
    sees which class the model prefers instead, so it separates flips better than the plain
    self-confidence. The score is ``(1 - q) / 2`` for unflagged samples and ``(2 - q) / 2``
    for flagged ones: every flagged issue ranks above every unflagged sample and, within each
    group, lower quality ranks higher. On the digits demo (six seeds) this pairing gave the
    best precision at the number of planted flips (mean 0.946) of cleanlab's filters and
    scores; cleanlab's own default, ``prune_by_noise_rate`` with self-confidence, gave 0.878
    (``benchmarks/quality_classification.py``). ``n_jobs=1`` avoids a process pool.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

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

    label_quality = np.clip(get_label_quality_scores(y, P, method=quality), 0.0, 1.0)
    if np.unique(y).size < 2 or n <= c:
        # Too little data to estimate per-class noise rates: flag only sure disagreements.
        is_issue = (P.argmax(axis=1) != y) & (label_quality < 0.5)
    else:
        with warnings.catch_warnings():
            # Classes absent from the labels are expected on small subsets.
            warnings.filterwarnings("ignore", message=".*(class|labels).*", category=UserWarning)
            is_issue = find_label_issues(y, P, filter_by=filter_by, n_jobs=n_jobs).astype(bool)
    scores = (1.0 - label_quality + is_issue) / 2.0
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
