"""The code location: every asset, job, schedule and resource, built from the brain-keys YAML."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dagster_brain.checks import build_embeddings_check, build_run_check
from dagster_brain.config import get_brain_config
from dagster_brain.factory import (
    build_brain_asset,
    build_embeddings_asset,
    build_samples_asset,
)
from dagster_brain.resources.embedder import EmbedderResource
from dagster_brain.resources.similarity import similarity_resources
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.sensors.schedules import build_schedules
from dagster_brain.specs import DEFAULT_SPECS_PATH, BrainKeysFile, load_specs

ALL_JOB = "brain_all"


def specs_path() -> Path:
    """The brain-keys YAML in use: brain config ``brain_keys_path``, else the bundled demo."""
    configured = get_brain_config().brain_keys_path
    return Path(configured).expanduser() if configured else DEFAULT_SPECS_PATH


def build_assets(specs: BrainKeysFile) -> list[dg.AssetsDefinition]:
    """One asset per dataset, embeddings key and brain run."""
    return [
        *(build_samples_asset(d) for d in specs.datasets),
        *(build_embeddings_asset(e) for e in specs.embeddings),
        *(build_brain_asset(r) for r in specs.brain_runs),
    ]


def build_defs(
    spec_path: str | Path | None = None, data_dir: str | Path | None = None
) -> dg.Definitions:
    """All definitions for one brain-keys YAML file and one data directory."""
    config = get_brain_config()
    specs = load_specs(spec_path or specs_path())
    assets = build_assets(specs)
    everything = dg.define_asset_job(
        ALL_JOB,
        selection=dg.AssetSelection.all(),
        description="Ingest every dataset, compute every embeddings key and brain run",
    )
    checks = [
        *(build_embeddings_check(e, config.default_model) for e in specs.embeddings),
        *(build_run_check(r) for r in specs.brain_runs),
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[everything],
        schedules=build_schedules(),
        resources={
            "store": BrainStoreResource(data_dir=str(Path(data_dir or config.data_dir).resolve())),
            "embedder": EmbedderResource(model=config.default_model),
            **similarity_resources(config),
        },
    )


defs = build_defs()
