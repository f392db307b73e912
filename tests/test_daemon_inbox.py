"""The real daemon: batches dropped into an inbox are taken by the sensor, run by the run
queue, and the whole-dataset scores are refreshed by the automation sensor, untouched."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from test_incremental import DATASET, write_batch, write_inbox_keys

from dagster_brain.store import Store

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240


def _wait(what: str, check, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + TIMEOUT_S
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"the daemon exited while waiting for {what}:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(1.0)


def _results(store: Store, key: str) -> set[str]:
    try:
        return set(store.load_results(DATASET, key)["sample_id"])
    except Exception:  # not there yet (or the store is busy)
        return set()


def test_daemon_takes_batches_and_refreshes(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "inbox").mkdir(parents=True)
    keys = write_inbox_keys(tmp_path / "brain_keys.yaml", runs=("sim", "uniqueness"))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BRAIN_DAGSTER_STORAGE_DIR": str(home / "storage"),
        "BRAIN_DATA_DIR": str(data),
        "BRAIN_BRAIN_KEYS_PATH": str(keys),
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
        "BRAIN_EXECUTOR": "in_process",
        "BRAIN_SENSOR_INTERVAL_S": "5",
    }
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(REPO / "workspace.yaml")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    store = Store(data)
    try:
        write_batch(data / "inbox", "b1", 5, seed=11)
        _wait("batch b1 in the index", lambda: len(_results(store, "sim")) == 5, daemon, log)
        _wait("uniqueness over b1", lambda: len(_results(store, "uniqueness")) == 5, daemon, log)
        write_batch(data / "inbox", "b2", 4, seed=12)
        _wait("batch b2 in the index", lambda: len(_results(store, "sim")) == 9, daemon, log)
        _wait(
            "uniqueness refreshed over both batches",
            lambda: _results(store, "uniqueness") == set(store.sample_ids(DATASET)),
            daemon,
            log,
        )
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
    monkeypatch.setenv("BRAIN_DAGSTER_STORAGE_DIR", env["BRAIN_DAGSTER_STORAGE_DIR"])
    instance = dg.DagsterInstance.from_config(str(home))
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"brain/dataset": DATASET}))
    assert sorted(r.tags["brain/batch"] for r in runs) == ["b1", "b2"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert sorted(instance.get_dynamic_partitions(f"{DATASET}__batches")) == ["b1", "b2"]
