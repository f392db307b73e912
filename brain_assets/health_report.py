"""The dataset health report: one self-contained HTML page from every brain run of a dataset.

Generic over the runs in the store: each run's issue counts (its true flags, its duplicate
groups), its top items as embedded thumbnails (the run's score column from the method
registry), duplicate groups, pair tables (e.g. leaks between splits), class tables and the
embeddings map of a visualization run as inline SVG. No Dagster; nothing outside the page
is referenced (images are data: URIs), so the file can be mailed or archived alone.
"""

from __future__ import annotations

import hashlib
import html
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.contact_sheet import thumbnail_data_uri
from dagster_brain.store import BrainRunRecord, Store

REPORTS_DIR = "reports"  # under the data directory
TOP_ITEMS = 8  # thumbnails per scored run
GROUPS = 8  # duplicate groups shown, each up to TOP_ITEMS members
TABLE_ROWS = 20  # rows of a pair or class table
MAP_POINTS = 5000  # points drawn on the embeddings map (a seeded sample above)
THUMB = 96
_STAMP = "<!--generated-->"
_PALETTE = "#4e79a7 #f28e2b #59a14f #e15759 #76b7b2 #edc948 #b07aa1 #ff9da7 #9c755f #bab0ac".split()
_CSS = (
    "body{font-family:sans-serif;margin:20px;color:#222}h2{margin-top:28px;border-bottom:1px "
    "solid #ccc}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;"
    "padding:3px 6px;text-align:left;vertical-align:top}.grid{display:flex;flex-wrap:wrap;"
    "gap:8px}figure{margin:0;width:" + str(THUMB + 8) + "px;font-size:11px;word-break:break-all}"
    "img{image-rendering:pixelated;border:1px solid #ccc}.missing{width:" + str(THUMB) + "px;"
    "height:" + str(THUMB) + "px;background:#eee;font-size:10px}.muted{color:#777}"
    ".row{margin:6px 0}"
)


def report_path(store: Store, dataset: str) -> Path:
    """Where a dataset's report goes: ``<data_dir>/reports/<dataset>.html``."""
    return store.data_dir / REPORTS_DIR / f"{dataset}.html"


@dataclass
class RunSummary:
    """What the report says about one run: its rows, issue count and flag counts."""

    brain_key: str
    kind: str
    method: str
    created_at: str
    rows: int
    issues: int | None  # None: the run flags nothing (scores only)
    flags: dict[str, int] = field(default_factory=dict)


@dataclass
class HealthReport:
    """A rendered report: the page, what it summarises and a version of its content (the
    same runs and results give the same version; the generation time is left out)."""

    dataset: str
    html: str
    runs: list[RunSummary]
    version: str

    @property
    def issues(self) -> int:
        """Issues over every run that flags any."""
        return sum(r.issues or 0 for r in self.runs)


class _Thumbs:
    """Thumbnails of a dataset's samples as data: URIs, each file decoded once."""

    def __init__(self, store: Store, dataset: str, size: int = THUMB):
        self.size = size
        samples = store.samples(dataset)
        self.paths = dict(zip(samples["sample_id"], samples["filepath"], strict=True))
        self._cache: dict[str, str | None] = {}

    def img(self, sample_id: Any) -> str:
        sid = str(sample_id)
        if sid not in self._cache:
            path = self.paths.get(sid)
            self._cache[sid] = thumbnail_data_uri(str(path), self.size) if path else None
        uri = self._cache[sid]
        if uri is None:
            return f'<div class="missing">no image<br>{_e(self.paths.get(sid, sid))}</div>'
        return f'<img src="{uri}" width="{self.size}" height="{self.size}" alt="{_e(sid)}">'

    def figure(self, sample_id: Any, lines: list[str]) -> str:
        caption = "".join(f"<div>{_e(line)}</div>" for line in lines)
        return f"<figure>{self.img(sample_id)}<figcaption>{caption}</figcaption></figure>"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _shown(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "" if value != value else f"{value:.4g}"
    return str(value)


def _score_of(kind: str) -> Any:
    """The registered score column of a kind (None: unscored or not registered here)."""
    from dagster_brain.methods import METHODS

    method = METHODS.get(kind)
    return None if method is None else method.score


def _flag_columns(results: pd.DataFrame) -> list[str]:
    return [c for c in results.columns if pd.api.types.is_bool_dtype(results[c])]


def summarize_run(record: BrainRunRecord, results: pd.DataFrame) -> RunSummary:
    """Issue counts of one run: the copies in duplicate groups (a ``group`` column: members
    beyond one per group), or the rows with any true flag (bool columns, each counted), or
    the rows of a run whose rows are pairs (e.g. leaks)."""
    flags = {c: int(results[c].eq(True).sum()) for c in _flag_columns(results)}
    issues: int | None = None
    if "group" in results:  # duplicate groups: every member but one per group is a copy
        groups = int(results["group"].nunique())
        issues = int(results["group"].notna().sum()) - groups
        flags = {"groups": groups}
    elif flags:
        issues = int(results[list(flags)].eq(True).any(axis=1).sum())
    elif _pair_columns(results):
        issues = len(results)
    return RunSummary(
        record.brain_key,
        record.kind,
        record.method or "",
        str(record.created_at)[:19],
        len(results),
        issues,
        flags,
    )


def _pair_columns(results: pd.DataFrame) -> list[str]:
    """Columns naming two samples per row (``id_a``/``id_b``, ``sample_id_a``...)."""
    cols = [
        c
        for c in results.columns
        if c != "sample_id" and (c.startswith("sample_id") or c in ("id_a", "id_b"))
    ]
    return cols if len(cols) >= 2 else []


def _id_columns(results: pd.DataFrame, known: set[str]) -> list[str]:
    """Columns whose values are this dataset's sample ids (shown as thumbnails)."""
    out = []
    for c in results.columns:
        if c == "label_id" or not pd.api.types.is_string_dtype(results[c]):
            continue
        values = results[c].dropna().astype(str).head(50)
        if len(values) and values.isin(known).all():
            out.append(c)
    return out


def _table(frame: pd.DataFrame, thumbs: _Thumbs | None = None, images: list[str] = ()) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            if thumbs is not None and c in images and pd.notna(row[c]):
                cells.append(f"<td>{thumbs.figure(row[c], [str(row[c])])}</td>")
            else:
                cells.append(f"<td>{_e(_shown(row[c]))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _captions(row: pd.Series, score: str) -> list[str]:
    lines = [str(row["sample_id"]), f"{score}: {_shown(row[score])}"]
    for c in ("label", "prediction"):
        if c in row and pd.notna(row[c]):
            lines.append(f"{c}: {row[c]}")
    return lines


def _ranked(results: pd.DataFrame, col: str, ascending: bool) -> pd.DataFrame:
    """The rows with a ``col`` value, best first (ties in the results' order)."""
    return results[results[col].notna()].sort_values(col, ascending=ascending, kind="stable")


def _top_items(results: pd.DataFrame, score: Any, thumbs: _Thumbs, top: int) -> str:
    col = score.column
    rows = _ranked(results, col, score.ascending).head(top)
    order = "lowest" if score.ascending else "highest"
    figures = "".join(thumbs.figure(r["sample_id"], _captions(r, col)) for _, r in rows.iterrows())
    return f"<p>top {len(rows)} by {order} {_e(col)}</p><div class='grid'>{figures}</div>"


def _groups(results: pd.DataFrame, thumbs: _Thumbs) -> str:
    out = []
    groups = list(results.groupby("group", sort=True))
    for g, members in groups[:GROUPS]:
        figures = []
        for _, r in members.head(TOP_ITEMS).iterrows():
            lines = [str(r["sample_id"])]
            if "role" in r:
                lines.append(str(r["role"]))
            if "distance" in r and pd.notna(r["distance"]):
                lines.append(f"distance {_shown(float(r['distance']))}")
            figures.append(thumbs.figure(r["sample_id"], lines))
        out.append(
            f"<div class='row'><b>group {_e(g)}</b> ({len(members)} items)"
            f"<div class='grid'>{''.join(figures)}</div></div>"
        )
    return f"<p>{min(len(groups), GROUPS)} of {len(groups)} groups</p>" + "".join(out)


def embeddings_map(points: pd.DataFrame, marked: set[str], size: int = 480) -> str:
    """An inline SVG scatter of a visualization run's ``x``/``y`` points, coloured by
    ``label`` when present; items in ``marked`` (flagged outliers) ringed in red."""
    pts = points
    if len(pts) > MAP_POINTS:
        pts = pts.sample(MAP_POINTS, random_state=0)
    x, y = pts["x"].to_numpy(float), pts["y"].to_numpy(float)
    pad = 10

    def scale(v: np.ndarray) -> np.ndarray:
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        return (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5)

    px, py = pad + scale(x) * (size - 2 * pad), size - pad - scale(y) * (size - 2 * pad)
    labels = pts["label"].astype(str).tolist() if "label" in pts else [""] * len(pts)
    names = sorted(set(labels))
    colour = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}
    dots, rings = [], []
    for sid, cx, cy, lab in zip(pts["sample_id"].astype(str), px, py, labels, strict=True):
        tip = f"{sid} {lab}".strip()
        dots.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{colour[lab]}">'
            f"<title>{_e(tip)}</title></circle>"
        )
        if sid in marked:
            rings.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="none" stroke="#d00" '
                'stroke-width="1.5"/>'
            )
    legend = " ".join(f"<span style='color:{colour[n]}'>&#9679;</span> {_e(n)}" for n in names if n)
    shown = (
        f"{len(pts)} of {len(points)} points" if len(pts) < len(points) else f"{len(pts)} points"
    )
    ring_note = f"; {len(marked & set(pts['sample_id'].astype(str)))} flagged outliers ringed red"
    return (
        f'<svg width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}" style="border:1px solid #ccc;background:#fff">'
        + "".join(dots)
        + "".join(rings)
        + f"</svg><p class='muted'>{shown}{ring_note if marked else ''}</p><p>{legend}</p>"
    )


def render_report(
    store: Store, dataset: str, *, top: int = TOP_ITEMS, now: datetime | None = None
) -> HealthReport:
    """The health report of one dataset from every brain run stored for it."""
    store.require_dataset(dataset)
    thumbs = _Thumbs(store, dataset)
    known = set(thumbs.paths)
    runs = store.list_runs(dataset)
    loaded: list[tuple[BrainRunRecord, pd.DataFrame]] = []
    pairs: dict[str, dict[str, pd.DataFrame]] = {}
    for key in runs["brain_key"]:
        record = store.get_run(dataset, key)
        loaded.append((record, store.load_results(dataset, key)))
        for name in record.table_names():  # further tables listing pairs (e.g. leaks)
            table = store.load_extra(dataset, key, name)
            if _pair_columns(table):
                pairs.setdefault(key, {})[name] = table
    summaries = [summarize_run(rec, res) for rec, res in loaded]
    fields = store.label_fields(dataset)
    named = [f"{f} ({k})" for f, k in zip(fields["field"], fields["kind"], strict=True)]
    parts = [
        f"<h1>Dataset health: {_e(dataset)}</h1>",
        f"<p>{len(known)} samples; label fields: {_e(', '.join(named) or 'none')}; "
        f"{len(loaded)} brain runs. Generated {_STAMP}.</p>",
    ]
    parts.append("<h2>Issues per run</h2>")
    if summaries:
        rows = pd.DataFrame(
            {
                "brain key": [s.brain_key for s in summaries],
                "kind": [s.kind for s in summaries],
                "method": [s.method for s in summaries],
                "computed": [s.created_at for s in summaries],
                "rows": [s.rows for s in summaries],
                "issues": ["—" if s.issues is None else s.issues for s in summaries],
                "flags": [", ".join(f"{k}: {v}" for k, v in s.flags.items()) for s in summaries],
            }
        )
        parts.append(_table(rows))
    else:
        parts.append("<p class='muted'>no brain runs yet</p>")
    marked = set()
    for rec, res in loaded:
        if rec.kind == "outliers" and "is_outlier" in res:
            marked |= set(res.loc[res["is_outlier"].eq(True), "sample_id"].astype(str))
    for (rec, res), summary in zip(loaded, summaries, strict=True):
        body = _run_section(rec, res, summary, thumbs, known, marked, top)
        for name, table in pairs.get(rec.brain_key, {}).items():
            body += _pairs_section(name, table, thumbs, known)
        parts.append(
            f'<h2 id="{_e(rec.brain_key)}">{_e(rec.brain_key)} <span class="muted">'
            f"({_e(rec.kind)})</span></h2>{body}"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{_e(dataset)}: dataset health</title><style>{_CSS}</style></head><body>"
        + "".join(parts)
        + "</body></html>"
    )
    version = hashlib.sha256(page.encode()).hexdigest()[:16]
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    return HealthReport(dataset, page.replace(_STAMP, stamp, 1), summaries, version)


def _run_section(
    rec: BrainRunRecord,
    res: pd.DataFrame,
    summary: RunSummary,
    thumbs: _Thumbs,
    known: set[str],
    marked: set[str],
    top: int,
) -> str:
    """One run's part of the page: what fits its results best."""
    if res.empty:
        return "<p class='muted'>no result rows</p>"
    issues = "" if summary.issues is None else f"; {summary.issues} issues"
    out = [f"<p>{summary.rows} rows{issues}</p>"]
    score = _score_of(rec.kind)
    if {"x", "y", "sample_id"} <= set(res.columns) and rec.kind == "visualization":
        out.append(embeddings_map(res, marked))
    elif "group" in res and "sample_id" in res:
        out.append(_groups(res, thumbs))
    elif score is not None and score.column in res and "sample_id" in res:
        out.append(_top_items(res, score, thumbs, top))
        shown = _ranked(res, score.column, score.ascending).head(top)["sample_id"].tolist()
        for flag in _flag_columns(res)[:6]:  # the flagged items, most confident first
            hits = res[res[flag].eq(True)]
            # a flag's own score where it has one (class_is_outlier: class_outlier,
            # is_dark: dark_score)
            own = flag.replace("is_", "", 1)
            floats = [c for c in (own, f"{own}_score") if c in res]
            floats = [c for c in floats if pd.api.types.is_float_dtype(res[c])]
            col = floats[0] if floats else score.column
            ranked = _ranked(hits, col, score.ascending).head(top)
            if not len(hits) or ranked["sample_id"].tolist() == shown[: len(ranked)]:
                continue  # nothing flagged, or the same items as the top grid
            figs = "".join(
                thumbs.figure(r["sample_id"], _captions(r, col)) for _, r in ranked.iterrows()
            )
            out.append(f"<p>{_e(flag)}: {len(hits)} items</p><div class='grid'>{figs}</div>")
    else:
        images = _id_columns(res, known)
        if "sample_id" not in res and "count" in res and "label" in res:
            counts = res["count"][res["count"] > 0]
            if len(counts):
                out.append(
                    f"<p>imbalance ratio (largest / smallest class): "
                    f"{counts.max() / counts.min():.2f}</p>"
                )
            if "mistakes_high" in res and res["mistakes_high"].any():
                names = ", ".join(res.loc[res["mistakes_high"], "label"].astype(str))
                out.append(f"<p><b>classes with unusually many mistakes:</b> {_e(names)}</p>")
        cols = [c for c in res.columns if c not in ("dataset",)]
        if set(cols) <= {"id", "sample_id", "label_id"}:  # ids alone (an index): no table
            return "".join(out)
        out.append(_table(res[cols].head(TABLE_ROWS), thumbs, images))
        if len(res) > TABLE_ROWS:
            out.append(f"<p class='muted'>first {TABLE_ROWS} of {len(res)} rows</p>")
    return "".join(out)


def _pairs_section(name: str, table: pd.DataFrame, thumbs: _Thumbs, known: set[str]) -> str:
    """A run's table of pairs (e.g. leaks between splits), closest first, with thumbnails."""
    if "distance" in table:
        table = table.sort_values("distance", kind="stable")
    shown = table.head(TABLE_ROWS)
    more = f" (first {TABLE_ROWS})" if len(table) > TABLE_ROWS else ""
    return f"<h3>{_e(name)}: {len(table)} pairs{more}</h3>" + _table(
        shown, thumbs, _id_columns(shown, known)
    )


def write_health_report(
    store: Store, dataset: str, path: str | os.PathLike | None = None
) -> tuple[Path, HealthReport]:
    """Render the report and write it atomically (a temporary file renamed into place) to
    ``path`` (default: :func:`report_path`)."""
    report = render_report(store, dataset)
    out = Path(path) if path is not None else report_path(store, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(report.html, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out, report
