"""Visualization: 2-D/3-D points of an embeddings key (or a similarity index)."""

from __future__ import annotations

from typing import Any

from dagster_brain.methods.base import BrainMethod, Input, RunField, one_row_per_embedding
from dagster_brain.runs import RunOutcome
from dagster_brain.specs import VisualizationSpec
from dagster_brain.store import Store
from dagster_brain.visualization_runs import run_visualization


def _inputs(spec: VisualizationSpec) -> list[Input]:
    if spec.similarity is not None:
        return [Input("brain", spec.similarity)]
    return [Input("embeddings", spec.embeddings)]


def _expected_rows(store: Store, spec: VisualizationSpec) -> int | None:
    """One point per vector of the embeddings key or the similarity index."""
    if spec.embeddings:
        return one_row_per_embedding(store, spec)
    return len(store.load_results(spec.dataset, spec.similarity))


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    import dagster as dg

    from dagster_brain.methods.render import png_md

    s = outcome.summary
    meta: dict[str, Any] = {
        "dagster/row_count": len(outcome.results),
        "scatter": png_md(s["png"], "scatter"),
        "interactive_plot": dg.MetadataValue.path(str(s["html_path"])),
        "interactive_plot_url": dg.MetadataValue.url(s["viewer_url"]),
        "png_path": dg.MetadataValue.path(str(s["png_path"])),
        "fit_size": int(s["fit_size"]),
        "incremental": bool(s.get("incremental", False)),
        "timings_s": dg.MetadataValue.json({k: round(v, 3) for k, v in s["timings"].items()}),
    }
    if s.get("update"):
        meta["map_update"] = dg.MetadataValue.json(s["update"])
    elif s.get("refit_reason"):
        meta["full_fit_reason"] = str(s["refit_reason"])
    if s["trustworthiness_at_10"] is not None:
        meta["trustworthiness_at_10"] = float(s["trustworthiness_at_10"])
    return meta


METHOD = BrainMethod(
    kind="visualization",
    spec=VisualizationSpec,
    run=run_visualization,
    inputs=_inputs,
    expected_rows=_expected_rows,
    score=None,
    summary="2-D/3-D points of an embeddings key or a similarity index.",
    run_fields=(
        RunField("method", str, "umap, tsne or pca", choices=("umap", "tsne", "pca")),
        RunField("num_dims", int, "", ge=2, le=3),
        RunField("seed", int),
        RunField("refit", bool, "fit the whole map afresh instead of placing new rows"),
        RunField(
            "refit_share",
            float,
            "refit once rows placed since the last full fit exceed this share",
            ge=0,
            le=1,
        ),
    ),
    asset_kinds=lambda spec: {"umap", "duckdb"},
    asset_metadata=_metadata,
)
