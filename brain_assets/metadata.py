"""What the Dagster UI shows for a brain result: counts, top rows, plots, paths, lineage."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd

from dagster_brain.contact_sheet import GRID_BUDGET_BYTES, Grid, Tile, compose_grid
from dagster_brain.redact import redact, redact_text
from dagster_brain.store import BrainRunRecord

THUMBNAILS_KEY = "thumbnails"  # the metadata entry holding the grid image
THUMBNAILS_PER_ROW = 8  # top 8 and bottom 8 items; 8 duplicate groups of up to 8 members


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
    results: pd.DataFrame,
    score: str,
    id_columns: list[str],
    top: int = 10,
    media: Any = None,
) -> dict[str, Any]:
    """Row count, highest and lowest scored items, a histogram and, given the items'
    :class:`~dagster_brain.item_media.ItemMedia`, a thumbnail grid of them."""
    cols = [*id_columns, score]
    meta: dict[str, Any] = {
        "dagster/row_count": len(results),
        f"top_{score}": rows_table(results.nlargest(top, score), cols),
        f"bottom_{score}": rows_table(results.nsmallest(top, score), cols),
        f"{score}_histogram": histogram(results[score], f"{score} ({len(results)} items)"),
    }
    if media is not None:
        meta[THUMBNAILS_KEY] = score_thumbnails(results, score, media).value
    return meta


# -- thumbnails ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thumbnails:
    """A grid of items (None when it could not be made) and the Markdown entry showing it."""

    grid: Grid | None
    markdown: str

    @property
    def value(self) -> dg.MetadataValue:
        """The Dagster metadata value (inline image; the UI's [Show Markdown] opens it)."""
        return dg.MetadataValue.md(self.markdown)


def _item(row: pd.Series) -> str:
    label_id = row.get("label_id")
    return str(label_id) if isinstance(label_id, str) and label_id else str(row["sample_id"])


def _shown(value: Any) -> str:
    """A score as it fits under a thumbnail: 3 significant digits (0.000346, 0.812, 1)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def _box(value: Any) -> tuple[float, float, float, float] | None:
    return tuple(float(v) for v in value) if _present(value) else None  # type: ignore[return-value]


def score_tiles(rows: pd.DataFrame, score: str) -> list[Tile]:
    """One tile per row of a media frame: sample id, score, then label and prediction."""
    tiles = []
    for _, r in rows.iterrows():
        name = score if len(score) <= 6 else "score"  # long names clip the value
        caption = [str(r["sample_id"]), f"{name} {_shown(r[score])}"]
        label = r.get("label") if _present(r.get("label")) else r.get("media_label")
        if _present(label):
            caption.append(f"label: {label}")
        if _present(r.get("prediction")):
            caption.append(f"pred: {r['prediction']}")
        for flag in ("possible_missing", "possible_spurious"):
            if flag in r and _present(r[flag]):
                caption.append(f"{flag.split('_')[1]}: {r[flag]}")
        tiles.append(Tile(_item(r), _path(r), tuple(caption), _box(r.get("box"))))
    return tiles


def _path(row: pd.Series) -> str | None:
    value = row.get("filepath")
    return str(value) if _present(value) else None


def top_bottom(
    results: pd.DataFrame, score: str, n: int = THUMBNAILS_PER_ROW, ascending: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` best scored rows (highest first; lowest first when ``ascending``) and the
    ``n`` worst (worst first) not among them; with fewer than ``2 n`` rows, the better half
    and the rest. Ties keep the results' order; NaN is left out."""
    scored = results[results[score].notna()]
    ranked = scored.sort_values(score, ascending=ascending, kind="stable")
    top = ranked.head(min(n, (len(ranked) + 1) // 2))
    rest = ranked.iloc[len(top) :]
    bottom = rest.sort_values(score, ascending=not ascending, kind="stable").head(n)
    return top, bottom


def thumbnails(
    rows: list[tuple[str, list[Tile]]], alt: str, text: str = "", budget: int = GRID_BUDGET_BYTES
) -> Thumbnails:
    """One grid image of ``rows`` as inline Markdown (then ``text``), under ``budget`` bytes."""
    after = f"\n\n{text}" if text else ""
    grid = compose_grid(rows, budget=budget - len(f"![{alt}]()".encode()) - len(after.encode()))
    md = f"![{alt}]({grid.data_uri}){after}"
    if len(md.encode()) > budget:  # even the smallest tiles do not fit: say so instead
        return Thumbnails(None, f"*{alt}: the grid is over {budget} bytes, left out.*{after}")
    return Thumbnails(grid, md)


def score_thumbnails(
    results: pd.DataFrame,
    score: str,
    media: Any,
    n: int = THUMBNAILS_PER_ROW,
    ascending: bool = False,
    budget: int = GRID_BUDGET_BYTES,
) -> Thumbnails:
    """The ``n`` highest and ``n`` lowest scored items (grid rows 0 and 1), captioned with
    their score, label and prediction; patches are cropped to their box."""
    try:
        top, bottom = top_bottom(results, score, n, ascending)
        first, last = ("lowest", "highest") if ascending else ("highest", "lowest")
        rows = [(f"{first} {score}: top {len(top)}", score_tiles(media.frame(top), score))]
        text = "top: " + ", ".join(_item(r) for _, r in top.iterrows())
        if len(bottom):
            rows.append(
                (f"{last} {score}: bottom {len(bottom)}", score_tiles(media.frame(bottom), score))
            )
            text += "  \nbottom: " + ", ".join(_item(r) for _, r in bottom.iterrows())
        return thumbnails(rows, f"{score}: top and bottom items", text, budget)
    except Exception as err:  # pictures are a view of committed results: never fail the run
        return Thumbnails(None, f"*thumbnails unavailable: {redact_text(str(err))}*")


def group_thumbnails(
    results: pd.DataFrame,
    media: Any,
    groups: int = THUMBNAILS_PER_ROW,
    per_group: int = THUMBNAILS_PER_ROW,
    budget: int = GRID_BUDGET_BYTES,
) -> Thumbnails:
    """The first ``groups`` duplicate groups, one grid row per group: its first ``per_group``
    members side by side, with role and distance when the results have them."""
    try:
        rows = []
        for g, members in list(results.groupby("group", sort=True))[:groups]:
            tiles = []
            for _, r in media.frame(members.head(per_group)).iterrows():
                caption = [str(r["sample_id"])]
                if "role" in r:
                    caption.append(str(r["role"]))
                if "distance" in r and _present(r["distance"]):
                    caption.append(f"distance {_shown(float(r['distance']))}")
                tiles.append(Tile(_item(r), _path(r), tuple(caption), _box(r.get("box"))))
            rows.append((f"group {g}: {len(members)} items", tiles))
        if not rows:
            return Thumbnails(None, "*no duplicate groups*")
        text = f"{len(rows)} of {results['group'].nunique()} duplicate groups shown"
        return thumbnails(rows, "duplicate groups", text, budget)
    except Exception as err:  # pictures are a view of committed results: never fail the run
        return Thumbnails(None, f"*thumbnails unavailable: {redact_text(str(err))}*")


def lineage_metadata(record: BrainRunRecord, parquet_path: str | None) -> dict[str, Any]:
    """Where the result is and what produced it (credentials in the lineage masked)."""
    meta: dict[str, Any] = {
        "brain_key": record.brain_key,
        "dataset": record.dataset,
        "run_id": record.run_id or "",
        "code_version": record.code_version or "",
        "input_data_version": record.data_version or "",
        "upstream": dg.MetadataValue.json(redact(record.upstream)),
        "versions": dg.MetadataValue.json(record.versions),
    }
    if record.results_table:
        meta["duckdb_table"] = record.results_table
    if parquet_path:
        meta["parquet_path"] = dg.MetadataValue.path(parquet_path)
    return meta
