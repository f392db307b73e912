"""Ingest COCO detection ground truth and COCO results (predictions)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from dagster_brain.ingest.classes import CATEGORIES, STORED, check_declared
from dagster_brain.ingest.errors import BadRowPolicy, IngestError, IngestReport
from dagster_brain.ingest.image_folder import sample_row
from dagster_brain.ingest.images import ImageReadError, read_image_info
from dagster_brain.ingest.records import as_vector
from dagster_brain.ingest.writer import (
    FieldRows,
    commit,
    has_logits,
    resolve_classes,
    stored_field,
)
from dagster_brain.names import check_name
from dagster_brain.store import Store

BBOX_FORMATS = ("coco_pixels", "relative_xywh", "xyxy_pixels")
BoxFormat = Literal["coco_pixels", "relative_xywh", "xyxy_pixels"]
_LAYOUT = {
    "coco_pixels": "[x, y, width, height] in pixels",
    "relative_xywh": "[x, y, width, height] relative to the image",
    "xyxy_pixels": "[x0, y0, x1, y1] in pixels",
}


def _numbers(bbox: Any, fmt: str) -> tuple[float, float, float, float]:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ValueError(f"bbox {bbox!r} is not {_LAYOUT[fmt]}")
    try:
        x, y, a, b = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox {bbox!r} holds values that are not numbers") from None
    if not all(math.isfinite(v) for v in (x, y, a, b)):
        raise ValueError(f"bbox {bbox!r} has a non-finite value")
    return x, y, a, b


def box_to_relative(
    bbox: Any, width: int, height: int, fmt: str = "coco_pixels", tolerance: float = 1e-6
) -> list[float]:
    """A box written in ``fmt`` (one of :data:`BBOX_FORMATS`) as the store's ``[x, y, w, h]``
    relative to the image, in [0, 1].

    Corners up to ``tolerance`` outside the image (after normalising) are clipped; anything
    further out, a zero or negative area or a non-numeric box raises ``ValueError``.
    """
    if fmt not in BBOX_FORMATS:
        raise ValueError(f"unknown bbox_format {fmt!r} (use {', '.join(BBOX_FORMATS)})")
    x, y, a, b = _numbers(bbox, fmt)
    if fmt == "xyxy_pixels":
        if a <= x or b <= y:
            raise ValueError(f"bbox {bbox!r} is not {_LAYOUT[fmt]}: x1 <= x0 or y1 <= y0")
        a, b = a - x, b - y
    if a <= 0 or b <= 0:
        raise ValueError(f"bbox {bbox!r} has zero or negative area")
    sx, sy = (1.0, 1.0) if fmt == "relative_xywh" else (float(width), float(height))
    x0, y0, x1, y1 = x / sx, y / sy, (x + a) / sx, (y + b) / sy
    if min(x0, y0) < -tolerance or max(x1, y1) > 1 + tolerance:
        hint = (
            " (values above 1 look like pixels: declare bbox_format: coco_pixels)"
            if fmt == "relative_xywh"
            else ""
        )
        raise ValueError(f"bbox {bbox!r} lies outside the {width}x{height} image as {fmt}{hint}")
    if min(x0, y0) >= 0.0 and max(x1, y1) <= 1.0:
        return [x / sx, y / sy, a / sx, b / sy]  # inside: no rounding through the corners
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {bbox!r} has zero area inside the {width}x{height} image")
    return [x0, y0, x1 - x0, y1 - y0]


def coco_box_to_relative(
    bbox: Any, width: int, height: int, tolerance: float = 1e-6
) -> list[float]:
    """COCO pixel ``[x, y, w, h]`` as relative ``[x, y, w, h]`` (see :func:`box_to_relative`)."""
    return box_to_relative(bbox, width, height, "coco_pixels", tolerance)


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


def _ann_name(ann: dict, i: int) -> str:
    """``annotation id 7`` (or ``annotation 3`` by position when it has no id)."""
    return f"annotation id {ann['id']}" if "id" in ann else f"annotation {i}"


def check_box_format(
    entries: list, images: _Images, fmt: str, file: str, row_kind: str = "annotation"
) -> None:
    """Refuse a file whose boxes do not read as ``fmt``, naming an image and annotation.

    In a pixel format, boxes that all lie within [0, 1] on images larger than 2 px look
    relative; boxes within [0, 1] with a fractional part next to boxes above 1 are two formats
    in one file (in ``relative_xywh`` too). Boxes that are not four numbers are left to the
    per-box checks.
    """
    small: list[tuple[int, dict, tuple]] = []  # every value in [0, 1]
    fraction: list[tuple[int, dict, tuple]] = []  # ... and one not an integer
    large: list[tuple[int, dict, tuple]] = []  # a value above 1
    for i, ann in enumerate(entries, start=1):
        if not isinstance(ann, dict):
            continue
        try:
            image_id = _int_id(ann.get("image_id"), "image id")
            v = _numbers(ann.get("bbox"), fmt)
        except ValueError:
            continue
        if image_id not in images.by_id:
            continue
        _, width, height = images.by_id[image_id]
        if width <= 2 or height <= 2:
            continue  # a 2 px image may hold 1 px boxes
        if all(0.0 <= c <= 1.0 for c in v):
            small.append((i, ann, v))
            if any(not float(c).is_integer() for c in v):
                fraction.append((i, ann, v))
        elif any(c > 1.0 for c in v):
            large.append((i, ann, v))

    def where(item: tuple[int, dict, tuple]) -> str:
        i, ann, _ = item
        return f"image {ann.get('image_id')}, {_ann_name(ann, i)}, bbox {ann.get('bbox')}"

    if fraction and large:
        raise IngestError(
            f"boxes in two formats in one file: {where(fraction[0])} lies within [0, 1] "
            f"(relative) but {where(large[0])} is in pixels; write every box one way and "
            f"declare bbox_format ({', '.join(BBOX_FORMATS)})",
            file=file,
            row=fraction[0][0],
            row_kind=row_kind,
        )
    if fmt != "relative_xywh" and small and not large:
        raise IngestError(
            f"every box lies within [0, 1] on images larger than 2 px (e.g. {where(small[0])}) "
            f"under bbox_format {fmt}: looks like relative_xywh: declare bbox_format",
            file=file,
            row=small[0][0],
            row_kind=row_kind,
        )


def _boxes(
    entries: list,
    images: _Images,
    cats: dict[int, str],
    classes: list[str],
    fld: str,
    file: str,
    row_kind: str,
    policy: BadRowPolicy,
    tolerance: float,
    need_score: bool,
    fmt: str,
) -> list[dict]:
    """Label rows for COCO annotations or results; label ids use ``id`` or the 1-based index.

    An entry's ``logits`` (optional) hold one value per class of ``classes``, in that order.
    """
    check_box_format(entries, images, fmt, file, row_kind)
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
            try:
                box = box_to_relative(ann.get("bbox"), width, height, fmt, tolerance)
            except ValueError as err:
                raise ValueError(f"{err} (image {image_id}, {_ann_name(ann, i)})") from None
            score = ann.get("score")
            if score is None:
                if need_score:
                    raise ValueError(f"image {image_id}: no score")
                score = math.nan
            elif isinstance(score, bool) or not isinstance(score, int | float):
                raise ValueError(f"image {image_id}: score {score!r} is not a number")
            elif not 0.0 <= score <= 1.0:
                raise ValueError(f"image {image_id}: score {score} is not in [0, 1]")
            logits = as_vector(ann.get("logits"), "logits")
            if logits is not None and len(logits) != len(classes):
                raise ValueError(
                    f"image {image_id}, {_ann_name(ann, i)}: logits have {len(logits)} values, "
                    f"expected {len(classes)} (classes: {', '.join(classes)})"
                )
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
                "logits": None if logits is None else logits.astype(float).tolist(),
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
    bbox_format: BoxFormat = "coco_pixels",
    predictions_bbox_format: BoxFormat | None = None,
    classes: Sequence[str] | None = None,
    dry_run: bool = False,
) -> IngestReport:
    """Add a COCO detection file's images as samples, its boxes as detections.

    Sample ids are the images' ``file_name`` without extension; images are read from
    ``images_dir`` (default: the JSON file's folder). Ground-truth label ids are
    ``<label_field>:<annotation id>``. ``predictions_json`` is a COCO results file (a list of
    ``{image_id, category_id, bbox, score}``, or a COCO dict with scored ``annotations``) on the
    same images; its label ids are ``<prediction_field>:<id or 1-based position>``.

    The class list is the ``categories`` in the file's listed order (``classes``, if given,
    must repeat it); an annotation's or result's optional ``logits`` follow that order. Boxes
    are read as ``bbox_format`` (``predictions_bbox_format`` for the results file, default the
    same) and stored relative; a file whose boxes do not read so is refused
    (:func:`check_box_format`). ``dry_run`` writes nothing.
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
    names = list(cats.values())  # the file's listed order
    if classes is not None:
        declared = check_declared(classes, label_field, file, "classes")
        if declared != names:
            raise IngestError(
                f"classes {declared} disagree with the categories of {file} {names} (names "
                "or order); the categories' listed order is the class order",
                file=file,
            )
    for fmt in (bbox_format, predictions_bbox_format):
        if fmt is not None and fmt not in BBOX_FORMATS:
            raise IngestError(
                f"unknown bbox_format {fmt!r} (use {', '.join(BBOX_FORMATS)})", file=file
            )
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
                if info.orientation != 1 and declared == (info.height, info.width):
                    raise ValueError(
                        f"image {image_id} carries EXIF orientation {info.orientation}: it is "
                        f"displayed {info.width}x{info.height} but the file says "
                        f"{declared[0]}x{declared[1]} (the stored, unrotated frame), so its "
                        "boxes would land in the wrong place; re-export the annotations on "
                        "the displayed images or strip the EXIF orientation tag"
                    )
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
    gt_classes, gt_origin = _classes(
        store, dataset, label_field, names, file, _has_logits_key(annotations)
    )
    gt = _boxes(
        annotations,
        images,
        cats,
        gt_classes,
        label_field,
        file,
        "annotation",
        policy,
        box_tolerance,
        need_score=False,
        fmt=bbox_format,
    )
    fields = {label_field: FieldRows("detections", gt_classes, gt, gt_origin, bbox_format)}
    if predictions_json is not None:
        pred_path = Path(predictions_json).expanduser().resolve()
        results = _load_json(pred_path)
        if isinstance(results, dict):
            results = results.get("annotations")
        if not isinstance(results, list):
            raise IngestError("not a COCO results file (a list of detections)", file=pred_path.name)
        pred_fmt = predictions_bbox_format or bbox_format
        pred_classes, pred_origin = _classes(
            store, dataset, prediction_field, names, file, _has_logits_key(results)
        )
        preds = _boxes(
            results,
            images,
            cats,
            pred_classes,
            prediction_field,
            pred_path.name,
            "result",
            policy,
            box_tolerance,
            need_score=True,
            fmt=pred_fmt,
        )
        fields[prediction_field] = FieldRows(
            "detections", pred_classes, preds, pred_origin, pred_fmt
        )
    report = IngestReport(dataset=dataset, skipped=policy.skipped)
    return commit(store, dataset, samples, fields, {}, report, file=file, dry_run=dry_run)


def _has_logits_key(entries: list) -> bool:
    return any(isinstance(e, dict) and e.get("logits") is not None for e in entries)


def _classes(
    store: Store, dataset: str, fld: str, names: list[str], file: str, uses_logits: bool
) -> tuple[list[str], str]:
    """The categories' names for the field, or its stored classes extended by them.

    A field that already holds other classes keeps them (new names go at the end) unless
    logits are involved, old or new: then the orders must be the same.
    """
    old = stored_field(store, dataset, fld)
    if old is None or not old[1] or list(old[1]) == names:
        return resolve_classes(
            store, dataset, fld, "detections", names, names, uses_logits, file, CATEGORIES
        )
    old_classes = list(old[1])
    if old[0] == "detections" and not uses_logits and not has_logits(store, dataset, fld):
        return old_classes + [n for n in names if n not in old_classes], STORED
    raise IngestError(
        f"field {fld!r} of {dataset!r} holds {old[0]} over classes {old_classes}; the "
        f"categories of {file} are {names}, and logits need one class order: ingest into a "
        "new field, or delete the field first",
        file=file,
    )
