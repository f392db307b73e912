"""ingest_image_folder: ids, class folders, hashes, bad files."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from dagster_brain.ingest.errors import IngestError
from dagster_brain.ingest.image_folder import ingest_image_folder
from dagster_brain.names import BrainNameError
from dagster_brain.store import Store


def _image(path, colour=(10, 20, 30), size=(4, 3), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data")


@pytest.fixture
def classes_root(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "cat" / "a.png", (1, 2, 3), size=(5, 7))
    _image(root / "cat" / "b.bmp", (1, 2, 3), size=(5, 7))  # same pixels as cat/a
    _image(root / "dog" / "c.jpg", (200, 0, 0))
    _image(root / "dog" / "deep" / "d.png", (0, 200, 0))
    (root / "dog" / "notes.txt").write_text("not an image")
    _image(root / ".hidden" / "e.png")
    return root


def test_class_folders_become_classifications(store, classes_root):
    report = ingest_image_folder(
        store, "pets", classes_root, split="train", tags=("raw",), batch="b1"
    )
    assert (report.added, report.updated, report.skipped) == (4, 0, [])
    assert report.label_fields == {"ground_truth": 4}
    samples = store.samples("pets").set_index("sample_id")
    assert list(samples.index) == ["cat/a", "cat/b", "dog/c", "dog/deep/d"]
    a = samples.loc["cat/a"]
    assert (a.width, a.height, a.split, list(a.tags), a.batch) == (5, 7, "train", ["raw"], "b1")
    data = (classes_root / "cat" / "a.png").read_bytes()
    assert a.content_hash == hashlib.sha256(data).hexdigest()
    assert a.size_bytes == len(data)
    assert a.filepath == str((classes_root / "cat" / "a.png").resolve())
    b = samples.loc["cat/b"]
    assert b.pixel_hash == a.pixel_hash and b.content_hash != a.content_hash
    labels = store.labels("pets", "ground_truth")
    assert labels["label_id"].tolist() == [
        "ground_truth:cat/a",
        "ground_truth:cat/b",
        "ground_truth:dog/c",
        "ground_truth:dog/deep/d",
    ]
    assert labels["label"].tolist() == ["cat", "cat", "dog", "dog"]
    assert np.isnan(labels["confidence"]).all()
    assert store.label_field("pets", "ground_truth") == ("classification", ["cat", "dog"])


def test_not_recursive_stops_at_class_folders(store, classes_root):
    ingest_image_folder(store, "pets", classes_root, recursive=False)
    assert store.sample_ids("pets") == ["cat/a", "cat/b", "dog/c"]


def test_flat_or_mixed_folders_get_no_labels(store, tmp_path):
    _image(tmp_path / "flat" / "x.png")
    _image(tmp_path / "flat" / "y.png")
    report = ingest_image_folder(store, "flat", tmp_path / "flat")
    assert report.label_fields == {} and store.label_fields("flat").empty
    _image(tmp_path / "flat" / "sub" / "z.png")
    report = ingest_image_folder(store, "mixed", tmp_path / "flat")
    assert report.added == 3 and "not a class-folder layout" in report.notes[0]
    assert store.label_fields("mixed").empty
    ingest_image_folder(store, "nolabels", tmp_path / "flat", label_field=None)
    assert store.sample_ids("nolabels") == ["sub/z", "x", "y"]


def test_reingest_updates(store, classes_root):
    ingest_image_folder(store, "pets", classes_root)
    _image(classes_root / "dog" / "f.png")
    report = ingest_image_folder(store, "pets", classes_root)
    assert (report.added, report.updated) == (1, 4)


def test_unreadable_image_names_the_file_and_writes_nothing(store, classes_root):
    (classes_root / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(
        IngestError, match=r"^cat/broken\.png \(sample 'cat/broken'\): cannot decode"
    ):
        ingest_image_folder(store, "pets", classes_root)
    assert store.list_datasets() == []


def test_skip_bad_skips_unreadable_and_clashing_files(store, classes_root):
    (classes_root / "cat" / "broken.png").write_bytes(b"not a png")
    _image(classes_root / "cat" / "a.jpg")  # same id as cat/a.png, and sorts first
    report = ingest_image_folder(store, "pets", classes_root, skip_bad=True)
    assert report.added == 4
    assert [(s.file, s.sample_id) for s in report.skipped] == [
        ("cat/a.png", "cat/a"),
        ("cat/broken.png", "cat/broken"),
    ]
    assert "clashes with cat/a.jpg" in report.skipped[0].reason


def test_bad_inputs(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no images"):
        ingest_image_folder(store, "e", tmp_path / "empty")
    with pytest.raises(IngestError, match="not a folder"):
        ingest_image_folder(store, "e", tmp_path / "missing")
    with pytest.raises(BrainNameError):
        ingest_image_folder(store, "Bad-Name", tmp_path / "empty")
