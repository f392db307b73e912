"""Ingest COCO detection ground truth and COCO results (predictions)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from dagster_brain.ingest.errors import BadRowPolicy, IngestError, IngestReport
from dagster_brain.ingest.image_folder import sample_row
from dagster_brain.ingest.images import ImageReadError, read_image_info
from dagster_brain.ingest.writer import FieldRows, commit, resolve_classes, stored_field
from dagster_brain.names import check_name
from dagster_brain.store import Store


def coco_box_to_relative(
    bbox: Any, width: int, height: int, tolerance: float = 1e-6
) -> list[float]:
    """``[x, y, w, h]`` in pixels to ``[x, y, w, h]`` relative to the image, in [0, 1].

    Corners up to ``tolerance`` outside the image (after normalising) are clipped; anything
    further out, a zero or negative area or a non-numeric box raises ``ValueError``.
    """
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ValueError(f"bbox {bbox!r} is not [x, y, width, height]")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox {bbox!r} holds values that are not numbers") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"bbox {bbox!r} has a non-finite value")
    if w <= 0 or h <= 0:
        raise ValueError(f"bbox {bbox!r} has zero or negative area")
    x0, y0, x1, y1 = x / width, y / height, (x + w) / width, (y + h) / height
    if min(x0, y0) < -tolerance or max(x1, y1) > 1 + tolerance:
        raise ValueError(f"bbox {bbox!r} lies outside the {width}x{height} image")
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {bbox!r} has zero area inside the {width}x{height} image")
    return [x0, y0, x1 - x0, y1 - y0]


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise IngestError(f"file not found: {path}", file=path.name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IngestError(f"invalid JSON: {err}", file=path.name) from None


def _int_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{what} {value!r} is not an integer id")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an integer id") from None


def _categories(doc: dict, file: str) -> dict[int, str]:
    cats: dict[int, str] = {}
    for i, cat in enumerate(doc.get("categories") or [], start=1):
        try:
            if not isinstance(cat, dict):
                raise ValueError("category is not a JSON object")
            cid = _int_id(cat.get("id"), "category id")
            name = cat.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"category {cid} has no name")
            if cid in cats:
                raise ValueError(f"duplicate category id {cid}")
            if name in cats.values():
                raise ValueError(f"duplicate category name {name!r}")
        except ValueError as err:
            raise IngestError(str(err), file=file, row=i, row_kind="category") from None
        cats[cid] = name
    if not cats:
        raise IngestError("no categories", file=file)
    return cats


class _Images:
    """The images of a COCO file: id -> (sample id, width, height), and the ids skipped."""

    def __init__(self) -> None:
        self.by_id: dict[int, tuple[str, int, int]] = {}
        self.skipped: set[int] = set()


def _boxes(
    entries: list,
    images: _Images,
    cats: dict[int, str],
    fld: str,
    file: str,
    row_kind: str,
    policy: BadRowPolicy,
    tolerance: float,
    need_score: bool,
) -> list[dict]:
    """Label rows for COCO annotations or results; label ids use ``id`` or the 1-based index."""
    rows: list[dict] = []
    first: dict[str, int] = {}
    for i, ann in enumerate(entries, start=1):
        sample_id = None
        try:
            if not isinstance(ann, dict):
                raise ValueError(f"{row_kind} is not a JSON object")
            image_id = _int_id(ann.get("image_id"), "image id")
            if image_id in images.skipped:
                continue  # its image was skipped already, and reported
            if image_id not in images.by_id:
                raise ValueError(f"unknown image id {image_id}")
            sample_id, width, height = images.by_id[image_id]
            cat = _int_id(ann.get("category_id"), "category id")
            if cat not in cats:
                raise ValueError(f"image {image_id}: unknown category id {cat}")
            box = coco_box_to_relative(ann.get("bbox"), width, height, tolerance)
            score = ann.get("score")
            if score is None:
                if need_score:
                    raise ValueError(f"image {image_id}: no score")
                score = math.nan
            elif isinstance(score, bool) or not isinstance(score, int | float):
                raise ValueError(f"image {image_id}: score {score!r} is not a number")
            elif not 0.0 <= score <= 1.0:
                raise ValueError(f"image {image_id}: score {score} is not in [0, 1]")
            n = _int_id(ann["id"], "annotation id") if "id" in ann else i
            label_id = f"{fld}:{n}"
            if label_id in first:
                raise ValueError(
                    f"duplicate {row_kind} id {n} (first in {row_kind} {first[label_id]})"
                )
        except ValueError as err:
            policy.reject(
                IngestError(str(err), file=file, row=i, sample_id=sample_id, row_kind=row_kind)
            )
            continue
        first[label_id] = i
        rows.append(
            {
                "sample_id": sample_id,
                "label_id": label_id,
                "label": cats[cat],
                "confidence": float(score),
                "logits": None,
                "box": box,
            }
        )
    return rows


def ingest_coco(
    store: Store,
    dataset: str,
    annotations_json: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    label_field: str = "ground_truth",
    predictions_json: str | os.PathLike | None = None,
    prediction_field: str = "predictions",
    split: str | None = None,
    tags: Sequence[str] = (),
    batch: str | None = None,
    box_tolerance: float = 1e-6,
    skip_bad: bool = False,
) -> IngestReport:
    """Add a COCO detection file's images as samples, its boxes as detections.

    Sample ids are the images' ``file_name`` without extension; images are read from
    ``images_dir`` (default: the JSON file's folder). Ground-truth label ids are
    ``<label_field>:<annotation id>``. ``predictions_json`` is a COCO results file (a list of
    ``{image_id, category_id, bbox, score}``, or a COCO dict with scored ``annotations``) on the
    same images; its label ids are ``<prediction_field>:<id or 1-based position>``.
    """
    check_name(dataset, "dataset")
    check_name(label_field, "label field")
    if predictions_json is not None:
        check_name(prediction_field, "label field")
        if prediction_field == label_field:
            raise IngestError(
                f"label and prediction field are both {label_field!r}",
                file=Path(annotations_json).name,
            )
    ann_path = Path(annotations_json).expanduser().resolve()
    file = ann_path.name
    doc = _load_json(ann_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise IngestError("not a COCO detection file (no 'images' list)", file=file)
    base = Path(images_dir).expanduser().resolve() if images_dir else ann_path.parent
    cats = _categories(doc, file)
    policy = BadRowPolicy(skip_bad)

    images, samples, owner = _Images(), [], {}
    for i, im in enumerate(doc["images"], start=1):
        sample_id = image_id = None
        try:
            if not isinstance(im, dict):
                raise ValueError("image is not a JSON object")
            image_id = _int_id(im.get("id"), "image id")
            name = im.get("file_name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"image {image_id} has no file_name")
            sample_id = str(PurePosixPath(name).with_suffix(""))
            if image_id in images.by_id or image_id in images.skipped:
                raise ValueError(f"duplicate image id {image_id}")
            if sample_id in owner:
                raise ValueError(f"sample id clashes with image {owner[sample_id]}")
            owner[sample_id] = image_id
            info = read_image_info(base / name)
            declared = (im.get("width"), im.get("height"))
            if declared != (None, None) and declared != (info.width, info.height):
                raise ValueError(
                    f"image {image_id} is {info.width}x{info.height}, but the file says "
                    f"{declared[0]}x{declared[1]}"
                )
        except (ValueError, ImageReadError) as err:
            if image_id is not None and image_id not in images.by_id:
                images.skipped.add(image_id)  # its boxes are left out without more reports
            policy.reject(
                IngestError(str(err), file=file, row=i, sample_id=sample_id, row_kind="image")
            )
            continue
        images.by_id[image_id] = (sample_id, info.width, info.height)
        samples.append(sample_row(sample_id, info, split, tags, batch))

    annotations = doc.get("annotations") or []
    gt = _boxes(
        annotations,
        images,
        cats,
        label_field,
        file,
        "annotation",
        policy,
        box_tolerance,
        need_score=False,
    )
    names = [cats[c] for c in sorted(cats)]
    fields = {
        label_field: FieldRows("detections", _classes(store, dataset, label_field, names, file), gt)
    }
    if predictions_json is not None:
        pred_path = Path(predictions_json).expanduser().resolve()
        results = _load_json(pred_path)
        if isinstance(results, dict):
            results = results.get("annotations")
        if not isinstance(results, list):
            raise IngestError("not a COCO results file (a list of detections)", file=pred_path.name)
        preds = _boxes(
            results,
            images,
            cats,
            prediction_field,
            pred_path.name,
            "result",
            policy,
            box_tolerance,
            need_score=True,
        )
        fields[prediction_field] = FieldRows(
            "detections", _classes(store, dataset, prediction_field, names, file), preds
        )
    report = IngestReport(dataset=dataset, skipped=policy.skipped)
    return commit(store, dataset, samples, fields, {}, report, file=file)


def _classes(store: Store, dataset: str, fld: str, names: list[str], file: str) -> list[str]:
    """Category names in id order for a new field; else reconciled with the stored classes."""
    if stored_field(store, dataset, fld) is None:
        return names
    return resolve_classes(store, dataset, fld, "detections", None, names, False, file)
