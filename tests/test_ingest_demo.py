"""Demo makers: planted flips, duplicates and box errors are where truth.json says."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dagster_brain.ingest.demo import (
    ingest_demo,
    ingest_demo_dataset,
    make_digits_demo,
    make_shapes_demo,
)
from dagster_brain.store import Store


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits_demo(tmp_path_factory.mktemp("digits"), n_samples=300, n_duplicates=12)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_demo(tmp_path_factory.mktemp("shapes"), n_images=40)


def test_digits_flips_are_wrong_and_mostly_caught(digits):
    truth = digits.load_truth()
    manifest = pd.read_parquet(digits.manifest).set_index("id")
    assert len(manifest) == 312
    flips = truth["flips"]
    assert len(flips) == 15  # 5% of 300
    assert all(f["true"] != f["noisy"] for f in flips)
    assert all(manifest.loc[f["sample_id"], "ground_truth"] == f["noisy"] for f in flips)
    disagree = [manifest.loc[f["sample_id"], "prediction"] != f["noisy"] for f in flips]
    assert np.mean(disagree) > 0.6
    logits = np.vstack(manifest["logits"])
    assert logits.shape == (312, 10)
    np.testing.assert_allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-6)  # log-probabilities
    np.testing.assert_allclose(np.exp(logits).max(axis=1), manifest["confidence"], rtol=1e-6)


def test_digits_duplicates(digits):
    dups = digits.load_truth()["duplicates"]
    assert len(dups) == 12
    assert {d["kind"] for d in dups} == {"exact", "reencoded", "noise", "shift"}
    manifest = pd.read_parquet(digits.manifest).set_index("id")

    def pixels(sample_id):
        return np.asarray(Image.open(digits.root / manifest.loc[sample_id, "filepath"]))

    for d in dups:
        copy_path = digits.root / manifest.loc[d["copy_id"], "filepath"]
        orig_path = digits.root / manifest.loc[d["original_id"], "filepath"]
        same_bytes = copy_path.read_bytes() == orig_path.read_bytes()
        assert same_bytes == (d["kind"] == "exact")
        copy, orig = pixels(d["copy_id"]), pixels(d["original_id"])
        assert copy.shape == orig.shape == (32, 32, 3)
        if d["kind"] in ("exact", "reencoded"):
            assert (copy == orig).all()
        elif d["kind"] == "shift":
            assert (copy[:, 1:] == orig[:, :-1]).all()
        else:
            assert 0 < np.abs(copy.astype(int) - orig).mean() < 20
        assert (
            manifest.loc[d["copy_id"], "ground_truth"]
            == manifest.loc[d["original_id"], "ground_truth"]
        )


def test_digits_is_deterministic_and_reused(digits, tmp_path):
    again = make_digits_demo(tmp_path, n_samples=300, n_duplicates=12)
    pd.testing.assert_frame_equal(pd.read_parquet(again.manifest), pd.read_parquet(digits.manifest))
    assert again.load_truth() == digits.load_truth()
    stamp = again.manifest.stat().st_mtime_ns
    make_digits_demo(tmp_path, n_samples=300, n_duplicates=12)
    assert again.manifest.stat().st_mtime_ns == stamp
    other = make_digits_demo(tmp_path, seed=7, n_samples=300, n_duplicates=12)
    assert other.load_truth()["flips"] != digits.load_truth()["flips"]


def test_shapes_truth_and_boxes(shapes, tmp_path):
    store = Store(tmp_path / "data")
    from dagster_brain.ingest.coco import ingest_coco

    ingest_coco(
        store,
        "shapes",
        shapes.annotations,
        images_dir=shapes.images_dir,
        predictions_json=shapes.predictions,
    )
    truth = shapes.load_truth()
    gt = store.labels("shapes", "ground_truth").set_index("label_id")
    pred = store.labels("shapes", "predictions").set_index("label_id")
    for df in (gt, pred):
        boxes = np.vstack(df["box"])
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert (boxes[:, 0] + boxes[:, 2] <= 1 + 1e-9).all()
        assert (boxes[:, 1] + boxes[:, 3] <= 1 + 1e-9).all()
    for key in ("mislabeled", "shifted", "missing", "spurious", "false_positives"):
        assert truth[key], key
    for m in truth["mislabeled"]:
        assert m["true"] != m["noisy"] == gt.loc[m["label_id"], "label"]
    for s in truth["shifted"]:
        box = gt.loc[s["label_id"], "box"]
        assert abs(box[0] - s["true_box"][0]) == pytest.approx(box[2] / 2)
    for m in truth["missing"]:
        p = pred.loc[m["label_id"]]
        assert p["confidence"] >= 0.75
        same = gt[gt["sample_id"] == p["sample_id"]]
        assert all(_iou(p["box"], b) < 0.5 for b in same["box"])
    for f in truth["false_positives"]:
        assert pred.loc[f["label_id"], "confidence"] <= 0.3
    spurious = {s["label_id"] for s in truth["spurious"]}
    for label_id in spurious:
        row = gt.loc[label_id]
        preds = pred[pred["sample_id"] == row["sample_id"]]
        assert all(_iou(row["box"], b) < 0.1 for b in preds["box"])


def _iou(a, b):
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    h = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_ingest_demo_is_idempotent(tmp_path):
    store = Store(tmp_path / "data")
    reports = ingest_demo(
        store, tmp_path / "demo", digits_samples=60, digits_duplicates=8, shapes_images=12
    )
    assert set(reports) == {"digits", "shapes"}
    assert reports["digits"].added == 68 and reports["shapes"].added == 12
    assert set(reports["digits"].label_fields) == {"ground_truth", "predictions"}
    assert reports["digits"].embeddings_keys == {"pixels": 68}
    assert store.label_field("shapes", "predictions")[0] == "detections"
    again = ingest_demo(
        store, tmp_path / "demo", digits_samples=60, digits_duplicates=8, shapes_images=12
    )
    assert (again["digits"].added, again["digits"].updated) == (0, 68)
    smaller = ingest_demo(
        store, tmp_path / "demo", digits_samples=50, digits_duplicates=8, shapes_images=12
    )
    assert "rebuilt dataset 'digits'" in smaller["digits"].notes[0]
    assert len(store.sample_ids("digits")) == 58


def test_ingest_one_demo_under_another_name(tmp_path):
    store = Store(tmp_path / "data")
    report = ingest_demo_dataset(
        store, tmp_path / "demo", "shapes", dataset="toy", shapes_images=10
    )
    assert report.dataset == "toy" and report.added == 10
    assert store.list_datasets() == ["toy"]
    with pytest.raises(ValueError, match="unknown demo 'cats'"):
        ingest_demo_dataset(store, tmp_path / "demo", "cats")
