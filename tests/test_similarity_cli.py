"""brain similarity query / duplicates / unique on a real (sklearn) index."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import sample_frame

import dagster_brain as fob
from dagster_brain.cli import main


@pytest.fixture
def data_dir(store, tmp_path):
    store.write_samples("toy", sample_frame([f"/img/{i}.png" for i in range(40)]))
    X = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    X[39] = X[4]  # s039 copies s004
    fob.compute_similarity(fob.Dataset("toy", store), embeddings=X, brain_key="sim").close()
    np.save(tmp_path / "q.npy", X[4])
    return str(store.data_dir)


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_query_by_id_vector_and_reverse(data_dir, tmp_path):
    out = run("similarity", "query", "sim", "--id", "s004", "-k", "2", "--data-dir", data_dir)
    assert out.exit_code == 0
    lines = out.stdout.splitlines()[1:]
    assert lines[0].split()[0] == "s004" and lines[1].split()[0] == "s039"
    out = run(
        "similarity",
        "query",
        "sim",
        "--vector-file",
        str(tmp_path / "q.npy"),
        "-k",
        "1",
        "--reverse",
        "--save",
        "far",
        "--data-dir",
        data_dir,
    )
    assert out.exit_code == 0 and "saved to views." in out.stdout
    out = run("similarity", "query", "sim", "--id", "nope", "--data-dir", data_dir)
    assert out.exit_code == 2 and "no vectors for sample ids ['nope']" in out.stderr
    out = run("similarity", "query", "sim", "--prompt", "a cat", "--data-dir", data_dir)
    assert out.exit_code == 2 and "no text tower" in out.stderr


def test_duplicates_and_unique(data_dir):
    out = run("duplicates", "sim", "--thresh", "0.0001", "--data-dir", data_dir)
    assert out.exit_code == 0 and "1 duplicates in 1 groups" in out.stdout
    assert "s039" in out.stdout and "s004" in out.stdout
    out = run("duplicates", "sim", "--thresh", "0.1", "--fraction", "0.1", "--data-dir", data_dir)
    assert out.exit_code == 2 and "at most one of --thresh and --fraction" in out.stderr
    out = run("unique", "sim", "5", "--data-dir", data_dir)
    assert out.exit_code == 0 and len(out.stdout.strip().splitlines()) == 6
    info = json.loads(run("runs", "info", "toy", "unique", "--data-dir", data_dir).stdout)
    assert info["type"] == "unique" and info["upstream"]["similarity"]["brain_key"] == "sim"
