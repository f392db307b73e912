"""The embeddings viewer's app (starlette TestClient), saved views in the store, the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from brain_env import use_brain_env
from click.testing import CliRunner
from conftest import sample_frame
from PIL import Image
from starlette.testclient import TestClient

import dagster_brain as fob
from dagster_brain.config import BrainSettings
from dagster_brain.names import BrainNameError
from dagster_brain.store import SCHEMA_VERSION, Store, StoreError
from dagster_brain.viewer import build_app
from dagster_brain.viewer.cli import attach

N = 12  # samples s000..s011: s000-s005 near (0, 0), s006-s011 near (10, 10)


def known_points() -> pd.DataFrame:
    """Two clusters of six points on a small grid, a known answer for any box."""
    ids = [f"s{i:03d}" for i in range(N)]
    xs = [float(i % 3) + (10.0 if i >= 6 else 0.0) for i in range(N)]
    ys = [float((i % 6) // 3) + (10.0 if i >= 6 else 0.0) for i in range(N)]
    return pd.DataFrame({"id": ids, "x": xs, "y": ys})


def make_plot_dataset(store: Store, root, port: int | None = None):
    """12 small images with a ``gt`` label field, a uniqueness run and a manual
    visualization run ``viz`` at :func:`known_points`; returns the visualization's outcome."""
    paths = []
    for i in range(N):
        path = root / f"img{i}.png"
        Image.new("RGB", (8, 8), (20 * i, 255 - 20 * i, 0)).save(path)
        paths.append(str(path))
    store.write_samples("toy", sample_frame(paths))
    labels = pd.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(N)],
            "label_id": [f"gt:{i}" for i in range(N)],
            "label": ["cat" if i < 6 else "dog" for i in range(N)],
        }
    )
    store.write_labels("toy", "gt", "classification", ["cat", "dog"], labels)
    ds = fob.Dataset("toy", store)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, 8)).astype(np.float32)
    fob.compute_uniqueness(ds, embeddings=vectors, brain_key="uniq")
    points = root / "points.parquet"
    known_points().to_parquet(points)
    return fob.compute_visualization(
        ds,
        embeddings=vectors,
        method="manual",
        points_path=str(points),
        label_field="gt",
        brain_key="viz",
    )


@pytest.fixture
def plotted(store, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAIN_VIEWER_PORT", "3177")  # the run's link reads it
    monkeypatch.delenv("BRAIN_VIEWER_HOST", raising=False)
    outcome = make_plot_dataset(store, tmp_path)
    return store, outcome


@pytest.fixture
def client(plotted):
    store, _ = plotted
    with TestClient(build_app(store)) as c:
        yield c


def test_plot_page_and_plotly_served_locally(client):
    page = client.get("/plot/toy/viz")
    assert page.status_code == 200
    assert '<script defer src="/static/plotly.min.js">' in page.text
    assert "/api/plot/toy/viz" in page.text and "cdn" not in page.text.lower()
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and "scattergl" in js.text[:5_000_000]
    index = client.get("/")
    assert 'href="/plot/toy/viz"' in index.text


def test_plot_json_has_the_run_ids_coordinates_and_colour_fields(client):
    d = client.get("/api/plot/toy/viz").json()
    want = known_points()
    assert d["ids"] == want["id"].tolist() and d["sample_ids"] == want["id"].tolist()
    assert d["x"] == want["x"].tolist() and d["y"] == want["y"].tolist()
    assert [f["id"] for f in d["fields"]] == ["label:gt", "score:uniq"]
    assert d["default_field"] == "label:gt" and d["dims"] == 2


def test_colour_values_per_point(client, plotted):
    store, _ = plotted
    labels = client.get("/api/colour/toy/viz", params={"field": "label:gt"}).json()
    assert labels["kind"] == "label"
    assert labels["values"] == ["cat"] * 6 + ["dog"] * 6
    scores = client.get("/api/colour/toy/viz", params={"field": "score:uniq"}).json()
    by_id = store.load_results("toy", "uniq").set_index("sample_id")["uniqueness"]
    assert scores["kind"] == "score"
    assert scores["values"] == pytest.approx([by_id[f"s{i:03d}"] for i in range(N)])


def test_unknown_dataset_key_field_and_sample_are_refused_by_name(client):
    r = client.get("/api/plot/nope/viz")
    assert r.status_code == 404 and "'nope'" in r.json()["error"]
    r = client.get("/plot/toy/missing")
    assert r.status_code == 404 and "'missing'" in r.json()["error"]
    assert "viz" in r.json()["error"]  # the visualization runs it does have
    r = client.get("/api/plot/toy/uniq")
    assert r.status_code == 400 and "not a visualization" in r.json()["error"]
    r = client.get("/api/colour/toy/viz", params={"field": "score:nothing"})
    assert r.status_code == 404
    assert "'toy'" in r.json()["error"] and "'score:nothing'" in r.json()["error"]
    assert "label:gt" in r.json()["error"]
    r = client.get("/thumb/toy/s999")
    assert r.status_code == 404 and "'s999'" in r.json()["error"] and "'toy'" in r.json()["error"]
    r = client.get("/api/plot/Bad-Name/viz")
    assert r.status_code == 400 and "not a valid name" in r.json()["error"]


def test_thumbnail_is_a_png_of_the_sample(client):
    r = client.get("/thumb/toy/s003")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:4] == b"\x89PNG"


def test_contact_sheet_of_a_scored_run(client, plotted):
    store, _ = plotted
    top = store.load_results("toy", "uniq").sort_values("uniqueness", ascending=False)
    r = client.get("/sheet/toy/uniq", params={"n": 3})
    assert r.status_code == 200
    for sample_id in top["sample_id"].head(3):
        assert f"<b>{sample_id}</b>" in r.text
    assert f"<b>{top['sample_id'].iloc[3]}</b>" not in r.text
    assert client.get("/sheet/toy/viz").status_code == 400  # no scores


def test_save_view_round_trips_through_the_store(client, plotted):
    store, _ = plotted
    ids = ["s007", "s002", "s007", "s011"]
    r = client.post("/api/views/toy", json={"name": "picked", "sample_ids": ids, "source": "viz"})
    assert r.status_code == 201 and r.json() == {"dataset": "toy", "name": "picked", "n": 3}
    assert store.load_view_ids("toy", "picked") == ["s007", "s002", "s011"]
    listed = store.saved_views("toy")
    assert listed[["name", "n", "source"]].to_dict("records") == [
        {"name": "picked", "n": 3, "source": "viz"}
    ]
    assert client.get("/api/views/toy").json()["views"][0]["name"] == "picked"
    assert "picked (3)" in client.get("/").text


def test_bad_view_names_and_unknown_ids_are_refused(client, plotted):
    store, _ = plotted
    r = client.post("/api/views/toy", json={"name": "Bad Name", "sample_ids": ["s001"]})
    assert r.status_code == 400 and "view name 'Bad Name' is not a valid name" in r.json()["error"]
    r = client.post("/api/views/toy", json={"name": "ok", "sample_ids": ["s001", "zzz"]})
    assert r.status_code == 400
    assert "'zzz'" in r.json()["error"] and "dataset 'toy'" in r.json()["error"]
    r = client.post("/api/views/toy", json={"name": "ok", "sample_ids": []})
    assert r.status_code == 400 and "select some points" in r.json()["error"]
    r = client.post("/api/views/toy", content=b"not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert store.saved_views("toy").empty  # nothing half-written


def test_store_saved_views_api(plotted):
    store, _ = plotted
    store.save_view("toy", "a", ["s001", "s000"], source="viz")
    store.save_view("toy", "a", ["s003"])  # replaces
    assert store.load_view_ids("toy", "a") == ["s003"]
    assert store.saved_views("toy")[["name", "n"]].values.tolist() == [["a", 1]]
    with pytest.raises(BrainNameError, match="view name"):
        store.save_view("toy", "A", ["s001"])
    with pytest.raises(StoreError, match="dataset 'toy' has no saved view 'b'.*views: a"):
        store.load_view_ids("toy", "b")
    with pytest.raises(StoreError, match="not in dataset 'toy'"):
        store.save_view("toy", "c", ["s001", "nope"])
    assert store.parquet_path("toy", "views/a").exists()
    store.delete_view("toy", "a")
    assert store.saved_views("toy").empty and not store.parquet_path("toy", "views/a").exists()
    with pytest.raises(StoreError, match="no saved view 'a'"):
        store.delete_view("toy", "a")
    # a frame keeps its extra columns (the similarity API's views)
    store.save_view("toy", "near", pd.DataFrame({"sample_id": ["s002"], "distance": [0.5]}))
    assert store.load_view("toy", "near")["distance"].tolist() == [0.5]
    store.delete_dataset("toy")
    assert store.query("SELECT count(*) AS n FROM saved_views")["n"].iloc[0] == 0
    assert (
        store.query("SELECT count(*) AS n FROM duckdb_tables() WHERE schema_name = 'views'")[
            "n"
        ].iloc[0]
        == 0
    )


def test_a_store_at_version_3_lists_its_existing_views(tmp_path):
    import duckdb

    from dagster_brain.store import schema

    store = Store(tmp_path / "d")
    store.write_samples("d", sample_frame(["a.png", "b.png"]))
    store.save_view("d", "old", ["s000", "s001"])
    with duckdb.connect(str(store.db_path)) as conn:  # back to version 3: no saved_views
        conn.execute("DROP TABLE saved_views")
        conn.execute("UPDATE schema_version SET version = 3")
        assert schema.schema_version(conn) == 3
    reopened = Store(tmp_path / "d")
    listed = reopened.saved_views("d")
    assert listed[["name", "n"]].values.tolist() == [["old", 2]] and SCHEMA_VERSION == 4
    assert reopened.load_view_ids("d", "old") == ["s000", "s001"]


def test_visualization_links_the_viewer(plotted, monkeypatch):
    _, outcome = plotted
    assert outcome.summary["viewer_url"] == "http://127.0.0.1:3177/plot/toy/viz"
    assert outcome.summary["html_path"].exists()  # the static HTML is still written
    env = {"BRAIN_VIEWER_PORT": "4321", "BRAIN_CONFIG_PATH": "/nonexistent/brain_config.json"}
    assert BrainSettings.from_env(env=env).viewer_url("toy", "viz") == (
        "http://127.0.0.1:4321/plot/toy/viz"
    )
    with pytest.raises(ValueError, match="BRAIN_VIEWER_PORT"):
        BrainSettings.from_env(env={**env, "BRAIN_VIEWER_PORT": "web"})


def test_asset_metadata_links_the_viewer(plotted):
    from dagster_brain.methods import get_method

    _, outcome = plotted
    meta = get_method("visualization").asset_metadata(outcome)
    assert meta["interactive_plot_url"].url == outcome.summary["viewer_url"]


def test_views_cli(plotted, tmp_path):
    import click

    store, _ = plotted
    store.save_view("toy", "picked", ["s004", "s001"], source="viz")

    @click.group()
    def brain() -> None:
        pass

    attach(brain)
    runner = CliRunner()
    data = ["--data-dir", str(store.data_dir)]
    out = runner.invoke(brain, ["views", "list", "toy", *data])
    assert out.exit_code == 0 and "picked" in out.output and "viz" in out.output
    out = runner.invoke(brain, ["views", "show", "toy", "picked", *data])
    assert out.exit_code == 0
    lines = out.output.splitlines()
    assert lines[0] == "toy/picked: 2 samples"
    assert [ln.split("\t")[0] for ln in lines[1:]] == ["s004", "s001"]
    out = runner.invoke(brain, ["views", "delete", "toy", "picked", *data])
    assert out.exit_code == 0 and store.saved_views("toy").empty
    out = runner.invoke(brain, ["views", "show", "toy", "picked", *data])
    assert out.exit_code == 2 and "no saved view 'picked'" in out.output
    out = runner.invoke(brain, ["view", "--host", "0.0.0.0", *data])
    assert out.exit_code == 2 and "loopback" in out.output


def test_viewer_port_setting(request, monkeypatch, tmp_path):
    config = use_brain_env(request, monkeypatch, {"BRAIN_VIEWER_PORT": "3999"})
    assert config.viewer_port == 3999 and config.viewer_host == "127.0.0.1"
    assert BrainSettings.from_env().viewer_port == 3999
    empty = {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")}
    assert BrainSettings.from_env(env=empty).viewer_port == 3100
    (tmp_path / "c.json").write_text('{"viewer_port": 3200}')
    file_only = {"BRAIN_CONFIG_PATH": str(tmp_path / "c.json")}
    assert BrainSettings.from_env(env=file_only).viewer_port == 3200
    # the environment wins over the file
    both = {**file_only, "BRAIN_VIEWER_PORT": "3300"}
    assert BrainSettings.from_env(env=both).viewer_port == 3300


def test_the_health_report_is_served_once_written(client, plotted):
    from dagster_brain.health_report import write_health_report

    store, outcome = plotted
    dataset = outcome.record.dataset
    missing = client.get(f"/report/{dataset}")
    assert missing.status_code == 404 and f"brain report {dataset}" in missing.text
    path, _ = write_health_report(store, dataset)
    page = client.get(f"/report/{dataset}")
    assert page.status_code == 200 and page.text == path.read_text()
    assert "viz" in page.text  # the visualization run's section
    assert client.get("/report/not..a..name").status_code in (400, 404)
