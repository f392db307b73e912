"""ingest_manifest: CSV/Parquet/JSONL, classes, logits, embeddings and located errors."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dagster_brain.ingest.errors import IngestError
from dagster_brain.ingest.manifest import ingest_manifest
from dagster_brain.store import Store

COLUMNS = dict(
    label_column="label",
    prediction_column="pred",
    confidence_column="conf",
    logits_column="logits",
    embedding_columns={"emb": "clip"},
)
ABC = dict(COLUMNS, classes=["a", "b", "c"])  # logits need a declared class order


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data")


@pytest.fixture
def rows(tmp_path):
    """Three samples over classes a, b, c; images in tmp_path/img."""
    (tmp_path / "img").mkdir()
    for i, name in enumerate(["x", "y", "z"]):
        Image.new("RGB", (6, 4), (i * 50, 0, 0)).save(tmp_path / "img" / f"{name}.png")
    return [
        {
            "id": "s1",
            "filepath": "img/x.png",
            "label": "a",
            "pred": "a",
            "conf": 0.9,
            "logits": [2.0, 0.0, -1.0],
            "emb": [1.0, 0.0, 0.0, 0.0],
        },
        {
            "id": "s2",
            "filepath": "img/y.png",
            "label": "b",
            "pred": "c",
            "conf": 0.6,
            "logits": [0.0, 1.0, 1.5],
            "emb": [0.0, 1.0, 0.0, 0.0],
        },
        {
            "id": "s3",
            "filepath": str(tmp_path / "img" / "z.png"),
            "label": "c",
            "pred": "c",
            "conf": 0.7,
            "logits": [0.0, 0.0, 3.0],
            "emb": [0.0, 0.0, 1.0, 0.0],
        },
    ]


def write_manifest(path, rows):
    """CSV (lists as JSON text), Parquet or JSON Lines, by extension."""
    if path.suffix == ".csv":
        df = pd.DataFrame(rows)
        for col in ("logits", "emb"):
            if col in df:
                df[col] = [json.dumps(v) if isinstance(v, list) else v for v in df[col]]
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_manifest_formats_give_the_same_dataset(store, tmp_path, rows, suffix):
    path = write_manifest(tmp_path / f"manifest{suffix}", rows)
    report = ingest_manifest(store, "ds", path, **ABC)
    assert (report.added, report.skipped) == (3, [])
    assert report.label_fields == {"ground_truth": 3, "predictions": 3}
    assert report.embeddings_keys == {"clip": 3}
    samples = store.samples("ds")
    assert samples["filepath"].tolist() == [
        str((tmp_path / "img" / f).resolve()) for f in ("x.png", "y.png", "z.png")
    ]
    assert samples["width"].tolist() == [6, 6, 6]
    assert store.label_field("ds", "predictions") == ("classification", ["a", "b", "c"])
    gt = store.labels("ds", "ground_truth")
    assert gt["label_id"].tolist() == ["ground_truth:s1", "ground_truth:s2", "ground_truth:s3"]
    assert gt["label"].tolist() == ["a", "b", "c"]
    pred = store.labels("ds", "predictions")
    assert pred["label"].tolist() == ["a", "c", "c"]
    assert pred["confidence"].tolist() == pytest.approx([0.9, 0.6, 0.7])
    np.testing.assert_allclose(np.vstack(pred["logits"]), [r["logits"] for r in rows])
    emb = store.read_embeddings("ds", "clip")
    assert emb.sample_ids == ["s1", "s2", "s3"] and emb.dim == 4
    np.testing.assert_allclose(emb.vectors, [r["emb"] for r in rows])
    assert store.embedding_sets("ds")["source"].tolist() == ["manifest:emb"]


def test_prediction_from_logits_when_no_label_or_confidence(store, tmp_path, rows):
    path = write_manifest(tmp_path / "m.csv", rows)
    ingest_manifest(store, "ds", path, logits_column="logits", classes=["a", "b", "c"])
    pred = store.labels("ds", "predictions")
    assert pred["label"].tolist() == ["a", "c", "c"]
    e = np.exp([2.0, 0.0, -1.0])
    assert pred["confidence"].iloc[0] == pytest.approx(e.max() / e.sum())
    assert store.label_fields("ds")["field"].tolist() == ["predictions"]


def _bad(rows, i, **change):
    rows = [dict(r) for r in rows]
    rows[i].update(change)
    return rows


BAD_ROWS = [
    (dict(i=1, id="s1"), r"row 2 \(sample 's1'\): duplicate id \(first in row 1\)"),
    (dict(i=1, filepath="img/missing.png"), r"row 2 \(sample 's2'\): image file not found"),
    (dict(i=2, id=""), r"row 3: empty id"),
    (
        dict(i=0, logits=[1.0, 2.0]),
        r"row 1 \(sample 's1'\): logits have 2 values, expected 3 \(classes: a, b, c\)",
    ),
    (
        dict(i=2, emb=[1.0, 2.0]),
        r"row 3 \(sample 's3'\): embedding 'emb' has 2 values, expected 4 \(as in row 1\)",
    ),
    (dict(i=1, emb=[0.0, float("nan"), 0.0, 0.0]), r"row 2 \(sample 's2'\): .*non-finite"),
    (dict(i=0, conf=1.5), r"row 1 \(sample 's1'\): confidence 1.5 is not in \[0, 1\]"),
    (dict(i=0, logits="[1, oops]"), r"row 1 \(sample 's1'\): logits is not a JSON list"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ROWS)
def test_bad_row_names_file_row_and_sample_and_writes_nothing(
    store, tmp_path, rows, change, message
):
    path = write_manifest(tmp_path / "manifest.csv", _bad(rows, **change))
    with pytest.raises(IngestError, match=r"^manifest\.csv " + message):
        ingest_manifest(store, "ds", path, **ABC)
    assert store.list_datasets() == []


def test_unreadable_image(store, tmp_path, rows):
    (tmp_path / "img" / "y.png").write_bytes(b"garbage")
    path = write_manifest(tmp_path / "m.parquet", rows)
    with pytest.raises(IngestError, match=r"m\.parquet row 2 \(sample 's2'\): cannot decode"):
        ingest_manifest(store, "ds", path)


def test_skip_bad_writes_the_good_rows(store, tmp_path, rows):
    bad = _bad(_bad(rows, 0, logits=[1.0]), 2, filepath="img/nope.png")
    path = write_manifest(tmp_path / "m.csv", bad)
    report = ingest_manifest(store, "ds", path, skip_bad=True, **ABC)
    assert (report.added, len(report.skipped)) == (1, 2)
    assert [(s.row, s.sample_id) for s in report.skipped] == [(1, "s1"), (3, "s3")]
    assert store.sample_ids("ds") == ["s2"]
    assert store.read_embeddings("ds", "clip").sample_ids == ["s2"]
    assert "skipped m.csv row 1 (sample 's1'): logits have 1 values" in report.summary()


def test_failed_ingest_leaves_existing_data_alone(store, tmp_path, rows):
    ingest_manifest(store, "ds", write_manifest(tmp_path / "m.csv", rows[:2]), **ABC)
    before = store.labels("ds", "predictions")
    bad = _bad(rows, 2, emb=[1.0])
    with pytest.raises(IngestError, match="row 3"):
        ingest_manifest(store, "ds", write_manifest(tmp_path / "m2.csv", bad), **COLUMNS)
    assert store.sample_ids("ds") == ["s1", "s2"]
    pd.testing.assert_frame_equal(store.labels("ds", "predictions"), before)


def test_second_batch_merges_embeddings_and_keeps_classes(store, tmp_path, rows):
    ingest_manifest(
        store,
        "ds",
        write_manifest(tmp_path / "m1.csv", rows[:2]),
        **COLUMNS,
        classes=["a", "b", "c"],
    )
    report = ingest_manifest(store, "ds", write_manifest(tmp_path / "m2.csv", rows[1:]), **COLUMNS)
    assert (report.added, report.updated) == (1, 1)
    assert store.read_embeddings("ds", "clip").sample_ids == ["s1", "s2", "s3"]
    assert store.label_field("ds", "ground_truth")[1] == ["a", "b", "c"]
    other_dim = [dict(r, emb=[1.0, 2.0]) for r in rows]
    with pytest.raises(IngestError, match="holds 4-d vectors; these are 2-d"):
        ingest_manifest(store, "ds", write_manifest(tmp_path / "m3.csv", other_dim), **COLUMNS)


def test_given_classes_are_checked(store, tmp_path, rows):
    path = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(IngestError, match=r"row 2 \(sample 's2'\): prediction 'c' is not one"):
        ingest_manifest(store, "ds", path, prediction_column="pred", classes=["a", "b"])
    with pytest.raises(IngestError, match=r"row 2 \(sample 's2'\): label 'b' is not one"):
        ingest_manifest(store, "ds", path, label_column="label", classes=["a", "c"])


def test_missing_columns_and_formats(store, tmp_path, rows):
    path = write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises(IngestError, match=r"m\.csv: logits of field 'predictions' need classes"):
        ingest_manifest(store, "ds", path, logits_column="logits")
    with pytest.raises(IngestError, match=r"m\.csv: no column 'truth' \(label\)"):
        ingest_manifest(store, "ds", path, label_column="truth")
    (tmp_path / "m.xlsx").write_text("")
    with pytest.raises(IngestError, match="unknown manifest format"):
        ingest_manifest(store, "ds", tmp_path / "m.xlsx")
    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(IngestError, match=r"m\.jsonl row 2: invalid JSON"):
        ingest_manifest(store, "ds", bad)


def test_base_dir_and_unlabelled_rows(store, tmp_path, rows):
    sub = tmp_path / "sub"
    sub.mkdir()
    unlabelled = [dict(r, label=None if r["id"] == "s2" else r["label"]) for r in rows]
    path = write_manifest(sub / "m.csv", unlabelled)
    report = ingest_manifest(store, "ds", path, label_column="label", base_dir=tmp_path)
    assert report.label_fields == {"ground_truth": 2}
    assert store.label_field("ds", "ground_truth")[1] == ["a", "c"]
    assert math.isnan(store.labels("ds", "ground_truth")["confidence"].iloc[0])
