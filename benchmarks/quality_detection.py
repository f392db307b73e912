"""Detection mistakenness on generated detection families: default rule against the reference.

    python benchmarks/quality_detection.py [--seeds 1000 1001 ...] [--json OUT] [--choose]

Each family generates images as boxes directly (no pixels): real objects, the annotation of
each (with planted errors) and a detector's predictions. Planted errors: **missing** (object
not annotated), **spurious** (GT box where there is no object), **mislabel** (GT class swapped)
and **shift** (GT box moved by 15-60% of its size along each axis). The detector finds most
objects with a "real object" confidence, some hard ones only with a low confidence, misses a
few, adds a few duplicates and low-confidence false positives anywhere; confidences are
calibrated, squashed into [0.3, 0.7], shifted down or made over-confident; predictions carry
logits (class scores in the field's class order) where the family says so.

Metrics per family (the methods see the same inputs):

- mislabel P@k / localisation P@k: ``mistakenness`` / ``mistakenness_loc`` over GT boxes, k =
  number planted (swaps / shifts).
- missing precision / recall: ``possible_missing`` against the predictions of planted missing
  objects; spurious precision / recall: ``possible_spurious`` against planted spurious boxes.

Seeds 0-4 are the tuning seeds (``--choose`` prints the table the defaults were chosen from);
the report uses the held-out seeds 1000-1004, never used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dagster_brain.algorithms.detection_mistakenness import (
    detection_mistakenness,
    reference_detection_mistakenness,
)

TUNING_SEEDS = (0, 1, 2, 3, 4)
REPORT_SEEDS = (1000, 1001, 1002, 1003, 1004)


@dataclass(frozen=True)
class Family:
    """Parameters of one generated detection family."""

    name: str
    n_images: int = 200
    objects: float = 4.0  # mean objects per image
    crowded: bool = False  # objects clustered so that boxes overlap
    n_classes: int = 5
    fp_rate: float = 0.1  # low-confidence false positives per real object
    missing: float = 0.05
    spurious: float = 0.05
    swap: float = 0.05
    shift: float = 0.05
    calibration: str = "calibrated"  # squashed | shifted | overconfident
    logits: bool = False
    accuracy: float = 0.95  # the detector's class is right this often


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("base"),
        Family("fp30", fp_rate=0.3),
        Family("fp20-squashed", fp_rate=0.2, calibration="squashed"),
        Family("fp30-shifted", fp_rate=0.3, calibration="shifted"),
        Family("fp20-overconfident", fp_rate=0.2, calibration="overconfident"),
        Family("crowded", objects=12, crowded=True, n_classes=10, n_images=80),
        Family(
            "rare-1pct",
            n_images=500,
            fp_rate=0.2,
            missing=0.01,
            spurious=0.01,
            swap=0.01,
            shift=0.01,
        ),
        Family("heavy-15pct", missing=0.15, spurious=0.15, swap=0.15, shift=0.15, n_classes=20),
        Family("logits-2cls", n_classes=2, fp_rate=0.2, logits=True, accuracy=0.85),
        Family(
            "logits-20cls-squashed",
            n_classes=20,
            fp_rate=0.3,
            logits=True,
            calibration="squashed",
            accuracy=0.8,
        ),
    )
}


def _calibrate(conf: np.ndarray, how: str) -> np.ndarray:
    if how == "calibrated":
        return conf
    if how == "squashed":
        return 0.3 + 0.4 * conf
    if how == "shifted":
        return np.clip(conf - 0.3, 0.01, 1.0)
    if how == "overconfident":
        return conf**0.3
    raise ValueError(f"unknown calibration {how!r}")


def _clip_box(x: float, y: float, w: float, h: float) -> list[float]:
    w, h = min(w, 0.99), min(h, 0.99)
    return [float(np.clip(x, 0.0, 1.0 - w)), float(np.clip(y, 0.0, 1.0 - h)), float(w), float(h)]


def _jitter(rng: np.random.Generator, box: list[float], s: float) -> list[float]:
    x, y, w, h = box
    return _clip_box(
        x + rng.normal(0, s) * w,
        y + rng.normal(0, s) * h,
        w * np.exp(rng.normal(0, s)),
        h * np.exp(rng.normal(0, s)),
    )


def generate(family: Family, seed: int) -> dict:
    """GT and prediction label frames, the class list, and the planted label ids."""
    rng = np.random.default_rng([seed, sum(map(ord, family.name))])
    classes = [f"c{k}" for k in range(family.n_classes)]
    gt, pred = [], []
    planted = {"missing": set(), "spurious": set(), "mislabel": set(), "shift": set()}
    real_c = lambda: float(rng.beta(9, 1.5))  # noqa: E731  real objects
    low_c = lambda: float(rng.beta(1.5, 6))  # noqa: E731  hard objects, false positives

    def add_pred(sid: str, box: list[float], true_cls: int | None, conf: float) -> str:
        z = rng.normal(0, 1, family.n_classes)
        if true_cls is not None:  # the top class is the true one with probability accuracy
            top = z.max()
            if rng.random() < family.accuracy:
                z[true_cls] = top + rng.uniform(1, 4)
            else:  # confused with another class; the true one comes second
                other = (true_cls + rng.integers(1, family.n_classes)) % family.n_classes
                z[other] = top + rng.uniform(1, 4)
                z[true_cls] = top + rng.uniform(0, 1)
        lid = f"p{len(pred)}"
        pred.append(
            {
                "sample_id": sid,
                "label_id": lid,
                "label": classes[int(np.argmax(z))],
                "box": box,
                "confidence": conf,
                "logits": [float(v) for v in z] if family.logits else None,
            }
        )
        return lid

    for im in range(family.n_images):
        sid = f"img{im:04d}"
        n = max(1, rng.poisson(family.objects))
        centres = rng.uniform(0.15, 0.85, (max(1, n // 4), 2))
        for _ in range(n):
            w, h = rng.uniform(0.05, 0.25, 2)
            if family.crowded:
                cx, cy = centres[rng.integers(len(centres))] + rng.normal(0, 0.08, 2)
            else:
                cx, cy = rng.uniform(0, 1, 2)
            true = _clip_box(cx - w / 2, cy - h / 2, w, h)
            cls = int(rng.integers(family.n_classes))
            # -- annotation --
            u = rng.random()
            gid = f"g{len(gt)}"
            annotated = u >= family.missing
            if annotated:
                box, label = _jitter(rng, true, 0.02), cls
                v = rng.random()
                if v < family.swap and family.n_classes > 1:
                    label = int((cls + rng.integers(1, family.n_classes)) % family.n_classes)
                    planted["mislabel"].add(gid)
                elif v < family.swap + family.shift:
                    dx, dy = rng.uniform(0.15, 0.6, 2) * rng.choice([-1, 1], 2)
                    box = _clip_box(true[0] + dx * w, true[1] + dy * h, w, h)
                    planted["shift"].add(gid)
                gt.append({"sample_id": sid, "label_id": gid, "label": classes[label], "box": box})
            # -- detector --
            d = rng.random()
            if d < 0.92:
                lid = add_pred(sid, _jitter(rng, true, 0.04), cls, real_c())
            elif d < 0.97:
                lid = add_pred(sid, _jitter(rng, true, 0.06), cls, low_c())
            else:
                lid = None
            if lid is not None and not annotated:
                planted["missing"].add(lid)
            if lid is not None and rng.random() < 0.02:  # a duplicate box on the same object
                add_pred(sid, _jitter(rng, true, 0.12), cls, 0.6 * pred[-1]["confidence"])
        for _ in range(rng.binomial(n, family.spurious)):
            w, h = rng.uniform(0.05, 0.25, 2)
            gid = f"g{len(gt)}"
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            label = classes[int(rng.integers(family.n_classes))]
            gt.append({"sample_id": sid, "label_id": gid, "label": label, "box": [x, y, w, h]})
            planted["spurious"].add(gid)
        for _ in range(rng.poisson(family.fp_rate * n)):
            w, h = rng.uniform(0.03, 0.3, 2)
            x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            add_pred(sid, [x, y, w, h], None, low_c())
    pred_df = pd.DataFrame(pred)
    pred_df["confidence"] = _calibrate(pred_df["confidence"].to_numpy(), family.calibration)
    return {"gt": pd.DataFrame(gt), "pred": pred_df, "classes": classes, "planted": planted}


def _p_at_k(score: pd.Series, positives: set[str]) -> float:
    k = len(positives)
    if not k:
        return float("nan")
    top = score.fillna(-np.inf).sort_values(ascending=False, kind="stable").index[:k]
    return float(np.isin(top, list(positives)).mean())


def _pr(flag: pd.Series, positives: set[str]) -> tuple[float, float, int, int]:
    flagged = set(flag.index[flag.to_numpy(dtype=bool)])
    tp = len(flagged & positives)
    prec = tp / len(flagged) if flagged else float("nan")
    rec = tp / len(positives) if positives else float("nan")
    return prec, rec, tp, len(flagged)


def score_result(res, planted: dict) -> dict:
    """Metrics of one :class:`DetectionMistakes` against the planted errors."""
    g, p = res.gt.set_index("label_id"), res.pred.set_index("label_id")
    mp, mr, mtp, mfl = _pr(p["possible_missing"], planted["missing"])
    sp, sr, stp, sfl = _pr(g["possible_spurious"], planted["spurious"])
    return {
        "mislabel_p_at_k": _p_at_k(g["mistakenness"], planted["mislabel"]),
        "loc_p_at_k": _p_at_k(g["mistakenness_loc"], planted["shift"]),
        "missing_precision": mp,
        "missing_recall": mr,
        "spurious_precision": sp,
        "spurious_recall": sr,
        # counts, so that overall precision / recall can be pooled over families
        "missing_tp": mtp,
        "missing_flagged": mfl,
        "missing_k": len(planted["missing"]),
        "spurious_tp": stp,
        "spurious_flagged": sfl,
        "spurious_k": len(planted["spurious"]),
    }


def _methods(data: dict, family: Family, default_kw: dict | None = None) -> dict:
    kw = {"use_logits": family.logits, "classes": data["classes"]}
    return {
        "default": detection_mistakenness(data["gt"], data["pred"], **kw, **(default_kw or {})),
        "reference": reference_detection_mistakenness(data["gt"], data["pred"], **kw),
    }


def detection_suite(seeds, families: list[str] | None = None) -> list[dict]:
    """One row per (family, seed, method) with the metrics of :func:`score_result`."""
    rows = []
    for name in families or list(FAMILIES):
        fam = FAMILIES[name]
        for seed in seeds:
            data = generate(fam, seed)
            for method, res in _methods(data, fam).items():
                rows.append(
                    {
                        "family": name,
                        "seed": seed,
                        "method": method,
                        **score_result(res, data["planted"]),
                    }
                )
    return rows


METRICS = [
    "mislabel_p_at_k",
    "loc_p_at_k",
    "missing_precision",
    "missing_recall",
    "spurious_precision",
    "spurious_recall",
]


def summarise(rows: list[dict]) -> pd.DataFrame:
    """Per family and method: metrics averaged over seeds, missing/spurious pooled; then
    ``overall`` (pooled over everything) and ``worst`` (the family minimum of each metric)."""
    df = pd.DataFrame(rows)
    out = []
    for (fam, method), grp in df.groupby(["family", "method"], sort=False):
        out.append({"family": fam, "method": method, **_pooled(grp)})
    table = pd.DataFrame(out)
    for method, grp in df.groupby("method", sort=False):
        fam_rows = table[table["method"] == method]
        out.append({"family": "overall", "method": method, **_pooled(grp)})
        out.append(
            {
                "family": "worst",
                "method": method,
                **{m: fam_rows[m].min() for m in METRICS},
                "worst_missing_precision_family": fam_rows.loc[
                    fam_rows["missing_precision"].fillna(-1).idxmin(), "family"
                ],
            }
        )
    return pd.DataFrame(out)


def _pooled(grp: pd.DataFrame) -> dict:
    def ratio(a: str, b: str) -> float:
        d = grp[b].sum()
        return float(grp[a].sum() / d) if d else float("nan")

    return {
        "mislabel_p_at_k": float(grp["mislabel_p_at_k"].mean()),
        "loc_p_at_k": float(grp["loc_p_at_k"].mean()),
        "missing_precision": ratio("missing_tp", "missing_flagged"),
        "missing_recall": ratio("missing_tp", "missing_k"),
        "spurious_precision": ratio("spurious_tp", "spurious_flagged"),
        "spurious_recall": ratio("spurious_tp", "spurious_k"),
    }


CHOICES: dict[str, dict] = {
    "chosen defaults": {},
    "iou_thresh=0.4": {"iou_thresh": 0.4},
    "iou_thresh=0.6": {"iou_thresh": 0.6},
    "loc_iou_thresh=0.1": {"loc_iou_thresh": 0.1},
    "missing_conf=0.5 (fixed)": {"missing_conf": 0.5},
    "missing_conf=0.95 (fixed)": {"missing_conf": 0.95},
    "auto precision 0.9": {"missing_precision": 0.9},
    "auto precision 0.99": {"missing_precision": 0.99},
    "auto anchor 0.25": {"missing_anchor": 0.25},
    "auto anchor 0.5": {"missing_anchor": 0.5},
    "missing_iou=0.1": {"missing_iou": 0.1},
    "missing_iou=0.3": {"missing_iou": 0.3},
    "spurious_rule=unmatched": {"spurious_rule": "unmatched"},
    "loose pass same class only": {"loose_any_class": False},
}
"""Settings compared by ``--choose``; every other parameter at its default."""


def choose_table(seeds=TUNING_SEEDS) -> pd.DataFrame:
    """The default rule under each candidate setting, overall and worst family (tuning seeds)."""
    data = {(n, s): generate(f, s) for n, f in FAMILIES.items() for s in seeds}
    out = []
    for label, kw in CHOICES.items():
        rows = []
        for (name, seed), d in data.items():
            res = detection_mistakenness(
                d["gt"],
                d["pred"],
                use_logits=FAMILIES[name].logits,
                classes=d["classes"],
                **kw,
            )
            rows.append(
                {"family": name, "seed": seed, "method": label, **score_result(res, d["planted"])}
            )
        s = summarise(rows)
        overall = s[s["family"] == "overall"].iloc[0]
        worst = s[s["family"] == "worst"].iloc[0]
        out.append(
            {
                "setting": label,
                **{m: overall[m] for m in METRICS},
                "worst_missing_precision": worst["missing_precision"],
                "worst_missing_recall": worst["missing_recall"],
            }
        )
    return pd.DataFrame(out)


def label_rule_table(seeds=TUNING_SEEDS) -> pd.DataFrame:
    """Mislabel P@k per family of candidate label scores on the default rule's matches:
    ``(1 +- c) / 2`` (chosen), the older ``c`` / ``1 - c``, and ``1 - p(annotated class)``
    from logits where the family has them."""
    rows = []
    for name, fam in FAMILIES.items():
        for seed in seeds:
            d = generate(fam, seed)
            g = detection_mistakenness(d["gt"], d["pred"]).gt.set_index("label_id")
            c = g["pred_label_id"].map(d["pred"].set_index("label_id")["confidence"])
            c = c.astype(float).to_numpy()
            strict = g["match"].isin(["same_class", "cross_class"]).to_numpy()
            cross = (g["match"] == "cross_class").to_numpy()
            old = pd.Series(np.where(strict, np.where(cross, c, 1 - c), 0.0), index=g.index)
            row = {
                "family": name,
                "(1 +- c) / 2": _p_at_k(g["mistakenness"], d["planted"]["mislabel"]),
                "c / 1 - c": _p_at_k(old, d["planted"]["mislabel"]),
            }
            if fam.logits:
                res = detection_mistakenness(
                    d["gt"], d["pred"], use_logits=True, classes=d["classes"]
                )
                scores = res.gt.set_index("label_id")["mistakenness"]
                row["1 - p(annotated), logits"] = _p_at_k(scores, d["planted"]["mislabel"])
            rows.append(row)
    df = pd.DataFrame(rows)
    table = df.groupby("family", sort=False).mean()
    table.loc["mean"] = df.drop(columns="family").mean()
    return table.reset_index()


def _fmt(df: pd.DataFrame) -> str:
    return df.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(REPORT_SEEDS))
    parser.add_argument("--families", nargs="+", default=None, choices=list(FAMILIES))
    parser.add_argument("--json", metavar="OUT", help="write rows and summary as JSON")
    parser.add_argument(
        "--choose", action="store_true", help="print the tuning table (tuning seeds 0-4)"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.choose:
        print(f"tuning seeds {list(TUNING_SEEDS)}: default rule under each setting")
        print(_fmt(choose_table()))
        print("\nmislabel P@k of candidate label scores (default matching)")
        print(_fmt(label_rule_table()))
        return
    rows = detection_suite(args.seeds, args.families)
    summary = summarise(rows)
    print(f"seeds {args.seeds}; missing/spurious pooled over seeds, P@k averaged")
    for method in ("default", "reference"):
        print(f"\n== {method} ==")
        part = summary[summary["method"] == method].drop(columns="method")
        print(_fmt(part))
    print(f"\n{time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"rows": rows, "summary": summary.to_dict("records")}, fh, indent=1, default=str
            )


if __name__ == "__main__":
    main()
