"""The code location: every asset, job, schedule and resource, built from the brain-keys YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from dagster_brain.checks import (
    build_embeddings_check,
    build_run_check,
    build_store_health_check,
)
from dagster_brain.config import BrainSettings, get_brain_config
from dagster_brain.execution import build_executor
from dagster_brain.factory import (
    batch_partitions,
    brain_key_asset,
    build_brain_asset,
    build_embeddings_asset,
    build_health_report_asset,
    build_samples_asset,
)
from dagster_brain.methods.knn_graph import plan_graphs, with_shared_graphs
from dagster_brain.resources.embedder import EmbedderResource
from dagster_brain.resources.similarity import similarity_resources
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.sensors.inbox import build_inbox_sensor, sensor_interval_s
from dagster_brain.sensors.liveness import build_liveness_sensor
from dagster_brain.sensors.schedules import build_schedules
from dagster_brain.sharded_graph_asset import build_sharded_graph_asset
from dagster_brain.specs import DEFAULT_SPECS_PATH, BrainKeysFile, BrainRunSpec, load_specs

ALL_JOB = "brain_all"


def specs_path(settings: BrainSettings | None = None) -> Path:
    """The brain-keys YAML in use: brain config ``brain_keys_path``, else the bundled demo."""
    configured = (settings or get_brain_config()).brain_keys_path
    return Path(configured).expanduser() if configured else DEFAULT_SPECS_PATH


def run_asset(
    spec: BrainRunSpec, incremental: bool, extra_deps: list[dg.AssetKey]
) -> dg.AssetsDefinition:
    """The asset of one brain run: one step, or a kNN graph built in ``shards`` steps."""
    if getattr(spec, "shards", 1) > 1:
        return build_sharded_graph_asset(spec, incremental, extra_deps)
    return build_brain_asset(spec, incremental, extra_deps)


def build_assets(specs: BrainKeysFile) -> list[dg.AssetsDefinition]:
    """One asset per dataset, embeddings key and brain run, one per kNN graph generated for
    the runs that share vectors (upstream of those runs: ``plan_graphs``), and each dataset's
    health report (downstream of all its brain runs)."""
    incremental = {d.name for d in specs.datasets if d.incremental}
    plan = plan_graphs(specs.brain_runs)

    def graph_deps(r: BrainRunSpec) -> list[dg.AssetKey]:
        graph = plan.reads.get((r.dataset, r.brain_key))
        return [] if graph is None else [brain_key_asset(r.dataset, graph)]

    runs = [*specs.brain_runs, *plan.generated]
    return [
        *(build_samples_asset(d) for d in specs.datasets),
        *(build_embeddings_asset(e, e.dataset in incremental) for e in specs.embeddings),
        *(run_asset(r, r.dataset in incremental, graph_deps(r)) for r in runs),
        *(
            build_health_report_asset(
                d.name, [r.brain_key for r in runs if r.dataset == d.name], d.incremental
            )
            for d in specs.datasets
        ),
    ]


def batch_job_name(dataset: str) -> str:
    """The job that takes one inbox batch of ``dataset`` into its store and indexes."""
    return f"{dataset}_batch"


def build_batch_jobs(
    specs: BrainKeysFile, assets: list[dg.AssetsDefinition]
) -> tuple[list[Any], list[dg.SensorDefinition]]:
    """Per inbox dataset: the batch job (its partitioned assets), the inbox sensor, and the
    automation sensor that refreshes its whole-dataset runs."""
    jobs, sensors = [], []
    for d in specs.datasets:
        if not d.incremental:
            continue
        keys = [
            k
            for a in assets
            if a.partitions_def is not None
            and a.partitions_def.name == batch_partitions(d.name).name
            for k in a.keys
        ]
        job = dg.define_asset_job(
            batch_job_name(d.name),
            selection=dg.AssetSelection.assets(*keys),
            partitions_def=batch_partitions(d.name),
            description=f"Ingest, embed and index one inbox batch of {d.name!r}",
        )
        jobs.append(job)
        sensors.append(build_inbox_sensor(d, job))
        refreshed = [
            k
            for a in assets
            if a.partitions_def is None and a.group_names_by_key.get(a.key) == d.name
            for k in a.keys
            if a.automation_conditions_by_key.get(k) is not None
        ]
        if refreshed:
            sensors.append(
                dg.AutomationConditionSensorDefinition(
                    f"{d.name}_refresh",
                    target=dg.AssetSelection.assets(*refreshed),
                    default_status=dg.DefaultSensorStatus.RUNNING,
                    minimum_interval_seconds=sensor_interval_s(),
                    description=f"Refreshes the whole-dataset brain runs of {d.name!r} once "
                    "new batches have landed",
                )
            )
    return jobs, sensors


def whole_dataset_selection(assets: list[dg.AssetsDefinition]) -> dg.AssetSelection:
    """Every asset that is not partitioned by batch (what brain_all and the refresh run)."""
    batched = [k for a in assets if a.partitions_def is not None for k in a.keys]
    return dg.AssetSelection.all() - dg.AssetSelection.assets(*batched)


def build_defs(
    spec_path: str | Path | None = None, data_dir: str | Path | None = None
) -> dg.Definitions:
    """All definitions for one brain-keys YAML file and one data directory.

    The brain config is read once, here (``BrainSettings``), and handed to the executor, the
    checks and the resources' fields; steps read their settings from their resources.
    """
    config = get_brain_config().settings()
    specs = load_specs(spec_path or specs_path(config))
    executor = build_executor(config, specs)  # celery: refuses embedded similarity stores
    assets = build_assets(specs)
    whole = whole_dataset_selection(assets)
    everything = dg.define_asset_job(
        ALL_JOB,
        selection=whole,
        description="Ingest every dataset, compute every embeddings key and brain run "
        "(inbox datasets: the whole-dataset runs; their batches come through their sensors)",
    )
    batch_jobs, sensors = build_batch_jobs(specs, assets)
    checks = [
        *(build_embeddings_check(e, config.default_model) for e in specs.embeddings),
        *(build_run_check(r) for r in with_shared_graphs(specs.brain_runs)),
        *(build_store_health_check(d.name) for d in specs.datasets),
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[everything, *batch_jobs],
        schedules=build_schedules(whole),
        sensors=[*sensors, build_liveness_sensor()],
        executor=executor,
        resources={
            "store": BrainStoreResource(
                data_dir=str(Path(data_dir or config.data_dir).resolve()),
                memory_limit=config.store_memory_limit,
            ),
            "embedder": EmbedderResource(model=config.default_model),
            **similarity_resources(config),
        },
    )


defs = build_defs()
