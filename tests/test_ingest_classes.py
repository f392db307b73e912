"""Class order is declared, never guessed: logits are read against the user's list."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from dagster_brain.ingest.classes import infer_classes, natural_order
from dagster_brain.ingest.cli import ingest
from dagster_brain.ingest.errors import IngestError
from dagster_brain.ingest.image_folder import ingest_image_folder
from dagster_brain.ingest.manifest import ingest_manifest
from dagster_brain.ingest.predictions import ingest_predictions
from dagster_brain.scores import run_mistakenness
from dagster_brain.specs import ImageFolderSource, ManifestSource, MistakennessSpec
from dagster_brain.store import Store

TWELVE = [str(i) for i in range(12)]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data")


def _images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / f"{i}.png")


def twelve_classes(tmp_path, per_class=4):
    """48 samples over integer classes 0..11; the model's logits are right on every row
    (a 5.0 at the true class, in numeric order, as a model trained on 0..11 writes them)."""
    n = 12 * per_class
    _images(tmp_path / "img", n)
    rows = []
    for i in range(n):
        label = i % 12
        logits = [0.0] * 12
        logits[label] = 5.0
        rows.append({"id": f"s{i:02d}", "filepath": f"img/{i}.png", "label": label})
        rows[-1]["logits"] = logits
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _mistakenness(store, key="m"):
    spec = MistakennessSpec(
        brain_key=key, kind="mistakenness", dataset="ds", pred_field="pred", label_field="gt"
    )
    return run_mistakenness(spec, store).results


COLS = dict(label_column="label", logits_column="logits", label_field="gt", prediction_field="pred")


def test_twelve_integer_classes_refused_without_classes(store, tmp_path):
    path, _ = twelve_classes(tmp_path)
    with pytest.raises(IngestError) as err:
        ingest_manifest(store, "ds", path, **COLS)
    msg = str(err.value)
    assert msg.startswith("m.jsonl: logits of field 'pred'")
    assert "lexical [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]" in msg
    assert "numeric 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11" in msg
    assert "classes: [...]" in msg
    assert store.list_datasets() == []


def test_twelve_declared_classes_flag_no_correct_label(store, tmp_path):
    path, rows = twelve_classes(tmp_path)
    ingest_manifest(store, "ds", path, classes=TWELVE, **COLS)
    assert store.label_field("ds", "pred") == ("classification", TWELVE)
    pred = store.labels("ds", "pred").set_index("sample_id")
    # argmax read against the declared list gives back every true label
    assert (pred["label"] == store.labels("ds", "gt").set_index("sample_id")["label"]).all()
    res = _mistakenness(store)
    assert len(res) == 48 and not res["possible_label_issue"].any()
    assert res["mistakenness"].max() < 0.1  # correct labels rank low


def test_lexical_misreading_flags_forty_of_forty_eight(tmp_path):
    """Contrast: the old sorted-string guess, made explicit, flags 40 of 48 correct labels."""
    store = Store(tmp_path / "data")
    path, _ = twelve_classes(tmp_path)
    ingest_manifest(store, "ds", path, classes=sorted(TWELVE), **COLS)
    res = _mistakenness(store)
    assert int(res["possible_label_issue"].sum()) == 40


def test_declared_string_order_reads_logits(store, tmp_path):
    _images(tmp_path / "img", 3)
    classes = ["zebra", "ant", "moose"]  # the model's order, not alphabetical
    rows = [
        {"id": "a", "filepath": "img/0.png", "label": "zebra", "logits": [3.0, 0.0, 0.0]},
        {"id": "b", "filepath": "img/1.png", "label": "ant", "logits": [0.0, 3.0, 0.0]},
        {"id": "c", "filepath": "img/2.png", "label": "moose", "logits": [0.0, 0.0, 3.0]},
    ]
    path = tmp_path / "m.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    ingest_manifest(store, "ds", path, classes=classes, **COLS)
    pred = store.labels("ds", "pred")
    assert pred["label"].tolist() == ["zebra", "ant", "moose"]
    assert store.label_field("ds", "pred") == ("classification", classes)
    assert store.label_field("ds", "gt") == ("classification", classes)
    np.testing.assert_allclose(np.vstack(pred["logits"]), [r["logits"] for r in rows])


def test_parquet_metadata_and_sidecar_declare_classes(store, tmp_path):
    _images(tmp_path / "img", 2)
    rows = [
        {"id": "a", "filepath": "img/0.png", "label": "zebra", "logits": [3.0, 0.0]},
        {"id": "b", "filepath": "img/1.png", "label": "ant", "logits": [0.0, 3.0]},
    ]
    table = pa.Table.from_pylist(rows).replace_schema_metadata(
        {"classes": json.dumps(["zebra", "ant"])}
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    report = ingest_manifest(store, "ds", path, **COLS)
    assert store.labels("ds", "pred")["label"].tolist() == ["zebra", "ant"]
    assert report.fields["pred"].classes_from == "manifest metadata"
    # a sidecar that disagrees with the schema metadata is refused, naming both
    (tmp_path / "m.classes.json").write_text(json.dumps(["ant", "zebra"]))
    with pytest.raises(IngestError, match=r"m\.classes\.json lists classes \['ant', 'zebra'\]"):
        ingest_manifest(store, "ds2", path, **COLS)
    # an argument that disagrees with the manifest's own list is refused too
    (tmp_path / "m.classes.json").unlink()
    with pytest.raises(IngestError, match=r"disagree with the classes the manifest declares"):
        ingest_manifest(store, "ds2", path, classes=["ant", "zebra"], **COLS)
    assert store.list_datasets() == ["ds"]


def test_safe_integer_order_is_inferred(store, tmp_path):
    """0..9: numeric and lexical orders agree, so logits may be read without a list."""
    _images(tmp_path / "img", 10)
    rows = []
    for i in range(10):
        logits = [0.0] * 10
        logits[i] = 4.0
        rows.append({"id": f"s{i}", "filepath": f"img/{i}.png", "label": i, "logits": logits})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = ingest_manifest(store, "ds", path, **COLS)
    assert store.label_field("ds", "pred")[1] == [str(i) for i in range(10)]
    assert store.labels("ds", "pred")["label"].tolist() == [str(i) for i in range(10)]
    assert report.fields["pred"].classes_from == "inferred"
    assert "classes (10, inferred, in order): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in report.summary()


def test_without_logits_natural_order_is_shown(store, tmp_path):
    for c in ("10", "2", "1"):
        _images(tmp_path / "imgs" / c, 1)
    report = ingest_image_folder(store, "ds", tmp_path / "imgs")
    assert store.label_field("ds", "ground_truth")[1] == ["1", "2", "10"]
    assert "classes (3, inferred, in order): 1, 2, 10" in report.summary()
    assert report.fields["ground_truth"].per_class == {"1": 1, "2": 1, "10": 1}


def test_image_folder_declared_classes(store, tmp_path):
    for c in ("cat", "dog"):
        _images(tmp_path / "imgs" / c, 1)
    ingest_image_folder(store, "ds", tmp_path / "imgs", classes=["dog", "cat"])
    assert store.label_field("ds", "ground_truth")[1] == ["dog", "cat"]
    with pytest.raises(IngestError, match=r"imgs: class folders \['dog'\] are not among"):
        ingest_image_folder(store, "ds2", tmp_path / "imgs", classes=["cat"])


def test_natural_order_and_inference_rules():
    assert natural_order(["10", "9", "1"]) == ["1", "9", "10"]
    assert natural_order(["b", "a", "10"]) == ["10", "a", "b"]
    assert infer_classes(["2", "0", "1"], "f", "x.csv", uses_logits=True) == ["0", "1", "2"]
    with pytest.raises(IngestError, match=r"x\.csv: logits of field 'f'.*lexical \[b, c\]"):
        infer_classes(["c", "b"], "f", "x.csv", uses_logits=True)


# -- bad input: refused, naming the source and the value; nothing written -------------------


def _manifest(tmp_path, rows, name="m.jsonl"):
    _images(tmp_path / "img", len(rows))
    for i, r in enumerate(rows):
        r.setdefault("filepath", f"img/{i}.png")
        r.setdefault("id", f"s{i}")
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_logits_length_differs_from_class_list(store, tmp_path):
    path = _manifest(tmp_path, [{"label": "a", "logits": [1, 0]}, {"label": "b", "logits": [1]}])
    with pytest.raises(
        IngestError,
        match=r"^m\.jsonl row 2 \(sample 's1'\): logits have 1 values, expected 2 "
        r"\(classes: a, b\)",
    ):
        ingest_manifest(store, "ds", path, classes=["a", "b"], **COLS)
    assert store.list_datasets() == []


def test_prediction_class_not_in_list(store, tmp_path):
    path = _manifest(tmp_path, [{"pred": "a"}, {"pred": "lion"}])
    with pytest.raises(
        IngestError, match=r"^m\.jsonl row 2 \(sample 's1'\): prediction 'lion' is not one"
    ):
        ingest_manifest(store, "ds", path, prediction_column="pred", classes=["a", "b"])
    assert store.list_datasets() == []


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([3, "3"], r"mix integers and text \(e\.g\. 3 and '3'\)"),
        ([1, "cat"], r"mix integers and text \(e\.g\. 1 and 'cat'\)"),
        (["1", "cat"], r"mix integers and words \(e\.g\. '1' and 'cat'\)"),
    ],
)
def test_mixed_integer_and_string_labels(store, tmp_path, labels, message):
    path = _manifest(tmp_path, [{"label": v} for v in labels])
    with pytest.raises(IngestError, match=r"^m\.jsonl: labels of field 'ground_truth' " + message):
        ingest_manifest(store, "ds", path, label_column="label")
    assert store.list_datasets() == []


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], r"classes of field 'ground_truth' \(declared\) is an empty list"),
        (["a", "b", "a"], r"classes of field 'ground_truth' \(declared\) repeat \['a'\]"),
    ],
)
def test_empty_or_duplicate_class_list(store, tmp_path, classes, message):
    path = _manifest(tmp_path, [{"label": "a"}])
    with pytest.raises(IngestError, match=r"^m\.jsonl: " + message):
        ingest_manifest(store, "ds", path, label_column="label", classes=classes)
    assert store.list_datasets() == []


def test_yaml_classes_declare_the_order(store, tmp_path):
    """``classes: [0, 1, ..., 11]`` in the source YAML (integers allowed) reaches the importer."""
    from dagster_brain.ingest.sources import ingest_dataset
    from dagster_brain.specs import DatasetSpec

    path, _ = twelve_classes(tmp_path)
    source = {"type": "manifest", "path": str(path), "label_column": "label"}
    source |= {"logits_column": "logits", "label_field": "gt", "prediction_field": "pred"}
    with pytest.raises(IngestError, match="lexical"):
        ingest_dataset(store, DatasetSpec(name="ds", source=source))
    spec = DatasetSpec(name="ds", source={**source, "classes": list(range(12))})
    report = ingest_dataset(store, spec)
    assert store.label_field("ds", "pred")[1] == TWELVE
    assert report.understood()["fields"]["pred"]["classes_from"] == "declared"
    assert not _mistakenness(store)["possible_label_issue"].any()


def test_spec_classes_validated_at_load():
    with pytest.raises(ValueError, match="classes is an empty list"):
        ManifestSource(type="manifest", path="m.csv", classes=[])
    with pytest.raises(ValueError, match=r"classes repeat \['x'\]"):
        ImageFolderSource(type="image_folder", path="p", classes=["x", "y", "x"])


def test_predictions_table_refuses_undeclared_order(store, tmp_path):
    _images(tmp_path / "imgs" / "a", 1)
    _images(tmp_path / "imgs" / "b", 1)
    ingest_image_folder(store, "ds", tmp_path / "imgs")
    path = tmp_path / "p.csv"
    pd.DataFrame(
        {"id": ["a/0", "b/0"], "label": ["b", "a"], "logits": ["[0, 1]", "[1, 0]"]}
    ).to_csv(path, index=False)
    with pytest.raises(IngestError, match=r"^p\.csv: logits of field 'predictions'"):
        ingest_predictions(store, "ds", path, logits_column="logits")
    assert store.label_fields("ds")["field"].tolist() == ["ground_truth"]
    report = ingest_predictions(store, "ds", path, logits_column="logits", classes=["b", "a"])
    assert report.fields["predictions"].classes == ["b", "a"]
    assert store.labels("ds", "predictions")["label"].tolist() == ["b", "a"]


# -- dry run ---------------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_prints_classes_in_order(tmp_path):
    path, _ = twelve_classes(tmp_path)
    data = tmp_path / "data"
    Store(data)  # an existing, empty store
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    args = [
        "manifest",
        str(path),
        "-d",
        "ds",
        "--label-column",
        "label",
        "--logits-column",
        "logits",
        "--classes",
        ",".join(TWELVE),
        "--data-dir",
        str(data),
        "--dry-run",
    ]
    result = CliRunner().invoke(ingest, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dry run, nothing written: dataset 'ds': 48 samples would be added" in out
    assert "classes (12, declared, in order): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11" in out
    assert "logits: 48 x 12" in out
    assert "per class: 0 4, 1 4, 2 4" in out
    assert Store(data).list_datasets() == []
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    # without a store, a dry run creates none
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(ingest, [*args[:-3], "--data-dir", str(fresh), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not fresh.exists()
    # and the refusal comes before anything is written, in a dry run too
    no_classes = [a for a in args if a not in ("--classes", ",".join(TWELVE))]
    result = CliRunner().invoke(ingest, no_classes)
    assert result.exit_code == 2 and "lexical [0, 1, 10, 11, 2" in result.output


def test_logits_on_a_field_stored_without_logits_need_a_declared_order(store, tmp_path):
    path = _manifest(tmp_path, [{"pred": "zebra"}, {"pred": "ant"}])
    ingest_manifest(store, "ds", path, prediction_column="pred", classes=["zebra", "ant"])
    logits = _manifest(tmp_path, [{"pred": "zebra", "logits": [2, 0]}], name="l.jsonl")
    with pytest.raises(
        IngestError,
        match=r"^l\.jsonl: field 'predictions' of 'ds' holds classes \['zebra', 'ant'\] written "
        r"without logits; logits of field 'predictions'",
    ):
        ingest_manifest(store, "ds", logits, prediction_column="pred", logits_column="logits")
    ingest_manifest(
        store, "ds", logits, prediction_column="pred", logits_column="logits",
        classes=["zebra", "ant"],
    )  # fmt: skip
    assert list(store.labels("ds", "predictions").set_index("sample_id").loc["s0", "logits"]) == [
        2.0,
        0.0,
    ]
