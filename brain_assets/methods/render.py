"""Dagster metadata pieces the methods' asset metadata share (imported when rendering)."""

from __future__ import annotations

import base64

import dagster as dg


def png_md(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG shown inline in the Dagster UI."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
