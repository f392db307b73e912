"""What the brain found on the demo datasets, compared with what the demo planted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from dagster_brain.store import Store


def duplicate_members(truth: dict) -> set[str]:
    """Both members of every planted duplicate pair."""
    return {p[k] for p in truth.get("duplicates", []) for k in ("copy_id", "original_id")}


def uniqueness_vs_duplicates(
    store: Store, dataset: str, brain_key: str, planted: set[str]
) -> dict[str, float] | None:
    """How well low uniqueness finds the planted duplicates (AUROC, AP, recall@planted)."""
    if store.get_run(dataset, brain_key, missing_ok=True) is None:
        return None
    res = store.load_results(dataset, brain_key)
    if "label_id" in res or res.empty:
        return None
    is_dup = res["sample_id"].isin(planted).to_numpy()
    if is_dup.all() or not is_dup.any():
        return None
    low = -res["uniqueness"].to_numpy()
    k = int(is_dup.sum())
    top = np.argsort(-low, kind="stable")[:k]
    return {
        "planted": k,
        "auroc": float(roc_auc_score(is_dup, low)),
        "average_precision": float(average_precision_score(is_dup, low)),
        "recall_at_planted": float(is_dup[top].mean()),
    }


def duplicates_vs_planted(groups: pd.DataFrame, planted: set[frozenset]) -> dict[str, float]:
    """Pair precision/recall of a duplicates run: every member paired with its group's kept."""
    found = set()
    if len(groups):
        for _, g in groups.groupby("group"):
            kept = g.loc[g["role"] == "kept", "sample_id"]
            head = kept.iloc[0] if len(kept) else g["sample_id"].iloc[0]
            found |= {frozenset((head, s)) for s in g["sample_id"] if s != head}
    # a copy grouped with its original through a third member still counts as found
    member_group = (
        dict(zip(groups["sample_id"], groups["group"], strict=True)) if len(groups) else {}
    )
    true = sum(
        1 for p in planted if len({member_group.get(s, -1 - i) for i, s in enumerate(p)}) == 1
    )
    precision = (sum(1 for f in found if f in planted) / len(found)) if found else 1.0
    return {
        "found": len(found),
        "true": true,
        "precision": precision,
        "recall": true / len(planted) if planted else 1.0,
    }


def demo_report(store: Store, runs: set[tuple[str, str]] | None = None) -> list[str]:
    """Lines describing each demo brain result against the planted truth; only for the
    ``(dataset, brain_key)`` pairs in ``runs`` when given (what a command just materialised)."""

    def keys(dataset: str, kind: str) -> list[str]:
        listed = store.list_runs(dataset, kind=kind)["brain_key"]
        return [k for k in listed if runs is None or (dataset, k) in runs]

    lines = []
    truth_path = store.data_dir / "demo" / "digits" / "truth.json"
    if "digits" in store.list_datasets() and truth_path.exists():
        truth = json.loads(Path(truth_path).read_text())
        planted = duplicate_members(truth)
        for key in keys("digits", "uniqueness"):
            m = uniqueness_vs_duplicates(store, "digits", key, planted)
            if m:
                lines.append(
                    f"digits/{key}: the {m['planted']} members of {len(truth['duplicates'])} "
                    f"planted duplicate pairs score lowest in uniqueness with AUROC "
                    f"{m['auroc']:.3f} (AP {m['average_precision']:.3f}; "
                    f"{m['recall_at_planted']:.0%} of them are among the {m['planted']} least "
                    "unique samples; the reference's AUROC is 0.54)"
                )
        planted_pairs = {
            frozenset((p["copy_id"], p["original_id"])) for p in truth.get("duplicates", [])
        }
        for key in keys("digits", "duplicates"):
            m = duplicates_vs_planted(store.load_results("digits", key), planted_pairs)
            lines.append(
                f"digits/{key}: {m['found']} duplicate pairs found, {m['true']} of them "
                f"planted: pair precision {m['precision']:.2f}, recall {m['recall']:.2f} "
                f"over {len(planted_pairs)} planted copies (exact, re-encoded, noisy)"
            )
        flips = {f["sample_id"] for f in truth.get("flips", [])}
        for key in keys("digits", "mistakenness"):
            res = store.load_results("digits", key)
            top = res.nlargest(len(flips), "mistakenness")["sample_id"]
            p_at_k = float(top.isin(flips).mean())
            ref = _reference_p_at_k(store, res["sample_id"], flips)
            lines.append(
                f"digits/{key}: {int(top.isin(flips).sum())} of the {len(flips)} planted label "
                f"flips are the {len(flips)} most mistaken samples (precision@k {p_at_k:.3f}; "
                f"the reference's rule on the same predictions: {ref:.3f})"
            )
    if runs is None or any(d == "shapes" for d, _ in runs):
        lines += shapes_report(store, runs)
    return lines


def _reference_p_at_k(store: Store, sample_ids, flips: set[str]) -> float:
    """Precision@k of the reference's default rule (confidence) on the demo's stored labels."""
    from dagster_brain.algorithms.mistakenness import align, reference_mistakenness

    (g, p), _ = align(store.labels("digits", "ground_truth"), store.labels("digits", "predictions"))
    keep = g["sample_id"].isin(set(sample_ids)).to_numpy()
    g, p = g[keep], p[keep]
    scores = reference_mistakenness(p["label"].tolist(), p["confidence"].tolist(), g["label"])
    top = g["sample_id"].to_numpy()[np.argsort(-scores, kind="stable")[: len(flips)]]
    return float(np.isin(top, list(flips)).mean())


def shapes_report(store: Store, runs: set[tuple[str, str]] | None = None) -> list[str]:
    """Detection mistakenness flags on the shapes demo against its planted errors (only the
    brain keys in ``runs`` when given)."""
    truth_path = store.data_dir / "demo" / "shapes" / "truth.json"
    if "shapes" not in store.list_datasets() or not truth_path.exists():
        return []
    truth = json.loads(Path(truth_path).read_text())
    lines = []
    for key in store.list_runs("shapes", kind="mistakenness")["brain_key"]:
        if runs is not None and ("shapes", key) not in runs:
            continue
        objects = store.load_extra("shapes", key, "objects")
        parts = []
        for flag, planted_key in (
            ("possible_missing", "missing"),
            ("possible_spurious", "spurious"),
        ):
            planted = {t["label_id"] for t in truth.get(planted_key, [])}
            flagged = set(objects.loc[objects[flag].eq(True), "label_id"])
            hit = len(flagged & planted)
            parts.append(
                f"{flag} precision {hit / max(len(flagged), 1):.2f} recall "
                f"{hit / max(len(planted), 1):.2f}"
            )
        for score, planted_key in (("mistakenness", "mislabeled"), ("mistakenness_loc", "shifted")):
            planted = {t["label_id"] for t in truth.get(planted_key, [])}
            top = objects.nlargest(len(planted), score)["label_id"]
            parts.append(f"{score} P@k {top.isin(planted).mean():.2f}")
        lines.append(f"shapes/{key}: " + "; ".join(parts))
    return lines
