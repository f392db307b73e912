"""The ingest and demo click groups: reports, exit code 2 on bad input, BRAIN_DATA_DIR."""

import pytest
from click.testing import CliRunner
from PIL import Image

from dagster_brain.ingest.cli import demo, ingest
from dagster_brain.store import Store


@pytest.fixture
def folder(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / cls / "a.png")
    return tmp_path / "imgs"


def test_folder_prints_the_report(tmp_path, folder):
    result = CliRunner().invoke(
        ingest,
        [
            "folder",
            str(folder),
            "-d",
            "pets",
            "--data-dir",
            str(tmp_path / "data"),
            "--tag",
            "x",
            "--split",
            "train",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dataset 'pets': 2 samples added, 0 updated, 0 skipped" in result.output
    assert "ground_truth (2)" in result.output
    assert Store(tmp_path / "data").samples("pets")["split"].tolist() == ["train", "train"]


def test_data_dir_from_env(tmp_path, folder, monkeypatch):
    monkeypatch.setenv("BRAIN_DATA_DIR", str(tmp_path / "envdata"))
    result = CliRunner().invoke(ingest, ["folder", str(folder), "-d", "pets", "--no-labels"])
    assert result.exit_code == 0, result.output
    assert Store(tmp_path / "envdata").sample_ids("pets") == ["cat/a", "dog/a"]


def test_bad_input_exits_2_without_traceback(tmp_path, folder):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        'id,filepath,pred,logits\ns1,imgs/cat/a.png,a,"[1, 2]"\ns2,imgs/dog/a.png,b,"[1, 2, 3]"\n'
    )
    args = [
        "manifest",
        str(manifest),
        "-d",
        "ds",
        "--logits-column",
        "logits",
        "--prediction-column",
        "pred",
        "--classes",
        "a,b",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    result = CliRunner().invoke(ingest, args)
    assert result.exit_code == 2
    assert "m.csv row 2 (sample 's2'): logits have 3 values, expected" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(ingest, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "1 samples added, 0 updated, 1 skipped" in result.output
    result = CliRunner().invoke(
        ingest, ["folder", str(folder), "-d", "Bad", "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 2 and "not a valid name" in result.output


def test_manifest_embedding_option_and_predictions(tmp_path, folder):
    data = ["--data-dir", str(tmp_path / "data")]
    manifest = tmp_path / "m.csv"
    manifest.write_text('id,filepath,emb\ns1,imgs/cat/a.png,"[1, 2]"\ns2,imgs/dog/a.png,"[3, 4]"\n')
    result = CliRunner().invoke(
        ingest, ["manifest", str(manifest), "-d", "ds", "--embedding", "emb=vec", *data]
    )
    assert result.exit_code == 0, result.output
    assert "embeddings: vec (2)" in result.output
    preds = tmp_path / "p.csv"
    preds.write_text("id,label\ns1,cat\n")
    result = CliRunner().invoke(ingest, ["predictions", str(preds), "-d", "ds", *data])
    assert result.exit_code == 0 and "predictions (1)" in result.output
    result = CliRunner().invoke(
        ingest, ["manifest", str(manifest), "-d", "ds", "--embedding", "emb", *data]
    )
    assert result.exit_code == 2 and "COLUMN=KEY" in result.output


def test_coco_and_demo_make(tmp_path):
    data = ["--data-dir", str(tmp_path / "data")]
    result = CliRunner().invoke(
        demo,
        [
            "make",
            *data,
            "--digits-samples",
            "60",
            "--digits-duplicates",
            "4",
            "--shapes-images",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dataset 'digits': 64 samples added" in result.output
    assert "dataset 'shapes': 10 samples added" in result.output
    shapes = tmp_path / "data" / "demo" / "shapes"
    result = CliRunner().invoke(
        ingest,
        [
            "coco",
            str(shapes / "annotations.json"),
            "-d",
            "shapes2",
            "--images-dir",
            str(shapes / "images"),
            "--predictions",
            str(shapes / "predictions.json"),
            *data,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dataset 'shapes2': 10 samples added" in result.output
