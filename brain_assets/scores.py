"""Brain runs that score labels from predictions: mistakenness and hardness."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.methods import new_record
from dagster_brain.specs import HardnessSpec, MistakennessSpec
from dagster_brain.store import Store

_LOG = logging.getLogger("dagster_brain")
DEFAULT_MISSING_CONF = 0.5  # see algorithms.detection_mistakenness


def _fields(store: Store, spec, *names: str) -> dict[str, tuple[str, list[str] | None]]:
    """(kind, classes) of each label field, with errors naming the brain key and field."""
    out = {}
    for name in names:
        try:
            out[name] = store.label_field(spec.dataset, name)
        except Exception as err:
            raise ValueError(f"brain key {spec.brain_key!r}: {err}") from err
    return out


def _restrict(frame: pd.DataFrame, ids: list[str] | None) -> pd.DataFrame:
    return frame if ids is None else frame[frame["sample_id"].isin(set(ids))]


def _is_vector(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _logits_matrix(frame: pd.DataFrame) -> list | None:
    """Per-row logits lists (None where a row has none), or None if no row has any."""
    logits = frame["logits"].tolist()
    if not any(_is_vector(v) for v in logits):
        return None
    return [list(v) if _is_vector(v) else None for v in logits]


def run_mistakenness(
    spec: MistakennessSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
):
    """``compute_mistakenness`` for classification or detection label fields."""
    fields = _fields(store, spec, spec.label_field, spec.pred_field)
    gt_kind, classes = fields[spec.label_field]
    pred_kind, pred_classes = fields[spec.pred_field]
    if gt_kind != pred_kind:
        raise ValueError(
            f"brain key {spec.brain_key!r}: {spec.label_field!r} holds {gt_kind} but "
            f"{spec.pred_field!r} holds {pred_kind}"
        )
    gt = _restrict(store.labels(spec.dataset, spec.label_field), ids)
    pred = _restrict(store.labels(spec.dataset, spec.pred_field), ids)
    upstream = {
        "labels": {
            "label_field": spec.label_field,
            "pred_field": spec.pred_field,
            "data_version": store.data_version(spec.dataset, ids),
        }
    }
    if gt_kind == "detections":
        return _detection_mistakenness(spec, store, gt, pred, run_id, log, upstream, artifacts)
    return _classification_mistakenness(
        spec, store, gt, pred, classes or pred_classes, run_id, log, upstream, artifacts
    )


def _classification_mistakenness(spec, store, gt, pred, classes, run_id, log, upstream, artifacts):
    from dagster_brain.algorithms.mistakenness import (
        align,
        confident_learning_mistakenness,
        label_indices,
        probabilities,
        reference_mistakenness,
    )
    from dagster_brain.methods import RunOutcome, frame_version

    if not classes:
        raise ValueError(
            f"brain key {spec.brain_key!r}: field {spec.label_field!r} has no class list"
        )
    (g, p), skipped = align(gt, pred)
    for reason, who in skipped.items():
        if who:
            log.warning(
                "%s: skipped %d samples with %s, e.g. %s",
                spec.brain_key,
                len(who),
                reason.replace("_", " "),
                who[:5],
            )
    if g.empty:
        raise ValueError(
            f"brain key {spec.brain_key!r}: no sample has both "
            f"{spec.label_field!r} and {spec.pred_field!r}"
        )
    sample_ids = g["sample_id"].tolist()
    logits = _logits_matrix(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probs = probabilities(
            logits, p["confidence"].tolist(), p["label"].tolist(), classes, sample_ids
        )
    for w in caught:
        log.warning("%s: %s", spec.brain_key, w.message)
    if spec.method == "confident_learning":
        scores, is_issue = confident_learning_mistakenness(
            probs,
            label_indices(g["label"].tolist(), classes, sample_ids),
            classes,
            ids=sample_ids,
        )
        method = "confident_learning"
    else:
        scores = reference_mistakenness(
            p["label"].tolist(),
            p["confidence"].tolist(),
            g["label"].tolist(),
            logits=logits,
            use_logits=spec.use_logits,
            ids=sample_ids,
        )
        is_issue = np.zeros(len(scores), bool)
        method = "reference_logits" if spec.use_logits else "reference"
    results = pd.DataFrame(
        {
            "sample_id": sample_ids,
            "mistakenness": np.asarray(scores, float),
            "possible_label_issue": np.asarray(is_issue, bool),
            "label": g["label"].tolist(),
            "prediction": p["label"].tolist(),
        }
    )
    log.info(
        "%s: %s mistakenness on %d samples, %d flagged",
        spec.brain_key,
        method,
        len(results),
        int(results["possible_label_issue"].sum()),
    )
    record = new_record(
        spec,
        store,
        method=method,
        sample_ids=list(sample_ids),
        run_id=run_id,
        upstream={**upstream, "skipped": {k: len(v) for k, v in skipped.items()}},
        artifacts=artifacts,
        packages=("cleanlab", "scikit-learn"),
    )
    store.commit_run(record, results)
    return RunOutcome(
        record,
        results,
        frame_version(results),
        {"skipped": {k: len(v) for k, v in skipped.items()}},
    )


def _detection_mistakenness(spec, store, gt, pred, run_id, log, upstream, artifacts):
    from dagster_brain.algorithms.detection_mistakenness import detection_mistakenness
    from dagster_brain.methods import RunOutcome, frame_version

    res = detection_mistakenness(
        gt,
        pred,
        iou_thresh=spec.iou_thresh,
        missing_conf=DEFAULT_MISSING_CONF if spec.missing_conf is None else spec.missing_conf,
        copy_missing=spec.copy_missing,
    )
    samples = res.samples.copy()
    objects = pd.concat(
        [res.gt.assign(field=spec.label_field), res.pred.assign(field=spec.pred_field)],
        ignore_index=True,
    )
    keep = [
        c
        for c in (
            "sample_id",
            "label_id",
            "field",
            "label",
            "confidence",
            "mistakenness",
            "mistakenness_loc",
            "possible_missing",
            "possible_spurious",
            "iou",
            "match",
        )
        if c in objects
    ]
    objects = objects[keep]
    log.info(
        "%s: %d GT boxes, %d predictions: %d possible missing, %d possible spurious",
        spec.brain_key,
        len(res.gt),
        len(res.pred),
        int(res.pred["possible_missing"].sum()),
        int(res.gt["possible_spurious"].sum()),
    )
    record = new_record(
        spec,
        store,
        method="detection",
        sample_ids=list(samples["sample_id"]),
        run_id=run_id,
        upstream=upstream,
        artifacts=artifacts,
        packages=("cleanlab", "scikit-learn"),
    )
    store.commit_run(record, samples, extra={"objects": objects})
    if spec.copy_missing and res.copied is not None and len(res.copied):
        _copy_missing(store, spec, res.copied)
        log.info(
            "%s: copied %d missing objects into %r",
            spec.brain_key,
            len(res.copied),
            spec.label_field,
        )
    return RunOutcome(
        record,
        samples,
        frame_version(samples),
        {"objects": objects, "copied": 0 if res.copied is None else len(res.copied)},
    )


def _copy_missing(store: Store, spec: MistakennessSpec, copied: pd.DataFrame) -> None:
    """Add the missing objects to the ground-truth field (label ids ``copied:<pred id>``)."""
    kind, classes = store.label_field(spec.dataset, spec.label_field)
    current = store.labels(spec.dataset, spec.label_field)
    touched = set(copied["sample_id"])
    keep = current[
        current["sample_id"].isin(touched) & ~current["label_id"].isin(set(copied["label_id"]))
    ]
    new = pd.concat([keep, copied[[c for c in keep.columns if c in copied]]], ignore_index=True)
    store.write_labels(spec.dataset, spec.label_field, kind, classes, new)


def run_hardness(
    spec: HardnessSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
):
    """``compute_hardness``: normalised entropy (default) or margin of the predictions."""
    from dagster_brain.algorithms.hardness import hardness
    from dagster_brain.methods import RunOutcome, frame_version

    kind, classes = _fields(store, spec, spec.label_field)[spec.label_field]
    if kind != "classification":
        raise ValueError(
            f"brain key {spec.brain_key!r}: hardness needs classification "
            f"predictions, {spec.label_field!r} holds {kind}"
        )
    pred = _restrict(store.labels(spec.dataset, spec.label_field), ids)
    has_logits = pred["logits"].map(_is_vector)
    if not has_logits.any():
        raise ValueError(
            f"brain key {spec.brain_key!r}: field {spec.label_field!r} has no "
            "logits (hardness needs them)"
        )
    skipped = pred.loc[~has_logits, "sample_id"].tolist()
    if skipped:
        log.warning(
            "%s: skipped %d samples without logits, e.g. %s",
            spec.brain_key,
            len(skipped),
            skipped[:5],
        )
    pred = pred[has_logits]
    sample_ids = pred["sample_id"].tolist()
    logits = (
        np.asarray([list(v) for v in pred["logits"]], dtype=np.float64)
        if len({len(v) for v in pred["logits"]}) == 1
        else pred["logits"].tolist()
    )
    scores = hardness(logits, sample_ids, method=spec.method, from_logits=True)
    results = pd.DataFrame(
        {"sample_id": sample_ids, "hardness": scores, "prediction": pred["label"].tolist()}
    )
    record = new_record(
        spec,
        store,
        method=spec.method,
        sample_ids=list(sample_ids),
        run_id=run_id,
        upstream={"labels": {"pred_field": spec.label_field}, "skipped": len(skipped)},
        artifacts=artifacts,
        packages=("cleanlab", "scikit-learn"),
    )
    store.commit_run(record, results)
    return RunOutcome(record, results, frame_version(results), {"skipped": len(skipped)})
