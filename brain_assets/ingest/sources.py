"""Ingest a dataset spec's source (demo, image folder, manifest, COCO) into the store."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dagster_brain.ingest.coco import ingest_coco
from dagster_brain.ingest.errors import IngestReport
from dagster_brain.ingest.image_folder import ingest_image_folder
from dagster_brain.ingest.manifest import ingest_manifest
from dagster_brain.specs import (
    CocoSource,
    DatasetSpec,
    DemoSource,
    ImageFolderSource,
    InboxSource,
    ManifestSource,
)
from dagster_brain.store import Store

_LOG = logging.getLogger("dagster_brain")


def data_path(value: str, base: Path) -> Path:
    """A path from the YAML: absolute, ``~``, or relative to the store's data directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def ingest_dataset(
    store: Store, spec: DatasetSpec, log: Any = _LOG, dry_run: bool = False
) -> IngestReport:
    """Ingest (or re-ingest: samples are upserted by id) a dataset from its source.

    ``dry_run`` checks and describes the source and writes nothing (not for demo sources).
    """
    src = spec.source
    base = store.data_dir
    if isinstance(src, DemoSource):
        if dry_run:
            raise ValueError(f"dataset {spec.name!r}: a demo source has no dry run")
        from dagster_brain.ingest.demo import ingest_demo_dataset

        report = ingest_demo_dataset(
            store, base / "demo", src.name, seed=src.seed, dataset=spec.name
        )
    elif isinstance(src, ImageFolderSource):
        report = ingest_image_folder(
            store,
            spec.name,
            data_path(src.path, base),
            label_field=src.label_field,
            classes=src.classes,
            skip_bad=src.skip_bad,
            dry_run=dry_run,
        )
    elif isinstance(src, ManifestSource):
        report = ingest_manifest(
            store,
            spec.name,
            data_path(src.path, base),
            id_column=src.id_column,
            filepath_column=src.filepath_column,
            label_column=src.label_column,
            prediction_column=src.prediction_column,
            confidence_column=src.confidence_column,
            logits_column=src.logits_column,
            embedding_columns=dict(src.embedding_columns) or None,
            classes=src.classes,
            label_field=src.label_field,
            prediction_field=src.prediction_field,
            skip_bad=src.skip_bad,
            dry_run=dry_run,
        )
    elif isinstance(src, InboxSource):
        raise ValueError(
            f"dataset {spec.name!r} takes its samples batch by batch from its inbox "
            "(dagster_brain.ingest.inbox.ingest_batch), not in one ingest"
        )
    elif isinstance(src, CocoSource):
        report = ingest_coco(
            store,
            spec.name,
            data_path(src.annotations, base),
            images_dir=data_path(src.images_dir, base) if src.images_dir else None,
            label_field=src.label_field,
            predictions_json=data_path(src.predictions, base) if src.predictions else None,
            prediction_field=src.prediction_field,
            skip_bad=src.skip_bad,
            classes=src.classes,
            bbox_format=src.bbox_format,
            predictions_bbox_format=src.predictions_bbox_format,
            dry_run=dry_run,
        )
    else:  # pragma: no cover - the spec union is closed
        raise TypeError(f"dataset {spec.name!r}: unknown source {type(src).__name__}")
    log.info("%s", report.summary())  # the summary names the dataset
    return report
