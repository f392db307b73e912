"""The brain graph on PostgreSQL + Celery, and what a distributed executor refuses.

The ``distributed`` test starts two real Celery workers (``scripts/distributed.sh workers``)
on a fresh PostgreSQL database and a Redis database of its own, runs ``brain_all`` through
them (``scripts/distributed.sh run``) and compares the results with an in-process run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import dagster as dg
import local_cluster
import pandas as pd
import pytest
import yaml
from brain_env import use_brain_env

from dagster_brain.config import BrainConfig, BrainConfigError
from dagster_brain.definitions import build_defs
from dagster_brain.execution import (
    EmbeddedBackendError,
    celery_config,
    executor_name,
    refuse_embedded_step,
    step_executor,
)
from dagster_brain.specs import SimilaritySpec
from dagster_brain.store import Store

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("uniqueness", "similarity", "duplicates", "mistakenness", "hardness", "graph")
SHARDS = 2  # the graph's blocks of rows: one step each, spread over the workers


def keys_yaml(path: Path, extra_runs=()) -> Path:
    """The demo digits with their precomputed pixel embeddings (no CNN: fast)."""
    pixels = {"dataset": "digits", "embeddings": "pixels"}
    runs = [
        {"brain_key": "uniqueness", "kind": "uniqueness", **pixels, "metric": "euclidean"},
        {"brain_key": "similarity", "kind": "similarity", **pixels, "backend": "sklearn"},
        {
            "brain_key": "duplicates",
            "kind": "duplicates",
            "similarity": "similarity",
            "verify": False,  # no image checks: keeps the test short
        },
        {"brain_key": "mistakenness", "kind": "mistakenness", "pred_field": "predictions"},
        {"brain_key": "hardness", "kind": "hardness", "label_field": "predictions"},
        # the graph uniqueness reads, approximate (the index is planned once, read by each
        # shard's step) and built in shards
        {
            "brain_key": "graph",
            "kind": "knn_graph",
            **pixels,
            "metric": "euclidean",
            "exact": False,
            "shards": SHARDS,
        },
    ]
    keys = {
        "datasets": [{"name": "digits", "source": {"type": "demo", "name": "digits"}}],
        "embeddings": [
            {
                "key": "pixels",
                "dataset": "digits",
                "source": "column",
                "path": "demo/digits/manifest.parquet",
                "column": "pixels",
            }
        ],
        "brain_runs": [{"dataset": "digits", **r} for r in runs] + list(extra_runs),
    }
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


def similarity_run(key: str, backend: str, **params) -> dict:
    return {
        "brain_key": key,
        "kind": "similarity",
        "dataset": "digits",
        "embeddings": "pixels",
        "backend": backend,
        "backend_params": params,
    }


@pytest.fixture
def brain_config(tmp_path, monkeypatch, request):
    """The brain config a given environment makes (no user JSON file)."""

    def install(**env) -> BrainConfig:
        return use_brain_env(
            request, monkeypatch, {"BRAIN_CONFIG_PATH": str(tmp_path / "none.json"), **env}
        )

    return install


# -- executor selection and refusals (no services needed) ------------------------------------


def test_executor_follows_brain_config_precedence(tmp_path, brain_config):
    path = tmp_path / "brain_config.json"
    path.write_text(json.dumps({"executor": "in_process"}))
    assert executor_name(BrainConfig(env={"BRAIN_CONFIG_PATH": str(tmp_path / "x.json")})) == (
        "multiprocess"
    )  # default
    assert executor_name(BrainConfig(path=path, env={})) == "in_process"  # JSON
    config = BrainConfig(path=path, env={"BRAIN_EXECUTOR": "celery"})
    assert executor_name(config) == "celery"  # env over JSON
    config.executor = "multiprocess"
    assert executor_name(config) == "multiprocess"  # runtime over env
    config.executor = "dask"
    with pytest.raises(BrainConfigError, match=r"executor 'dask' \(BRAIN_EXECUTOR\)"):
        executor_name(config)

    keys = keys_yaml(tmp_path / "keys.yaml")
    brain_config()
    job = build_defs(keys, tmp_path / "data").resolve_job_def("brain_all")
    assert job.executor_def.name == "multi_or_in_process_executor"  # Dagster's default
    brain_config(BRAIN_EXECUTOR="in_process")
    assert build_defs(keys, tmp_path / "data").resolve_job_def("brain_all").executor_def.name == (
        "in_process"
    )


def test_celery_executor_takes_broker_backend_and_queue_from_env():
    assert celery_config({}) == {
        "broker": "redis://127.0.0.1:6379/0",
        "backend": "redis://127.0.0.1:6379/0",
        "config_source": {"task_default_queue": "dagster"},
    }
    env = {"BRAIN_CELERY_BROKER": "redis://:secret@redis:6379/2", "BRAIN_CELERY_QUEUE": "gpu"}
    assert celery_config(env) == {
        "broker": {"env": "BRAIN_CELERY_BROKER"},  # the password stays out of the run config
        "backend": "redis://:secret@redis:6379/2",
        "config_source": {"task_default_queue": "gpu"},
    }


def test_celery_refuses_embedded_similarity_backends_at_load(tmp_path, brain_config):
    runs = [
        similarity_run("q_local", "qdrant"),
        similarity_run("q_server", "qdrant", url="http://qdrant:6333"),
        similarity_run("m_lite", "milvus"),
        similarity_run("m_file", "milvus", uri="indexes/brain.db"),
        similarity_run("m_server", "milvus", uri="https://milvus.example:19530"),
        similarity_run("lance", "lancedb"),
        similarity_run("pine", "pinecone"),
    ]
    keys = keys_yaml(tmp_path / "keys.yaml", runs)
    brain_config()
    build_defs(keys, tmp_path / "data")  # multiprocess: every backend is fine
    brain_config(BRAIN_EXECUTOR="celery")
    with pytest.raises(EmbeddedBackendError) as err:
        build_defs(keys, tmp_path / "data")
    message = str(err.value)
    assert "brain key 'q_local' (dataset 'digits'): backend 'qdrant', Qdrant local" in message
    assert "brain key 'm_lite' (dataset 'digits'): backend 'milvus', milvus-lite" in message
    assert "brain key 'm_file'" in message and "'indexes/brain.db'" in message
    for allowed in ("q_server", "m_server", "lance", "pine", "similarity"):
        assert f"brain key '{allowed}'" not in message


def test_celery_allows_server_modes_set_in_the_brain_config(tmp_path, brain_config):
    runs = [similarity_run("q", "qdrant"), similarity_run("m", "milvus")]
    keys = keys_yaml(tmp_path / "keys.yaml", runs)
    brain_config(
        BRAIN_EXECUTOR="celery",
        BRAIN_SIMILARITY_QDRANT_URL="http://qdrant:6333",
        BRAIN_SIMILARITY_MILVUS_URI="tcp://milvus:19530",
    )
    job = build_defs(keys, tmp_path / "data").resolve_job_def("brain_all")
    assert job.executor_def.name == "celery"


def test_step_guard_refuses_embedded_store_under_celery(tmp_path, brain_config):
    brain_config()
    spec = SimilaritySpec.model_validate(similarity_run("q", "qdrant"))
    with pytest.raises(EmbeddedBackendError, match="brain key 'q'.*backend 'qdrant'"):
        refuse_embedded_step("celery", spec)
    with pytest.raises(EmbeddedBackendError, match="the k8s executor"):
        refuse_embedded_step("k8s", spec, {})
    refuse_embedded_step("celery", spec, {"url": "http://qdrant:6333"})  # the resource's url
    refuse_embedded_step("multiprocess", spec)

    seen = []

    @dg.asset
    def guarded(context) -> None:
        seen.append(step_executor(context))
        refuse_embedded_step(step_executor(context), spec)

    assert dg.materialize([guarded]).success
    assert seen == ["execute_in_process_executor"]  # not distributed: allowed


# -- the real thing: PostgreSQL + Redis + two Celery workers ---------------------------------


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this session, dropped at the end."""
    reason = local_cluster.unreachable()
    if reason:
        pytest.skip(reason)
    with local_cluster.pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_db():
    """An empty Redis database claimed for this session (parallel runs claim others)."""
    reason = local_cluster.unreachable()
    if reason:
        pytest.skip(reason)
    with local_cluster.redis_database() as db:
        yield db


@pytest.fixture
def cluster(tmp_path, pg_url, redis_db):
    """Two Celery workers started by scripts/distributed.sh, stopped even on failure."""
    keys = keys_yaml(tmp_path / "keys.yaml")
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    env = local_cluster.cluster_env(home, data, keys, pg_url, redis_db, uuid.uuid4().hex[:8])
    try:
        with local_cluster.workers(env, 2, "--pool=solo") as w:
            yield {"env": env, "names": w.names, "logs": w.logs, "pgids": w.pgids, "tmp": tmp_path}
    except local_cluster.ClusterError as err:
        pytest.fail(str(err))


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    key = "id" if "id" in df.columns else "sample_id"
    return df.sort_values([key, *[c for c in df.columns if c != key]]).reset_index(drop=True)


@pytest.mark.distributed
def test_brain_graph_runs_on_postgres_and_two_celery_workers(cluster, pg_url):
    env, names = cluster["env"], cluster["names"]
    started = time.monotonic()
    with open(cluster["tmp"] / "run.out", "w+") as out:
        run = subprocess.Popen(
            ["bash", "scripts/distributed.sh", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # Meanwhile (the distributed run mostly waits on queues), the reference: the same
            # YAML materialised in this process on another data dir.
            reference = cluster["tmp"] / "reference"
            defs = build_defs(env["BRAIN_BRAIN_KEYS_PATH"], reference)
            assert dg.materialize(list(defs.assets), resources=defs.resources).success
            returncode = run.wait(timeout=240)
        finally:
            if run.poll() is None:
                run.kill()
        elapsed = time.monotonic() - started
        out.seek(0)
        output = out.read()
    assert returncode == 0, output[-5000:] + local_cluster.tails(cluster["tmp"], cluster["logs"])

    # The run and its events are in PostgreSQL.
    runs = local_cluster.pg_rows(pg_url, "SELECT run_id, status, pipeline_name FROM runs")
    assert len(runs) == 1 and runs[0][1:] == ("SUCCESS", "brain_all"), runs
    run_id = runs[0][0]
    assert run_id in output
    succeeded = {e.step_key for e in local_cluster.events(pg_url, run_id, "STEP_SUCCESS")}
    materialized = local_cluster.events(pg_url, run_id, "ASSET_MATERIALIZATION")
    # samples, embeddings, the brain runs and the dataset's health report
    assert len(materialized) == 2 + len(RUNS) + 1
    assert {"digits__samples", "digits__embeddings__pixels"} <= succeeded
    assert "digits__brain__health_report" in succeeded
    graph = "digits__brain__graph"
    shards = {f"{graph}.{graph}__search[shard_{i}]" for i in range(SHARDS)}
    assert {f"{graph}.{graph}__plan", f"{graph}.{graph}__commit", *shards} <= succeeded
    assert {f"digits__brain__{k}" for k in RUNS if k != "graph"} <= succeeded
    assert local_cluster.pg_rows(
        pg_url, "SELECT count(*) FROM event_logs WHERE run_id = %s", (run_id,)
    )[0][0] > 3 * len(succeeded)

    # Every step ran in a Celery worker, and both workers ran steps: the worker's node name
    # (reported by dagster-celery's task), the step's process id (it belongs to the process
    # group the script started for that worker) and that worker's own log agree.
    worker_of = local_cluster.step_workers(pg_url, run_id)
    assert set(worker_of) == succeeded
    assert set(worker_of.values()) == set(names), worker_of
    orchestrator = local_cluster.events(pg_url, run_id, "PIPELINE_START")[0].dagster_event.pid
    for entry in local_cluster.events(pg_url, run_id, "STEP_START"):
        name, pid = worker_of[entry.step_key], entry.dagster_event.pid
        assert pid != orchestrator
        assert os.getpgid(pid) == cluster["pgids"][name], (entry.step_key, name, pid)
    for name in names:
        log = (cluster["logs"] / f"{name}.log").read_text(errors="replace")
        in_log = set(re.findall(r'STEP_SUCCESS - Finished execution of step "([^"]+)"', log))
        assert in_log == {k for k, w in worker_of.items() if w == name}, name

    # The DuckDB store holds what the single-process run computed.
    got, want = Store(env["BRAIN_DATA_DIR"]), Store(reference)
    assert got.get_run("digits", "uniqueness").upstream["knn_graph"] == "graph"
    for key in RUNS:
        assert got.get_run("digits", key).info()["run_id"] == run_id
        pd.testing.assert_frame_equal(
            _sorted(got.load_results("digits", key)),
            _sorted(want.load_results("digits", key)),
            check_exact=False,
            rtol=0,
            atol=1e-9,
            obj=f"results of {key}",
        )
    a, b = got.read_embeddings("digits", "pixels"), want.read_embeddings("digits", "pixels")
    assert a.sample_ids == b.sample_ids and (a.vectors == b.vectors).all()
    print(f"distributed run {run_id}: {elapsed:.1f} s; steps per worker {worker_of}")
