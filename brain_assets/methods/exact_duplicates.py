"""Exact duplicates: byte-identical and pixel-identical samples, from the content hashes."""

from __future__ import annotations

from typing import Any

from dagster_brain.item_media import with_media
from dagster_brain.methods.base import BrainMethod, no_fixed_rows, samples_input
from dagster_brain.runs import RunOutcome
from dagster_brain.similarity.runs import run_exact_duplicates
from dagster_brain.specs import ExactDuplicatesSpec


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    from dagster_brain.metadata import THUMBNAILS_KEY, group_thumbnails, rows_table

    df = outcome.results
    meta: dict[str, Any] = {"dagster/row_count": len(df), "groups": outcome.summary["groups"]}
    if len(df):
        meta["groups_preview"] = rows_table(df.head(20), list(df.columns))
    if "media" in outcome.summary:
        meta[THUMBNAILS_KEY] = group_thumbnails(df, outcome.summary["media"]).value
    return meta


METHOD = BrainMethod(
    kind="exact_duplicates",
    spec=ExactDuplicatesSpec,
    run=with_media(run_exact_duplicates),
    inputs=samples_input,
    expected_rows=no_fixed_rows,
    score=None,
    summary="Byte- and pixel-identical samples, from their content hashes.",
    unique_ids=False,
    asset_kinds=lambda spec: {"duckdb"},
    asset_metadata=_metadata,
)
