"""Thumbnails of a brain result's items: an HTML contact sheet, and one composed grid image.

Pure image composition (Pillow, pandas): no Dagster. The Dagster metadata entry that shows a
grid in the UI is built in :mod:`dagster_brain.metadata`.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from dagster_brain.decode import ImageReadError, decode

# One grid entry in the event log, data: URI included, stays under this many bytes.
GRID_BUDGET_BYTES = 150_000
GRID_TILE = 96  # thumbnail side in pixels before any shrinking for the budget
MIN_TILE = 32  # the budget never shrinks tiles below this
JPEG_QUALITIES = (85, 70, 50)  # tried in turn when the PNG is over the budget
_PAD = 6
_FONT_SIZE = 11
_LINE = 13  # caption line height
_TITLE = 18  # row title band height
_BG = (255, 255, 255)
_TILE_BG = (238, 238, 238)
_INK = (33, 33, 33)


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Fit within ``size`` x ``size``; images smaller than that are enlarged by a whole factor
    with nearest-neighbour sampling, so small images (8x8 digits) stay crisp."""
    img = img.copy()
    img.thumbnail(
        (size, size),
        Image.Resampling.NEAREST if max(img.size) < size else Image.Resampling.BILINEAR,
    )
    if max(img.size) < size:
        scale = size // max(img.size)
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def thumbnail_data_uri(path: str, size: int = 128) -> str | None:
    """A small PNG of the displayed image (:func:`dagster_brain.decode.decode`) as a data: URI
    (None if it cannot be read)."""
    try:
        img = _fit(decode(path).image, size)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    except (ImageReadError, OSError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# -- one composed grid -----------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One item of a grid: what it is, its image file, an optional relative ``[x, y, w, h]``
    box to crop (object patches) and the caption lines shown under it."""

    item: str
    path: str | None
    caption: tuple[str, ...] = ()
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Placed:
    """Where a tile landed: grid row and column, its square's top-left pixel and side, and
    whether it is a placeholder (file missing or unreadable)."""

    row: int
    col: int
    item: str
    x: int
    y: int
    size: int
    placeholder: bool


@dataclass(frozen=True)
class Grid:
    """A composed grid image (PNG or JPEG bytes) and its layout."""

    data: bytes
    format: str  # "png" or "jpeg"
    width: int
    height: int
    tile: int  # thumbnail side actually used
    titles: tuple[str, ...]
    layout: tuple[Placed, ...]

    @property
    def data_uri(self) -> str:
        """The image as a ``data:`` URI."""
        return f"data:image/{self.format};base64," + base64.b64encode(self.data).decode()

    def items(self, row: int) -> list[str]:
        """The items of one grid row, left to right."""
        return [p.item for p in sorted(self.layout, key=lambda p: p.col) if p.row == row]


def data_uri_length(n_bytes: int, fmt: str) -> int:
    """Length of the data: URI of ``n_bytes`` of an image in format ``fmt``."""
    return len(f"data:image/{fmt};base64,") + 4 * math.ceil(n_bytes / 3)


@functools.lru_cache(maxsize=4)
def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _clip_text(text: str, width: int, font) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, width: int, font, lines: int) -> list[str]:
    """Up to ``lines`` lines of ``text`` broken anywhere to fit ``width`` (the last clipped)."""
    out: list[str] = []
    while text and len(out) < lines - 1:
        cut = len(text)
        while cut > 1 and font.getlength(text[:cut]) > width:
            cut -= 1
        out.append(text[:cut])
        text = text[cut:]
    if text:
        out.append(_clip_text(text, width, font))
    return out


def _crop(img: Image.Image, box: Sequence[float]) -> Image.Image:
    """The relative ``[x, y, w, h]`` box of ``img``, clipped to the image."""
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"bad box {list(box)}")
    left = max(0, math.floor(x * img.width))
    top = max(0, math.floor(y * img.height))
    right = min(img.width, math.ceil((x + w) * img.width))
    bottom = min(img.height, math.ceil((y + h) * img.height))
    if right <= left or bottom <= top:
        raise ValueError(f"box {list(box)} is off the image")
    return img.crop((left, top, right, bottom))


def _placeholder(tile: Tile, size: int, why: str) -> Image.Image:
    """A grey square naming the file that could not be shown."""
    img = Image.new("RGB", (size, size), _TILE_BG)
    draw = ImageDraw.Draw(img)
    font = _font()
    name = os.path.basename(tile.path) if tile.path else "(no file)"
    lines = [why, *_wrap(name, size - 6, font, max(1, size // _LINE - 2))]
    for i, line in enumerate(lines):
        draw.text((3, 3 + i * _LINE), line, fill=(120, 0, 0) if i == 0 else _INK, font=font)
    return img


def _thumb(tile: Tile, size: int) -> tuple[Image.Image, bool]:
    """(thumbnail or placeholder, is_placeholder) of one tile; never raises for bad files."""
    if not tile.path:
        return _placeholder(tile, size, "no file"), True
    try:
        img = decode(tile.path, draft_size=None if tile.box else size).image
        if tile.box is not None:
            img = _crop(img, tile.box)
        return _fit(img, size), False
    except ImageReadError as err:
        missing = "not found" in str(err)
        return _placeholder(tile, size, "missing" if missing else "unreadable"), True
    except (OSError, ValueError):  # bad box, truncated data
        return _placeholder(tile, size, "unreadable"), True


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", optimize=True)
    else:
        img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _draw(rows: Sequence[tuple[str, Sequence[Tile]]], size: int, thumbs: dict):
    """The grid canvas at tile side ``size`` and its layout."""
    font = _font()
    cols = max((len(t) for _, t in rows), default=0)
    n_lines = max((len(t.caption) for _, tiles in rows for t in tiles), default=0)
    cell_h = size + n_lines * _LINE + _PAD
    width = max(_PAD + cols * (size + _PAD), 200)
    height = _PAD + len(rows) * (_TITLE + cell_h)
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    placed: list[Placed] = []
    y = _PAD
    for r, (title, tiles) in enumerate(rows):
        draw.text((_PAD, y + 2), _clip_text(title, width - 2 * _PAD, font), fill=_INK, font=font)
        y += _TITLE
        for c, tile in enumerate(tiles):
            x = _PAD + c * (size + _PAD)
            img, missing = thumbs[(r, c)]
            img = _fit(img, size) if max(img.size) != size else img
            canvas.paste(_TILE_BG, (x, y, x + size, y + size))
            canvas.paste(img, (x + (size - img.width) // 2, y + (size - img.height) // 2))
            for i, line in enumerate(tile.caption):
                text = _clip_text(str(line), size, font)
                draw.text((x, y + size + 1 + i * _LINE), text, fill=_INK, font=font)
            placed.append(Placed(r, c, tile.item, x, y, size, missing))
        y += cell_h
    return canvas, tuple(placed)


def compose_grid(
    rows: Sequence[tuple[str, Sequence[Tile]]],
    *,
    tile: int = GRID_TILE,
    budget: int = GRID_BUDGET_BYTES,
) -> Grid:
    """One image: each row a title band, then its tiles left to right with their captions.

    The image is a PNG when its data: URI fits ``budget`` bytes; otherwise a JPEG at falling
    quality, then smaller tiles (down to ``MIN_TILE``). Missing or unreadable files, and boxes
    off the image, give a placeholder tile naming the file. Each file is decoded once.
    """
    if not rows:
        raise ValueError("a grid needs at least one row")
    thumbs = {(r, c): _thumb(t, tile) for r, (_, ts) in enumerate(rows) for c, t in enumerate(ts)}
    size = tile
    while True:
        canvas, layout = _draw(rows, size, thumbs)
        tries = [("png", 0)] + [("jpeg", q) for q in JPEG_QUALITIES]
        for fmt, quality in tries:
            data = _encode(canvas, fmt, quality)
            if data_uri_length(len(data), fmt) <= budget:
                break
        if data_uri_length(len(data), fmt) <= budget or size <= MIN_TILE:
            break
        size = max(MIN_TILE, int(size * 0.75))
    return Grid(data, fmt, canvas.width, canvas.height, size, tuple(t for t, _ in rows), layout)


# -- the HTML contact sheet (`brain top --html`) ----------------------------------------------


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
