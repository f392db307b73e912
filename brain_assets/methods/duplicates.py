"""Near-duplicates on a similarity index: a data-chosen threshold, ``thresh`` or ``fraction``."""

from __future__ import annotations

from typing import Any

from dagster_brain.item_media import with_media
from dagster_brain.methods.base import (
    BrainMethod,
    RunField,
    ScoreColumn,
    no_fixed_rows,
    similarity_input,
)
from dagster_brain.runs import RunOutcome
from dagster_brain.similarity.runs import run_duplicates
from dagster_brain.specs import DuplicatesSpec


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    from dagster_brain.algorithms.duplicates import visualize_duplicates
    from dagster_brain.metadata import THUMBNAILS_KEY, group_thumbnails, rows_table
    from dagster_brain.methods.render import png_md

    s = outcome.summary
    df = outcome.results
    meta: dict[str, Any] = {
        "dagster/row_count": len(df),
        "duplicates": s["duplicates"],
        "groups": s["groups"],
        "pairs": s["pairs"],  # every pair within thresh: the run's "pairs" table
        "thresh": float(s["thresh"]),
        "method": s["method"],
        "duplicates_plot": png_md(
            visualize_duplicates(None, s["ids"], s["result"], vectors=s["vectors"]),
            "duplicates",
        ),
    }
    if s["choice"] is not None:
        meta["threshold_choice"] = s["choice"].describe()
        meta["est_precision"] = float(s["choice"].est_precision)
        meta["est_recall"] = float(s["choice"].est_recall)
    if len(df):
        cols = [
            c for c in ("group", "sample_id", "label_id", "role", "distance", "path") if c in df
        ]
        meta["groups_preview"] = rows_table(df.head(20), cols)
    if "media" in s:
        meta[THUMBNAILS_KEY] = group_thumbnails(df, s["media"]).value
    return meta


METHOD = BrainMethod(
    kind="duplicates",
    spec=DuplicatesSpec,
    run=with_media(run_duplicates),
    inputs=similarity_input,
    expected_rows=no_fixed_rows,
    score=ScoreColumn("distance"),
    summary="Near-duplicate groups on a similarity index.",
    run_fields=(
        RunField("thresh", float, "a fixed distance threshold", ge=0),
        RunField("fraction", float, "share to flag", ge=0, le=1),
        RunField("verify", bool, "confirm pairs on the images"),
    ),
    unique_ids=False,
    asset_metadata=_metadata,
)
