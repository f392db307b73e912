"""Mistakenness: how likely each annotation is wrong, from a model's predictions."""

from __future__ import annotations

from dagster_brain.item_media import with_media
from dagster_brain.methods.base import (
    BrainMethod,
    RunField,
    ScoreColumn,
    no_fixed_rows,
    samples_input,
)
from dagster_brain.methods.scored import scores_metadata
from dagster_brain.scores import run_mistakenness
from dagster_brain.specs import MistakennessSpec

METHOD = BrainMethod(
    kind="mistakenness",
    spec=MistakennessSpec,
    run=with_media(run_mistakenness),
    inputs=samples_input,
    expected_rows=no_fixed_rows,
    score=ScoreColumn("mistakenness", 0.0, 1.0),
    summary="How likely each annotation is wrong, from a model's predictions.",
    run_fields=(
        RunField("method", str, "confident_learning or reference"),
        RunField("missing_conf", float, "detections", ge=0, le=1),
        RunField("iou_thresh", float, "detections", gt=0, le=1),
    ),
    asset_metadata=scores_metadata("mistakenness"),
)
