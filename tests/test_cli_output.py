"""What ``brain materialize`` prints: the instance it records in, one line per asset, a
summary; Dagster's debug stream stays in the run's event log, failures still print."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from brain_env import use_brain_env
from click.testing import CliRunner
from conftest import write_images

import dagster_brain as fob
from dagster_brain.cli import main
from dagster_brain.demo_report import demo_report
from dagster_brain.store import Store

REPO = Path(__file__).resolve().parents[1]
SELECT = 'key:"pics/samples" or key:"pics/brain/exact"'


@pytest.fixture
def project(tmp_path: Path, request, monkeypatch) -> dict[str, str]:
    """A 6-image dataset with an exact-duplicates run, a Dagster home, and the variables."""
    write_images(tmp_path / "images", 6)
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"name": "pics", "source": {"type": "image_folder", "path": "images"}},
                    {"name": "gone", "source": {"type": "image_folder", "path": "nowhere"}},
                ],
                "brain_runs": [
                    {"brain_key": "exact", "kind": "exact_duplicates", "dataset": "pics"},
                    {"brain_key": "exact", "kind": "exact_duplicates", "dataset": "gone"},
                ],
            }
        )
    )
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(tmp_path / "images", data / "images")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(home),
        "BRAIN_DAGSTER_STORAGE_DIR": str(home / "storage"),
        "BRAIN_DATA_DIR": str(data),
        "BRAIN_BRAIN_KEYS_PATH": str(keys),
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
    }
    use_brain_env(request, monkeypatch, env)
    monkeypatch.chdir(tmp_path)  # no .env of the repository applies
    return env


def test_materialize_prints_one_line_per_asset_and_no_dagster_debug(project, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAIN_", "DAGSTER_"))}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "brain"), "materialize", "--select", SELECT],
        env={**env, **project},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""  # no Dagster log stream, no BetaWarning
    lines = out.stdout.splitlines()
    assert lines[0] == f"instance: {Path(project['DAGSTER_HOME']).resolve()} (from DAGSTER_HOME)"
    assert lines[1:3] == ["materialized  pics/samples", "materialized  pics/brain/exact"]
    assert lines[3].startswith("2 of 2 assets materialized in ")
    assert [line.split(":")[0] for line in lines[4:]] == ["store", "parquet", "UI"]
    assert "DEBUG" not in out.stdout
    # the run's Dagster log went to the instance's event log
    import dagster as dg

    with dg.DagsterInstance.from_config(project["DAGSTER_HOME"]) as instance:
        (run,) = instance.get_runs()
        logs = instance.all_logs(run.run_id)
    assert any(e.dagster_event and e.dagster_event.is_step_start for e in logs)
    assert any("samples added" in (e.user_message or "") for e in logs)


def cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_a_failed_step_prints_its_message_and_what_did_not_run(project):
    out = cli("materialize", "--select", 'key:"gone/samples" or key:"gone/brain/exact"')
    assert out.exit_code == 1
    lines = out.output.splitlines()
    assert lines[1].startswith("FAILED        gone/samples: IngestError: ")
    assert "nowhere" in lines[1] and "Dagster" not in lines[1]
    assert lines[2].startswith("0 of 2 assets materialized, 1 failed in ")
    assert lines[2].endswith(" s; not materialized: gone/brain/exact, gone/samples")
    assert "DEBUG" not in out.output and "Dependencies for step" not in out.output


def test_the_instance_comes_from_dot_env_in_the_current_directory(project, tmp_path, monkeypatch):
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(REPO / "dagster.yaml", root / "dagster.yaml")
    runpy.run_path(str(REPO / "scripts" / "write_env.py"))["write_env"](root)
    monkeypatch.chdir(root)
    for name in ("DAGSTER_HOME", "BRAIN_DAGSTER_STORAGE_DIR"):
        monkeypatch.delenv(name)
    out = cli("materialize", "--select", 'key:"pics/samples"')
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == f"instance: {root} (from {root / '.env'})"
    assert "BRAIN_DAGSTER_STORAGE_DIR" not in os.environ  # only set while it loaded
    import dagster as dg

    monkeypatch.setenv("BRAIN_DAGSTER_STORAGE_DIR", str(root / ".dagster_home"))
    with dg.DagsterInstance.from_config(str(root)) as instance:  # the storage dir is .env's
        assert len(instance.get_runs()) == 1


def test_without_an_instance_the_first_line_is_a_warning(project):
    out = cli("materialize", "--select", 'key:"pics/samples"', env={"DAGSTER_HOME": ""})
    assert out.exit_code == 0, out.output
    first, *rest = out.output.splitlines()
    assert first.startswith("warning: no project Dagster instance")
    assert "the UI will not show them" in first and "scripts/setup.sh" in first
    assert not any(line.startswith("UI:") for line in rest)


def test_a_bad_selection_is_a_one_line_error(project):
    out = cli("materialize", "--select", "pics/samples pics/brain/exact")
    assert out.exit_code == 2
    assert out.output.startswith("error: asset selection 'pics/samples pics/brain/exact' is not")
    assert len(out.output.splitlines()) == 1


def test_found_lines_only_for_the_runs_given(tmp_path, request, monkeypatch):
    from dagster_brain.ingest.demo import ingest_demo_dataset

    use_brain_env(request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json")})
    store = Store(tmp_path / "data")
    ingest_demo_dataset(
        store, store.data_dir / "demo", "digits", digits_samples=60, digits_duplicates=4
    )
    vectors = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    fob.compute_uniqueness(fob.Dataset("digits", store), embeddings=vectors)
    assert [line.split(":")[0] for line in demo_report(store)] == ["digits/uniqueness"]
    assert demo_report(store, runs={("digits", "uniqueness")}) == demo_report(store)
    assert demo_report(store, runs={("shapes", "uniqueness"), ("digits", "other")}) == []
