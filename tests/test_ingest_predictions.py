"""ingest_predictions: joins by id or file path, unknown samples, skip_bad."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dagster_brain.ingest.errors import IngestError
from dagster_brain.ingest.image_folder import ingest_image_folder
from dagster_brain.ingest.predictions import ingest_predictions
from dagster_brain.store import Store


@pytest.fixture
def store(tmp_path):
    """Dataset 'ds': samples p, q, r (flat folder tmp_path/imgs, no labels)."""
    store = Store(tmp_path / "data")
    (tmp_path / "imgs").mkdir()
    for i, name in enumerate("pqr"):
        Image.new("RGB", (3, 3), (i, i, i)).save(tmp_path / "imgs" / f"{name}.png")
    ingest_image_folder(store, "ds", tmp_path / "imgs")
    return store


def _csv(path, rows):
    df = pd.DataFrame(rows)
    if "logits" in df:
        df["logits"] = [json.dumps(v) for v in df["logits"]]
    df.to_csv(path, index=False)
    return path


def test_join_on_id_with_logits(store, tmp_path):
    path = _csv(
        tmp_path / "preds.csv",
        [
            {"id": "p", "label": "cat", "score": 0.8, "logits": [1.0, 0.0]},
            {"id": "r", "label": "dog", "score": 0.6, "logits": [0.0, 0.5]},
        ],
    )
    report = ingest_predictions(
        store,
        "ds",
        path,
        confidence_column="score",
        logits_column="logits",
        classes=["cat", "dog"],  # logits need a declared order
    )
    assert report.label_fields == {"predictions": 2} and report.added == 0
    labels = store.labels("ds", "predictions")
    assert labels["label_id"].tolist() == ["predictions:p", "predictions:r"]
    assert labels["label"].tolist() == ["cat", "dog"]
    assert labels["confidence"].tolist() == pytest.approx([0.8, 0.6])
    np.testing.assert_allclose(np.vstack(labels["logits"]), [[1.0, 0.0], [0.0, 0.5]])
    assert store.label_field("ds", "predictions") == ("classification", ["cat", "dog"])
    assert store.sample_ids("ds") == ["p", "q", "r"]


def test_join_on_filepath(store, tmp_path):
    path = _csv(
        tmp_path / "preds.csv",
        [
            {"filepath": "imgs/q.png", "label": "dog"},
            {"filepath": str(tmp_path / "imgs" / "p.png"), "label": "cat"},
        ],
    )
    ingest_predictions(store, "ds", path, field="model_a", join_on="filepath")
    labels = store.labels("ds", "model_a")
    assert labels[["sample_id", "label"]].values.tolist() == [["p", "cat"], ["q", "dog"]]
    assert labels["confidence"].isna().all()


def test_unknown_sample_names_the_row(store, tmp_path):
    rows = [
        {"id": "p", "label": "cat"},
        {"id": "zzz", "label": "dog"},
        {"id": "q", "label": "cat"},
        {"id": "p", "label": "dog"},
    ]
    path = _csv(tmp_path / "preds.csv", rows)
    with pytest.raises(IngestError, match=r"^preds\.csv row 2 \(sample 'zzz'\): no sample with id"):
        ingest_predictions(store, "ds", path)
    assert store.label_fields("ds").empty
    report = ingest_predictions(store, "ds", path, skip_bad=True)
    assert [(s.row, s.sample_id) for s in report.skipped] == [(2, "zzz"), (4, "p")]
    assert "second prediction for the sample (first in row 1)" in report.skipped[1].reason
    assert store.labels("ds", "predictions")["sample_id"].tolist() == ["p", "q"]


def test_logits_length_and_missing_dataset(store, tmp_path):
    path = _csv(
        tmp_path / "preds.csv",
        [
            {"id": "p", "label": "cat", "logits": [1.0, 0.0]},
            {"id": "q", "label": "dog", "logits": [1.0, 0.0, 3.0]},
        ],
    )
    with pytest.raises(
        IngestError, match=r"row 2 \(sample 'q'\): logits have 3 values, expected 2"
    ):
        ingest_predictions(store, "ds", path, logits_column="logits", classes=["cat", "dog"])
    with pytest.raises(IngestError, match="no dataset 'other'"):
        ingest_predictions(store, "other", path)


def test_label_from_logits(store, tmp_path):
    path = _csv(tmp_path / "preds.csv", [{"id": "q", "logits": [0.0, 2.0, 1.0]}])
    ingest_predictions(
        store, "ds", path, label_column=None, logits_column="logits", classes=["x", "y", "z"]
    )
    assert store.labels("ds", "predictions")["label"].tolist() == ["y"]
