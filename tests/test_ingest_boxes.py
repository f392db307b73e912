"""Box formats are declared (coco_pixels, relative_xywh, xyxy_pixels); detection logits kept."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from dagster_brain.ingest.cli import ingest
from dagster_brain.ingest.coco import box_to_relative, ingest_coco
from dagster_brain.ingest.errors import IngestError
from dagster_brain.ingest.sources import ingest_dataset
from dagster_brain.specs import DatasetSpec
from dagster_brain.store import Store

CATEGORIES = [{"id": 5, "name": "dog"}, {"id": 1, "name": "cat"}, {"id": 3, "name": "bird"}]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data")


def _coco(tmp_path, boxes, *, logits=None, name="instances.json"):
    """Images a (200x100) and b (50x40); one annotation per (image, category, bbox)."""
    for fname, size in (("a.png", (200, 100)), ("b.png", (50, 40))):
        if not (tmp_path / fname).exists():
            Image.new("RGB", size).save(tmp_path / fname)
    anns = []
    for i, (image_id, cat, bbox) in enumerate(boxes, start=1):
        ann = {"id": 10 + i, "image_id": image_id, "category_id": cat, "bbox": bbox}
        if logits is not None and logits[i - 1] is not None:
            ann["logits"] = logits[i - 1]
        anns.append(ann)
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 200, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 50, "height": 40},
        ],
        "annotations": anns,
        "categories": CATEGORIES,
    }
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


RELATIVE = [(1, 5, [0.1, 0.2, 0.3, 0.4]), (2, 1, [0.5, 0.25, 0.5, 0.5])]


def test_relative_boxes_refused_under_coco_pixels(store, tmp_path):
    path = _coco(tmp_path, RELATIVE)
    with pytest.raises(IngestError) as err:
        ingest_coco(store, "det", path)
    msg = str(err.value)
    assert msg.startswith("instances.json annotation 1: every box lies within [0, 1]")
    assert "image 1, annotation id 11, bbox [0.1, 0.2, 0.3, 0.4]" in msg
    assert "looks like relative_xywh: declare bbox_format" in msg
    assert store.list_datasets() == []


def test_relative_boxes_converted_exactly_under_relative_xywh(store, tmp_path):
    path = _coco(tmp_path, RELATIVE)
    report = ingest_coco(store, "det", path, bbox_format="relative_xywh")
    gt = store.labels("det", "ground_truth").set_index("label_id")
    assert list(gt.loc["ground_truth:11", "box"]) == [0.1, 0.2, 0.3, 0.4]
    assert list(gt.loc["ground_truth:12", "box"]) == [0.5, 0.25, 0.5, 0.5]
    assert report.fields["ground_truth"].box_format == "relative_xywh"
    assert "boxes: relative_xywh -> relative [x, y, w, h]" in report.summary()


def test_xyxy_pixels_by_hand(store, tmp_path):
    # a: 200x100, corners (20, 10)-(120, 60) -> x 20/200, y 10/100, w 100/200, h 50/100
    # b: 50x40, corners (5, 4)-(30, 40) -> 0.1, 0.1, 25/50, 36/40
    path = _coco(tmp_path, [(1, 1, [20, 10, 120, 60]), (2, 3, [5, 4, 30, 40])])
    ingest_coco(store, "det", path, bbox_format="xyxy_pixels")
    boxes = store.labels("det", "ground_truth")["box"].map(list).tolist()
    assert boxes == [pytest.approx([0.1, 0.1, 0.5, 0.5]), pytest.approx([0.1, 0.1, 0.5, 0.9])]
    assert box_to_relative([20, 10, 120, 60], 200, 100, "coco_pixels") == pytest.approx(
        [0.1, 0.1, 0.6, 0.6]
    )  # the same numbers read as COCO [x, y, w, h]
    with pytest.raises(ValueError, match=r"x1 <= x0"):
        box_to_relative([20, 10, 10, 60], 200, 100, "xyxy_pixels")


def test_boxes_beyond_the_image_are_refused(store, tmp_path):
    path = _coco(tmp_path, [(2, 1, [40, 0, 20, 10])])  # x 40..60 on a 50 px wide image
    with pytest.raises(
        IngestError,
        match=r"^instances\.json annotation 1 \(sample 'b'\): bbox \[40, 0, 20, 10\] lies "
        r"outside the 50x40 image as coco_pixels \(image 2, annotation id 11\)",
    ):
        ingest_coco(store, "det", path)
    path = _coco(tmp_path, [(1, 1, [20, 10, 40, 30])])
    with pytest.raises(IngestError, match=r"look like pixels: declare bbox_format: coco_pixels"):
        ingest_coco(store, "det", path, bbox_format="relative_xywh")
    assert store.list_datasets() == []


def test_two_formats_in_one_file_are_refused(store, tmp_path):
    path = _coco(tmp_path, [(1, 1, [20, 10, 40, 30]), (2, 5, [0.1, 0.2, 0.3, 0.4])])
    for fmt in ("coco_pixels", "relative_xywh"):
        with pytest.raises(IngestError) as err:
            ingest_coco(store, "det", path, bbox_format=fmt, skip_bad=True)
        msg = str(err.value)
        assert msg.startswith("instances.json annotation 2: boxes in two formats in one file")
        assert "image 2, annotation id 12, bbox [0.1, 0.2, 0.3, 0.4]" in msg
        assert "image 1, annotation id 11, bbox [20, 10, 40, 30] is in pixels" in msg
    assert store.list_datasets() == []


def test_detection_logits_stored_in_class_order(store, tmp_path):
    # categories listed dog (id 5), cat (id 1), bird (id 3): logits follow that order
    gt_logits = [[4.0, 0.0, 1.0], None]
    path = _coco(tmp_path, [(1, 5, [0, 0, 100, 50]), (2, 3, [0, 0, 25, 20])], logits=gt_logits)
    results = [
        {"image_id": 1, "category_id": 5, "bbox": [0, 0, 90, 50], "score": 0.8,
         "logits": [2.0, 0.5, 0.1]},
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.6,
         "logits": [0.0, 0.2, 1.7]},
    ]  # fmt: skip
    res = tmp_path / "results.json"
    res.write_text(json.dumps(results))
    report = ingest_coco(store, "det", path, predictions_json=res)
    assert store.label_field("det", "predictions") == ("detections", ["dog", "cat", "bird"])
    pred = store.labels("det", "predictions")
    np.testing.assert_allclose(np.vstack(pred["logits"]), [r["logits"] for r in results])
    gt = store.labels("det", "ground_truth").set_index("label_id")
    assert list(gt.loc["ground_truth:11", "logits"]) == [4.0, 0.0, 1.0]
    assert pd.isna(gt.loc["ground_truth:12", "logits"])  # an annotation without logits
    assert report.fields["predictions"].with_logits == 2
    assert "logits: 2 x 3 (classes order)" in report.summary()


def test_detection_logits_of_wrong_length_refused(store, tmp_path):
    path = _coco(tmp_path, [(1, 5, [0, 0, 100, 50])], logits=[[1.0, 2.0]])
    with pytest.raises(
        IngestError,
        match=r"^instances\.json annotation 1 \(sample 'a'\): image 1, annotation id 11: logits "
        r"have 2 values, expected 3 \(classes: dog, cat, bird\)",
    ):
        ingest_coco(store, "det", path)
    assert store.list_datasets() == []


@pytest.mark.parametrize("classes", [["cat", "dog", "bird"], ["dog", "cat", "owl"], ["dog", "cat"]])
def test_classes_must_repeat_the_categories(store, tmp_path, classes):
    path = _coco(tmp_path, [(1, 5, [0, 0, 100, 50])])
    with pytest.raises(
        IngestError,
        match=r"^instances\.json: classes \[.*\] disagree with the categories of instances\.json "
        r"\['dog', 'cat', 'bird'\] \(names or order\)",
    ):
        ingest_coco(store, "det", path, classes=classes)
    ingest_coco(store, "det", path, classes=["dog", "cat", "bird"])
    assert store.label_field("det", "ground_truth")[1] == ["dog", "cat", "bird"]


def test_spec_bbox_format_reaches_the_importer(store, tmp_path):
    path = _coco(tmp_path, RELATIVE)
    spec = DatasetSpec.model_validate(
        {
            "name": "det",
            "source": {"type": "coco", "annotations": str(path), "bbox_format": "relative_xywh"},
        }
    )
    report = ingest_dataset(store, spec, dry_run=True)
    assert report.dry_run and report.added == 2
    assert store.list_datasets() == []
    ingest_dataset(store, spec)
    assert list(store.labels("det", "ground_truth")["box"].iloc[0]) == [0.1, 0.2, 0.3, 0.4]


def test_coco_dry_run_cli_writes_nothing(tmp_path):
    path = _coco(tmp_path, RELATIVE)
    data = tmp_path / "data"
    Store(data)
    args = ["coco", str(path), "-d", "det", "--data-dir", str(data), "--dry-run"]
    result = CliRunner().invoke(ingest, [*args, "--bbox-format", "relative_xywh"])
    assert result.exit_code == 0, result.output
    assert "classes (3, categories, in order): dog, cat, bird" in result.output
    assert "boxes: relative_xywh" in result.output
    assert Store(data).list_datasets() == []
    result = CliRunner().invoke(ingest, args)
    assert result.exit_code == 2 and "looks like relative_xywh" in result.output


def test_samples_asset_metadata_carries_the_summary(tmp_path):
    import dagster as dg
    import yaml

    from dagster_brain.definitions import build_defs
    from dagster_brain.factory import samples_key

    path = _coco(tmp_path, RELATIVE)
    source = {"type": "coco", "annotations": str(path), "bbox_format": "relative_xywh"}
    keys = tmp_path / "brain_keys.yaml"
    keys.write_text(yaml.safe_dump({"datasets": [{"name": "det", "source": source}]}))
    defs = build_defs(keys, tmp_path / "data")
    assets = [a for a in defs.assets if samples_key("det") in a.keys]
    result = dg.materialize(assets, resources=defs.resources)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    summary = meta["ingest_summary"].value
    assert summary["samples"] == 2
    gt = summary["fields"]["ground_truth"]
    assert gt["classes"] == ["dog", "cat", "bird"] and gt["classes_from"] == "categories"
    assert gt["box_format"] == "relative_xywh"
    assert gt["per_class"] == {"dog": 1, "cat": 1, "bird": 0}


def test_exif_rotated_image_with_boxes_in_the_stored_frame_is_refused(store, tmp_path):
    """COCO sizes of the stored (unrotated) frame on an EXIF-rotated file: boxes would move."""
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x20, displayed 20x60
    Image.new("RGB", (60, 20)).save(tmp_path / "turned.jpg", exif=exif)
    doc = {
        "images": [{"id": 7, "file_name": "turned.jpg", "width": 60, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 10, 5]}],
        "categories": [{"id": 1, "name": "cat"}],
    }
    path = tmp_path / "turned.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(IngestError) as err:
        ingest_coco(store, "det", path)
    msg = str(err.value)
    assert "image 7 carries EXIF orientation 6" in msg
    assert "displayed 20x60 but the file says 60x20" in msg
    assert store.list_datasets() == []
    # the same boxes declared on the displayed frame are taken
    doc["images"][0].update(width=20, height=60)
    doc["annotations"][0]["bbox"] = [1, 1, 5, 10]
    path.write_text(json.dumps(doc))
    ingest_coco(store, "det", path)
    box = store.labels("det", "ground_truth")["box"].iloc[0]
    assert np.allclose(box, [1 / 20, 1 / 60, 5 / 20, 10 / 60])
