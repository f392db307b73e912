"""Reading an image file once: displayed size, byte hash and decoded-pixel hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dagster_brain.decode import ImageReadError, decode

__all__ = ["IMAGE_EXTENSIONS", "ImageInfo", "ImageReadError", "pixel_hash", "read_image_info"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageInfo:
    """The sample columns that come from the file itself (size as displayed)."""

    filepath: str
    width: int
    height: int
    size_bytes: int
    content_hash: str
    pixel_hash: str
    orientation: int = 1  # EXIF orientation applied; 5-8: stored as height x width


def pixel_hash(rgb: np.ndarray) -> str:
    """sha256 of an (h, w, 3) uint8 array and its shape, so re-encoded copies match."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h = hashlib.sha256(f"{rgb.shape[0]}x{rgb.shape[1]}x3;".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def read_image_info(path: Path) -> ImageInfo:
    """Hash the bytes and the decoded RGB pixels of one image file.

    Decoding follows :mod:`dagster_brain.decode` (first frame, EXIF orientation applied, deep
    bit depths scaled to 8 bits, alpha on white), so width and height are the displayed ones.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except OSError as err:
        raise ImageReadError(f"cannot read image file {path}: {err}") from None
    decoded = decode(data, name=str(path))
    rgb = np.asarray(decoded.image)
    return ImageInfo(
        filepath=str(path.resolve()),
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        size_bytes=len(data),
        content_hash=hashlib.sha256(data).hexdigest(),
        pixel_hash=pixel_hash(rgb),
        orientation=decoded.orientation,
    )
