"""The embeddings viewer: an interactive page per visualization run (zoom, pan, colour by a
label or score field, thumbnails on hover, lasso/box selection saved as a view), served on
127.0.0.1 by ``brain view`` or ``make ui``. Visualization assets link to it."""

from __future__ import annotations

from dagster_brain.viewer.server import build_app, serve

__all__ = ["build_app", "serve"]
