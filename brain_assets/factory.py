"""Asset factories: one asset per dataset, embeddings key and brain key of the YAML.

Graph: ``<dataset>/samples`` -> ``<dataset>/embeddings/<key>`` -> ``<dataset>/brain/<brain_key>``.
Assets pass data through the store (``deps`` + store reads), never through IO managers.

A dataset with an inbox source is incremental: its samples, embeddings and similarity indexes
are partitioned by batch (one dynamic partition each, registered by the inbox sensor) and
updated batch by batch; its other brain runs score the whole dataset and are refreshed by an
eager automation condition once the batches they read have landed.
"""

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_brain.config import get_brain_config
from dagster_brain.embeddings import compute_embeddings, update_embeddings
from dagster_brain.execution import refuse_embedded_step, step_executor
from dagster_brain.ingest.inbox import ingest_batch
from dagster_brain.ingest.sources import data_path, ingest_dataset
from dagster_brain.metadata import lineage_metadata, rows_table, score_metadata
from dagster_brain.methods import METHOD_VERSIONS, RunOutcome, code_version, run_brain
from dagster_brain.resources.embedder import EmbedderResource
from dagster_brain.resources.similarity import resource_key
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.similarity.backends.base import BackendUnavailable
from dagster_brain.specs import BrainRunSpec, DatasetSpec, EmbeddingsSpec


def samples_key(dataset: str) -> dg.AssetKey:
    """Asset key of a dataset's samples."""
    return dg.AssetKey([dataset, "samples"])


def embeddings_key(dataset: str, key: str) -> dg.AssetKey:
    """Asset key of an embeddings key."""
    return dg.AssetKey([dataset, "embeddings", key])


def brain_key_asset(dataset: str, brain_key: str) -> dg.AssetKey:
    """Asset key of a brain run."""
    return dg.AssetKey([dataset, "brain", brain_key])


# How long a batch's index update waits for another batch's update of the same index.
BATCH_LOCK_WAIT_S = 1800.0


def batch_partitions(dataset: str) -> dg.DynamicPartitionsDefinition:
    """The dynamic partitions of an incremental dataset: one per inbox batch."""
    return dg.DynamicPartitionsDefinition(name=f"{dataset}__batches")


def refresh_condition(spec: BrainRunSpec) -> dg.AutomationCondition:
    """When a whole-dataset run of an inbox dataset refreshes: as soon as new batches have
    landed (eager), or on its ``refresh_cron`` once they have."""
    if spec.refresh_cron:
        return dg.AutomationCondition.on_cron(spec.refresh_cron)
    # eager, except that a batch whose run failed (a missing partition) does not hold back
    # the refresh for the batches that did land
    return (
        dg.AutomationCondition.eager()
        .without(~dg.AutomationCondition.any_deps_missing())
        .with_label("eager (past failed batches)")
    )


def is_batched(kind: str) -> bool:
    """Whether a brain kind of an incremental dataset is updated batch by batch."""
    return kind == "similarity"


class EmbeddingsRunConfig(dg.Config):
    """Launch-time overrides for computing embeddings (unset: the YAML's values)."""

    batch_size: int | None = Field(default=None, ge=1, description="images per batch")
    num_workers: int | None = Field(default=None, ge=0, description="decode worker processes")
    device: str | None = Field(default=None, description="'cpu', 'cuda' or 'auto'")


class DistanceMetric(StrEnum):
    """Distance between embeddings."""

    cosine = "cosine"
    euclidean = "euclidean"


class UniquenessRunConfig(dg.Config):
    """Launch-time overrides for a uniqueness run (unset: the YAML's values)."""

    k: int | None = Field(default=None, ge=1, le=100, description="neighbours per item")
    metric: DistanceMetric | None = Field(default=None, description="cosine or euclidean")


class SimilarityRunConfig(dg.Config):
    """Launch-time overrides for a similarity index (unset: the YAML's values)."""

    metric: str | None = Field(default=None, description="cosine, euclidean or dotproduct")


def with_overrides(spec, config: dg.Config):
    """The spec with the run config's set fields applied (re-validated)."""
    overrides = {
        k: v.value if isinstance(v, Enum) else v
        for k, v in config.model_dump().items()
        if v is not None
    }
    if not overrides:
        return spec
    # thresh and fraction are alternatives: setting one at launch clears the other
    if "thresh" in overrides and hasattr(spec, "fraction"):
        overrides.setdefault("fraction", None)
    elif "fraction" in overrides and hasattr(spec, "thresh"):
        overrides["thresh"] = "auto"
    return type(spec).model_validate({**spec.model_dump(), **overrides})


def build_samples_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    """``<dataset>/samples``: ingest the dataset's source into the store."""
    if spec.incremental:
        return build_batch_samples_asset(spec)

    @dg.asset(
        key=samples_key(spec.name),
        group_name=spec.name,
        code_version=code_version("ingest", spec.spec_hash()),
        description=f"Samples and labels of dataset {spec.name!r} ({spec.source.type} source)",
        kinds={"duckdb", "parquet"},
    )
    def _samples(context: dg.AssetExecutionContext, store: BrainStoreResource):
        db = store.get()
        report = ingest_dataset(db, spec, log=context.log)
        version = db.data_version(spec.name)
        meta = {
            "dagster/row_count": len(db.sample_ids(spec.name)),
            "added": report.added,
            "updated": report.updated,
            "skipped": len(report.skipped),
            "label_fields": ", ".join(db.label_fields(spec.name)["field"]),
            "data_version": version,
            "parquet_path": dg.MetadataValue.path(str(db.parquet_path(spec.name, "samples"))),
            "duckdb_table": "samples",
            "ingest_summary": dg.MetadataValue.json(report.understood()),
        }
        if report.skipped:
            meta["skipped_rows"] = dg.MetadataValue.json(
                [list(map(str, s)) for s in report.skipped[:50]]
            )
        return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(version))

    return _samples


def build_batch_samples_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    """``<dataset>/samples`` of an inbox dataset: one partition per batch."""

    @dg.asset(
        key=samples_key(spec.name),
        group_name=spec.name,
        partitions_def=batch_partitions(spec.name),
        code_version=code_version("ingest", spec.spec_hash()),
        description=f"Samples and labels of dataset {spec.name!r}, batch by batch from its "
        f"inbox {spec.source.path!r} ({spec.source.layout} layout)",
        kinds={"duckdb", "parquet"},
    )
    def _batch(context: dg.AssetExecutionContext, store: BrainStoreResource):
        db = store.get()
        batch = context.partition_key
        out = ingest_batch(db, spec, data_path(spec.source.path, db.data_dir), batch, context.log)
        meta: dict[str, Any] = {
            "dagster/row_count": len(out.sample_ids),
            "batch": batch,
            "event": "removed" if out.removed_batch else "ingested",
            "fingerprint": out.fingerprint or "",
            "removed": len(out.removed_ids),
            "dataset_samples": len(db.sample_ids(spec.name)),
        }
        if out.report is not None:
            rep = out.report
            meta.update(added=rep.added, updated=rep.updated, skipped=len(rep.skipped))
            meta["ingest_summary"] = dg.MetadataValue.json(rep.understood())
            if rep.skipped:
                context.log.warning(
                    "batch %r: skipped %d unreadable or invalid files: %s",
                    batch,
                    len(rep.skipped),
                    "; ".join(map(str, rep.skipped[:5])),
                )
                meta["skipped_files"] = dg.MetadataValue.json([str(r) for r in rep.skipped[:200]])
        else:
            context.log.warning(
                "batch %r left the inbox: %d samples removed", batch, len(out.removed_ids)
            )
        version = db.data_version(spec.name, out.sample_ids) if out.sample_ids else "removed"
        return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(version))

    return _batch


def _same_model(db, spec: EmbeddingsSpec, embedder: EmbedderResource) -> bool:
    """Whether a batch may join the key: it holds no vectors yet, or vectors of the model
    this spec uses (after a model change the whole key is computed again)."""
    if spec.source != "model":
        return True
    from dagster_brain.embedding.names import canonical_name

    sets = db.embedding_sets(spec.dataset)
    row = sets[sets["embeddings_key"] == spec.key]
    if row.empty or int(row["count"].iloc[0]) == 0:
        return True
    stored = row["model"].iloc[0]
    want = canonical_name(spec.model or embedder.model)
    return isinstance(stored, str) and canonical_name(stored) == want


def build_embeddings_asset(spec: EmbeddingsSpec, incremental: bool = False) -> dg.AssetsDefinition:
    """``<dataset>/embeddings/<key>``: vectors from a model, an array, a column or a key.

    ``incremental``: partitioned by batch; a partition embeds only its batch's samples.
    """
    deps = [samples_key(spec.dataset)]
    if spec.source == "key":
        deps.append(embeddings_key(spec.dataset, spec.from_key))

    @dg.asset(
        key=embeddings_key(spec.dataset, spec.key),
        deps=deps,
        group_name=spec.dataset,
        partitions_def=batch_partitions(spec.dataset) if incremental else None,
        code_version=code_version("embeddings", spec.spec_hash()),
        description=f"Embeddings {spec.key!r} of {spec.dataset!r} ({spec.source} source"
        + (f", patches of {spec.patches_field!r}" if spec.patches_field else "")
        + ")",
        kinds={"pytorch", "duckdb"} if spec.source == "model" else {"duckdb"},
        tags={"brain/compute": "embeddings"},
    )
    def _embeddings(
        context: dg.AssetExecutionContext,
        config: EmbeddingsRunConfig,
        store: BrainStoreResource,
        embedder: EmbedderResource,
    ):
        db = store.get()
        run_spec = with_overrides(spec, config.model_copy(update={"device": None}))
        if config.device is not None:
            embedder = embedder.model_copy(update={"device": config.device})
        batch_meta: dict[str, Any] = {}
        if context.has_partition_key and _same_model(db, run_spec, embedder):
            batch = db.batch_sample_ids(spec.dataset, context.partition_key)
            emb = update_embeddings(
                run_spec, db, batch, embedder=embedder, run_id=context.run_id, log=context.log
            )
            batch_meta = {"batch": context.partition_key, "batch_vectors": len(emb.ids)}
        else:
            if context.has_partition_key:
                context.log.warning(
                    "embeddings %r hold another model's vectors: computing the key for the "
                    "whole dataset with %s",
                    spec.key,
                    run_spec.model or embedder.model,
                )
            emb = compute_embeddings(
                run_spec, db, embedder=embedder, run_id=context.run_id, log=context.log
            )
        return dg.MaterializeResult(
            metadata={
                **batch_meta,
                "dagster/row_count": emb.count_all,
                "model": emb.model or "",
                "model_hash": emb.model_hash or "",
                "dim": emb.dim,
                "patches_field": emb.patches_field or "",
                "parquet_path": dg.MetadataValue.path(
                    str(db.parquet_path(spec.dataset, f"embeddings/{spec.key}"))
                ),
                "duckdb_table": "embeddings",
                "run_id": context.run_id,
            },
            data_version=dg.DataVersion(emb.data_version or ""),
        )

    return _embeddings


def _no_resources(spec) -> set[str]:
    return set()


def _no_kwargs(spec, resources) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class KindAsset:
    """How one brain-run kind becomes an asset: config, inputs, resources, metadata."""

    config: type[dg.Config]
    inputs: Callable[[BrainRunSpec], list[dg.AssetKey]]
    metadata: Callable[[RunOutcome], dict[str, Any]]
    resources: Callable[[BrainRunSpec], set[str]] = _no_resources
    run_kwargs: Callable[[BrainRunSpec, Any], dict[str, Any]] = _no_kwargs
    kinds: frozenset[str] = frozenset({"numpy", "duckdb"})


def _embeddings_input(spec) -> list[dg.AssetKey]:
    return [embeddings_key(spec.dataset, spec.embeddings)]


def _uniqueness_metadata(outcome: RunOutcome) -> dict[str, Any]:
    ids = ["sample_id"] + (["label_id"] if "label_id" in outcome.results else [])
    return score_metadata(outcome.results, "uniqueness", ids)


def _similarity_backend(spec) -> str:
    return spec.backend or get_brain_config().default_similarity_backend


def _similarity_metadata(outcome: RunOutcome) -> dict[str, Any]:
    index = outcome.record.config["index"]
    return {
        "dagster/row_count": len(outcome.results),
        "backend": index["backend"],
        "collection": index["collection"],
        "metric": index["metric"],
        "dim": index["dim"],
        "model": index["model"] or "",
        "supports_prompts": bool(index["supports_prompts"]),
        "backend_location": dg.MetadataValue.json(outcome.record.upstream.get("backend", {})),
    }


class DuplicatesRunConfig(dg.Config):
    """Launch-time overrides for near-duplicates (unset: the YAML's values)."""

    thresh: float | None = Field(default=None, ge=0, description="a fixed distance threshold")
    fraction: float | None = Field(default=None, ge=0, le=1, description="share to flag")
    verify: bool | None = Field(default=None, description="confirm pairs on the images")


class UniqueRunConfig(dg.Config):
    """Launch-time overrides for a unique subset."""

    count: int | None = Field(default=None, ge=1, description="items to pick")


class NoConfig(dg.Config):
    """This kind has no launch-time settings."""


def _similarity_input(spec) -> list[dg.AssetKey]:
    return [brain_key_asset(spec.dataset, spec.similarity)]


def _png_md(png: bytes, alt: str) -> dg.MetadataValue:
    import base64

    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _duplicates_metadata(outcome: RunOutcome) -> dict[str, Any]:
    from dagster_brain.algorithms.duplicates import visualize_duplicates

    s = outcome.summary
    df = outcome.results
    meta: dict[str, Any] = {
        "dagster/row_count": len(df),
        "duplicates": s["duplicates"],
        "groups": s["groups"],
        "pairs": s["pairs"],  # every pair within thresh: the run's "pairs" table
        "thresh": float(s["thresh"]),
        "method": s["method"],
        "duplicates_plot": _png_md(
            visualize_duplicates(None, s["ids"], s["result"], vectors=s["vectors"]),
            "duplicates",
        ),
    }
    if s["choice"] is not None:
        meta["threshold_choice"] = s["choice"].describe()
        meta["est_precision"] = float(s["choice"].est_precision)
        meta["est_recall"] = float(s["choice"].est_recall)
    if len(df):
        cols = [
            c for c in ("group", "sample_id", "label_id", "role", "distance", "path") if c in df
        ]
        meta["groups_preview"] = rows_table(df.head(20), cols)
    return meta


def _exact_metadata(outcome: RunOutcome) -> dict[str, Any]:
    df = outcome.results
    meta: dict[str, Any] = {"dagster/row_count": len(df), "groups": outcome.summary["groups"]}
    if len(df):
        meta["groups_preview"] = rows_table(df.head(20), list(df.columns))
    return meta


def _unique_metadata(outcome: RunOutcome) -> dict[str, Any]:
    from dagster_brain.algorithms.duplicates import visualize_unique

    s = outcome.summary
    return {
        "dagster/row_count": len(outcome.results),
        "unique_plot": _png_md(
            visualize_unique(None, s["ids"], s["unique_ids"], vectors=s["vectors"]), "unique"
        ),
        "first_picks": rows_table(outcome.results.head(20), list(outcome.results.columns)),
    }


class MistakennessMethod(StrEnum):
    """Classification mistakenness method."""

    confident_learning = "confident_learning"
    reference = "reference"


class MistakennessRunConfig(dg.Config):
    """Launch-time overrides for mistakenness (unset: the YAML's values)."""

    method: MistakennessMethod | None = None
    missing_conf: float | None = Field(default=None, ge=0, le=1, description="detections")
    iou_thresh: float | None = Field(default=None, gt=0, le=1, description="detections")


class HardnessMethod(StrEnum):
    """Hardness measure."""

    entropy = "entropy"
    margin = "margin"


class HardnessRunConfig(dg.Config):
    """Launch-time overrides for hardness."""

    method: HardnessMethod | None = None


def _scores_metadata(score: str):
    def build(outcome: RunOutcome) -> dict[str, Any]:
        meta = score_metadata(outcome.results, score, ["sample_id"])
        for reason, count in (outcome.summary.get("skipped") or {}).items():
            meta[f"skipped_{reason}"] = count
        objects = outcome.summary.get("objects")
        if objects is not None:
            for flag in ("possible_missing", "possible_spurious"):
                if flag in objects:
                    meta[flag] = int(objects[flag].eq(True).sum())
            gt = (
                objects[objects["mistakenness_loc"].notna()]
                if "mistakenness_loc" in objects
                else objects
            )
            cols = [c for c in ("sample_id", "label_id", "label", "mistakenness_loc") if c in gt]
            meta["top_mistakenness_loc"] = rows_table(gt.nlargest(10, "mistakenness_loc"), cols)
        return meta

    return build


class VisualizationMethod(StrEnum):
    """Dimensionality reduction method."""

    umap = "umap"
    tsne = "tsne"
    pca = "pca"


class VisualizationRunConfig(dg.Config):
    """Launch-time overrides for a visualization (unset: the YAML's values)."""

    method: VisualizationMethod | None = None
    num_dims: int | None = Field(default=None, ge=2, le=3)
    seed: int | None = None


def _visualization_input(spec) -> list[dg.AssetKey]:
    if spec.similarity is not None:
        return [brain_key_asset(spec.dataset, spec.similarity)]
    return [embeddings_key(spec.dataset, spec.embeddings)]


def _visualization_metadata(outcome: RunOutcome) -> dict[str, Any]:
    s = outcome.summary
    meta: dict[str, Any] = {
        "dagster/row_count": len(outcome.results),
        "scatter": _png_md(s["png"], "scatter"),
        "interactive_plot": dg.MetadataValue.path(str(s["html_path"])),
        "interactive_plot_url": dg.MetadataValue.url(Path(s["html_path"]).as_uri()),
        "png_path": dg.MetadataValue.path(str(s["png_path"])),
        "fit_size": int(s["fit_size"]),
        "timings_s": dg.MetadataValue.json({k: round(v, 3) for k, v in s["timings"].items()}),
    }
    if s["trustworthiness_at_10"] is not None:
        meta["trustworthiness_at_10"] = float(s["trustworthiness_at_10"])
    return meta


def _labels_input(spec) -> list[dg.AssetKey]:
    return [samples_key(spec.dataset)]


KIND_ASSETS: dict[str, KindAsset] = {
    "uniqueness": KindAsset(
        config=UniquenessRunConfig,
        inputs=_embeddings_input,
        metadata=_uniqueness_metadata,
    ),
    "similarity": KindAsset(
        config=SimilarityRunConfig,
        inputs=_embeddings_input,
        resources=lambda spec: {resource_key(_similarity_backend(spec))},
        run_kwargs=lambda spec, resources: {
            "params": getattr(resources, resource_key(_similarity_backend(spec))).params()
        },
        metadata=_similarity_metadata,
        kinds=frozenset({"duckdb"}),
    ),
    "duplicates": KindAsset(
        config=DuplicatesRunConfig,
        inputs=_similarity_input,
        metadata=_duplicates_metadata,
    ),
    "exact_duplicates": KindAsset(
        config=NoConfig,
        inputs=_labels_input,
        metadata=_exact_metadata,
        kinds=frozenset({"duckdb"}),
    ),
    "mistakenness": KindAsset(
        config=MistakennessRunConfig,
        inputs=_labels_input,
        metadata=_scores_metadata("mistakenness"),
    ),
    "hardness": KindAsset(
        config=HardnessRunConfig,
        inputs=_labels_input,
        metadata=_scores_metadata("hardness"),
    ),
    "visualization": KindAsset(
        config=VisualizationRunConfig,
        inputs=_visualization_input,
        metadata=_visualization_metadata,
        kinds=frozenset({"umap", "duckdb"}),
    ),
    "unique": KindAsset(
        config=UniqueRunConfig,
        inputs=_similarity_input,
        metadata=_unique_metadata,
    ),
}


def build_brain_asset(spec: BrainRunSpec, incremental: bool = False) -> dg.AssetsDefinition:
    """``<dataset>/brain/<brain_key>``: one brain run, with typed launch-time config.

    ``incremental``: a similarity index is partitioned by batch (each partition adds its batch
    with ``add_to_index``); other kinds score the whole dataset and refresh eagerly.
    """
    kind = spec.kind  # type: ignore[attr-defined]
    if kind not in KIND_ASSETS:
        raise ValueError(f"brain key {spec.brain_key!r}: no asset for kind {kind!r}")
    info = KIND_ASSETS[kind]
    if kind == "similarity":
        from dagster_brain.similarity.compute import resolve_backend

        resolve_backend(spec)  # unknown backend / unsupported metric: refused at load time

    def _compute(context: dg.AssetExecutionContext, config):
        db = context.resources.store.get()
        kwargs = info.run_kwargs(spec, context.resources)
        refuse_embedded_step(step_executor(context), spec, kwargs.get("params"))
        if context.has_partition_key:
            from dagster_brain.similarity.compute import SampleChange

            kwargs["change"] = SampleChange(
                db.batch_sample_ids(spec.dataset, context.partition_key)
            )
            # batches of one dataset update its index one after the other, never refused
            kwargs["lock_wait_s"] = BATCH_LOCK_WAIT_S
        try:
            outcome = run_brain(
                with_overrides(spec, config),
                db,
                run_id=context.run_id,
                log=context.log,
                **kwargs,
            )
        except BackendUnavailable as err:  # transient: retried, the previous results stay
            raise dg.RetryRequested(max_retries=2, seconds_to_wait=5) from err
        meta = {
            **info.metadata(outcome),
            **lineage_metadata(
                outcome.record, str(db.parquet_path(spec.dataset, f"results/{spec.brain_key}"))
            ),
        }
        return dg.MaterializeResult(
            metadata=meta, data_version=dg.DataVersion(outcome.results_version)
        )

    # Dagster reads the config type from the annotation, so set it per kind.
    _compute.__annotations__["config"] = info.config
    return dg.asset(
        key=brain_key_asset(spec.dataset, spec.brain_key),
        deps=info.inputs(spec),
        group_name=spec.dataset,
        code_version=code_version(kind, spec.spec_hash()),
        description=f"{kind} brain run {spec.brain_key!r} on {spec.dataset!r}",
        kinds=set(info.kinds | {_similarity_backend(spec)} if kind == "similarity" else info.kinds),
        tags={"brain/kind": kind},
        metadata={"brain_key": spec.brain_key, "method_version": METHOD_VERSIONS[kind]},
        required_resource_keys={"store", *info.resources(spec)},
        partitions_def=batch_partitions(spec.dataset) if incremental and is_batched(kind) else None,
        automation_condition=refresh_condition(spec)
        if incremental and not is_batched(kind)
        else None,
    )(_compute)
