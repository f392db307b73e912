"""Classification mistakenness over generated data families: how well each scorer finds flips.

    python benchmarks/quality_classification.py [--json OUT.json] [--choose]
                                                [--families NAME ...] [--seeds 1000 ...]

Each family generates ground-truth labels with planted flips and out-of-sample predicted
probabilities and logits directly (no images): true classes drawn from class priors (balanced
or geometric imbalance up to 1:50), a Gaussian-mixture "model" whose logits are the Bayes
posterior plus estimation noise, its accuracy set by the class spread, then miscalibrated with
a temperature and, optionally, pulled towards the noisy labels (a model trained on noisy labels
learns part of the noise). Flips are uniform (any other class) or class-conditional
(confusable pairs, whose class means sit close together). One family trains a real model
(logistic regression, out of fold, on the noisy labels) and one is the digits demo
(``make_digits_demo``). Class names are integers or strings depending on the family.

Metrics per (family, seed, method): AUROC, average precision (AP) and precision@k with k = the
number of planted flips. The scorers compared on held-out seeds are the default
(``confident_learning_mistakenness``), plain cleanlab (``get_label_quality_scores`` with
``self_confidence``: rank by one minus the probability of the annotated class) and the
reference's rule with confidences and with logits. ``--choose`` prints the tuning-seed table
of every candidate default; the default was picked from that table only (``TUNING_SEEDS``) and
is reported on ``HELD_OUT_SEEDS``, which were never used to choose.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from dagster_brain.algorithms.mistakenness import (
    confident_learning_mistakenness,
    label_noise_model,
    reference_mistakenness,
    softmax,
)

TUNING_SEEDS = (0, 1, 2, 3, 4)
HELD_OUT_SEEDS = (1000, 1001, 1002, 1003, 1004)


@dataclass(frozen=True)
class Family:
    """One kind of data: classes, noise, imbalance, model quality and calibration."""

    n: int = 2000
    classes: int = 10
    names: str = "int"  # "int" or "str" class names
    flip: float = 0.05  # fraction of labels flipped
    noise: str = "uniform"  # "uniform" or "pairs" (flip to a confusable partner)
    imbalance: float = 1.0  # largest / smallest class prior
    accuracy: float = 0.9  # target accuracy of the model against the true labels
    temperature: float = 1.0  # <1 over-confident, >1 under-confident
    absorb: float = 0.0  # how far the model's probabilities lean towards the noisy labels
    confusable: bool = False  # class means in close pairs (always so with pairs noise)
    source: str = "mixture"  # "mixture", "sklearn" (real model, out of fold) or "digits"


FAMILIES: dict[str, Family] = {
    "c10_uniform_5": Family(),
    "c2_binary_10": Family(n=1000, classes=2, flip=0.10, accuracy=0.85),
    "c2_imbalanced_1to20": Family(n=2000, classes=2, imbalance=20, accuracy=0.95),
    "c12_str_pairs_10": Family(n=2400, classes=12, names="str", flip=0.10, noise="pairs"),
    "c12_str_pairs_absorbed": Family(
        n=2400, classes=12, names="str", flip=0.20, noise="pairs", absorb=0.5
    ),
    "c12_str_confusable_uniform_10": Family(
        n=2400, classes=12, names="str", flip=0.10, confusable=True
    ),
    "c100_uniform_5": Family(n=5000, classes=100, accuracy=0.8),
    "c100_str_pairs_10": Family(n=5000, classes=100, names="str", flip=0.1, noise="pairs"),
    "c10_imbalance_1to50": Family(n=3000, imbalance=50),
    "c10_acc60_10": Family(flip=0.10, accuracy=0.6),
    "c10_acc99_1": Family(flip=0.01, accuracy=0.99),
    "c10_heavy_30": Family(flip=0.30, accuracy=0.85, absorb=0.3),
    "c10_overconfident": Family(temperature=0.3),
    "c10_underconfident": Family(temperature=3.0),
    "c10_small_300": Family(n=300, flip=0.05),
    "c10_sklearn_lr": Family(n=2000, flip=0.10, source="sklearn"),
    "digits_demo": Family(source="digits"),
}


@dataclass
class Case:
    """One generated data set: noisy labels, out-of-sample predictions and the planted flips."""

    classes: list
    labels: list  # annotated (noisy) class names
    label_index: np.ndarray
    probs: np.ndarray
    logits: np.ndarray
    flipped: np.ndarray  # bool per sample

    @property
    def predicted(self) -> list:
        return [self.classes[j] for j in self.probs.argmax(axis=1)]

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)


def _priors(fam: Family) -> np.ndarray:
    w = fam.imbalance ** (-np.arange(fam.classes) / max(fam.classes - 1, 1))
    return w / w.sum()


def _partner(c: int) -> np.ndarray:
    """Confusable partner of each class: (0, 1), (2, 3), ...; an odd last class pairs with 0."""
    p = np.arange(c) ^ 1
    if c % 2:
        p[c - 1] = 0
    return p


def _transition(fam: Family) -> np.ndarray:
    """T[true, noisy]: the probability that a label of class ``true`` is annotated ``noisy``."""
    c = fam.classes
    if fam.noise == "pairs":
        T = np.eye(c) * (1 - fam.flip)
        T[np.arange(c), _partner(c)] += fam.flip
        return T
    return np.full((c, c), fam.flip / (c - 1)) + np.eye(c) * (1 - fam.flip - fam.flip / (c - 1))


def _means(fam: Family, rng: np.random.Generator) -> np.ndarray:
    dim = 16
    mu = rng.standard_normal((fam.classes, dim))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    if fam.noise == "pairs" or fam.confusable:  # partners close together: the model confuses them
        part = _partner(fam.classes)
        for a in range(0, fam.classes - 1, 2):
            mu[part[a]] = 0.75 * mu[a] + 0.25 * mu[part[a]]
    return mu


def _mixture_logits(
    fam: Family, spread: float, mu: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Bayes-posterior logits of the mixture plus estimation noise (calibrated-ish)."""
    x = mu[y] + spread * rng.standard_normal((len(y), mu.shape[1]))
    d2 = ((x[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2)
    z = np.log(_priors(fam))[None, :] - d2 / (2 * spread**2)
    return z + 0.3 * rng.standard_normal(z.shape)


@functools.cache
def _spread(name: str) -> float:
    """The class spread that gives the family its target accuracy (bisection, fixed seed)."""
    fam = FAMILIES[name]
    rng = np.random.default_rng(12345)
    mu = _means(fam, rng)
    y = rng.choice(fam.classes, size=4000, p=_priors(fam))
    lo, hi = 0.01, 5.0
    for _ in range(30):
        mid = (lo * hi) ** 0.5
        acc = (_mixture_logits(fam, mid, mu, y, np.random.default_rng(7)).argmax(1) == y).mean()
        lo, hi = (mid, hi) if acc > fam.accuracy else (lo, mid)
    return (lo * hi) ** 0.5


def _flip(fam: Family, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = y.copy()
    n_flip = int(round(fam.flip * len(y)))
    who = rng.choice(len(y), size=n_flip, replace=False)
    c = fam.classes
    if fam.noise == "pairs":
        noisy[who] = _partner(c)[y[who]]
    else:
        noisy[who] = (y[who] + rng.integers(1, c, size=n_flip)) % c
    return noisy


def _names(fam: Family) -> list:
    if fam.names == "str":
        return [f"class_{j:03d}" for j in range(fam.classes)]
    return list(range(fam.classes))


def _digits_case(seed: int) -> Case:
    import pandas as pd

    from dagster_brain.algorithms.mistakenness import label_indices, probabilities
    from dagster_brain.ingest.demo import make_digits_demo

    with tempfile.TemporaryDirectory() as tmp:
        files = make_digits_demo(tmp, seed=seed)
        frame = pd.read_parquet(files.manifest)
        truth = files.load_truth()
    classes = truth["classes"]
    ids = frame["id"].tolist()
    flipped = {f["sample_id"] for f in truth["flips"]}
    logits = np.vstack(frame["logits"].to_numpy())
    probs = probabilities(logits, None, None, classes, ids)
    labels = frame["ground_truth"].tolist()
    return Case(
        classes,
        labels,
        label_indices(labels, classes, ids),
        probs,
        logits,
        np.array([i in flipped for i in ids]),
    )


def _sklearn_case(fam: Family, seed: int) -> Case:
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    X, y = make_classification(
        n_samples=fam.n,
        n_features=20,
        n_informative=12,
        n_classes=fam.classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    noisy = _flip(fam, y, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probs = cross_val_predict(
            LogisticRegression(max_iter=300), X, noisy, cv=5, method="predict_proba"
        )
    classes = _names(fam)
    logits = np.log(np.clip(probs, 1e-12, None))
    return Case(classes, [classes[j] for j in noisy], noisy, probs, logits, noisy != y)


def make_case(name: str, seed: int) -> Case:
    """The data set of family ``name`` for ``seed`` (deterministic)."""
    fam = FAMILIES[name]
    if fam.source == "digits":
        return _digits_case(seed)
    if fam.source == "sklearn":
        return _sklearn_case(fam, seed)
    rng = np.random.default_rng(seed)
    mu = _means(fam, np.random.default_rng(12345))  # the same classes for every seed
    y = rng.choice(fam.classes, size=fam.n, p=_priors(fam))
    noisy = _flip(fam, y, rng)
    z = _mixture_logits(fam, _spread(name), mu, y, rng)
    probs = softmax(z)
    if fam.absorb:
        probs = (1 - fam.absorb) * probs + fam.absorb * probs @ _transition(fam)
    logits = np.log(np.clip(probs, 1e-300, None)) / fam.temperature
    probs = softmax(logits)
    classes = _names(fam)
    return Case(classes, [classes[j] for j in noisy], noisy, probs, logits, noisy != y)


# --- scorers: (case) -> scores, higher = more likely a wrong label -------------------------


def _quality(case: Case, method: str, adjust: bool = False) -> np.ndarray:
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(
        case.label_index, case.probs, method=method, adjust_pred_probs=adjust
    )


def _flag(case: Case, filter_by: str = "low_self_confidence") -> np.ndarray:
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return find_label_issues(
            case.label_index, case.probs, filter_by=filter_by, n_jobs=1
        ).astype(bool)


def _default(case: Case) -> np.ndarray:
    return confident_learning_mistakenness(case.probs, case.label_index, case.classes)[0]


def _reference(case: Case, use_logits: bool) -> np.ndarray:
    return reference_mistakenness(
        case.predicted, case.confidence, case.labels, logits=case.logits, use_logits=use_logits
    )


def _blend(case: Case, alpha: float) -> np.ndarray:
    """One minus (p[annotated] - alpha * largest other p): alpha 0 is SC, 1 is the margin."""
    P = case.probs
    own = P[np.arange(len(P)), case.label_index]
    other = np.where(np.eye(P.shape[1], dtype=bool)[case.label_index], -np.inf, P).max(axis=1)
    return 1 - own + alpha * other


def _rank(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / max(len(x) - 1, 1)


def _posterior(case: Case, structured: bool) -> np.ndarray:
    """Posterior P(label wrong) with the estimated noise shape forced on or off."""
    noise = label_noise_model(case.probs, case.label_index)
    noise = dataclasses.replace(noise, structured=structured)
    return confident_learning_mistakenness(case.probs, case.label_index, case.classes, noise=noise)[
        0
    ]


def _cleanlab_posterior(case: Case) -> np.ndarray:
    """Posterior P(label wrong) with cleanlab's noise matrix (from the confident joint)."""
    from cleanlab.count import compute_confident_joint, estimate_latent

    y, P = case.label_index, case.probs
    _, noise, _ = estimate_latent(compute_confident_joint(y, P), y)  # noise[label, true]
    like = P * noise[y, :]
    total = like.sum(axis=1)
    own = like[np.arange(len(y)), y]
    return np.where(total > 0, 1 - own / np.where(total > 0, total, 1), 1 - P[np.arange(len(y)), y])


CANDIDATES: dict[str, Callable[[Case], np.ndarray]] = {
    "self_confidence": lambda c: 1 - _quality(c, "self_confidence"),
    "normalized_margin": lambda c: 1 - _quality(c, "normalized_margin"),
    "confidence_weighted_entropy": lambda c: 1 - _quality(c, "confidence_weighted_entropy"),
    "self_confidence_adjusted": lambda c: 1 - _quality(c, "self_confidence", adjust=True),
    "normalized_margin_adjusted": lambda c: 1 - _quality(c, "normalized_margin", adjust=True),
    "flag+normalized_margin (old default)": lambda c: (
        1 - _quality(c, "normalized_margin") + _flag(c)
    ),
    "flag+self_confidence": lambda c: 1 - _quality(c, "self_confidence") + _flag(c),
    "blend_0.25": lambda c: _blend(c, 0.25),
    "blend_0.5": lambda c: _blend(c, 0.5),
    "rank_mean(sc, nm)": lambda c: _rank(_blend(c, 0.0)) + _rank(_blend(c, 1.0)),
    "posterior_cleanlab_noise": _cleanlab_posterior,
    "posterior_always": lambda c: _posterior(c, True),
    "posterior_gated (default)": _default,
}

REPORTED: dict[str, Callable[[Case], np.ndarray]] = {
    "default": _default,
    "cleanlab self_confidence": lambda c: 1 - _quality(c, "self_confidence"),
    "reference (confidence)": lambda c: _reference(c, False),
    "reference (logits)": lambda c: _reference(c, True),
}


def _metrics(scores: np.ndarray, positive: np.ndarray) -> dict:
    k = int(positive.sum())
    # Ties are broken against the scorer (positives last) so a constant score earns nothing.
    order = np.lexsort((positive, -np.asarray(scores, float)))
    return {
        "auroc": float(roc_auc_score(positive, scores)),
        "ap": float(average_precision_score(positive, scores)),
        "p_at_k": float(positive[order[:k]].mean()),
        "k": k,
    }


def classification_suite(
    seeds: Iterable[int],
    families: Sequence[str] | None = None,
    methods: dict[str, Callable[[Case], np.ndarray]] | None = None,
) -> list[dict]:
    """One row per (family, seed, method): auroc, ap, p_at_k, k (planted flips), n, seconds."""
    rows = []
    for name in families or list(FAMILIES):
        for seed in seeds:
            case = make_case(name, seed)
            for method, fn in (methods or REPORTED).items():
                t0 = time.perf_counter()
                scores = fn(case)
                rows.append(
                    {
                        "family": name,
                        "seed": seed,
                        "method": method,
                        **_metrics(scores, case.flipped),
                        "n": len(case.labels),
                        "seconds": time.perf_counter() - t0,
                    }
                )
    return rows


def summarize(rows: list[dict], metric: str) -> dict[str, dict[str, tuple[float, float]]]:
    """{family or "overall": {method: (mean, worst)}} of one metric over seeds."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        out.setdefault(r["family"], {}).setdefault(r["method"], []).append(r[metric])
    res = {
        f: {m: (float(np.mean(v)), float(np.min(v))) for m, v in d.items()} for f, d in out.items()
    }
    methods = list(dict.fromkeys(r["method"] for r in rows))
    res["overall"] = {
        m: (
            float(np.mean([res[f][m][0] for f in out if m in res[f]])),
            float(np.min([res[f][m][1] for f in out if m in res[f]])),
        )
        for m in methods
    }
    return res


def format_table(rows: list[dict], metric: str, baseline: str | None = None) -> str:
    """Mean (worst) of ``metric`` per family and method; ``*`` marks means below baseline."""
    summ = summarize(rows, metric)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = max(len(f) for f in summ)
    head = f"{metric:<{width}}  " + "  ".join(f"{m[:17]:>17}" for m in methods)
    lines = [head]
    for fam, d in summ.items():
        cells = []
        for m in methods:
            if m not in d:
                cells.append("-".rjust(17))
                continue
            mean, worst = d[m]
            low = baseline is not None and mean < d[baseline][0] - 1e-12
            cells.append(f"{mean:.3f} ({worst:.3f}){'*' if low else ' '}".rjust(17))
        lines.append(f"{fam:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument(
        "--choose", action="store_true", help="tuning seeds, every candidate default"
    )
    parser.add_argument("--families", nargs="*", default=None, choices=list(FAMILIES))
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    args = parser.parse_args()
    if args.choose:
        seeds, methods, base = args.seeds or TUNING_SEEDS, CANDIDATES, "self_confidence"
    else:
        seeds, methods, base = args.seeds or HELD_OUT_SEEDS, REPORTED, "cleanlab self_confidence"
    t0 = time.perf_counter()
    rows = classification_suite(seeds, args.families, methods)
    print(
        f"{'tuning' if args.choose else 'held-out'} seeds {list(seeds)}; mean (worst) over "
        f"seeds; * = mean below {base!r}; {time.perf_counter() - t0:.0f} s"
    )
    for metric in ("auroc", "ap", "p_at_k"):
        print()
        print(format_table(rows, metric, base))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
