"""Plain Dagster commands from the project folder, with nothing exported: the ``.env`` that
scripts/setup.sh writes (scripts/write_env.py) gives them the project's instance."""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")
START_S = 240  # a loaded 2-core machine starts the webserver, daemon and code server slowly


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder laid out like the repository root (dagster.yaml, workspace.yaml), with the
    .env that setup writes."""
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / ".env").write_text("PINECONE_API_KEY=kept\n")  # a user's own line survives
    write_env = runpy.run_path(str(REPO / "scripts" / "write_env.py"))["write_env"]
    write_env(root)
    return root


def clean_env(root: Path) -> dict[str, str]:
    """What ``env -i PATH=/usr/bin:/bin HOME=...`` leaves: no DAGSTER_* or BRAIN_* variable."""
    home = root.parent / "user_home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1"}


def test_env_file_holds_absolute_project_paths(project, monkeypatch):
    for name in ("DAGSTER_HOME", "BRAIN_DAGSTER_STORAGE_DIR", "BRAIN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    values = dotenv_values(project / ".env")
    assert values == {
        "DAGSTER_HOME": str(project),
        "BRAIN_DAGSTER_STORAGE_DIR": str(project / ".dagster_home"),
        "BRAIN_DATA_DIR": str(project / "data"),
        "PINECONE_API_KEY": "kept",
    }
    assert (project / ".dagster_home").is_dir()
    # a variable set in the environment wins (tests and scripts/env.sh set their own)
    monkeypatch.setenv("BRAIN_DATA_DIR", "/elsewhere")
    assert dotenv_values(project / ".env")["BRAIN_DATA_DIR"] == "/elsewhere"


def test_definitions_validate_with_nothing_exported(project):
    out = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=project,
        env=clean_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "Loaded environment variables from .env file: DAGSTER_HOME" in log
    assert "All code locations passed validation" in log
    assert not list(project.glob(".tmp_dagster_home_*"))


def test_asset_materialize_records_in_the_project_instance(project, monkeypatch):
    from conftest import write_images

    write_images(project / "images", 3)
    keys = project / "keys.yaml"
    images = project / "images"
    source = {"type": "image_folder", "path": str(images)}
    keys.write_text(yaml.safe_dump({"datasets": [{"name": "pics", "source": source}]}))
    with (project / ".env").open("a") as f:  # a user's own setting in .env
        f.write(f"BRAIN_BRAIN_KEYS_PATH={keys}\n")
    out = subprocess.run(
        [DAGSTER, "asset", "materialize", "--select", "pics/samples"]
        + ["-m", "dagster_brain.definitions"],
        cwd=project,
        env=clean_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    import dagster as dg

    monkeypatch.setenv("BRAIN_DAGSTER_STORAGE_DIR", str(project / ".dagster_home"))
    with dg.DagsterInstance.from_config(str(project)) as instance:
        (run,) = instance.get_runs()
        assert run.is_success
    assert (project / "data" / "brain.duckdb").is_file()  # the .env's BRAIN_DATA_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM dagster dev's process group, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def test_dagster_dev_serves_the_project_instance_with_nothing_exported(project):
    port = free_port()
    log = project.parent / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=project,
            env=clean_env(project),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_S
        info = None
        while info is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as r:
                    info = r.read().decode()
            except OSError:
                time.sleep(1)
        assert '"dagster_version"' in info
    finally:
        stop(proc)
    text = log.read_text()
    assert "Loaded environment variables from .env file: DAGSTER_HOME" in text
    assert "Using temporary directory" not in text
    assert not list(project.glob(".tmp_dagster_home_*"))
    # the instance's storage is the .env's BRAIN_DAGSTER_STORAGE_DIR
    assert (project / ".dagster_home" / "schedules").is_dir()
