"""ingest_coco: pixel boxes to relative boxes, results files, located errors."""

import json

import pytest
from PIL import Image

from dagster_brain.ingest.coco import coco_box_to_relative, ingest_coco
from dagster_brain.ingest.errors import IngestError
from dagster_brain.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data")


@pytest.fixture
def coco(tmp_path):
    """Two images (100x50 and 40x80) and three boxes; categories listed out of id order."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (100, 50)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (40, 80)).save(tmp_path / "images" / "b.jpg")
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 2, "file_name": "b.jpg", "width": 40, "height": 80},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 2, "bbox": [10, 5, 20, 10]},
            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 50]},
            {"id": 9, "image_id": 2, "category_id": 2, "bbox": [4, 8, 8, 40]},
        ],
        "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}],
    }
    results = [
        {"image_id": 2, "category_id": 2, "bbox": [5, 10, 8, 40], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [50, 25, 50, 25], "score": 0.25},
    ]
    return tmp_path, doc, results


def write(tmp_path, doc, results=None):
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(doc))
    if results is None:
        return ann, None
    res = tmp_path / "results.json"
    res.write_text(json.dumps(results))
    return ann, res


def test_box_to_relative_by_hand():
    assert coco_box_to_relative([10, 20, 30, 40], 100, 200) == pytest.approx([0.1, 0.1, 0.3, 0.2])
    # 1e-7 past the right edge is float noise: clipped
    assert coco_box_to_relative([0, 0, 100.00001, 50], 100, 50) == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="outside the 100x50 image"):
        coco_box_to_relative([90, 0, 20, 10], 100, 50)
    with pytest.raises(ValueError, match="zero or negative area"):
        coco_box_to_relative([10, 10, 0, 5], 100, 50)
    with pytest.raises(ValueError, match="not \\[x, y, width, height\\]"):
        coco_box_to_relative([1, 2, 3], 100, 50)


def test_ingest_ground_truth_and_results(store, coco):
    tmp_path, doc, results = coco
    ann, res = write(tmp_path, doc, results)
    report = ingest_coco(store, "det", ann, images_dir=tmp_path / "images", predictions_json=res)
    assert (report.added, report.skipped) == (2, [])
    assert report.label_fields == {"ground_truth": 3, "predictions": 2}
    samples = store.samples("det")
    assert samples["sample_id"].tolist() == ["a", "b"]
    assert samples[["width", "height"]].values.tolist() == [[100, 50], [40, 80]]
    gt = store.labels("det", "ground_truth").set_index("label_id")
    assert list(gt.index) == ["ground_truth:7", "ground_truth:8", "ground_truth:9"]
    assert gt.loc["ground_truth:7", "label"] == "dog"
    assert list(gt.loc["ground_truth:7", "box"]) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert list(gt.loc["ground_truth:8", "box"]) == pytest.approx([0.0, 0.0, 1.0, 1.0])
    assert list(gt.loc["ground_truth:9", "box"]) == pytest.approx([0.1, 0.1, 0.2, 0.5])
    assert gt["sample_id"].tolist() == ["a", "a", "b"]
    pred = store.labels("det", "predictions").set_index("label_id")
    assert pred.loc["predictions:1", ["sample_id", "label", "confidence"]].tolist() == [
        "b",
        "dog",
        0.9,
    ]
    assert list(pred.loc["predictions:2", "box"]) == pytest.approx([0.5, 0.5, 0.5, 0.5])
    # classes in the categories' listed order (the file lists dog, then cat)
    assert store.label_field("det", "ground_truth") == ("detections", ["dog", "cat"])
    assert store.label_field("det", "predictions") == ("detections", ["dog", "cat"])


def test_images_dir_defaults_to_the_json_folder(store, coco):
    tmp_path, doc, _ = coco
    for im in doc["images"]:
        im["file_name"] = "images/" + im["file_name"]
    ann, _ = write(tmp_path, doc)
    ingest_coco(store, "det", ann)
    assert store.sample_ids("det") == ["images/a", "images/b"]


BAD_ANNOTATIONS = [
    ({"bbox": [90, 0, 20, 10]}, r"annotation 1 \(sample 'a'\): bbox .* outside the 100x50"),
    ({"bbox": [10, 5, 0, 10]}, r"annotation 1 \(sample 'a'\): bbox .* zero or negative area"),
    ({"image_id": 99}, r"annotation 1: unknown image id 99"),
    ({"category_id": 5}, r"annotation 1 \(sample 'a'\): image 1: unknown category id 5"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ANNOTATIONS)
def test_bad_annotation_names_file_index_and_image(store, coco, change, message):
    tmp_path, doc, _ = coco
    doc["annotations"][0].update(change)
    ann, _ = write(tmp_path, doc)
    with pytest.raises(IngestError, match=r"^instances\.json " + message):
        ingest_coco(store, "det", ann, images_dir=tmp_path / "images")
    assert store.list_datasets() == []


def test_duplicate_annotation_id(store, coco):
    tmp_path, doc, _ = coco
    doc["annotations"][2]["id"] = 7
    ann, _ = write(tmp_path, doc)
    with pytest.raises(
        IngestError,
        match=r"annotation 3 \(sample 'b'\): duplicate annotation id 7 "
        r"\(first in annotation 1\)",
    ):
        ingest_coco(store, "det", ann, images_dir=tmp_path / "images")


def test_bad_results_and_images(store, coco):
    tmp_path, doc, results = coco
    results[1]["score"] = 2.0
    ann, res = write(tmp_path, doc, results)
    with pytest.raises(IngestError, match=r"^results\.json result 2 \(sample 'a'\): .*score 2"):
        ingest_coco(store, "det", ann, images_dir=tmp_path / "images", predictions_json=res)
    doc["images"][1]["width"] = 41
    ann, _ = write(tmp_path, doc)
    with pytest.raises(IngestError, match=r"image 2 \(sample 'b'\): image 2 is 40x80, but"):
        ingest_coco(store, "det", ann, images_dir=tmp_path / "images")
    with pytest.raises(IngestError, match=r"image 1 \(sample 'a'\): image file not found"):
        ingest_coco(store, "det", ann, images_dir=tmp_path)
    assert store.list_datasets() == []


def test_skip_bad_skips_annotations_and_images(store, coco):
    tmp_path, doc, results = coco
    doc["annotations"][1]["bbox"] = [0, 0, 101, 50]
    (tmp_path / "images" / "b.jpg").write_bytes(b"broken")
    ann, res = write(tmp_path, doc, results)
    report = ingest_coco(
        store, "det", ann, images_dir=tmp_path / "images", predictions_json=res, skip_bad=True
    )
    assert report.added == 1
    assert [(s.row_kind, s.row, s.sample_id) for s in report.skipped] == [
        ("image", 2, "b"),
        ("annotation", 2, "a"),
    ]
    # annotations and results on the skipped image are left out with it
    assert report.label_fields == {"ground_truth": 1, "predictions": 1}
    assert store.labels("det", "ground_truth")["label_id"].tolist() == ["ground_truth:7"]


def test_duplicate_image_id_keeps_the_first_image(store, coco):
    tmp_path, doc, _ = coco
    doc["images"].append({"id": 1, "file_name": "b.jpg"})
    doc["images"].pop(1)
    doc["annotations"].pop(2)
    doc["images"].append({"id": 2, "file_name": "b.jpg", "width": 40, "height": 80})
    ann, _ = write(tmp_path, doc)
    report = ingest_coco(store, "det", ann, images_dir=tmp_path / "images", skip_bad=True)
    assert [(s.row_kind, s.row) for s in report.skipped] == [("image", 2)]
    assert "duplicate image id 1" in report.skipped[0].reason
    assert store.labels("det", "ground_truth")["sample_id"].tolist() == ["a", "a"]
