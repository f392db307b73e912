"""Unique subset (``find_unique``): ``count`` maximally spread items of a similarity index."""

from __future__ import annotations

from typing import Any

from dagster_brain.item_media import with_media
from dagster_brain.methods.base import BrainMethod, RunField, ScoreColumn, similarity_input
from dagster_brain.runs import RunOutcome
from dagster_brain.similarity.runs import run_unique
from dagster_brain.specs import UniqueSpec
from dagster_brain.store import Store


def _expected_rows(store: Store, spec: UniqueSpec) -> int:
    """``count`` items, or every item of a smaller index."""
    return min(spec.count, len(store.load_results(spec.dataset, spec.similarity)))


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    from dagster_brain.algorithms.duplicates import visualize_unique
    from dagster_brain.metadata import THUMBNAILS_KEY, rows_table, score_thumbnails
    from dagster_brain.methods.render import png_md

    s = outcome.summary
    meta = {
        "dagster/row_count": len(outcome.results),
        "unique_plot": png_md(
            visualize_unique(None, s["ids"], s["unique_ids"], vectors=s["vectors"]), "unique"
        ),
        "first_picks": rows_table(outcome.results.head(20), list(outcome.results.columns)),
    }
    if "media" in s:  # the first and the last picks
        meta[THUMBNAILS_KEY] = score_thumbnails(
            outcome.results, "rank", s["media"], ascending=True
        ).value
    return meta


METHOD = BrainMethod(
    kind="unique",
    spec=UniqueSpec,
    run=with_media(run_unique),
    inputs=similarity_input,
    expected_rows=_expected_rows,
    score=ScoreColumn("rank", ascending=True),
    summary="A maximally spread subset of a similarity index.",
    run_fields=(RunField("count", int, "items to pick", ge=1),),
    asset_metadata=_metadata,
)
