"""A run worker killed mid-step: nothing half-written, and the retried run completes once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from test_incremental import DATASET, write_batch, write_inbox_keys

from dagster_brain.factory import batch_partitions
from dagster_brain.similarity.compute import load_index
from dagster_brain.store import Store

STEP = "stream__embeddings__default"


def _project(tmp_path: Path) -> tuple[dict[str, str], Path]:
    data = tmp_path / "data"
    write_batch(data / "inbox", "b1", 40, seed=3)
    keys = write_inbox_keys(tmp_path / "brain_keys.yaml", runs=("sim",), batch_size=4)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BRAIN_DATA_DIR": str(data),
        "BRAIN_BRAIN_KEYS_PATH": str(keys),
        "BRAIN_CONFIG_PATH": str(tmp_path / "none.json"),
        "BRAIN_EXECUTOR": "in_process",  # one run worker process: the one killed
    }
    return env, data


def _launch(env: dict[str, str]) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        "dagster_brain.definitions",
        "-j",
        f"{DATASET}_batch",
        "--tags",
        '{"dagster/partition": "b1"}',
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _step_started(instance: dg.DagsterInstance) -> bool:
    records = (
        instance.get_records_for_run(
            run_id=instance.get_runs(limit=1)[0].run_id, of_type=dg.DagsterEventType.STEP_START
        ).records
        if instance.get_runs(limit=1)
        else []
    )
    return any(r.event_log_entry.step_key == STEP for r in records)


def test_worker_killed_mid_step_then_retried(tmp_path):
    env, data = _project(tmp_path)
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    instance.add_dynamic_partitions(batch_partitions(DATASET).name, ["b1"])

    proc = _launch(env)
    deadline = time.time() + 120
    while not _step_started(instance):
        assert proc.poll() is None, "the run ended before the embeddings step started"
        assert time.time() < deadline, "the embeddings step never started"
        time.sleep(0.05)
    time.sleep(0.5)  # inside the step: the model is loading or embedding
    os.killpg(proc.pid, signal.SIGKILL)  # the run worker and its step processes die
    proc.wait(timeout=30)

    store = Store(data)
    killed = instance.get_runs(limit=1)[0]
    assert killed.status == dg.DagsterRunStatus.STARTED  # nobody reported the end
    sets = store.embedding_sets(DATASET)
    assert sets.empty or sets["count"].tolist() == [40]  # never a partial key
    assert store.get_run(DATASET, "sim", missing_ok=True) is None
    instance.report_run_failed(killed)  # what run monitoring does for a dead worker

    retry = _launch(env)  # the retry (run_retries in dagster.yaml launches it)
    assert retry.wait(timeout=300) == 0
    assert instance.get_runs(limit=1)[0].status == dg.DagsterRunStatus.SUCCESS
    counts = store.query(
        "SELECT count(*) AS rows, count(DISTINCT sample_id) AS ids FROM embeddings "
        "WHERE dataset = ?",
        [DATASET],
    ).iloc[0]
    assert counts["rows"] == counts["ids"] == 40  # no duplicate rows
    index = load_index(store, DATASET, "sim")
    assert index.total_index_size == index.backend.count() == 40
    index.close()
