"""What the Dagster UI shows for a brain result: counts, top rows, plots, paths, lineage."""

from __future__ import annotations

import base64
import io
from typing import Any

import dagster as dg
import pandas as pd

from dagster_brain.store import BrainRunRecord


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend (imported on first plot)."""
    import matplotlib

    matplotlib.use("Agg")  # headless workers and CI
    import matplotlib.pyplot as plt

    return plt


def png_markdown(fig, alt: str) -> dg.MetadataValue:
    """A matplotlib figure embedded as a Markdown image (shows inline in the UI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{b64})")


def histogram(values: pd.Series, title: str) -> dg.MetadataValue:
    """Histogram of a score column."""
    fig, ax = _pyplot().subplots(figsize=(5, 3))
    ax.hist(values.dropna(), bins=30, color="#4f6bed")
    ax.set_title(title)
    ax.set_xlabel(values.name)
    ax.set_ylabel("count")
    return png_markdown(fig, title)


def rows_table(df: pd.DataFrame, columns: list[str]) -> dg.MetadataValue:
    """A few rows as a Markdown table."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = []
    for _, row in df[columns].iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        body.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md(head + "\n".join(body))


def score_metadata(
    results: pd.DataFrame, score: str, id_columns: list[str], top: int = 10
) -> dict[str, Any]:
    """Row count, highest and lowest scored items, and a histogram."""
    cols = [*id_columns, score]
    return {
        "dagster/row_count": len(results),
        f"top_{score}": rows_table(results.nlargest(top, score), cols),
        f"bottom_{score}": rows_table(results.nsmallest(top, score), cols),
        f"{score}_histogram": histogram(results[score], f"{score} ({len(results)} items)"),
    }


def lineage_metadata(record: BrainRunRecord, parquet_path: str | None) -> dict[str, Any]:
    """Where the result is and what produced it."""
    meta: dict[str, Any] = {
        "brain_key": record.brain_key,
        "dataset": record.dataset,
        "run_id": record.run_id or "",
        "code_version": record.code_version or "",
        "input_data_version": record.data_version or "",
        "upstream": dg.MetadataValue.json(record.upstream),
        "versions": dg.MetadataValue.json(record.versions),
    }
    if record.results_table:
        meta["duckdb_table"] = record.results_table
    if parquet_path:
        meta["parquet_path"] = dg.MetadataValue.path(parquet_path)
    return meta
