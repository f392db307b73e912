"""Image issues: dark, bright, blurry, low-information, odd-size, odd-aspect, greyscale and
unreadable images, scored and flagged per sample without a model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from dagster_brain.algorithms.image_issues import (
    ISSUES,
    STAT_COLUMNS,
    IssueName,
    image_stats,
    issue_lists,
    overall_score,
    score_issues,
)
from dagster_brain.decode import decode
from dagster_brain.item_media import with_media
from dagster_brain.methods.base import BrainMethod, RunField, ScoreColumn, samples_input
from dagster_brain.methods.scored import scores_metadata
from dagster_brain.runs import _LOG, RunContext, RunOutcome, commit_outcome
from dagster_brain.specs import BrainRunSpec
from dagster_brain.store import Store

SCORE = "image_issue_score"
# Bumped when image_stats changes: statistics stored by an older run are then not reused.
STATS_VERSION = "1"
CHUNK = 32  # files per task sent to a worker process
# results columns of the statistics (not the samples table's own names, which views join)
RESULT_NAMES = {c: c for c in STAT_COLUMNS} | {"width": "image_width", "height": "image_height"}
SOURCE = {"filepath": "decoded_filepath", "content_hash": "decoded_content_hash"}


class ImageIssuesSpec(BrainRunSpec):
    """``compute_image_issues``: per-sample scores and flags for image quality issues."""

    kind: Literal["image_issues"]
    issues: list[IssueName] = Field(default_factory=lambda: list(ISSUES), min_length=1)
    thresholds: Literal["data", "fixed"] = "data"  # data: median/MAD of this dataset
    workers: int = Field(default=0, ge=0)  # decoding processes; 0: one per core, 1: inline

    @field_validator("issues")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # order kept, repeats dropped


def _stats_chunk(paths: Sequence[str]) -> list[dict[str, float] | str]:
    """Statistics of each file, or the error text of one that does not decode."""
    out: list[dict[str, float] | str] = []
    for path in paths:
        try:
            rgb = np.asarray(decode(path).image)
        except Exception as err:  # unreadable or truncated: reported, never raised
            out.append(str(err) or type(err).__name__)
            continue
        out.append(image_stats(rgb))
    return out


def file_stats(paths: Sequence[str], workers: int = 0) -> pd.DataFrame:
    """Per-file statistics (:data:`STAT_COLUMNS`) and ``error`` (None where readable),
    decoded in ``workers`` processes (0: one per core; 1: in this process)."""
    paths = [str(p) for p in paths]
    n = workers or (os.cpu_count() or 1)
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    if n <= 1 or len(chunks) <= 1:
        got = [x for chunk in chunks for x in _stats_chunk(chunk)]
    else:
        with ProcessPoolExecutor(min(n, len(chunks))) as pool:
            got = [x for part in pool.map(_stats_chunk, chunks) for x in part]
    rows = [{c: np.nan for c in STAT_COLUMNS} if isinstance(g, str) else g for g in got]
    frame = pd.DataFrame(rows, columns=list(STAT_COLUMNS), dtype=np.float64)
    frame["error"] = [g if isinstance(g, str) else None for g in got]
    return frame


def _reusable(store: Store, spec: ImageIssuesSpec, samples: pd.DataFrame) -> pd.DataFrame:
    """Statistics of the previous run of this key for samples whose file is unchanged
    (same path and content hash, readable then), indexed by sample id."""
    empty = pd.DataFrame(columns=["sample_id", *STAT_COLUMNS]).set_index("sample_id")
    previous = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    if previous is None or previous.kind != "image_issues":
        return empty
    if (previous.upstream or {}).get("stats_version") != STATS_VERSION:
        return empty
    old = store.load_results(spec.dataset, spec.brain_key)
    old = old.rename(columns={v: k for k, v in {**RESULT_NAMES, **SOURCE}.items()})
    need = {"sample_id", "filepath", "content_hash", "error", *STAT_COLUMNS}
    if not need <= set(old.columns):
        return empty
    cur = samples[["sample_id", "filepath", "content_hash"]].astype(str)
    old = old[old["error"].isna()].copy()
    old[["sample_id", "filepath", "content_hash"]] = old[
        ["sample_id", "filepath", "content_hash"]
    ].astype(str)
    same = old.merge(cur, on=["sample_id", "filepath", "content_hash"])
    return same.set_index("sample_id")[list(STAT_COLUMNS)]


def run_image_issues(
    spec: ImageIssuesSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """Score and flag every sample (or those of ``ids``) for the spec's issues.

    Statistics of samples whose file (path and content hash) is unchanged since the previous
    run of this brain key are read from its results; only new or changed files are decoded,
    and the data-chosen thresholds are recomputed over all scored samples.
    """
    samples = store.samples(spec.dataset, ids).reset_index(drop=True)
    if samples.empty:
        raise ValueError(f"brain key {spec.brain_key!r}: dataset {spec.dataset!r} has no samples")
    missing_path = samples.loc[samples["filepath"].isna(), "sample_id"]
    if len(missing_path):
        raise ValueError(
            f"brain key {spec.brain_key!r}: sample {missing_path.iloc[0]!r} of "
            f"{spec.dataset!r} has no filepath"
        )
    known = _reusable(store, spec, samples)
    todo = ~samples["sample_id"].isin(known.index)
    log.info(
        "%s: image issues of %d samples (%d decoded, %d unchanged since the last run)",
        spec.brain_key,
        len(samples),
        int(todo.sum()),
        int((~todo).sum()),
    )
    stats = pd.DataFrame(index=samples.index, columns=list(STAT_COLUMNS), dtype=np.float64)
    stats["error"] = None
    if todo.any():
        fresh = file_stats(samples.loc[todo, "filepath"].tolist(), spec.workers)
        fresh.index = samples.index[todo]
        stats.loc[todo, :] = fresh
    if (~todo).any():
        stats.loc[~todo, list(STAT_COLUMNS)] = known.loc[
            samples.loc[~todo, "sample_id"], list(STAT_COLUMNS)
        ].to_numpy()
    stats[list(STAT_COLUMNS)] = stats[list(STAT_COLUMNS)].astype(np.float64)
    readable = stats["error"].isna().to_numpy()
    judged = score_issues(stats, readable, issues=spec.issues, thresholds=spec.thresholds)
    results = pd.DataFrame({"sample_id": samples["sample_id"].astype(str)})
    for issue in spec.issues:
        results[f"{issue}_score"] = judged.scores[issue].to_numpy(dtype=np.float64)
    for issue in spec.issues:
        results[f"is_{issue}"] = judged.flags[issue].to_numpy(dtype=bool)
    results["issues"] = issue_lists(judged.flags)
    results[SCORE] = np.where(readable, overall_score(judged.scores), 1.0)
    for col in STAT_COLUMNS:
        results[RESULT_NAMES[col]] = stats[col].to_numpy(dtype=np.float64)
    results["error"] = stats["error"].to_numpy(dtype=object)
    for col, name in SOURCE.items():  # what was decoded: unchanged files are not again
        results[name] = samples[col].astype(str).to_numpy()
    counts = {issue: int(judged.flags[issue].sum()) for issue in spec.issues}
    log.info(
        "%s: flagged %s",
        spec.brain_key,
        ", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing",
    )
    return commit_outcome(
        spec,
        store,
        RunContext(run_id, log, ids, tuple(artifacts or ())),
        results,
        method=f"robust-{spec.thresholds}",
        upstream={
            "samples": {"data_version": store.data_version(spec.dataset, ids)},
            "stats_version": STATS_VERSION,
            "thresholds": judged.thresholds,
        },
        packages=("pillow",),
        summary={
            "items": len(results),
            "flagged": counts,
            "any_issue": int((results["issues"] != "").sum()),
            "decoded": int(todo.sum()),
            "reused": int((~todo).sum()),
        },
    )


METHOD = BrainMethod(
    kind="image_issues",
    spec=ImageIssuesSpec,
    run=with_media(run_image_issues),
    inputs=samples_input,
    expected_rows=lambda store, spec: len(store.sample_ids(spec.dataset)),
    score=ScoreColumn(SCORE, 0.0, 1.0),
    summary="Dark, bright, blurry, low-information, odd-size/aspect, greyscale and unreadable "
    "images (no model).",
    run_fields=(
        RunField("thresholds", str, "data (median/MAD of the dataset) or fixed"),
        RunField("workers", int, "decoding processes (0: one per core)", ge=0),
    ),
    asset_kinds=lambda spec: {"pillow", "duckdb"},
    asset_metadata=scores_metadata(SCORE),
)
