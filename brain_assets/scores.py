"""Brain runs that score labels from predictions: mistakenness and hardness."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.runs import RunContext, RunOutcome, commit_outcome, frame_version, new_record
from dagster_brain.specs import HardnessSpec, MistakennessSpec
from dagster_brain.store import Store

_LOG = logging.getLogger("dagster_brain")


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
) -> RunOutcome:
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
    _check_mistakenness_options(spec, gt_kind)
    if gt_kind == "detections":
        return _detection_mistakenness(
            spec, store, gt, pred, classes or pred_classes, run_id, log, upstream, artifacts
        )
    return _classification_mistakenness(
        spec, store, gt, pred, classes or pred_classes, run_id, log, upstream, artifacts
    )


def _classification_mistakenness(spec, store, gt, pred, classes, run_id, log, upstream, artifacts):
    from dagster_brain.algorithms.mistakenness import (
        STRUCTURE_GAIN,
        align,
        confident_learning_mistakenness,
        label_indices,
        label_noise_model,
        probabilities,
    )

    if not classes:
        raise ValueError(
            f"brain key {spec.brain_key!r}: field {spec.label_field!r} has no class list"
        )
    (g, p), skipped = align(gt, pred)
    if spec.method == "reference":
        return _reference_classification(
            spec, store, gt, pred, g, p, skipped, run_id, log, upstream, artifacts
        )
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
    gt_index = label_indices(g["label"].tolist(), classes, sample_ids)
    noise = label_noise_model(probs, gt_index)
    scores, is_issue = confident_learning_mistakenness(
        probs, gt_index, classes, ids=sample_ids, noise=noise
    )
    method = "confident_learning"
    log.info(
        "%s: %s (noise-structure gain %.3f, threshold %.2f; off-diagonal mass %.1f%%)",
        spec.brain_key,
        "structured noise: posterior score" if noise.structured else "self-confidence score",
        noise.gain,
        STRUCTURE_GAIN,
        100 * noise.rate,
    )
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


def _reference_classification(
    spec, store, gt, pred, g, p, skipped, run_id, log, upstream, artifacts
):
    """``method: reference``: the reference's rule on every sample with a label or a prediction.

    Unlike the default, samples with only one of the two are scored as the reference scores
    them: an annotation with no prediction gets 1.0, a prediction with no annotation counts as
    a disagreement. Samples with neither are left out.
    """
    from dagster_brain.algorithms.mistakenness import reference_mistakenness

    only_gt = gt[gt["sample_id"].isin(set(skipped["no_prediction"])) & gt["label"].notna()]
    only_pred = pred[
        pred["sample_id"].isin(set(skipped["no_ground_truth"])) & pred["label"].notna()
    ]
    rows = pd.concat(
        [
            pd.DataFrame(
                {
                    "sample_id": g["sample_id"],
                    "label": g["label"],
                    "prediction": p["label"],
                    "confidence": p["confidence"],
                    "logits": p["logits"],
                }
            ),
            pd.DataFrame({"sample_id": only_gt["sample_id"], "label": only_gt["label"]}),
            pd.DataFrame(
                {
                    "sample_id": only_pred["sample_id"],
                    "prediction": only_pred["label"],
                    "confidence": only_pred["confidence"],
                    "logits": only_pred["logits"],
                }
            ),
        ],
        ignore_index=True,
    )
    rows = rows.sort_values("sample_id", kind="stable").reset_index(drop=True)
    for col in ("label", "prediction"):
        rows[col] = rows[col].astype(object).where(rows[col].notna(), None)
    if rows.empty:
        raise ValueError(
            f"brain key {spec.brain_key!r}: no sample has {spec.label_field!r} "
            f"or {spec.pred_field!r}"
        )
    sample_ids = rows["sample_id"].tolist()
    logits = [list(v) if _is_vector(v) else None for v in rows["logits"].tolist()]
    try:
        scores = reference_mistakenness(
            rows["prediction"].tolist(),
            rows["confidence"].tolist(),
            rows["label"].tolist(),
            logits=logits,
            use_logits=spec.use_logits,
            ids=sample_ids,
        )
    except ValueError as err:
        hint = " (or set use_logits: false)" if spec.use_logits else ""
        raise ValueError(f"brain key {spec.brain_key!r}: {err}{hint}") from err
    method = "reference_logits" if spec.use_logits else "reference"
    scored = {"no_prediction": len(only_gt), "no_ground_truth": len(only_pred)}
    results = pd.DataFrame(
        {
            "sample_id": sample_ids,
            "mistakenness": np.asarray(scores, float),
            "possible_label_issue": np.zeros(len(scores), bool),
            "label": rows["label"].tolist(),
            "prediction": rows["prediction"].tolist(),
        }
    )
    log.info(
        "%s: %s mistakenness on %d samples (%d with no prediction score 1.0, %d with no "
        "ground truth count as disagreements)",
        spec.brain_key,
        method,
        len(results),
        scored["no_prediction"],
        scored["no_ground_truth"],
    )
    record = new_record(
        spec,
        store,
        method=method,
        sample_ids=list(sample_ids),
        run_id=run_id,
        upstream={**upstream, "skipped": {k: 0 for k in scored}, "scored_one_sided": scored},
        artifacts=artifacts,
    )
    store.commit_run(record, results)
    return RunOutcome(
        record,
        results,
        frame_version(results),
        {"skipped": {k: 0 for k in scored}, "scored_one_sided": scored},
    )


def _check_mistakenness_options(spec: MistakennessSpec, kind: str) -> None:
    """Refuse options that do not apply to the field kind, naming the brain key and option."""
    key = spec.brain_key
    set_opts = spec.detection_options()
    if kind != "detections" and set_opts:
        raise ValueError(
            f"brain key {key!r}: option {set_opts[0]!r} applies to detection fields only, but "
            f"{spec.label_field!r} holds {kind}"
        )
    elif spec.method == "confident_learning" and "method" in spec.model_fields_set:
        raise ValueError(
            f"brain key {key!r}: option 'method: confident_learning' applies to "
            f"classification only; {spec.label_field!r} holds detections (use method "
            "reference, or leave method out for the default detection rule)"
        )


def _detection_mistakenness(spec, store, gt, pred, classes, run_id, log, upstream, artifacts):
    from dagster_brain.algorithms.detection_mistakenness import (
        detection_mistakenness,
        reference_detection_mistakenness,
    )

    # use_logits as asked; unasked, the default rule uses logits when every prediction has
    # them (the reference's own default is not to).
    asked = spec.use_logits if "use_logits" in spec.model_fields_set else None
    use_logits = asked
    if asked is None:
        use_logits = (
            spec.method != "reference"
            and bool(classes)
            and len(pred) > 0
            and "logits" in pred
            and bool(pred["logits"].map(_is_vector).all())
        )
    opts = {"iou_thresh": spec.iou_thresh, "missing_conf": spec.missing_conf}
    opts = {k: v for k, v in opts.items() if v is not None}
    try:
        if spec.method == "reference":
            res = reference_detection_mistakenness(
                gt,
                pred,
                use_logits=use_logits,
                classes=classes,
                copy_missing=spec.copy_missing,
                **opts,
            )
        else:
            if spec.loc_iou_thresh is not None:
                opts["loc_iou_thresh"] = spec.loc_iou_thresh
            if spec.spurious_rule is not None:
                opts["spurious_rule"] = spec.spurious_rule
            res = detection_mistakenness(
                gt,
                pred,
                use_logits=use_logits,
                classes=classes,
                copy_missing=spec.copy_missing,
                **opts,
            )
    except ValueError as err:
        raise ValueError(
            f"brain key {spec.brain_key!r} ({spec.pred_field!r} / {spec.label_field!r}): {err}"
        ) from err
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
    resolved = {
        k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in res.params.items()
    }
    log.info("%s: detection rule %s", spec.brain_key, resolved)
    record = new_record(
        spec,
        store,
        method="detection_reference" if spec.method == "reference" else "detection",
        sample_ids=list(samples["sample_id"]),
        run_id=run_id,
        upstream=upstream,
        config={**spec.model_dump(mode="json"), "resolved": resolved},
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
) -> RunOutcome:
    """``compute_hardness``: normalised entropy (default) or margin of the predictions."""
    from dagster_brain.algorithms.hardness import hardness

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
    return commit_outcome(
        spec,
        store,
        RunContext(run_id, log, ids, tuple(artifacts or ())),
        results,
        method=spec.method,
        sample_ids=list(sample_ids),
        upstream={"labels": {"pred_field": spec.label_field}, "skipped": len(skipped)},
        packages=("cleanlab", "scikit-learn"),
        summary={"skipped": len(skipped)},
    )
