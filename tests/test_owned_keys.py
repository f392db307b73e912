"""Brain keys declared in the brain-keys YAML are owned by their assets: the CLI and API run
them through Dagster on the project's instance, or refuse; other keys are ad-hoc."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import sample_frame, write_images

import dagster_brain as fob
from dagster_brain.cli import main
from dagster_brain.config import reset_brain_config
from dagster_brain.store import Store

N = 12


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project: store, YAML (uniqueness 'uniq', similarity 'sim', unique 'unique' with
    count 5) and a Dagster instance, found through the environment as scripts/env.sh sets it."""
    monkeypatch.chdir(tmp_path)  # no project .env here: only the environment names the instance
    paths = write_images(tmp_path / "images", N)
    data_dir = tmp_path / "data"
    store = Store(data_dir)
    store.write_samples("toy", sample_frame(paths))
    ids = store.sample_ids("toy")
    vectors = np.random.default_rng(3).normal(size=(N, 6)).astype(np.float32)
    store.write_embeddings("toy", "emb", ids, vectors, model=None, source="array")
    store.write_embeddings("toy", "other", ids, vectors[::-1].copy(), model=None, source="array")
    keys = tmp_path / "brain_keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"name": "toy", "source": {"type": "image_folder", "path": str(tmp_path)}}
                ],
                "embeddings": [{"key": "emb", "dataset": "toy"}],
                "brain_runs": [
                    {
                        "brain_key": "uniq",
                        "kind": "uniqueness",
                        "dataset": "toy",
                        "embeddings": "emb",
                    },
                    {
                        "brain_key": "sim",
                        "kind": "similarity",
                        "dataset": "toy",
                        "embeddings": "emb",
                    },
                    {
                        "brain_key": "unique",
                        "kind": "unique",
                        "dataset": "toy",
                        "similarity": "sim",
                        "count": 5,
                    },
                ],
            }
        )
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("BRAIN_DATA_DIR", str(data_dir))
    monkeypatch.setenv("BRAIN_BRAIN_KEYS_PATH", str(keys))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    reset_brain_config()  # re-read the environment
    yield store, keys
    reset_brain_config()


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def latest(asset: str):
    """The instance's latest materialisation of ``toy/brain/<asset>`` and its run's config."""
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["toy", "brain", asset]))
        if event is None:
            return None, None
        run = instance.get_run_by_id(event.run_id)
        return event, run.run_config


def test_cli_on_an_owned_key_materialises_its_asset(project):
    store, _ = project
    assert latest("uniq") == (None, None)
    out = cli("uniqueness", "toy", "--embeddings", "emb", "--brain-key", "uniq")
    assert out.exit_code == 0, out.output
    event, run_config = latest("uniq")
    assert event is not None and f"Dagster run {event.run_id}" in out.stdout
    record = store.get_run("toy", "uniq")
    assert record.run_id == event.run_id  # the store's run is the instance's materialisation
    assert len(store.load_results("toy", "uniq")) == N
    mat = event.asset_materialization
    assert mat.metadata["dagster/row_count"].value == N
    assert not run_config.get("ops")  # the declared parameters: no launch-time config

    # a launch-time field (k) differs: the asset runs with it as run config
    args = ["--brain-key", "uniq", "-k", "2", "--metric", "euclidean"]
    out = cli("uniqueness", "toy", "--embeddings", "emb", *args)
    assert out.exit_code == 0, out.output
    event2, run_config = latest("uniq")
    assert event2.run_id != event.run_id
    assert run_config["ops"]["toy__brain__uniq"]["config"] == {"k": 2, "metric": "euclidean"}
    config = store.get_run("toy", "uniq").config
    assert (config["k"], config["metric"]) == (2, "euclidean")


def test_unique_count_runs_the_asset_with_that_config(project):
    store, _ = project
    index = fob.compute_similarity(fob.Dataset("toy", store), embeddings="emb", brain_key="sim")
    index.close()
    sim_event, _ = latest("sim")
    assert sim_event is not None and store.get_run("toy", "sim").run_id == sim_event.run_id
    out = cli("unique", "sim", "10")
    assert out.exit_code == 0, out.output
    event, run_config = latest("unique")
    assert run_config["ops"]["toy__brain__unique"]["config"] == {"count": 10}
    # what the UI shows for the asset is what the store holds: never a silent overwrite
    assert event.asset_materialization.metadata["dagster/row_count"].value == 10
    assert len(store.load_results("toy", "unique")) == 10
    assert store.get_run("toy", "unique").run_id == event.run_id


def test_a_contradicting_call_is_refused_and_nothing_changes(project):
    store, keys = project
    assert cli("uniqueness", "toy", "--embeddings", "emb", "--brain-key", "uniq").exit_code == 0
    before = store.get_run("toy", "uniq")
    out = cli("uniqueness", "toy", "--embeddings", "other", "--brain-key", "uniq")
    assert out.exit_code == 2
    assert "'uniq' on 'toy' is owned by asset toy/brain/uniq" in out.stderr
    assert str(keys) in out.stderr and "embeddings='other' (declared 'emb')" in out.stderr
    assert "pass another brain key for an ad-hoc run" in out.stderr
    # another kind on the key, and a view, are refused too
    with pytest.raises(ValueError, match="it is a uniqueness run, not hardness"):
        fob.compute_hardness(fob.Dataset("toy", store), "predictions", hardness_field="uniq")
    ds = fob.Dataset("toy", store)
    with pytest.raises(ValueError, match="whole dataset, not on a view"):
        fob.compute_uniqueness(ds.view(ds.sample_ids[:5]), embeddings="emb", brain_key="uniq")
    after = store.get_run("toy", "uniq")
    assert (after.run_id, after.created_at) == (before.run_id, before.created_at)
    event, _ = latest("uniq")
    assert event.run_id == before.run_id


def test_without_the_project_instance_an_owned_key_is_refused(project, monkeypatch):
    store, _ = project
    monkeypatch.delenv("DAGSTER_HOME")
    out = cli("uniqueness", "toy", "--embeddings", "emb", "--brain-key", "uniq")
    assert out.exit_code == 2 and "DAGSTER_HOME is not set" in out.stderr
    assert store.get_run("toy", "uniq", missing_ok=True) is None


def test_adhoc_keys_are_listed_apart_from_asset_owned_ones(project):
    store, _ = project
    assert cli("uniqueness", "toy", "--embeddings", "emb", "--brain-key", "uniq").exit_code == 0
    out = fob.compute_uniqueness(fob.Dataset("toy", store), embeddings="emb", brain_key="mine")
    assert out.record.run_id.startswith("api-") and len(out.results) == N
    assert latest("mine") == (None, None)  # ad-hoc: no asset, not in the instance
    listed = store.list_runs("toy").set_index("brain_key")["owner"].to_dict()
    assert listed == {"mine": "adhoc", "uniq": "asset"}
    shown = cli("runs", "list", "toy")
    assert shown.exit_code == 0
    rows = {line.split()[0]: line.split()[-1] for line in shown.stdout.splitlines()[1:]}
    assert rows == {"mine": "adhoc", "uniq": "asset"}


def test_the_api_on_an_owned_key_uses_the_declared_embeddings(project):
    store, _ = project
    ds = fob.Dataset("toy", store)
    out = fob.compute_uniqueness(ds, brain_key="uniq")  # no embeddings: the declared key
    event, _ = latest("uniq")
    assert out.summary["dagster_run_id"] == event.run_id == out.record.run_id
    assert out.record.config["embeddings"] == "emb" and len(out.results) == N
    vectors = np.zeros((N, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="declared key 'emb'; pass that key rather than"):
        fob.compute_uniqueness(ds, embeddings=vectors, brain_key="uniq")
    with pytest.raises(Exception, match="uniq_embeddings"):  # nothing was written
        store.read_embeddings("toy", "uniq_embeddings")
    assert latest("uniq")[0].run_id == event.run_id
