"""``brain ingest ...`` and ``brain demo make``: click groups for the main ``brain`` CLI."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from dagster_brain.ingest.coco import ingest_coco
from dagster_brain.ingest.demo import ingest_demo
from dagster_brain.ingest.errors import IngestError, IngestReport
from dagster_brain.ingest.image_folder import ingest_image_folder
from dagster_brain.ingest.manifest import ingest_manifest
from dagster_brain.ingest.predictions import ingest_predictions
from dagster_brain.names import BrainNameError
from dagster_brain.store import Store, StoreError

data_dir_option = click.option(
    "--data-dir",
    envvar="BRAIN_DATA_DIR",
    default="data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Store folder (env BRAIN_DATA_DIR).",
)
dataset_option = click.option("--dataset", "-d", required=True, help="Dataset name.")
skip_bad_option = click.option(
    "--skip-bad", is_flag=True, help="Skip bad rows (and report them) instead of failing."
)
tags_option = click.option("--tag", "tags", multiple=True, help="Tag for every sample (repeat).")
dry_run_option = click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would be ingested (samples, fields, classes in order, boxes, logits) and "
    "write nothing.",
)
classes_option = click.option(
    "--classes",
    default=None,
    help="Comma-separated classes in the model's logits order (declares the class order).",
)
BBOX_CHOICE = click.Choice(["coco_pixels", "relative_xywh", "xyxy_pixels"])


def open_store(data_dir: Path, dry_run: bool) -> Store:
    """The store; a dry run on a folder without one reads an empty store in a temporary
    folder, so that nothing is created under ``data_dir``."""
    if not dry_run or (Path(data_dir) / "brain.duckdb").exists():
        return Store(data_dir)
    tmp = tempfile.mkdtemp(prefix="brain-dry-run-")
    click.get_current_context().call_on_close(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return Store(tmp)


def _classes(value: str | None) -> list[str] | None:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def _embedding_columns(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        column, sep, key = value.partition("=")
        if not sep or not column or not key:
            raise click.BadParameter(f"{value!r} is not COLUMN=KEY", param_hint="--embedding")
        out[column] = key
    return out


def reporting(fn: Callable[..., IngestReport | dict[str, IngestReport]]) -> Callable:
    """Print the report(s); an error is one line and no traceback (``brain --debug`` shows
    it): bad input exits with code 2, a store or disk failure with 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dagster_brain.cli_errors import fail, passes

        try:
            result = fn(*args, **kwargs)
        except (IngestError, BrainNameError) as err:
            fail(err, 2)
        except StoreError as err:
            fail(err, 1)
        except Exception as err:
            if passes(err):
                raise
            fail(err)
        for report in result.values() if isinstance(result, dict) else [result]:
            click.echo(report.summary())

    return wrapper


@click.group("ingest")
def ingest() -> None:
    """Load images, labels, predictions and embeddings into the store."""


@ingest.command("folder")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@dataset_option
@click.option(
    "--label-field",
    default="ground_truth",
    show_default=True,
    help="Field for class-folder labels.",
)
@click.option("--no-labels", is_flag=True, help="Do not read class folders as labels.")
@classes_option
@click.option("--split", default=None, help="Split name for every sample.")
@tags_option
@click.option("--batch", default=None, help="Batch name for every sample.")
@click.option(
    "--recursive/--no-recursive",
    default=True,
    show_default=True,
    help="Descend below the immediate sub-folders.",
)
@data_dir_option
@skip_bad_option
@dry_run_option
@reporting
def folder(
    root,
    dataset,
    label_field,
    no_labels,
    classes,
    split,
    tags,
    batch,
    recursive,
    data_dir,
    skip_bad,
    dry_run,
):
    """Ingest a folder of images (sub-folders as classes)."""
    return ingest_image_folder(
        open_store(data_dir, dry_run),
        dataset,
        root,
        label_field=None if no_labels else label_field,
        split=split,
        tags=tags,
        batch=batch,
        recursive=recursive,
        skip_bad=skip_bad,
        classes=_classes(classes),
        dry_run=dry_run,
    )


@ingest.command("manifest")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@dataset_option
@click.option("--id-column", default="id", show_default=True)
@click.option("--filepath-column", default="filepath", show_default=True)
@click.option("--label-column", default=None, help="Ground-truth class column.")
@click.option("--prediction-column", default=None, help="Predicted class column.")
@click.option("--confidence-column", default=None)
@click.option("--logits-column", default=None, help="Logits (lists, or JSON lists in CSV).")
@click.option(
    "--embedding",
    "embeddings",
    multiple=True,
    metavar="COLUMN=KEY",
    help="Embedding column and the embeddings key it fills (repeat).",
)
@classes_option
@click.option("--label-field", default="ground_truth", show_default=True)
@click.option("--prediction-field", default="predictions", show_default=True)
@click.option(
    "--base-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for relative file paths (default: the manifest's).",
)
@click.option("--split-column", default=None)
@click.option("--split", default=None, help="Split for rows without one.")
@tags_option
@click.option("--batch", default=None)
@data_dir_option
@skip_bad_option
@dry_run_option
@reporting
def manifest(
    path,
    dataset,
    id_column,
    filepath_column,
    label_column,
    prediction_column,
    confidence_column,
    logits_column,
    embeddings,
    classes,
    label_field,
    prediction_field,
    base_dir,
    split_column,
    split,
    tags,
    batch,
    data_dir,
    skip_bad,
    dry_run,
):
    """Ingest a CSV, Parquet or JSON Lines manifest."""
    return ingest_manifest(
        open_store(data_dir, dry_run),
        dataset,
        path,
        id_column=id_column,
        filepath_column=filepath_column,
        label_column=label_column,
        prediction_column=prediction_column,
        confidence_column=confidence_column,
        logits_column=logits_column,
        embedding_columns=_embedding_columns(embeddings),
        classes=_classes(classes),
        label_field=label_field,
        prediction_field=prediction_field,
        base_dir=base_dir,
        split_column=split_column,
        split=split,
        tags=tags,
        batch=batch,
        skip_bad=skip_bad,
        dry_run=dry_run,
    )


@ingest.command("coco")
@click.argument("annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@dataset_option
@click.option(
    "--images-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Image folder (default: the JSON file's).",
)
@click.option("--label-field", default="ground_truth", show_default=True)
@click.option(
    "--predictions",
    "predictions_json",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="COCO results file with predictions.",
)
@click.option("--prediction-field", default="predictions", show_default=True)
@click.option(
    "--bbox-format",
    type=BBOX_CHOICE,
    default="coco_pixels",
    show_default=True,
    help="How the boxes are written: COCO [x, y, w, h] pixels, [x, y, w, h] relative to the "
    "image, or [x0, y0, x1, y1] pixels.",
)
@click.option(
    "--predictions-bbox-format",
    type=BBOX_CHOICE,
    default=None,
    help="Box format of the results file (default: --bbox-format).",
)
@click.option(
    "--classes",
    default=None,
    help="Comma-separated classes; must repeat the file's categories in their listed order.",
)
@click.option("--split", default=None)
@tags_option
@click.option("--batch", default=None)
@click.option(
    "--box-tolerance",
    default=1e-6,
    show_default=True,
    type=float,
    help="How far (relative) a box may overhang the image before it is an error.",
)
@data_dir_option
@skip_bad_option
@dry_run_option
@reporting
def coco(
    annotations,
    dataset,
    images_dir,
    label_field,
    predictions_json,
    prediction_field,
    bbox_format,
    predictions_bbox_format,
    classes,
    split,
    tags,
    batch,
    box_tolerance,
    data_dir,
    skip_bad,
    dry_run,
):
    """Ingest COCO detection ground truth (and COCO results as predictions)."""
    return ingest_coco(
        open_store(data_dir, dry_run),
        dataset,
        annotations,
        images_dir=images_dir,
        label_field=label_field,
        predictions_json=predictions_json,
        prediction_field=prediction_field,
        split=split,
        tags=tags,
        batch=batch,
        box_tolerance=box_tolerance,
        skip_bad=skip_bad,
        bbox_format=bbox_format,
        predictions_bbox_format=predictions_bbox_format,
        classes=_classes(classes),
        dry_run=dry_run,
    )


@ingest.command("predictions")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@dataset_option
@click.option("--field", default="predictions", show_default=True)
@click.option("--join-on", type=click.Choice(["id", "filepath"]), default="id", show_default=True)
@click.option("--id-column", default="id", show_default=True)
@click.option("--filepath-column", default="filepath", show_default=True)
@click.option(
    "--label-column",
    default="label",
    show_default=True,
    help="Predicted class column ('' for none: argmax of the logits).",
)
@click.option("--confidence-column", default=None)
@click.option("--logits-column", default=None)
@classes_option
@click.option("--base-dir", default=None, type=click.Path(file_okay=False, path_type=Path))
@data_dir_option
@skip_bad_option
@dry_run_option
@reporting
def predictions(
    path,
    dataset,
    field,
    join_on,
    id_column,
    filepath_column,
    label_column,
    confidence_column,
    logits_column,
    classes,
    base_dir,
    data_dir,
    skip_bad,
    dry_run,
):
    """Ingest classification predictions for existing samples."""
    return ingest_predictions(
        open_store(data_dir, dry_run),
        dataset,
        path,
        field=field,
        join_on=join_on,
        id_column=id_column,
        filepath_column=filepath_column,
        label_column=label_column or None,
        confidence_column=confidence_column,
        logits_column=logits_column,
        classes=_classes(classes),
        base_dir=base_dir,
        skip_bad=skip_bad,
        dry_run=dry_run,
    )


@click.group("demo")
def demo() -> None:
    """Offline demo datasets with planted mistakes."""


@demo.command("make")
@data_dir_option
@click.option(
    "--demo-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo files go (default: DATA_DIR/demo).",
)
@click.option("--seed", default=51, show_default=True, type=int)
@click.option(
    "--digits-samples", default=None, type=click.IntRange(50, 1797), help="First N digits only."
)
@click.option("--digits-duplicates", default=40, show_default=True, type=click.IntRange(min=0))
@click.option("--shapes-images", default=200, show_default=True, type=click.IntRange(min=10))
@reporting
def make(data_dir, demo_dir, seed, digits_samples, digits_duplicates, shapes_images):
    """Build (or reuse) the digits and shapes demos and ingest them."""
    return ingest_demo(
        Store(data_dir),
        demo_dir or Path(data_dir) / "demo",
        seed=seed,
        digits_samples=digits_samples,
        digits_duplicates=digits_duplicates,
        shapes_images=shapes_images,
    )


@demo.command("inbox")
@data_dir_option
@click.option(
    "--inbox",
    default="inbox/digits_stream",
    show_default=True,
    help="Inbox folder (relative to the data directory), as in examples/inbox.yaml.",
)
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=300, show_default=True, type=click.IntRange(min=1))
def demo_inbox(data_dir: Path, inbox: str, count: int, batch_size: int) -> None:
    """Drop the next COUNT batches of the digits demo into an inbox (for its sensor)."""
    from dagster_brain.ingest.demo import drop_inbox_batches

    folder = Path(inbox) if Path(inbox).is_absolute() else Path(data_dir) / inbox
    written = drop_inbox_batches(Path(data_dir) / "demo", folder, count, batch_size)
    for w in written:
        click.echo(f"dropped {w} ({sum(1 for _ in w.rglob('*.png'))} images)")
    if not written:
        click.echo(f"every digit is already in {folder}")
