"""The brain CLI: config, runs, export, and one-line errors with exit code 2."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import sample_frame

import dagster_brain as fob
from dagster_brain.cli import main


@pytest.fixture
def data_dir(store):
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(5)]))
    rng = np.random.default_rng(1)
    fob.compute_uniqueness(
        fob.Dataset("toy", store), embeddings=rng.normal(size=(5, 4)).astype(np.float32)
    )
    return str(store.data_dir)


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_config_prints_merged_json_with_masked_secrets(tmp_path):
    env = {
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
        "BRAIN_SIMILARITY_QDRANT_API_KEY": "qd-secret-key-9876",
        "BRAIN_DEFAULT_SIMILARITY_BACKEND": "qdrant",
    }
    from dagster_brain.config import reset_brain_config

    reset_brain_config()  # re-read the environment
    try:
        out = run("config", env=env)
    finally:
        reset_brain_config()
    assert out.exit_code == 0
    data = json.loads(out.stdout)
    assert data["default_similarity_backend"] == "qdrant"
    assert data["similarity_backends"]["qdrant"]["api_key"] == "****9876"
    assert "qd-secret" not in out.output
    reset_brain_config()
    try:
        one = run("config", "similarity_backends.qdrant", env=env)
        leaf = run("config", "similarity_backends.qdrant.api_key", env=env)
        bad = CliRunner().invoke(main, ["config", "similarity_backends.qdrnt"], env=env)
    finally:
        reset_brain_config()
    assert json.loads(one.stdout)["api_key"] == "****9876" and "qd-secret" not in one.output
    assert leaf.stdout.strip() == "****9876"
    assert bad.exit_code != 0 and "similarity_backends has no field 'qdrnt'" in bad.output


def test_runs_commands(data_dir, tmp_path):
    out = run("runs", "list", "toy", "--data-dir", data_dir)
    assert out.exit_code == 0 and "uniqueness" in out.stdout
    info = json.loads(run("runs", "info", "toy", "uniqueness", "--data-dir", data_dir).stdout)
    assert info["type"] == "uniqueness" and info["num_samples"] == 5
    view = run("runs", "view", "toy", "uniqueness", "--data-dir", data_dir)
    assert "s000" in view.stdout and "uniqueness" in view.stdout
    target = tmp_path / "exported.parquet"
    assert run("export", "toy", "uniqueness", str(target), "--data-dir", data_dir).exit_code == 0
    assert pd.read_parquet(target)["sample_id"].tolist() == [f"s{i:03d}" for i in range(5)]
    assert run("runs", "rename", "toy", "uniqueness", "u2", "--data-dir", data_dir).exit_code == 0
    assert run("runs", "delete", "toy", "u2", "--data-dir", data_dir).exit_code == 0
    assert "no brain runs" in run("runs", "list", "toy", "--data-dir", data_dir).stderr


def test_errors_are_one_line_with_exit_code_2(data_dir):
    out = run("runs", "info", "toy", "nope", "--data-dir", data_dir)
    assert out.exit_code == 2
    assert "error: dataset 'toy' has no brain run 'nope'" in out.stderr
    assert "Traceback" not in out.output
    out = run("runs", "list", "Bad-Name", "--data-dir", data_dir)
    assert out.exit_code == 2 and "not a valid name" in out.stderr


def test_top_prints_scores_and_writes_a_contact_sheet(store, tmp_path):
    from PIL import Image

    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(path)
        paths.append(str(path))
    store.write_samples("pics", sample_frame(paths))
    X = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    fob.compute_uniqueness(fob.Dataset("pics", store), embeddings=X, k=1)
    out = run(
        "top",
        "uniqueness",
        "-n",
        "2",
        "--html",
        str(tmp_path / "top.html"),
        "--data-dir",
        str(store.data_dir),
    )
    assert out.exit_code == 0
    lines = out.stdout.splitlines()
    assert lines[1].split()[0] == "s003"  # the most unique comes first
    sheet = (tmp_path / "top.html").read_text()
    assert sheet.count("<figure") == 2 and "data:image/png;base64," in sheet
    low = run("top", "uniqueness", "-n", "2", "--ascending", "--data-dir", str(store.data_dir))
    assert {ln.split()[0] for ln in low.stdout.splitlines()[1:]} == {"s000", "s001"}
