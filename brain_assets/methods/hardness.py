"""Hardness: the model's uncertainty per sample, from its logits."""

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
from dagster_brain.scores import run_hardness
from dagster_brain.specs import HardnessSpec

METHOD = BrainMethod(
    kind="hardness",
    spec=HardnessSpec,
    run=with_media(run_hardness),
    inputs=samples_input,
    expected_rows=no_fixed_rows,
    score=ScoreColumn("hardness", 0.0, 1.0),
    summary="The model's uncertainty per sample (entropy or margin of its logits).",
    run_fields=(RunField("method", str, "entropy or margin"),),
    asset_metadata=scores_metadata("hardness"),
)
