"""compute_visualization as a brain run and an asset: points table, PNG, HTML, cleanup."""

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame

import dagster_brain as fob


@pytest.fixture
def dataset(store, tmp_path):
    from PIL import Image

    paths = []
    for i in range(60):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 4, 0, 0)).save(path)
        paths.append(str(path))
    store.write_samples("toy", sample_frame(paths))
    labels = pd.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(60)],
            "label_id": [f"gt:{i}" for i in range(60)],
            "label": [str(i % 3) for i in range(60)],
        }
    )
    store.write_labels("toy", "gt", "classification", ["0", "1", "2"], labels)
    return fob.Dataset("toy", store)


def clustered(n=60, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 12) * 10
    return (centres[np.arange(n) % 3] + rng.normal(size=(n, 12))).astype(np.float32)


def test_pca_run_writes_points_plots_and_cleans_up(dataset):
    out = fob.compute_visualization(
        dataset, embeddings=clustered(), method="pca", label_field="gt", brain_key="viz"
    )
    pts = out.results
    assert list(pts.columns) == ["sample_id", "x", "y", "label"] and len(pts) == 60
    # the three clusters stay apart: between-cluster centroid distance >> spread
    centroids = pts.groupby("label")[["x", "y"]].mean().to_numpy()
    spread = pts.groupby("label")[["x", "y"]].std().to_numpy().max()
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1 :]]
    assert min(gaps) > 3 * spread
    png, html = out.summary["png_path"], out.summary["html_path"]
    assert png.read_bytes()[:4] == b"\x89PNG" and "s059" in html.read_text()
    assert out.summary["trustworthiness_at_10"] > 0.8
    info = dataset.get_brain_info("viz")
    assert info["type"] == "visualization" and info["config"]["timings"]["fit_s"] >= 0
    dataset.delete_brain_run("viz")
    assert not png.exists() and not html.exists()


def test_manual_points_and_errors(dataset, tmp_path):
    table = pd.DataFrame(
        {"id": [f"s{i:03d}" for i in range(60)], "x": np.arange(60.0), "y": np.zeros(60)}
    )
    table.to_parquet(tmp_path / "pts.parquet")
    fob.compute_visualization(dataset, embeddings=clustered(), brain_key="base", method="pca")
    out = fob.compute_visualization(
        dataset,
        embeddings="base_embeddings",
        method="manual",
        brain_key="manual",
        points_path=str(tmp_path / "pts.parquet"),
    )
    assert out.results["x"].tolist() == list(np.arange(60.0))
    with pytest.raises(ValueError, match="brain key .tiny.*tsne needs at least 91 samples, got 3"):
        fob.compute_visualization(
            dataset.view(["s000", "s001", "s002"]),
            embeddings="base_embeddings",
            method="tsne",
            brain_key="tiny",
        )


def test_embeddings_of_another_model_are_refused(dataset):
    from dagster_brain.methods import run_uniqueness
    from dagster_brain.specs import UniquenessSpec

    dataset.store.write_embeddings("toy", "clip", dataset.sample_ids, clustered(), model="clip")
    spec = UniquenessSpec(
        brain_key="u",
        kind="uniqueness",
        dataset="toy",
        embeddings="clip",
        model="efficientnet-lite0",
    )
    with pytest.raises(
        ValueError, match="asks for embeddings of model 'efficientnet-lite0'.*computed by 'clip'"
    ):
        run_uniqueness(spec, dataset.store)


def test_cli_commands(dataset):
    from click.testing import CliRunner

    from dagster_brain.cli import main

    dataset.store.write_embeddings("toy", "e", dataset.sample_ids, clustered())
    out = CliRunner().invoke(
        main,
        [
            "visualization",
            "toy",
            "--embeddings",
            "e",
            "--method",
            "pca",
            "--data-dir",
            str(dataset.store.data_dir),
        ],
    )
    assert out.exit_code == 0 and "60 points (pca)" in out.stdout and "html:" in out.stdout
    out = CliRunner().invoke(
        main, ["visualization", "toy", "--data-dir", str(dataset.store.data_dir)]
    )
    assert out.exit_code == 2 and "exactly one of --embeddings" in out.stderr


def test_a_small_view_is_mapped_without_trustworthiness(dataset):
    """13 points: mapped; trustworthiness@10 needs more than 20, so it is not reported."""
    ids = [f"s{i:03d}" for i in range(13)]
    out = fob.compute_visualization(
        dataset.view(ids), embeddings=clustered()[:13], method="pca", brain_key="small"
    )
    assert sorted(out.results["sample_id"]) == ids
    assert out.summary["trustworthiness_at_10"] is None
