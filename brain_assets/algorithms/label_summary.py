"""Label summary: how many labels each class has per split, how unbalanced the classes are,
and which classes hold unusually many likely label mistakes."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

# A class's share of flagged mistakes is unusual when a binomial tail this small (divided by
# the number of classes) says the dataset's overall rate would rarely give that many.
MISTAKE_ALPHA = 0.01
NO_SPLIT = "unsplit"  # the split of a sample with none


def split_column(split: str) -> str:
    """The results column counting one split's labels: ``n_<split>`` (lower case, runs of
    other characters as ``_``)."""
    name = re.sub(r"[^a-z0-9]+", "_", str(split).lower()).strip("_")
    return f"n_{name or NO_SPLIT}"


def class_list(labels: Sequence[str], declared: Sequence[str] | None = None) -> list[str]:
    """The classes of a field: the declared ones in their order, then any other label seen
    (sorted)."""
    first = [str(c) for c in (declared or [])]
    seen = set(first)
    return first + sorted({str(v) for v in labels} - seen)


def class_counts(
    labels: pd.DataFrame, classes: Sequence[str], splits: pd.Series | None = None
) -> pd.DataFrame:
    """One row per class: ``label``, ``count``, ``share`` of all labels, ``ratio_to_smallest``
    (count over the smallest non-empty class's count; 0 for an empty class) and, given each
    sample's split (``splits``, indexed by sample id), one ``n_<split>`` column per split.

    ``labels`` has a ``sample_id`` and a ``label`` column (one row per label: detections count
    each object)."""
    lab = labels.assign(label=labels["label"].astype(str))
    counts = lab["label"].value_counts().reindex(list(classes), fill_value=0).astype(np.int64)
    total = int(counts.sum())
    out = pd.DataFrame({"label": list(classes), "count": counts.to_numpy()})
    out["share"] = out["count"] / total if total else 0.0
    nonzero = out.loc[out["count"] > 0, "count"]
    smallest = int(nonzero.min()) if len(nonzero) else 0
    out["ratio_to_smallest"] = out["count"] / smallest if smallest else 0.0
    if splits is not None:
        split_of = lab["sample_id"].map(splits).fillna(NO_SPLIT).astype(str)
        table = pd.crosstab(lab["label"], split_of) if len(lab) else pd.DataFrame()
        names = sorted(table.columns, key=str)
        cols = [split_column(s) for s in names]
        if len(set(cols)) != len(cols):
            raise ValueError(f"split names {names} give the same column names {cols}")
        for name, col in zip(names, cols, strict=True):
            out[col] = table[name].reindex(list(classes), fill_value=0).to_numpy(np.int64)
    return out


def imbalance_ratio(counts: Sequence[int]) -> float:
    """The largest class's count over the smallest non-empty class's count (1.0 for one
    class; 0.0 when there are no labels)."""
    c = np.asarray([x for x in counts if x > 0], dtype=np.float64)
    return float(c.max() / c.min()) if c.size else 0.0


def class_mistakes(
    mistakes: pd.DataFrame, classes: Sequence[str], alpha: float = MISTAKE_ALPHA
) -> pd.DataFrame:
    """Per class (rows in ``classes`` order): ``mistakes_scored`` (labels with a mistakenness
    score), ``mistakenness_mean`` (0 when none is scored), ``label_issues`` (flagged labels),
    ``issue_rate`` and ``mistakes_high``: the class's flagged count is above what the
    dataset's overall rate predicts, with a one-sided binomial tail below ``alpha`` divided by
    the number of classes.

    ``mistakes`` has ``label``, ``mistakenness`` and ``flagged`` columns, one row per label.
    """
    m = mistakes.assign(label=mistakes["label"].astype(str))
    grouped = m.groupby("label")
    n = grouped.size().reindex(list(classes), fill_value=0).to_numpy(np.int64)
    f = grouped["flagged"].sum().reindex(list(classes), fill_value=0).to_numpy(np.int64)
    mean = grouped["mistakenness"].mean().reindex(list(classes)).fillna(0.0).to_numpy()
    total_n, total_f = int(n.sum()), int(f.sum())
    rate = np.divide(f, n, out=np.zeros(len(n)), where=n > 0)
    p = total_f / total_n if total_n else 0.0
    tail = np.ones(len(n))
    if 0 < p < 1:
        from scipy.stats import binom  # scipy.stats costs 0.7 s to import: only here

        tail = binom.sf(f - 1, n, p)  # P(X >= f) at the overall rate
    high = (n > 0) & (rate > p) & (tail < alpha / max(len(n), 1))
    return pd.DataFrame(
        {
            "mistakes_scored": n,
            "mistakenness_mean": mean.astype(np.float64),
            "label_issues": f,
            "issue_rate": rate,
            "mistakes_high": high,
        }
    )
