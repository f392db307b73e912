"""The dataset health report: one self-contained HTML file naming every run with its counts,
thumbnails embedded, duplicate groups, leak pairs, the class table and the embeddings map;
written by the API, the CLI and the Dagster asset."""

from __future__ import annotations

import re

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import sample_frame, write_images

from dagster_brain.api import (
    Dataset,
    compute_brain,
    compute_label_summary,
    compute_outliers,
    write_health_report,
)
from dagster_brain.cli import main
from dagster_brain.health_report import render_report, report_path
from dagster_brain.methods.label_summary import LabelSummarySpec
from dagster_brain.runs import new_record

N = 40


@pytest.fixture
def toy(store, tmp_path):
    """40 small images in two classes and splits; s000 and s039 share a content hash; the
    embeddings of s038 and s039 lie far from both clusters."""
    frame = sample_frame(write_images(tmp_path / "img", N, size=16))
    frame.loc[N - 1, "content_hash"] = frame.loc[0, "content_hash"]
    frame["split"] = ["train"] * 30 + ["test"] * 10
    ids = frame["sample_id"].tolist()
    labels = ["a" if i % 2 else "b" for i in range(N)]
    gt = pd.DataFrame({"sample_id": ids, "label_id": [f"l{i}" for i in range(N)], "label": labels})
    store.write_samples("toy", frame, labels={"ground_truth": ("classification", None, gt)})
    rng = np.random.default_rng(0)
    X = np.where(np.array(labels)[:, None] == "a", 4.0, -4.0) * np.eye(8)[0]
    X = X + rng.normal(scale=0.5, size=(N, 8))
    X[N - 2 :] = rng.normal(size=(2, 8)) * 0.5 + 6 * np.eye(8)[1:3]
    store.write_embeddings("toy", "e", ids, X.astype(np.float32))
    ds = Dataset("toy", store)
    compute_outliers(ds, embeddings="e", label_field="ground_truth")
    compute_label_summary(ds)
    compute_brain(ds, "exact_duplicates", "dups")
    compute_brain(
        ds, "visualization", "vis", embeddings="e", method="pca", label_field="ground_truth"
    )
    _leak_run(store, ids)
    return store, ids


def _leak_run(store, ids):
    """A run of another kind (as a leaky-splits run stores it): a flag per sample and a
    further table of pairs across splits."""
    spec = LabelSummarySpec(kind="label_summary", dataset="toy", brain_key="leaks")
    record = new_record(spec, store, method="test", sample_ids=ids, run_id=None, upstream={})
    record.kind = "leaky_splits"
    leak = np.zeros(N, bool)
    leak[[3, 35]] = True
    results = pd.DataFrame({"sample_id": ids, "leak": leak})
    pairs = pd.DataFrame(
        {
            "sample_id_a": [ids[3]],
            "split_a": ["train"],
            "sample_id_b": [ids[35]],
            "split_b": ["test"],
            "distance": [0.01],
        }
    )
    store.commit_run(record, results, extra={"pairs": pairs})


def _imgs(page: str) -> dict[str, str]:
    """alt -> src of every <img> of the page."""
    return dict(
        (alt, src) for src, alt in re.findall(r'<img src="([^"]+)"[^>]* alt="([^"]+)"', page)
    )


def test_the_report_names_every_run_with_counts_and_embedded_thumbnails(toy):
    store, ids = toy
    path = write_health_report(Dataset("toy", store))
    assert path == store.data_dir / "reports" / "toy.html" == report_path(store, "toy")
    assert [p.name for p in path.parent.iterdir()] == ["toy.html"]  # no temporary file left
    page = path.read_text()
    # one file, nothing fetched from elsewhere
    assert not re.search(r"https?://|<link|<script|@import|url\(", page)
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for key in ("outliers", "label_summary", "dups", "vis", "leaks"):
        assert f'<h2 id="{key}">' in page
    # issue counts, as the results say
    out = store.load_results("toy", "outliers")
    n_out = int((out["is_outlier"] | out["class_is_outlier"]).sum())
    assert n_out >= 2
    assert re.search(
        rf"<td>outliers</td><td>outliers</td><td>knn</td><td>[^<]*</td><td>{N}</td><td>{n_out}</td>",
        page,
    )
    assert re.search(
        r"<td>dups</td><td>exact_duplicates</td>.*?<td>2</td><td>1</td><td>groups: 1", page
    )
    assert re.search(
        r"<td>leaks</td><td>leaky_splits</td><td>test</td><td>[^<]*</td><td>40</td><td>2</td>"
        r"<td>leak: 2</td>",
        page,
    )
    # the top 8 outliers are shown as thumbnails, the two planted ones among them
    imgs = _imgs(page)
    top = out.nlargest(8, "outlier")["sample_id"].tolist()
    assert set(ids[-2:]) <= set(top) and set(top) <= set(imgs)
    # duplicate group members, both ends of the leak pair
    assert {ids[0], ids[-1], ids[3], ids[35]} <= set(imgs)
    assert "pairs: 1 pairs" in page
    # class table: 20 and 20 -> imbalance 1.00
    assert "imbalance ratio (largest / smallest class): 1.00" in page
    # the embeddings map: one point per sample, the flagged outliers ringed
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<circle") == N + int(out["is_outlier"].sum())
    assert f"{N} points" in page


def test_a_dataset_without_runs(store, tmp_path):
    store.write_samples("bare", sample_frame(write_images(tmp_path / "b", 3, size=8)))
    report = render_report(store, "bare")
    assert "no brain runs yet" in report.html and report.runs == [] and report.issues == 0


def test_the_version_ignores_the_time(toy):
    from datetime import UTC, datetime

    store, _ = toy
    a = render_report(store, "toy", now=datetime(2020, 1, 1, tzinfo=UTC))
    b = render_report(store, "toy", now=datetime(2021, 1, 1, tzinfo=UTC))
    assert a.html != b.html and a.version == b.version and "2020-01-01 00:00 UTC" in a.html


def test_cli_writes_the_report(toy, tmp_path):
    store, _ = toy
    out = tmp_path / "out" / "health.html"
    res = CliRunner().invoke(
        main, ["report", "toy", "--out", str(out), "--data-dir", str(store.data_dir)]
    )
    assert res.exit_code == 0, res.output
    assert out.is_file() and f"report: {out}" in res.output and out.as_uri() in res.output
    assert '<h2 id="outliers">' in out.read_text()
    bad = CliRunner().invoke(main, ["report", "nope", "--data-dir", str(store.data_dir)])
    assert bad.exit_code != 0 and "no dataset 'nope'" in bad.output


def test_the_asset_writes_the_report_and_links_it(toy):
    from dagster_brain.factory import build_health_report_asset, health_report_key
    from dagster_brain.resources.store import BrainStoreResource

    store, _ = toy
    asset = build_health_report_asset("toy", ["outliers", "label_summary"])
    deps = {k.to_user_string() for k in asset.asset_deps[health_report_key("toy")]}
    assert deps == {"toy/samples", "toy/brain/outliers", "toy/brain/label_summary"}
    result = dg.materialize(
        [asset], resources={"store": BrainStoreResource(data_dir=str(store.data_dir))}
    )
    assert result.success
    meta = result.asset_materializations_for_node("toy__brain__health_report")[0].metadata
    path = report_path(store, "toy")
    assert meta["report"].value == str(path) and meta["report_file_url"].value == path.as_uri()
    assert meta["report_url"].value.endswith("/report/toy")  # the viewer serves it
    assert meta["brain_runs"].value == 5 and path.is_file()
    with pytest.raises(ValueError, match="'health_report' on 'toy'"):
        build_health_report_asset("toy", ["health_report"])
