"""The real assets, materialised in process on a temporary store, against known answers."""

import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dagster_brain.algorithms.knn import exact_knn
from dagster_brain.algorithms.uniqueness import neighbour_weights
from dagster_brain.definitions import build_defs
from dagster_brain.factory import brain_key_asset, embeddings_key, health_report_key, samples_key
from dagster_brain.store import Store


def make_folder(root, n_per_class=4, seed=0):
    """Class folders of random images, plus one exact duplicate of cat/0."""
    rng = np.random.default_rng(seed)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    shutil.copy(root / "cat" / "0.png", root / "cat" / "copy.png")


def write_keys(path, folder, extra_runs=()):
    path.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"name": "pets", "source": {"type": "image_folder", "path": str(folder)}}
                ],
                "embeddings": [
                    {"key": "default", "dataset": "pets", "num_workers": 0, "batch_size": 4}
                ],
                "brain_runs": [
                    {
                        "brain_key": "uniqueness",
                        "kind": "uniqueness",
                        "dataset": "pets",
                        "embeddings": "default",
                        "k": 2,
                    },
                    *extra_runs,
                ],
            }
        )
    )
    return path


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "images"
    make_folder(folder)
    keys = write_keys(tmp_path / "brain_keys.yaml", folder)
    return keys, tmp_path / "data"


def materialize_all(keys, data_dir, **kwargs):
    defs = build_defs(keys, data_dir)
    return dg.materialize(list(defs.assets), resources=defs.resources, **kwargs)


def test_graph_materializes_and_uniqueness_matches_brute_force(project):
    keys, data_dir = project
    result = materialize_all(keys, data_dir)
    assert result.success
    done = {e.asset_key for e in result.get_asset_materialization_events()}
    assert done == {
        samples_key("pets"),
        embeddings_key("pets", "default"),
        brain_key_asset("pets", "uniqueness"),
        health_report_key("pets"),
    }
    store = Store(data_dir)
    assert (store.data_dir / "reports" / "pets.html").is_file()
    emb = store.read_embeddings("pets", "default")
    assert emb.vectors.shape == (9, 1280) and emb.model == "efficientnet-lite0"
    res = store.load_results("pets", "uniqueness").set_index("sample_id")
    # brute force over the stored vectors
    d, _ = exact_knn(emb.vectors, 2)
    raw = d @ neighbour_weights(2)
    expected = pd.Series(raw / raw.max(), index=emb.sample_ids)
    assert np.allclose(res.loc[emb.sample_ids, "uniqueness"], expected, atol=1e-6)
    # the planted exact copy and its original are the two least unique samples
    assert set(res["uniqueness"].nsmallest(2).index) == {"cat/0", "cat/copy"}
    mat = result.asset_materializations_for_node("pets__brain__uniqueness")[0]
    assert mat.metadata["dagster/row_count"].value == 9
    assert mat.metadata["run_id"].value == result.run_id
    assert "uniqueness_histogram" in mat.metadata
    info = store.get_run("pets", "uniqueness").info()
    assert info["upstream"]["embeddings"]["model"] == "efficientnet-lite0"
    assert info["run_id"] == result.run_id and info["num_samples"] == 9


def test_failed_run_keeps_previous_results(project, monkeypatch):
    keys, data_dir = project
    assert materialize_all(keys, data_dir).success
    store = Store(data_dir)
    before = store.load_results("pets", "uniqueness")
    created = store.get_run("pets", "uniqueness").created_at

    import dagster_brain.methods.uniqueness as methods

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash in the middle of the run")

    monkeypatch.setattr(methods, "uniqueness_from_graph", broken)
    result = materialize_all(
        keys, data_dir, raise_on_error=False, selection=[brain_key_asset("pets", "uniqueness")]
    )
    assert not result.success
    pd.testing.assert_frame_equal(store.load_results("pets", "uniqueness"), before)
    assert store.get_run("pets", "uniqueness").created_at == created


def test_run_config_overrides_the_yaml(project):
    keys, data_dir = project
    assert materialize_all(keys, data_dir).success
    result = materialize_all(
        keys,
        data_dir,
        selection=[brain_key_asset("pets", "uniqueness")],
        run_config={"ops": {"pets__brain__uniqueness": {"config": {"k": 1}}}},
    )
    assert result.success
    assert Store(data_dir).get_run("pets", "uniqueness").config["k"] == 1


def test_definitions_expose_graph_and_job(project):
    keys, data_dir = project
    defs = build_defs(keys, data_dir)
    graph = defs.resolve_asset_graph()
    node = graph.get(brain_key_asset("pets", "uniqueness"))
    assert embeddings_key("pets", "default") in node.parent_keys
    assert samples_key("pets") in graph.get(embeddings_key("pets", "default")).parent_keys
    assert defs.resolve_job_def("brain_all") is not None


def test_similarity_duplicates_unique_exact_assets(tmp_path):
    folder = tmp_path / "images"
    make_folder(folder)
    runs = [
        {
            "brain_key": "sim",
            "kind": "similarity",
            "dataset": "pets",
            "embeddings": "default",
            "backend": "lancedb",
        },
        {"brain_key": "dups", "kind": "duplicates", "dataset": "pets", "similarity": "sim"},
        {
            "brain_key": "spread",
            "kind": "unique",
            "dataset": "pets",
            "similarity": "sim",
            "count": 3,
        },
        {"brain_key": "exact", "kind": "exact_duplicates", "dataset": "pets"},
    ]
    keys = write_keys(tmp_path / "keys.yaml", folder, extra_runs=runs)
    data_dir = tmp_path / "data"
    result = materialize_all(keys, data_dir)
    assert result.success
    store = Store(data_dir)
    sim = store.get_run("pets", "sim")
    assert sim.method == "lancedb" and len(store.load_results("pets", "sim")) == 9
    dups = store.load_results("pets", "dups")
    assert set(dups["sample_id"]) == {"cat/0", "cat/copy"}
    assert set(dups["role"]) == {"kept", "duplicate"}
    assert dups["path"].dropna().iloc[0].startswith("hash:")
    exact = store.load_results("pets", "exact")
    assert set(exact["sample_id"]) == {"cat/0", "cat/copy"} and set(exact["match"]) == {"bytes"}
    assert len(store.load_results("pets", "spread")) == 3
    meta = result.asset_materializations_for_node("pets__brain__dups")[0].metadata
    assert "duplicates_plot" in meta and meta["duplicates"].value == 1
    sim_meta = result.asset_materializations_for_node("pets__brain__sim")[0].metadata
    assert sim_meta["backend"].value == "lancedb"
    # the index answers queries through the API afterwards
    import dagster_brain as fob

    view = fob.sort_by_similarity(fob.Dataset("pets", store), "cat/copy", k=2, brain_key="sim")
    assert list(view.ids) == ["cat/copy", "cat/0"]


def test_asset_checks_pass_and_catch_bad_results(tmp_path):
    from dagster_brain.checks import check_results
    from dagster_brain.specs import load_specs

    folder = tmp_path / "images"
    make_folder(folder)
    runs = [{"brain_key": "sim", "kind": "similarity", "dataset": "pets", "embeddings": "default"}]
    keys = write_keys(tmp_path / "keys.yaml", folder, extra_runs=runs)
    defs = build_defs(keys, tmp_path / "data")
    result = dg.materialize([*defs.assets, *defs.asset_checks], resources=defs.resources)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    names = {"embeddings_valid", "results_valid", "store_health"}
    assert {e.check_name for e in evaluations} == names  # store_health: the doctor's quick look
    assert len(evaluations) == 4 and all(e.passed for e in evaluations)
    # a tampered result (NaN score, a missing row) fails the check with the reason
    store = Store(tmp_path / "data")
    spec = next(r for r in load_specs(keys).brain_runs if r.brain_key == "uniqueness")
    record = store.get_run("pets", "uniqueness")
    bad = store.load_results("pets", "uniqueness").iloc[1:].copy()
    bad.loc[bad.index[0], "uniqueness"] = np.nan
    store.commit_run(record, bad)
    passed, meta = check_results(store, spec)
    problems = meta["problems"].value
    assert not passed and any("8 rows for 9" in p for p in problems)
    assert any("NaN" in p for p in problems)


def test_unreachable_backend_is_retried_and_keeps_previous_results(tmp_path):
    folder = tmp_path / "images"
    make_folder(folder)
    runs = [
        {
            "brain_key": "sim",
            "kind": "similarity",
            "dataset": "pets",
            "embeddings": "default",
            "backend": "qdrant",
            "backend_params": {"url": "http://127.0.0.1:9"},
        }
    ]
    keys = write_keys(tmp_path / "keys.yaml", folder, extra_runs=runs)
    result = materialize_all(keys, tmp_path / "data", raise_on_error=False)
    assert not result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2  # a transient backend error is retried twice
    store = Store(tmp_path / "data")
    assert store.get_run("pets", "sim", missing_ok=True) is None
    assert len(store.load_results("pets", "uniqueness")) == 9  # the rest of the graph ran
