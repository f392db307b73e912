"""A self-contained HTML contact sheet of images with their ids and scores."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd
from PIL import Image

from dagster_brain.decode import ImageReadError, decode


def thumbnail_data_uri(path: str, size: int = 128) -> str | None:
    """A small PNG of the displayed image (:func:`dagster_brain.decode.decode`) as a data: URI
    (None if it cannot be read)."""
    try:
        img = decode(path).image
        img.thumbnail(
            (size, size),
            Image.Resampling.NEAREST if max(img.size) < size else Image.Resampling.BILINEAR,
        )
        if max(img.size) < size:  # small images (8x8 digits) stay crisp
            scale = size // max(img.size)
            img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    except (ImageReadError, OSError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(rows: pd.DataFrame, score: str, title: str, size: int = 128) -> str:
    """HTML with one card per row (``sample_id``, ``filepath``, ``score``, optional label)."""
    cards = []
    for _, r in rows.iterrows():
        uri = thumbnail_data_uri(str(r["filepath"]), size)
        img = (
            f'<img src="{uri}" width="{size}" height="{size}">'
            if uri
            else f'<div class="missing">unreadable<br>{html.escape(str(r["filepath"]))}</div>'
        )
        extra = "".join(
            f"<div>{html.escape(c)}: {html.escape(str(r[c]))}</div>"
            for c in ("label_id", "label", "ground_truth", "prediction")
            if c in r and r[c] is not None
        )
        value = r[score]
        shown = f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
        cards.append(
            f'<figure title="{html.escape(str(r["filepath"]))}">{img}<figcaption>'
            f"<b>{html.escape(str(r['sample_id']))}</b><div>{html.escape(score)}: {shown}</div>"
            f"{extra}</figcaption></figure>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:16px}main{display:flex;flex-wrap:wrap;gap:12px}"
        "figure{margin:0;width:" + str(size + 16) + "px;font-size:12px;word-break:break-all}"
        "img{image-rendering:pixelated;border:1px solid #ccc}"
        ".missing{width:" + str(size) + "px;height:" + str(size) + "px;background:#eee}"
        f"</style></head><body><h1>{html.escape(title)}</h1><main>"
        + "".join(cards)
        + "</main></body></html>"
    )


def write_contact_sheet(rows: pd.DataFrame, score: str, title: str, out: str | Path) -> Path:
    """Write :func:`contact_sheet` to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(contact_sheet(rows, score, title))
    return out
