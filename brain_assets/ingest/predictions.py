"""Ingest classification predictions for samples already in the store."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from dagster_brain.ingest.classes import check_label_kinds, manifest_classes, merge_declared
from dagster_brain.ingest.errors import BadRowPolicy, IngestError, IngestReport
from dagster_brain.ingest.manifest import (
    ParsedRow,
    check_prediction,
    parse_prediction,
    prediction_label,
    resolve_path,
)
from dagster_brain.ingest.records import as_text, read_records, require_columns
from dagster_brain.ingest.writer import FieldRows, describe, resolve_classes
from dagster_brain.names import check_name
from dagster_brain.store import Store


def _sample_lookup(
    store: Store, dataset: str, join_on: str
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Join key -> sample id, plus keys shared by several samples (ambiguous joins)."""
    samples = store.samples(dataset)
    column = "sample_id" if join_on == "id" else "filepath"
    owners: dict[str, list[str]] = {}
    for key, sample_id in zip(samples[column], samples["sample_id"], strict=True):
        owners.setdefault(key, []).append(sample_id)
    unique = {k: v[0] for k, v in owners.items() if len(v) == 1}
    return unique, {k: v for k, v in owners.items() if len(v) > 1}


def ingest_predictions(
    store: Store,
    dataset: str,
    path: str | os.PathLike,
    field: str = "predictions",
    join_on: Literal["id", "filepath"] = "id",
    id_column: str = "id",
    filepath_column: str = "filepath",
    label_column: str | None = "label",
    confidence_column: str | None = None,
    logits_column: str | None = None,
    classes: Sequence[str] | None = None,
    base_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    dry_run: bool = False,
) -> IngestReport:
    """Write a classification field from a table of predictions on existing samples.

    Rows join to samples by id, or by file path (relative paths taken from ``base_dir``,
    default the table's folder). The label defaults to the argmax of the logits, the
    confidence to their softmax maximum; logits must have one value per class, in the order
    of ``classes`` (or the table's own classes metadata, or the field's stored classes; the
    labels seen only where that order is safe, see
    :func:`~dagster_brain.ingest.classes.infer_classes`). ``dry_run`` writes nothing.
    """
    path = Path(path).expanduser().resolve()
    file = path.name
    check_name(dataset, "dataset")
    check_name(field, "label field")
    if join_on not in ("id", "filepath"):
        raise IngestError(f"join_on must be 'id' or 'filepath', not {join_on!r}", file=file)
    if not label_column and not logits_column:
        raise IngestError("give label_column or logits_column (or both)", file=file)
    if dataset not in store.list_datasets():
        known = ", ".join(store.list_datasets()) or "none"
        raise IngestError(f"no dataset {dataset!r} in the store (datasets: {known})", file=file)
    key_column = id_column if join_on == "id" else filepath_column
    records, columns = read_records(path)
    classes, origin = merge_declared(classes, manifest_classes(path), file)
    require_columns(
        columns,
        {
            join_on: key_column,
            "label": label_column,
            "confidence": confidence_column,
            "logits": logits_column,
        },
        file,
    )
    lookup, shared = _sample_lookup(store, dataset, join_on)
    base = Path(base_dir).expanduser().resolve() if base_dir else path.parent
    policy = BadRowPolicy(skip_bad)

    rows: list[ParsedRow] = []
    first_row: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        key = as_text(rec.get(key_column))
        sample_id = key if join_on == "id" else None
        try:
            if key is None:
                raise ValueError(f"empty {key_column!r}")
            if join_on == "filepath":
                key = str(resolve_path(key, base).resolve())
            if key in shared:
                raise ValueError(f"{key} belongs to samples {shared[key]}; join on id instead")
            if key not in lookup:
                raise ValueError(f"no sample with {join_on} {key!r} in dataset {dataset!r}")
            sample_id = lookup[key]
            if sample_id in first_row:
                raise ValueError(
                    f"second prediction for the sample (first in row {first_row[sample_id]})"
                )
            first_row[sample_id] = i
            row = ParsedRow(row=i, sample_id=sample_id)
            parse_prediction(rec, row, label_column, confidence_column, logits_column)
            if row.prediction is None and row.logits is None:
                raise ValueError("no prediction (empty label and logits)")
        except ValueError as err:
            policy.reject(IngestError(str(err), file=file, row=i, sample_id=sample_id))
            continue
        rows.append(row)

    kinds = [(r.prediction, r.prediction_kind) for r in rows if r.prediction is not None]
    check_label_kinds(kinds, field, file)
    classes, origin = resolve_classes(
        store,
        dataset,
        field,
        "classification",
        classes,
        {text for text, _ in kinds},
        logits_column is not None,
        file,
        origin,
    )
    kept = []
    for row in rows:
        try:
            check_prediction(row, classes)
        except ValueError as err:
            policy.reject(IngestError(str(err), file=file, row=row.row, sample_id=row.sample_id))
            continue
        kept.append(row)

    skipped = sorted(policy.skipped, key=lambda s: s.row or 0)  # both passes, in row order
    report = IngestReport(dataset=dataset, skipped=skipped)
    if not kept:
        report.notes.append("nothing to write: no valid rows")
        return report
    rows_out = FieldRows(
        "classification", classes, [prediction_label(r, classes, field) for r in kept], origin
    )
    describe(report, {field: rows_out})
    report.dry_run = dry_run
    report.sample_ids = [r.sample_id for r in kept]
    if not dry_run:
        store.write_labels(dataset, field, "classification", classes, rows_out.frame())
        report.label_fields[field] = len(rows_out.rows)
    return report
