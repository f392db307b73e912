"""Notebook use: views and datasets as HTML tables with thumbnails, plots as PIL images, and
examples/quickstart.ipynb executed end to end in a Jupyter kernel."""

from __future__ import annotations

import ast
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import sample_frame, write_images
from PIL import Image

import dagster_brain as fob

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


@pytest.fixture
def dataset(store, tmp_path):
    """14 real 32 px images; s013 repeats s002's vector; labels include markup."""
    paths = write_images(tmp_path / "img", 14)
    samples = sample_frame(paths)
    gt = pd.DataFrame(
        {
            "sample_id": samples["sample_id"],
            "label_id": [f"gt{i}" for i in range(14)],
            "label": ["<script>alert(1)</script>" if i == 1 else f"c{i % 3}" for i in range(14)],
        }
    )
    classes = ["c0", "c1", "c2", "<script>alert(1)</script>"]
    store.write_samples("toy", samples, labels={"ground_truth": ("classification", classes, gt)})
    return fob.Dataset("toy", store)


def _vectors() -> np.ndarray:
    X = np.random.default_rng(0).normal(size=(14, 8)).astype(np.float32)
    X[13] = X[2]  # s013 duplicates s002
    return X


def _rows(html: str) -> list[str]:
    return re.findall(r"<tr><td>.*?</tr>", html.split("<tbody>")[1])


def test_view_html_shows_thumbnails_labels_scores_and_counts(dataset):
    fob.compute_uniqueness(dataset, embeddings=_vectors(), k=1)
    view = dataset.load_brain_view("uniqueness").sort_by("uniqueness")
    html = view._repr_html_()
    assert "10 of 14 samples" in html
    rows = _rows(html)
    assert len(rows) == 10 and html.count("<img") == 10
    assert all('src="data:image/png;base64,' in r for r in rows)
    # least unique first: the planted pair, with its label and 4-digit score
    assert {rows[0].split("<td>")[2][:4], rows[1].split("<td>")[2][:4]} == {"s002", "s013"}
    score = view.to_pandas().set_index("sample_id").loc["s002", "uniqueness"]
    assert f"<td>{score:.4g}</td>" in rows[0] + rows[1]
    for column in ("sample_id", "ground_truth", "uniqueness", "nearest_id"):
        assert f"<th>{column}</th>" in html
    assert "<td>c2</td>" in rows[0] + rows[1]  # s002's label
    assert view.to_html(max_rows=3).count("<img") == 3
    assert "3 of 14 samples" in view.to_html(max_rows=3)
    assert repr(view).startswith("DatasetView('toy', 14 samples, columns=['uniqueness'")


def test_html_escapes_values(dataset):
    html = dataset._repr_html_()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "10 of 14 samples" in html and html.count("<img") == 10


def test_patch_views_show_each_box_label_and_sample_views_list_them(store, tmp_path):
    paths = write_images(tmp_path / "img", 2)
    boxes = pd.DataFrame(
        {
            "sample_id": ["s000", "s000", "s001"],
            "label_id": ["b0", "b1", "b2"],
            "label": ["cat", "dog", "cat"],
            "box": [[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.4, 0.4], [0.0, 0.0, 1.0, 1.0]],
        }
    )
    labels = {"objects": ("detections", ["cat", "dog"], boxes)}
    store.write_samples("det", sample_frame(paths), labels=labels)
    ds = fob.Dataset("det", store)
    scores = pd.DataFrame({"label_id": ["b2", "b0", "b1"], "u": [0.9, 0.5, 0.1]})
    view = fob.DatasetView(ds, ("s001", "s000", "s000"), scores, ("b2", "b0", "b1"))
    html = view._repr_html_()
    assert "3 of 3 patches" in html
    cells = [r.split("<td>")[2:6] for r in _rows(html)]
    assert [[c.split("<")[0] for c in row] for row in cells] == [
        ["s001", "b2", "cat", "0.9"],
        ["s000", "b0", "cat", "0.5"],
        ["s000", "b1", "dog", "0.1"],
    ]
    assert "<td>cat, dog</td>" in ds._repr_html_()  # every box label of the sample


def test_unreadable_image_leaves_an_empty_thumbnail(store, tmp_path):
    paths = write_images(tmp_path / "img", 2)
    Path(paths[1]).write_bytes(b"not an image")
    store.write_samples("broken", sample_frame(paths))
    html = fob.Dataset("broken", store)._repr_html_()
    assert "2 of 2 samples" in html and html.count("<img") == 1
    assert "<tr><td></td><td>s001</td>" in html


def test_visualize_functions_return_images_that_save(dataset, tmp_path):
    index = fob.compute_similarity(dataset, embeddings=_vectors())
    try:
        index.find_duplicates(thresh=1e-4)
        from_index = fob.visualize_duplicates(index)
        index.find_unique(4)
        unique_from_index = fob.visualize_unique(index)
    finally:
        index.close()
    out = fob.compute_near_duplicates(dataset, thresh=1e-4, verify=False)
    assert sorted(out.results["sample_id"]) == ["s002", "s013"]
    fob.compute_brain(dataset, "unique", similarity="similarity", count=4)
    for plot in (
        from_index,
        unique_from_index,
        fob.visualize_duplicates(dataset),
        fob.visualize_unique(dataset.view()),
    ):
        assert isinstance(plot, Image.Image) and plot.size[0] > 300
        assert plot._repr_png_()[:4] == b"\x89PNG"  # what Jupyter displays
    target = tmp_path / "dups.png"
    fob.visualize_duplicates(dataset).save(target)
    assert Image.open(target).size == fob.visualize_duplicates(dataset).size
    with pytest.raises(ValueError, match="'similarity' on 'toy' is a similarity run"):
        fob.visualize_duplicates(dataset, brain_key="similarity")


def test_visualize_points_returns_the_runs_plot(store, tmp_path):
    paths = write_images(tmp_path / "img", 24)
    store.write_samples("pts", sample_frame(paths))
    ds = fob.Dataset("pts", store)
    X = np.random.default_rng(3).normal(size=(24, 6)).astype(np.float32)
    fob.compute_visualization(ds, embeddings=X, method="pca")
    png = store.data_dir / "plots" / "pts" / "visualization.png"
    plot = fob.visualize_points(ds)
    assert isinstance(plot, Image.Image)
    assert plot.size == Image.open(png).size
    png.unlink()
    with pytest.raises(FileNotFoundError, match="no plot at"):
        fob.visualize_points(ds)


def _kernel_env(tmp_path: Path, monkeypatch) -> None:
    """A 'python3' kernelspec that runs this interpreter, found first through JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (dagster-brain tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BRAIN_CONFIG_PATH", str(tmp_path / "none.json"))
    for var in ("DAGSTER_HOME", "BRAIN_BRAIN_KEYS_PATH", "BRAIN_DATA_DIR", "BRAIN_DEFAULT_MODEL"):
        monkeypatch.delenv(var, raising=False)
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


def _outputs(cell) -> tuple[str, dict]:
    """(all stream text, the execute_result's data) of an executed cell."""
    text = "".join(o.get("text", "") for o in cell.outputs if o["output_type"] == "stream")
    data = next((o["data"] for o in cell.outputs if o["output_type"] == "execute_result"), {})
    return text, data


def test_quickstart_notebook_runs_and_shows_its_results(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _kernel_env(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert len(nb.cells) <= 10 and all(not c.get("outputs") for c in nb.cells if "outputs" in c)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o["output_type"] == "error"]
    assert not errors, errors

    workdir = Path(_outputs(code[0])[0].strip())
    assert workdir.parent == tmp_path and (workdir / "data" / "brain.duckdb").is_file()

    _, shown = _outputs(code[2])  # the dataset: 25 images, the first 10 as rows
    html = shown["text/html"]
    assert "10 of 25 samples" in html and html.count("<img") == 10 and len(_rows(html)) == 10
    assert "<td>circle/c00</td>" in html and "<th>ground_truth</th>" in html

    text, shown = _outputs(code[3])  # uniqueness
    low, high = map(float, re.search(r"25 scores from ([\d.]+) to ([\d.]+)", text).groups())
    assert 0.0 <= low <= high <= 1.0
    rows = _rows(shown["text/html"])  # least unique first
    shown_scores = [float(r.split("<td>")[4].split("<")[0]) for r in rows]
    assert len(rows) == 10 and shown_scores == sorted(shown_scores)
    assert shown_scores[0] == pytest.approx(low, abs=1e-3)

    text, _ = _outputs(code[4])  # near-duplicates
    groups = ast.literal_eval(re.search(r"duplicate groups: (.*)", text).group(1))
    assert ["circle/c00", "circle/c00_copy"] in groups

    _, shown = _outputs(code[5])  # the plot, displayed and saved
    assert "image/png" in shown and (workdir / "duplicates.png").is_file()
    assert Image.open(workdir / "duplicates.png").size[0] > 300


def test_png_bytes_stay_bytes_and_display_as_images(tmp_path):
    from dagster_brain.display import PngBytes

    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (200, 0, 0)).save(buf, format="PNG")
    png = PngBytes(buf.getvalue())
    assert png == buf.getvalue() and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png._repr_png_() == buf.getvalue()
    assert png.to_image().size == (5, 3)
    assert Image.open(png.save(tmp_path / "a" / "p.png")).getpixel((0, 0)) == (200, 0, 0)
