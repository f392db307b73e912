"""Ingestion into the store (image folders, manifests, COCO, predictions) and offline demos.

No Dagster here: assets and the CLI call these functions. The click groups live in
:mod:`dagster_brain.ingest.cli`.
"""

from dagster_brain.ingest.coco import ingest_coco
from dagster_brain.ingest.demo import (
    DemoFiles,
    ingest_demo,
    ingest_demo_dataset,
    make_digits_demo,
    make_shapes_demo,
)
from dagster_brain.ingest.errors import BadRowPolicy, IngestError, IngestReport, SkippedRow
from dagster_brain.ingest.image_folder import ingest_image_folder
from dagster_brain.ingest.manifest import ingest_manifest
from dagster_brain.ingest.predictions import ingest_predictions

__all__ = [
    "BadRowPolicy",
    "DemoFiles",
    "IngestError",
    "IngestReport",
    "SkippedRow",
    "ingest_coco",
    "ingest_demo",
    "ingest_demo_dataset",
    "ingest_image_folder",
    "ingest_manifest",
    "ingest_predictions",
    "make_digits_demo",
    "make_shapes_demo",
]
