"""Reading an image file once: size, byte hash and decoded-pixel hash."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageReadError(ValueError):
    """A file that is missing or does not decode as an image."""


@dataclass(frozen=True)
class ImageInfo:
    """The sample columns that come from the file itself."""

    filepath: str
    width: int
    height: int
    size_bytes: int
    content_hash: str
    pixel_hash: str


def pixel_hash(rgb: np.ndarray) -> str:
    """sha256 of an (h, w, 3) uint8 array and its shape, so re-encoded copies match."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h = hashlib.sha256(f"{rgb.shape[0]}x{rgb.shape[1]}x3;".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def read_image_info(path: Path) -> ImageInfo:
    """Hash the bytes and the decoded RGB pixels (first frame) of one image file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except OSError as err:
        raise ImageReadError(f"cannot read image file {path}: {err}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img.convert("RGB"))
    except Exception as err:  # Pillow raises many types for corrupt or unknown files
        raise ImageReadError(f"cannot decode image {path}: {err}") from None
    return ImageInfo(
        filepath=str(path.resolve()),
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        size_bytes=len(data),
        content_hash=hashlib.sha256(data).hexdigest(),
        pixel_hash=pixel_hash(rgb),
    )
