"""Dagster metadata of scoring methods (uniqueness, mistakenness, hardness)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dagster_brain.runs import RunOutcome


def scores_metadata(score: str) -> Callable[[RunOutcome], dict[str, Any]]:
    """Score statistics, thumbnails of the top and bottom items, skipped samples and, for
    detections, the per-object flags."""

    def build(outcome: RunOutcome) -> dict[str, Any]:
        from dagster_brain.metadata import rows_table, score_metadata

        ids = ["sample_id"] + (["label_id"] if "label_id" in outcome.results else [])
        meta = score_metadata(outcome.results, score, ids, media=outcome.summary.get("media"))
        for reason, count in (outcome.summary.get("skipped") or {}).items():
            meta[f"skipped_{reason}"] = count
        objects = outcome.summary.get("objects")
        if objects is not None:
            for flag in ("possible_missing", "possible_spurious"):
                if flag in objects:
                    meta[flag] = int(objects[flag].eq(True).sum())
            gt = (
                objects[objects["mistakenness_loc"].notna()]
                if "mistakenness_loc" in objects
                else objects
            )
            cols = [c for c in ("sample_id", "label_id", "label", "mistakenness_loc") if c in gt]
            meta["top_mistakenness_loc"] = rows_table(gt.nlargest(10, "mistakenness_loc"), cols)
        return meta

    return build
