"""Image quality issues without a model: per-image statistics, then scores and flags.

Per image (:func:`image_stats`, on the decoded 8-bit RGB array):

- ``width``, ``height``: the displayed size;
- ``luma_mean``, ``luma_p10``, ``luma_p90``: the mean and the 10th / 90th percentiles of the
  perceived luminance ``0.299 R + 0.587 G + 0.114 B``, in [0, 1];
- ``sharpness``: the mean absolute 4-neighbour Laplacian over the mean gradient magnitude of
  the grey image: how much of the image's edge energy sits at the highest frequencies. Blur
  removes those first; a ratio, it does not change when an image is darkened or its contrast
  lowered, and natural scenes' similar spectra keep it stable across content. NaN when the
  image has no contrast to judge (grey standard deviation below ``CONTRAST_FLOOR``);
- ``entropy``: the entropy in bits (0-8) of the grey image's 256-bin histogram;
- ``colorfulness``: the 99th percentile over pixels of ``max(R, G, B) - min(R, G, B)``,
  over the grey image's 1st-99th percentile range (at least ``RANGE_FLOOR`` levels), so that
  darkening or washing out a photo does not make it grey.

The grey statistics are taken on the image reduced (box filter) to fit ``ANALYSIS_SIDE``
pixels, so that a large image's per-pixel smoothness does not make it look blurry.

Per dataset (:func:`score_issues`), each issue reads one value ``v`` (:func:`issue_values`)
on a scale where an outlier stands far from the bulk: dark ``log(luma_mean + 0.02)``, bright
``-log(1.02 - (luma_p10 + luma_p90) / 2)``, blurry ``log(sharpness)``, low_information
``entropy``, odd_size ``log(sqrt(width * height))``, odd_aspect_ratio ``|log(width / height)|``,
grayscale ``log(1 + 100 * colorfulness)``:

- ``thresholds="data"``: ``z = (v - median) / scale`` in the issue's bad direction, where
  ``scale = max(1.4826 * MAD, floor)`` over the dataset's readable images (``odd_size`` is
  two-sided: ``|z|``); flagged when ``z >= cutoff``.
- ``thresholds="fixed"``: the same with a fixed centre and scale (typical photographs), so
  a flag does not depend on the other images.

The score is ``z / (z + cutoff)`` for ``z > 0`` (else 0): in [0, 1), 0.5 exactly at the flag
threshold. The floors make a dataset of identical images score 0 everywhere, unflagged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
from PIL import Image

ANALYSIS_SIDE = 320  # grey statistics on the image reduced to fit this many pixels
CONTRAST_FLOOR = 2.0  # grey levels: below this standard deviation there is nothing to judge
RANGE_FLOOR = 16.0  # grey levels: the least range colourfulness is measured against

STAT_COLUMNS = (
    "width",
    "height",
    "luma_mean",
    "luma_p10",
    "luma_p90",
    "sharpness",
    "entropy",
    "colorfulness",
)
IssueName = Literal[
    "dark",
    "bright",
    "blurry",
    "low_information",
    "odd_size",
    "odd_aspect_ratio",
    "grayscale",
    "unreadable",
]
ISSUES: tuple[str, ...] = get_args(IssueName)
PIXEL_ISSUES = tuple(i for i in ISSUES if i != "unreadable")  # found in the pixels
Thresholds = Literal["data", "fixed"]


@dataclass(frozen=True)
class IssueRule:
    """How one issue is judged: its bad direction, cutoff, least scale, fixed centre and scale."""

    direction: Literal[1, -1, 0]  # +1: high is bad, -1: low is bad, 0: both sides
    cutoff: float  # robust z at which the issue is flagged
    floor: float  # least scale (so identical images never flag)
    fixed_centre: float  # thresholds="fixed": a typical photograph's value
    fixed_scale: float


# Cutoffs: the best pooled F1 on the benchmark's tuning seeds 0-2 among cutoffs >= 3 (so that
# a normal bulk is almost never flagged), the middle of the best plateau where F1 is flat
# (benchmarks/methods_image_issues.py --choose). Fixed centres and scales: the median and
# scaled MAD of the clean tuning images, widened for size and brightness, which vary more
# between real datasets than within one.
RULES: dict[str, IssueRule] = {
    "dark": IssueRule(-1, 3.0, 0.10, -0.90, 0.25),  # fixed: luma_mean < 0.17
    "bright": IssueRule(1, 3.25, 0.15, 0.49, 0.20),  # fixed: (p10 + p90) / 2 > 0.70
    "blurry": IssueRule(-1, 3.25, 0.10, 0.36, 0.14),  # fixed: sharpness < 0.91
    "low_information": IssueRule(-1, 8.4, 0.10, 7.37, 0.28),  # fixed: entropy < 5.0 bits
    "odd_size": IssueRule(0, 5.5, 0.10, float(np.log(400.0)), 0.5),  # fixed: < 26 or > 6250 px
    "odd_aspect_ratio": IssueRule(1, 5.5, 0.05, float(np.log(4 / 3)), 0.15),  # fixed: > 3.0
    "grayscale": IssueRule(-1, 5.75, 0.10, 4.27, 0.42),  # fixed: colorfulness < 0.054
}


def _reduce(rgb: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """The image shrunk (box filter) to fit ``side`` x ``side``; unchanged when it fits."""
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def _level(counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0-1) of a 256-bin histogram of levels, as the level reached."""
    cdf = np.cumsum(counts)
    return float(np.searchsorted(cdf, q * cdf[-1], side="left"))


def image_stats(rgb: np.ndarray) -> dict[str, float]:
    """The per-image statistics of an (h, w, 3) uint8 array (see the module docstring).

    Percentiles are read from 256-bin histograms of the rounded grey levels (and of the
    channel spread), which is exact to half a level and avoids sorting.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape[:2]:
        raise ValueError(f"expected a non-empty (h, w, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    small = _reduce(rgb)
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    grey = 0.299 * r.astype(np.float32) + 0.587 * g.astype(np.float32) + 0.114 * b
    levels = np.clip(np.rint(grey), 0, 255).astype(np.intp).ravel()
    counts = np.bincount(levels, minlength=256)
    p = counts[counts > 0] / levels.size
    entropy = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no negative zero
    contrast = float(grey.std(dtype=np.float64))
    sharpness = float("nan")
    if contrast >= CONTRAST_FLOOR and min(grey.shape) >= 3:
        lap = (
            grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1]
            - 4.0 * grey[1:-1, 1:-1]
        )  # fmt: skip
        gx = grey[1:-1, 2:] - grey[1:-1, 1:-1]
        gy = grey[2:, 1:-1] - grey[1:-1, 1:-1]
        grad = float(np.sqrt(gx * gx + gy * gy).mean(dtype=np.float64))
        if grad > 0:
            sharpness = float(np.abs(lap).mean(dtype=np.float64)) / grad
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    spread_counts = np.bincount(spread.ravel(), minlength=256)
    grey_range = _level(counts, 0.99) - _level(counts, 0.01)
    # in units of the image's own grey range, so a dimmed or washed-out photo keeps its colour
    colour = _level(spread_counts, 0.99) / max(grey_range, RANGE_FLOOR)
    return {
        "width": float(w),
        "height": float(h),
        "luma_mean": float(grey.mean(dtype=np.float64)) / 255.0,
        "luma_p10": _level(counts, 0.10) / 255.0,
        "luma_p90": _level(counts, 0.90) / 255.0,
        "sharpness": sharpness,
        "entropy": entropy,
        "colorfulness": colour,
    }


def issue_values(stats: pd.DataFrame) -> pd.DataFrame:
    """The value each pixel issue is judged on, per image (NaN where it cannot be judged)."""
    w = stats["width"].astype(float)
    h = stats["height"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharp = stats["sharpness"].astype(float)
        return pd.DataFrame(
            {
                # under-exposure shows in the mean (dark pixels dominate), over-exposure in
                # the middle of the 10-90% range (clipping lifts the low end); on log scales
                # so that a step towards black / white weighs more near it
                "dark": np.log(stats["luma_mean"].astype(float) + 0.02),
                "bright": -np.log(1.02 - 0.5 * (stats["luma_p10"] + stats["luma_p90"])),
                "blurry": np.log(sharp.where(sharp > 0)),
                "low_information": stats["entropy"].astype(float),
                "odd_size": 0.5 * np.log(w * h),
                "odd_aspect_ratio": np.abs(np.log(w / h)),
                "grayscale": np.log1p(100.0 * stats["colorfulness"].astype(float)),
            },
            index=stats.index,
        )


def robust_centre_scale(values: np.ndarray, floor: float) -> tuple[float, float]:
    """Median and ``max(1.4826 * MAD, floor)`` of the finite values (0, floor if none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, floor
    centre = float(np.median(v))
    return centre, max(1.4826 * float(np.median(np.abs(v - centre))), floor)


@dataclass(frozen=True)
class IssueScores:
    """Scores in [0, 1] and flags per image and issue, and the thresholds that chose them."""

    scores: pd.DataFrame  # one column per issue
    flags: pd.DataFrame  # one boolean column per issue
    thresholds: dict[str, dict[str, float]]  # issue -> centre, scale, cutoff, value threshold


def score_issues(
    stats: pd.DataFrame,
    readable: Sequence[bool] | np.ndarray,
    issues: Sequence[str] = ISSUES,
    thresholds: Thresholds = "data",
    rules: Mapping[str, IssueRule] | None = None,
) -> IssueScores:
    """Score and flag each image for each issue (see the module docstring).

    ``stats`` has :data:`STAT_COLUMNS` (one row per image; rows of unreadable images may be
    NaN); ``readable[i]`` is False for an image that could not be decoded: it is flagged
    ``unreadable`` (score 1) and scores 0, unflagged, on every other issue.
    """
    rules = {**RULES, **(rules or {})}
    unknown = [i for i in issues if i not in ISSUES]
    if unknown:
        raise ValueError(f"unknown image issues {unknown}; known: {list(ISSUES)}")
    if thresholds not in ("data", "fixed"):
        raise ValueError(f"thresholds must be 'data' or 'fixed', got {thresholds!r}")
    missing = [c for c in STAT_COLUMNS if c not in stats]
    if missing:
        raise ValueError(f"image statistics lack columns {missing}")
    ok = np.asarray(readable, dtype=bool)
    if ok.shape != (len(stats),):
        raise ValueError(f"{ok.shape[0]} readable flags for {len(stats)} images")
    values = issue_values(stats.reset_index(drop=True))
    scores, flags, chosen = {}, {}, {}
    for issue in issues:
        if issue == "unreadable":
            scores[issue] = np.where(ok, 0.0, 1.0)
            flags[issue] = ~ok
            continue
        rule = rules[issue]
        v = values[issue].to_numpy(dtype=np.float64)
        if thresholds == "data":
            centre, scale = robust_centre_scale(v[ok], rule.floor)
        else:
            centre, scale = rule.fixed_centre, max(rule.fixed_scale, rule.floor)
        z = (v - centre) / scale
        z = np.abs(z) if rule.direction == 0 else rule.direction * z
        z = np.where(ok & np.isfinite(z), z, 0.0)
        pos = np.maximum(z, 0.0)
        scores[issue] = pos / (pos + rule.cutoff)
        flags[issue] = z >= rule.cutoff
        bound = centre + (rule.direction or 1) * rule.cutoff * scale
        chosen[issue] = {
            "centre": centre,
            "scale": scale,
            "cutoff": rule.cutoff,
            "threshold": bound,  # on the issue's value (issue_values); odd_size: +- around
        }
    index = stats.index
    return IssueScores(
        pd.DataFrame(scores, index=index), pd.DataFrame(flags, index=index).astype(bool), chosen
    )


def overall_score(scores: pd.DataFrame) -> np.ndarray:
    """Each image's worst issue score (0 when no issue is scored)."""
    if scores.shape[1] == 0:
        return np.zeros(len(scores))
    return scores.max(axis=1).to_numpy(dtype=np.float64)


def issue_lists(flags: pd.DataFrame) -> list[str]:
    """Each image's flagged issues, comma-separated in the order of the columns."""
    names = np.asarray(flags.columns)
    return [",".join(names[row]) for row in flags.to_numpy(dtype=bool)]
