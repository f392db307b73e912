"""The brain-method registry: every method complete, and one module + one registry line give a
new method its asset, asset check, CLI command and API call."""

from __future__ import annotations

import threading
from enum import EnumType

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner
from conftest import write_images

import dagster_brain as fob
from dagster_brain.cli import main
from dagster_brain.factory import brain_key_asset, build_brain_asset, run_config_class
from dagster_brain.methods import METHODS, BrainMethod, get_method, register
from dagster_brain.methods.base import ScoreColumn, no_fixed_rows, samples_input
from dagster_brain.specs import load_specs, run_spec_types
from dagster_brain.store import Store, StoreError

BUILTIN = {
    "uniqueness",
    "similarity",
    "duplicates",
    "exact_duplicates",
    "unique",
    "mistakenness",
    "hardness",
    "visualization",
    "knn_graph",
    "representativeness",
    "leaky_splits",
    "outliers",
    "label_summary",
    "image_issues",
}


def test_every_method_is_complete_and_every_spec_has_a_method():
    assert set(METHODS) >= BUILTIN
    for method in METHODS.values():
        assert method.problems() == []
    project_specs = {
        kind for kind, cls in run_spec_types().items() if cls.__module__.startswith("dagster_brain")
    }
    assert project_specs == BUILTIN
    assert METHODS["uniqueness"].version == "2"
    # ranges the blocking check enforces, and what `brain top` ranks by
    ranged = {k for k, m in METHODS.items() if m.score is not None and m.score.has_range}
    assert ranged == {
        "uniqueness",
        "mistakenness",
        "hardness",
        "representativeness",
        "outliers",
        "image_issues",
    }
    ranked = {k: m.score.column for k, m in METHODS.items() if m.score is not None}
    assert ranked == {
        "uniqueness": "uniqueness",
        "mistakenness": "mistakenness",
        "hardness": "hardness",
        "duplicates": "distance",
        "unique": "rank",
        "knn_graph": "nearest_distance",
        "representativeness": "representativeness",
        "leaky_splits": "distance",
        "outliers": "outlier",
        "image_issues": "image_issue_score",
    }


def test_demo_yaml_builds_an_asset_per_brain_run():
    from dagster_brain.specs import DEFAULT_SPECS_PATH

    for spec in load_specs(DEFAULT_SPECS_PATH).brain_runs:
        asset = build_brain_asset(spec)
        assert asset.key == brain_key_asset(spec.dataset, spec.brain_key)
        assert asset.tags_by_key[asset.key]["brain/kind"] == spec.kind


def test_an_incomplete_method_is_refused(constant):
    spec = constant.ConstantSpec
    # a part left out is an error where the descriptor is written, not a silent default
    with pytest.raises(TypeError, match="expected_rows"):
        BrainMethod(
            kind="x", spec=spec, run=constant.run_constant, inputs=samples_input, score=None
        )
    wrong = BrainMethod(
        kind="other",
        spec=spec,
        run=constant.run_constant,
        inputs=samples_input,
        expected_rows=no_fixed_rows,
        score=ScoreColumn("constant"),
    )
    with pytest.raises(ValueError) as err:
        register(wrong)
    assert "brain method 'other': spec ConstantSpec has kind ('constant',)" in str(err.value)
    assert "no summary" in str(err.value)
    assert "other" not in METHODS
    with pytest.raises(ValueError, match="'uniqueness' is already registered"):
        register(
            BrainMethod(
                kind="uniqueness",
                spec=METHODS["uniqueness"].spec,
                run=constant.run_constant,
                inputs=samples_input,
                expected_rows=no_fixed_rows,
                score=None,
                summary="a second uniqueness",
            )
        )


@pytest.fixture
def constant(monkeypatch):
    import constant_method

    register(constant_method.METHOD)  # the one registry line
    yield constant_method
    METHODS.pop("constant")
    constant_method.PAUSE.clear()


def _tiny_project(tmp_path, value=0.25):
    folder = tmp_path / "images"
    write_images(folder / "cat", 2, seed=1)
    write_images(folder / "dog", 1, seed=2)
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"name": "toy", "source": {"type": "image_folder", "path": str(folder)}}
                ],
                "brain_runs": [
                    {"brain_key": "const", "kind": "constant", "dataset": "toy", "value": value}
                ],
            }
        )
    )
    return keys, tmp_path / "data"


def test_a_new_method_gets_asset_check_cli_and_api(constant, tmp_path):
    from dagster_brain.definitions import build_defs

    keys, data_dir = _tiny_project(tmp_path)
    defs = build_defs(keys, data_dir)
    result = dg.materialize([*defs.assets, *defs.asset_checks], resources=defs.resources)
    assert result.success
    mat = result.asset_materializations_for_node("toy__brain__const")[0]
    assert mat.metadata["dagster/row_count"].value == 3
    evaluations = result.get_asset_check_evaluations()
    check = next(e for e in evaluations if e.asset_key == brain_key_asset("toy", "const"))
    assert check.passed and check.metadata["expected_rows"].value == 3
    store = Store(data_dir)
    res = store.load_results("toy", "const")
    assert sorted(res["constant"]) == [0.25, 0.25, 0.25]
    assert store.get_run("toy", "const").code_version.startswith("constant-v1-")

    # the check enforces the declared range and row count
    from dagster_brain.checks import check_results

    spec = next(r for r in load_specs(keys).brain_runs if r.brain_key == "const")
    record = store.get_run("toy", "const")
    bad = res.iloc[1:].copy()
    bad.loc[bad.index[0], "constant"] = 1.5
    store.commit_run(record, bad)
    passed, meta = check_results(store, spec)
    problems = meta["problems"].value
    assert not passed and any("2 rows for 3" in p for p in problems)
    assert any("constant scores outside [0.0, 1.0]" in p for p in problems)

    # launch-time config from the run fields
    config = run_config_class(constant.METHOD)
    assert config(value=0.75).value == 0.75
    with pytest.raises(Exception, match="less than or equal"):
        config(value=2.0)

    # the API call
    out = fob.compute_brain(fob.Dataset("toy", store), "constant", "api_const", value=0.5)
    assert len(out.results) == 3 and set(out.results["constant"]) == {0.5}
    assert store.get_run("toy", "api_const").run_id.startswith("api-")

    # the CLI command, and `brain top` ranks by the declared score column
    cli = CliRunner()
    args = ["compute", "constant", "toy", "--brain-key", "cli_const", "--set", "value=0.125"]
    run = cli.invoke(main, [*args, "--data-dir", str(data_dir)], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert set(store.load_results("toy", "cli_const")["constant"]) == {0.125}
    listed = cli.invoke(main, ["compute", "--help"])
    assert "constant" in listed.output and "uniqueness" in listed.output
    top = cli.invoke(main, ["top", "cli_const", "--data-dir", str(data_dir)])
    assert top.exit_code == 0 and "0.125" in top.output


def test_an_unknown_kind_names_the_known_ones(constant, tmp_path):
    with pytest.raises(ValueError, match="no brain method 'nope'; known: .*'constant'"):
        get_method("nope", "k")


def test_api_and_asset_path_share_the_brain_key_lock(constant, tmp_path):
    from dagster_brain.methods import run_brain

    keys, data_dir = _tiny_project(tmp_path)
    store = Store(data_dir)
    from dagster_brain.ingest.sources import ingest_dataset

    ingest_dataset(store, load_specs(keys).datasets[0])
    spec = next(r for r in load_specs(keys).brain_runs if r.brain_key == "const")
    constant.PAUSE.update(entered=threading.Event(), release=threading.Event())
    outcome: dict = {}

    def asset_path():  # what the asset's compute does: run_brain with the Dagster run id
        outcome["asset"] = run_brain(spec, store, run_id="dagster-run-1")

    writer = threading.Thread(target=asset_path)
    writer.start()
    try:
        assert constant.PAUSE["entered"].wait(30)
        # a notebook run of the same key is refused, naming the holder
        with pytest.raises(
            StoreError, match="'const' on 'toy' is being computed by run dagster-run-1"
        ):
            fob.compute_brain(fob.Dataset("toy", store), "constant", "const", value=0.9)
    finally:
        constant.PAUSE["release"].set()
        writer.join(30)
    assert outcome["asset"].record.run_id == "dagster-run-1"
    assert set(store.load_results("toy", "const")["constant"]) == {0.25}
    # once released, the API run goes through
    constant.PAUSE.clear()
    fob.compute_brain(fob.Dataset("toy", store), "constant", "const", value=0.9)
    assert set(store.load_results("toy", "const")["constant"]) == {0.9}


def test_methods_and_run_plumbing_load_without_dagster():
    import subprocess
    import sys

    code = (
        "import sys, dagster_brain.methods, dagster_brain.runs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_configs_match_the_launch_time_fields():
    def shape(kind):
        out = {}
        for name, f in run_config_class(METHODS[kind]).model_fields.items():
            (typ,) = [a for a in f.annotation.__args__ if a is not type(None)]
            out[name] = tuple(e.value for e in typ) if isinstance(typ, EnumType) else typ
        return out

    assert shape("uniqueness") == {"k": int, "metric": ("cosine", "euclidean")}
    assert shape("similarity") == {"metric": str}
    assert shape("duplicates") == {"thresh": float, "fraction": float, "verify": bool}
    assert shape("exact_duplicates") == {}
    assert shape("unique") == {"count": int}
    assert shape("mistakenness") == {
        "method": ("confident_learning", "reference"),
        "missing_conf": float,
        "iou_thresh": float,
    }
    assert shape("hardness") == {"method": ("entropy", "margin")}
    assert shape("visualization") == {
        "method": ("umap", "tsne", "pca"),
        "num_dims": int,
        "seed": int,
        "refit": bool,
        "refit_share": float,
    }
    uniqueness = run_config_class(METHODS["uniqueness"])
    assert uniqueness(k=100).k == 100 and uniqueness().k is None
    with pytest.raises(Exception, match="less than or equal to 100"):
        uniqueness(k=101)
    with pytest.raises(Exception, match="greater than 0"):
        run_config_class(METHODS["mistakenness"])(iou_thresh=0.0)


def test_a_materialisation_is_refused_while_the_api_writes_the_key(constant, tmp_path):
    from dagster_brain.definitions import build_defs

    keys, data_dir = _tiny_project(tmp_path)
    defs = build_defs(keys, data_dir)
    assert dg.materialize(list(defs.assets), resources=defs.resources).success
    store = Store(data_dir)
    constant.PAUSE.update(entered=threading.Event(), release=threading.Event())
    api_run = threading.Thread(
        target=fob.compute_brain,
        args=(fob.Dataset("toy", store), "constant", "const"),
        kwargs={"value": 0.75},
    )
    api_run.start()
    try:
        assert constant.PAUSE["entered"].wait(30)
        result = dg.materialize(
            list(defs.assets),
            resources=defs.resources,
            selection=[brain_key_asset("toy", "const")],
            raise_on_error=False,
        )
    finally:
        constant.PAUSE["release"].set()
        api_run.join(30)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    error, message = failure.event_specific_data.error, ""
    while error is not None:  # Dagster wraps the step's exception; read down to it
        message, error = message + error.message, error.cause
    assert "brain key 'const' on 'toy' is being computed by run api" in message
    # the API run, not the refused materialisation, wrote the results
    assert set(store.load_results("toy", "const")["constant"]) == {0.75}
