"""Ingest a folder of images, optionally laid out as one sub-folder per class."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from dagster_brain.ingest.errors import BadRowPolicy, IngestError, IngestReport
from dagster_brain.ingest.images import IMAGE_EXTENSIONS, ImageInfo, ImageReadError, read_image_info
from dagster_brain.ingest.writer import FieldRows, commit, resolve_classes
from dagster_brain.names import check_name
from dagster_brain.store import Store


def sample_row(
    sample_id: str,
    info: ImageInfo,
    split: str | None = None,
    tags: Sequence[str] = (),
    batch: str | None = None,
) -> dict:
    """One ``samples`` row."""
    return {
        "sample_id": sample_id,
        "filepath": info.filepath,
        "width": info.width,
        "height": info.height,
        "size_bytes": info.size_bytes,
        "split": split,
        "tags": list(tags),
        "content_hash": info.content_hash,
        "pixel_hash": info.pixel_hash,
        "batch": batch,
    }


def find_images(root: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` in path order, hidden files and folders left out.

    Without ``recursive`` only ``root`` itself and its immediate sub-folders are read.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = (
            []
            if not recursive and rel_depth >= 1
            else [d for d in dirnames if not d.startswith(".")]
        )
        found.extend(
            Path(dirpath) / f
            for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def ingest_image_folder(
    store: Store,
    dataset: str,
    root: str | os.PathLike,
    label_field: str | None = "ground_truth",
    split: str | None = None,
    tags: Sequence[str] = (),
    batch: str | None = None,
    recursive: bool = True,
    skip_bad: bool = False,
    id_prefix: str = "",
    classes: Sequence[str] | None = None,
    dry_run: bool = False,
) -> IngestReport:
    """Add every image under ``root`` as a sample; class sub-folders become classifications.

    The sample id is ``id_prefix`` + the path relative to ``root`` (POSIX, without
    extension). When
    ``label_field`` is set and every image sits inside a sub-folder, the first sub-folder name
    is the image's class; a folder mixing loose images and sub-folders gets no labels.
    ``classes`` declares the class order (default: the folder names in natural order, numeric
    when all are integers); a folder not in it is refused. ``dry_run`` writes nothing.
    """
    check_name(dataset, "dataset")
    if label_field is not None:
        check_name(label_field, "label field")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise IngestError(f"not a folder: {root}", file=str(root))
    files = find_images(root, recursive)
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise IngestError(f"no images ({exts}) found under {root}", file=root.name)
    rels = [PurePosixPath(p.relative_to(root).as_posix()) for p in files]
    nested = [len(r.parts) >= 2 for r in rels]
    class_layout = label_field is not None and all(nested)
    report = IngestReport(dataset=dataset)
    if label_field is not None and any(nested) and not all(nested):
        report.notes.append(
            f"{root.name} mixes loose images and sub-folders: not a class-folder layout, "
            f"no {label_field!r} labels written"
        )
    policy = BadRowPolicy(skip_bad)
    first_file: dict[str, str] = {}
    samples, labels = [], []
    for path, rel in zip(files, rels, strict=True):
        sample_id = id_prefix + str(rel.with_suffix(""))
        if sample_id in first_file:
            policy.reject(
                IngestError(
                    f"sample id clashes with {first_file[sample_id]}",
                    file=str(rel),
                    sample_id=sample_id,
                )
            )
            continue
        first_file[sample_id] = str(rel)
        try:
            info = read_image_info(path)
        except ImageReadError as err:
            policy.reject(IngestError(str(err), file=str(rel), sample_id=sample_id))
            continue
        samples.append(sample_row(sample_id, info, split, tags, batch))
        if class_layout:
            labels.append(
                {
                    "sample_id": sample_id,
                    "label_id": f"{label_field}:{sample_id}",
                    "label": rel.parts[0],
                    "confidence": math.nan,
                    "logits": None,
                    "box": None,
                }
            )
    report.skipped = policy.skipped
    fields = {}
    if class_layout:
        names, origin = resolve_classes(
            store,
            dataset,
            label_field,
            "classification",
            classes,
            (r["label"] for r in labels),
            uses_logits=False,
            file=root.name,
        )
        unknown = sorted({r["label"] for r in labels} - set(names))
        if unknown:
            raise IngestError(
                f"class folders {unknown} are not among the classes of field {label_field!r} "
                f"({names})",
                file=root.name,
            )
        fields[label_field] = FieldRows("classification", names, labels, origin)
    return commit(store, dataset, samples, fields, {}, report, file=root.name, dry_run=dry_run)
