"""Rich display in Jupyter: views as HTML tables with thumbnails, plots as PIL images.

No Dagster here; :mod:`dagster_brain.api` calls these for ``_repr_html_`` and ``visualize_*``.
"""

from __future__ import annotations

import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

HTML_ROWS = 10  # rows a view shows in a notebook
THUMB_SIZE = 64  # thumbnail edge in pixels

_STYLE = (
    "<style>.brain-view td,.brain-view th{padding:2px 8px;text-align:left;"
    "vertical-align:middle}.brain-view img{image-rendering:pixelated}</style>"
)


def png_image(png: bytes):
    """A PIL image of PNG bytes (Jupyter displays it; ``.save(path)`` writes it).

    Args:
        png: the bytes of a PNG file.

    Returns:
        The decoded ``PIL.Image.Image``, fully loaded.
    """
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    img.load()
    return img


class PngBytes(bytes):
    """PNG bytes that Jupyter displays as the image (``_repr_png_``); still ``bytes``.

    Args:
        data: the bytes of a PNG file.
    """

    def _repr_png_(self) -> bytes:
        return bytes(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the PNG to a file.

        Args:
            path: where to write it (parent folders are created).

        Returns:
            The path written.
        """
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self)
        return out

    def to_image(self):
        """The PNG as a PIL image.

        Returns:
            A loaded ``PIL.Image.Image``.
        """
        return png_image(self)


def _cell(value: Any) -> str:
    """One escaped table cell: floats to 4 significant digits, missing values empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return html.escape(", ".join(str(v) for v in value))
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # arrays and other non-scalars
        pass
    return html.escape(str(value))


def view_html(
    rows: pd.DataFrame,
    total: int,
    *,
    title: str,
    item: str = "samples",
    id_columns: Sequence[str] = ("sample_id",),
    label_columns: Sequence[str] = (),
    score_columns: Sequence[str] = (),
    thumb_size: int = THUMB_SIZE,
) -> str:
    """An HTML table of a view's first rows: thumbnail, ids, labels, scores.

    Args:
        rows: the rows to show, in order, with a ``filepath`` column (may be missing or None:
            the thumbnail cell stays empty) and the named columns.
        total: how many items the whole view has (the "N of M" line).
        title: the heading (e.g. the dataset's name); escaped.
        item: what one row is ("samples" or "patches").
        id_columns: the id columns, first shown first.
        label_columns: label columns (one value or a list of values per row).
        score_columns: score columns (numbers are shown to 4 significant digits).
        thumb_size: the thumbnail's longest edge in pixels.

    Returns:
        An HTML fragment; every value taken from the data is escaped.
    """
    from dagster_brain.contact_sheet import thumbnail_data_uri

    columns = [*id_columns, *label_columns, *score_columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *columns])
    body = []
    for _, r in rows.iterrows():
        path = r.get("filepath")
        uri = thumbnail_data_uri(str(path), thumb_size) if isinstance(path, str) else None
        thumb = (
            f'<img src="{uri}" style="max-width:{thumb_size}px;max-height:{thumb_size}px" '
            f'alt="{html.escape(str(r[id_columns[0]]))}">'
            if uri
            else ""
        )
        cells = "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns)
        body.append(f"<tr><td>{thumb}</td>{cells}</tr>")
    return (
        f'<div class="brain-view">{_STYLE}<p><b>{html.escape(title)}</b>: '
        f"{len(rows)} of {total} {html.escape(item)}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
