"""Ingest a manifest (CSV, Parquet or JSON Lines): samples, classifications and embeddings."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dagster_brain.ingest.classes import (
    check_label_kinds,
    manifest_classes,
    merge_declared,
    raw_kind,
)
from dagster_brain.ingest.errors import BadRowPolicy, IngestError, IngestReport
from dagster_brain.ingest.image_folder import sample_row
from dagster_brain.ingest.images import ImageInfo, ImageReadError, read_image_info
from dagster_brain.ingest.records import (
    as_float,
    as_text,
    as_vector,
    read_records,
    require_columns,
    softmax,
)
from dagster_brain.ingest.writer import EmbeddingRows, FieldRows, commit, resolve_classes
from dagster_brain.names import check_name
from dagster_brain.store import Store


@dataclass
class ParsedRow:
    """One manifest row after the checks that need no other row."""

    row: int
    sample_id: str
    label: str | None = None
    prediction: str | None = None
    label_kind: str | None = None  # raw_kind of the cells: 'int' or 'str'
    prediction_kind: str | None = None
    confidence: float = math.nan
    logits: np.ndarray | None = None
    info: ImageInfo | None = None
    split: str | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


def resolve_path(value: str, base: Path) -> Path:
    """An absolute path; relative ones are taken from ``base``."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def parse_prediction(
    rec: dict[str, Any],
    row: ParsedRow,
    prediction_column: str | None,
    confidence_column: str | None,
    logits_column: str | None,
) -> None:
    """Fill a row's prediction, confidence and logits; ``ValueError`` for bad cells."""
    if prediction_column:
        row.prediction = as_text(rec.get(prediction_column))
        row.prediction_kind = raw_kind(rec.get(prediction_column))
    if confidence_column:
        row.confidence = as_float(rec.get(confidence_column), "confidence")
        if not math.isnan(row.confidence) and not 0.0 <= row.confidence <= 1.0:
            raise ValueError(f"confidence {row.confidence} is not in [0, 1]")
    if logits_column:
        row.logits = as_vector(rec.get(logits_column), "logits")


def check_prediction(row: ParsedRow, classes: list[str] | None) -> None:
    """Logits length and prediction label against the field's classes; ``ValueError``."""
    if classes is None:
        return
    if row.logits is not None and len(row.logits) != len(classes):
        raise ValueError(
            f"logits have {len(row.logits)} values, expected {len(classes)} "
            f"(classes: {', '.join(classes)})"
        )
    if row.prediction is not None and row.prediction not in classes:
        raise ValueError(f"prediction {row.prediction!r} is not one of the classes {classes}")


def prediction_label(row: ParsedRow, classes: list[str], field_name: str) -> dict | None:
    """The predictions label of a row (label from the argmax of logits if no label given)."""
    label = row.prediction
    if label is None and row.logits is not None:
        label = classes[int(np.argmax(row.logits))]
    if label is None:
        return None
    conf = row.confidence
    if math.isnan(conf) and row.logits is not None:
        conf = float(softmax(row.logits).max())
    return {
        "sample_id": row.sample_id,
        "label_id": f"{field_name}:{row.sample_id}",
        "label": label,
        "confidence": conf,
        "logits": None if row.logits is None else row.logits.astype(float).tolist(),
        "box": None,
    }


def ingest_manifest(
    store: Store,
    dataset: str,
    path: str | os.PathLike,
    id_column: str = "id",
    filepath_column: str = "filepath",
    label_column: str | None = None,
    prediction_column: str | None = None,
    confidence_column: str | None = None,
    logits_column: str | None = None,
    embedding_columns: dict[str, str] | None = None,
    classes: Sequence[str] | None = None,
    label_field: str = "ground_truth",
    prediction_field: str = "predictions",
    base_dir: str | os.PathLike | None = None,
    split_column: str | None = None,
    split: str | None = None,
    tags: Sequence[str] = (),
    batch: str | None = None,
    skip_bad: bool = False,
    dry_run: bool = False,
) -> IngestReport:
    """Add the manifest's rows as samples, with labels, predictions and embeddings.

    Relative file paths are taken from ``base_dir`` (default: the manifest's folder). Logits
    and embedding cells may be JSON lists in CSV. The class order (logits order) is
    ``classes``, or the manifest's own (:func:`~dagster_brain.ingest.classes.manifest_classes`),
    or the field's stored classes when those cover the labels; without any, logits are refused
    unless the labels are integers whose numeric and lexical orders agree. Logits must have
    one value per class. The prediction label defaults to the argmax of the logits and its
    confidence to their softmax maximum. ``embedding_columns`` maps a column to the
    embeddings key it fills (``source="manifest:<column>"``). ``dry_run`` writes nothing.
    """
    path = Path(path).expanduser().resolve()
    file = path.name
    embedding_columns = dict(embedding_columns or {})
    has_predictions = bool(prediction_column or logits_column)
    check_name(dataset, "dataset")
    if label_column:
        check_name(label_field, "label field")
    if has_predictions:
        check_name(prediction_field, "label field")
        if label_column and label_field == prediction_field:
            raise IngestError(f"label and prediction field are both {label_field!r}", file=file)
    for key in embedding_columns.values():
        check_name(key, "embeddings key")
    if len(set(embedding_columns.values())) < len(embedding_columns):
        raise IngestError(f"two embedding columns fill one key: {embedding_columns}", file=file)
    if confidence_column and not has_predictions:
        raise IngestError("confidence_column needs prediction_column or logits_column", file=file)
    records, columns = read_records(path)
    classes, origin = merge_declared(classes, manifest_classes(path), file)
    require_columns(
        columns,
        {
            "id": id_column,
            "filepath": filepath_column,
            "label": label_column,
            "prediction": prediction_column,
            "confidence": confidence_column,
            "logits": logits_column,
            "split": split_column,
            **{f"embeddings {key!r}": col for col, key in embedding_columns.items()},
        },
        file,
    )
    base = Path(base_dir).expanduser().resolve() if base_dir else path.parent
    policy = BadRowPolicy(skip_bad)

    # Pass 1: each row on its own (ids, files, cell values).
    rows: list[ParsedRow] = []
    first_row: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        sample_id = as_text(rec.get(id_column))
        try:
            if sample_id is None:
                raise ValueError(f"empty id in column {id_column!r}")
            if sample_id in first_row:
                raise ValueError(f"duplicate id (first in row {first_row[sample_id]})")
            first_row[sample_id] = i
            row = ParsedRow(row=i, sample_id=sample_id)
            if label_column:
                row.label = as_text(rec.get(label_column))
                row.label_kind = raw_kind(rec.get(label_column))
            parse_prediction(rec, row, prediction_column, confidence_column, logits_column)
            for col, key in embedding_columns.items():
                vec = as_vector(rec.get(col), f"embedding {col!r}")
                if vec is None:
                    raise ValueError(f"no embedding in column {col!r}")
                row.vectors[key] = vec
            if split_column:
                row.split = as_text(rec.get(split_column))
            filepath = as_text(rec.get(filepath_column))
            if filepath is None:
                raise ValueError(f"empty file path in column {filepath_column!r}")
            row.info = read_image_info(resolve_path(filepath, base))
        except (ValueError, ImageReadError) as err:
            policy.reject(IngestError(str(err), file=file, row=i, sample_id=sample_id))
            continue
        rows.append(row)

    # Pass 2: checks against all rows (classes, embedding dimensions).
    kinds = [(r.label, r.label_kind) for r in rows if r.label is not None]
    kinds += [(r.prediction, r.prediction_kind) for r in rows if r.prediction is not None]
    if label_column:
        check_label_kinds(kinds, label_field, file)
    if has_predictions:
        check_label_kinds(kinds, prediction_field, file)
    seen = {text for text, _ in kinds}
    gt_classes = pred_classes = None
    if label_column:
        gt_classes, gt_origin = resolve_classes(
            store, dataset, label_field, "classification", classes, seen, False, file, origin
        )
    if has_predictions:
        pred_classes, pred_origin = resolve_classes(
            store,
            dataset,
            prediction_field,
            "classification",
            classes,
            seen,
            logits_column is not None,
            file,
            origin,
        )
    dims = {key: _reference_dim(rows, key) for key in embedding_columns.values()}
    kept = []
    for row in rows:
        try:
            check_prediction(row, pred_classes)
            if gt_classes is not None and row.label is not None and row.label not in gt_classes:
                raise ValueError(f"label {row.label!r} is not one of the classes {gt_classes}")
            for col, key in embedding_columns.items():
                dim, ref = dims[key]
                if len(row.vectors[key]) != dim:
                    raise ValueError(
                        f"embedding {col!r} has {len(row.vectors[key])} values, expected {dim} "
                        f"(as in row {ref})"
                    )
        except ValueError as err:
            policy.reject(IngestError(str(err), file=file, row=row.row, sample_id=row.sample_id))
            continue
        kept.append(row)

    skipped = sorted(policy.skipped, key=lambda s: s.row or 0)  # both passes, in row order
    report = IngestReport(dataset=dataset, skipped=skipped)
    samples = [sample_row(r.sample_id, r.info, r.split or split, tags, batch) for r in kept]
    fields: dict[str, FieldRows] = {}
    if label_column:
        fields[label_field] = FieldRows(
            "classification",
            gt_classes,
            [
                {
                    "sample_id": r.sample_id,
                    "label_id": f"{label_field}:{r.sample_id}",
                    "label": r.label,
                    "confidence": math.nan,
                    "logits": None,
                    "box": None,
                }
                for r in kept
                if r.label is not None
            ],
            gt_origin,
        )
    if has_predictions:
        preds = [prediction_label(r, pred_classes, prediction_field) for r in kept]
        fields[prediction_field] = FieldRows(
            "classification", pred_classes, [p for p in preds if p is not None], pred_origin
        )
    embeddings = {
        key: EmbeddingRows(
            f"manifest:{col}", [r.sample_id for r in kept], [r.vectors[key] for r in kept]
        )
        for col, key in embedding_columns.items()
    }
    return commit(store, dataset, samples, fields, embeddings, report, file=file, dry_run=dry_run)


def _reference_dim(rows: list[ParsedRow], key: str) -> tuple[int, int]:
    """The most common vector length of a key (ties: the earliest) and its first row."""
    counts = Counter(len(r.vectors[key]) for r in rows)
    if not counts:
        return 0, 0
    top = max(counts.values())
    for r in rows:
        if counts[len(r.vectors[key])] == top:
            return len(r.vectors[key]), r.row
    raise AssertionError("unreachable")
