"""Decoding an image file into the 8-bit picture a user sees: one rule for every caller.

Ingestion (sizes, pixel hashes), embeddings, duplicate verification and contact sheets all
decode through :func:`decode`, so they agree on what an image looks like:

- **Frame**: multi-frame files (GIF, APNG, multi-page TIFF) give their first frame.
- **Orientation**: the EXIF orientation tag (or XMP ``tiff:Orientation``) is applied, as by
  ``PIL.ImageOps.exif_transpose``; width and height are the displayed ones. A tag that cannot
  be read counts as no rotation.
- **Bit depth** (single-channel images deeper than 8 bits), never clipped:

  - 16-bit integer (``I;16``, ``I;16B``, ...): the high byte, ``v >> 8`` (0..65535 -> 0..255),
    which is what Pillow itself does with 16-bit colour files;
  - 32-bit integer (``I``): the same when every value lies in 0..65535 (a 16-bit image held in
    32 bits), otherwise the image's own min-max;
  - float (``F``): ``v * 255`` when every finite value lies in [0, 1], otherwise the min-max of
    the finite values; NaN and -inf count as the low end, +inf as the high end.

  Min-max maps the minimum to 0 and the maximum to 255; a constant image (max = min) is all 0.
  Scaled values are rounded half up.
- **Alpha** (RGBA, LA, PA, premultiplied RGBa/La, palette or RGB/L files with a transparent
  colour): composited on white, ``round((c * a + 255 * (255 - a)) / 255)`` per channel, so a
  fully transparent pixel is white and an opaque one keeps its colour.
- **Everything else**: Pillow's conversion; 1-bit gives 0/255, greyscale is repeated into the
  three channels, palettes are looked up, CMYK gives ``round((255 - C) (255 - K) / 255)`` for
  red (likewise M, Y for green, blue).

Ordinary 8-bit RGB files decode to exactly the pixels ``Image.open(f).convert("RGB")`` gives.
Imports only numpy and Pillow.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps

Mode = Literal["RGB", "L"]
BACKGROUND = 255  # alpha is composited on white
_UINT16_MAX = 65535


class ImageReadError(ValueError):
    """A file that is missing or does not decode as an image (the message names the file)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded image (mode ``RGB`` or ``L``, displayed orientation) and how it was stored."""

    image: Image.Image
    orientation: int  # EXIF orientation applied, 1 = none; 5-8 swap stored width and height
    stored_mode: str  # the file's pixel mode, e.g. "RGB", "I;16", "RGBA", "P"


def decode(
    source: str | os.PathLike[str] | bytes,
    *,
    name: str | None = None,
    mode: Mode = "RGB",
    draft_size: int | None = None,
) -> Decoded:
    """Decode the first frame of an image file or its bytes by the module's rules.

    ``name`` is the file named in errors (default: ``source`` when it is a path). JPEGs are
    decoded at the smallest DCT scale keeping both sides >= ``draft_size`` (None: full size).
    A missing, unreadable or undecodable file raises :class:`ImageReadError` naming it.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if isinstance(source, bytes | bytearray | memoryview):
        label = name if name is not None else "<bytes>"
        return _decode_stream(io.BytesIO(source), label, mode, draft_size)
    label = name if name is not None else str(source)
    try:
        f = open(source, "rb")  # noqa: SIM115 (closed below; errors here are read errors)
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {label}") from None
    except OSError as err:
        raise ImageReadError(f"cannot read image file {label}: {err}") from None
    with f:
        return _decode_stream(f, label, mode, draft_size)


def _decode_stream(fp, label: str, mode: Mode, draft_size: int | None) -> Decoded:
    try:
        with Image.open(fp) as im:
            stored_mode = im.mode  # before draft, which may decode JPEGs straight to grey
            if draft_size and im.format == "JPEG":
                im.draft(mode, (draft_size, draft_size))
            orientation = exif_orientation(im)  # before load: Pillow turns TIFFs on load
            im.load()
            out = normalize_image(im, mode)
            if out is im:  # closing the file would invalidate it
                out = im.copy()
    except Exception as err:  # Pillow raises many types for corrupt or unknown files
        raise ImageReadError(f"cannot decode image {label}: {err}") from None
    return Decoded(out, orientation, stored_mode)


def exif_orientation(im: Image.Image) -> int:
    """The image's EXIF orientation (1-8), 1 when absent or unreadable."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged metadata block does not make the pixels unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def normalize_image(im: Image.Image, mode: Mode = "RGB") -> Image.Image:
    """An image in memory as its displayed 8-bit ``mode`` picture (rules: module docstring).

    Returns ``im`` itself when nothing changes (an upright RGB image asked for as RGB).
    """
    orientation = exif_orientation(im)
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    im = _eight_bit(im)
    return im if im.mode == mode else im.convert(mode)


def _eight_bit(im: Image.Image) -> Image.Image:
    """An 8-bit image without alpha: mode ``L`` or ``RGB``."""
    m = im.mode
    if m == "I" or m.startswith("I;16"):
        return Image.fromarray(integer_to_uint8(np.asarray(im)))
    if m == "F":
        return Image.fromarray(float_to_uint8(np.asarray(im)))
    if im.has_transparency_data:
        grey = m in ("1", "L", "LA", "La")
        return _composite(im.convert("LA" if grey else "RGBA"))
    if m in ("L", "RGB"):
        return im
    if m == "1":
        return im.convert("L")
    return im.convert("RGB")


def _composite(im: Image.Image) -> Image.Image:
    """LA or RGBA on the white background -> L or RGB."""
    arr = np.asarray(im)
    a = arr[..., -1:].astype(np.uint16)
    c = arr[..., :-1].astype(np.uint16)
    out = (c * a + BACKGROUND * (255 - a) + 127) // 255  # exact round(x / 255): no ties
    out = out.astype(np.uint8)
    return Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.uint8)


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[lo, hi] -> 0..255 rounded; all 0 when hi == lo."""
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return _round_half_up((x - lo) * 255.0 / (hi - lo))


def integer_to_uint8(x: np.ndarray) -> np.ndarray:
    """16/32-bit integer samples -> uint8: high byte within 0..65535, else min-max."""
    x = np.asarray(x)
    if x.size == 0:
        return np.zeros(x.shape, np.uint8)
    lo, hi = int(x.min()), int(x.max())
    if lo >= 0 and hi <= _UINT16_MAX:
        return (x.astype(np.uint32) >> 8).astype(np.uint8)
    return _stretch(x.astype(np.float64), float(lo), float(hi))


def float_to_uint8(x: np.ndarray) -> np.ndarray:
    """Float samples -> uint8: ``v * 255`` within [0, 1], else min-max of the finite values."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    x = np.nan_to_num(x, nan=lo, posinf=hi, neginf=lo)
    return _stretch(x, lo, hi)
