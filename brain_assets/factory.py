"""Asset factories: one asset per dataset, embeddings key and brain key of the YAML.

Graph: ``<dataset>/samples`` -> ``<dataset>/embeddings/<key>`` -> ``<dataset>/brain/<brain_key>``.
Assets pass data through the store (``deps`` + store reads), never through IO managers.

A dataset with an inbox source is incremental: its samples, embeddings and similarity indexes
are partitioned by batch (one dynamic partition each, registered by the inbox sensor) and
updated batch by batch; its other brain runs score the whole dataset and are refreshed by an
eager automation condition once the batches they read have landed.
"""

import contextlib
import functools
from collections.abc import Iterator, Sequence
from enum import Enum, StrEnum
from typing import Any

import dagster as dg
from pydantic import Field, create_model

from dagster_brain.config import BrainSettings
from dagster_brain.embeddings import compute_embeddings, refresh_embeddings, update_embeddings
from dagster_brain.execution import refuse_embedded_step, step_executor
from dagster_brain.ingest.inbox import ingest_batch
from dagster_brain.ingest.sources import data_path, ingest_dataset
from dagster_brain.metadata import lineage_metadata, score_metadata
from dagster_brain.methods import BrainMethod, Input, get_method, run_brain
from dagster_brain.progress import run_log
from dagster_brain.redact import has_credentials, redact_text
from dagster_brain.resources.embedder import EmbedderResource
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.runs import (
    EMBEDDINGS_VERSION,
    INGEST_VERSION,
    RunOutcome,
    code_version,
    spec_code_version,
)
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
    cond = dg.AutomationCondition
    # Like eager, with two differences. A batch that lands while the refresh is running is
    # remembered: only a request clears "a dep updated", not the refresh's own completion
    # (eager's would, and that batch would never be scored). And a batch whose run failed
    # (a missing partition) does not hold back the refresh for the batches that did land.
    trigger = cond.newly_missing() | cond.any_deps_updated()
    # "Requested" is seen one tick after the request; a batch seen on that same tick landed
    # after the request was made, maybe after the refresh read its inputs, so the request
    # does not clear it (by default the reset would win a tie: that batch stayed unscored).
    landed = trigger.since((cond.newly_requested() & ~trigger) | cond.initial_evaluation())
    return (landed & ~cond.any_deps_in_progress() & ~cond.in_progress()).with_label(
        "eager (past failed batches, landed mid-run)"
    )


@contextlib.contextmanager
def no_credentials_in_errors() -> Iterator[None]:
    """A step's error whose text (or a cause's) holds a credential is raised again redacted
    and without its chain, so Dagster's event log never stores the credential."""
    try:
        yield
    except dg.RetryRequested:
        raise  # Dagster's control flow (its message is ours, already redacted)
    except Exception as err:
        chain, e = [], err
        while e is not None and e not in chain:
            chain.append(e)
            e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if not any(has_credentials(str(e)) for e in chain):
            raise
        raise RuntimeError(
            " <- ".join(redact_text(f"{type(e).__name__}: {e}") for e in chain)
        ) from None


def is_batched(kind: str) -> bool:
    """Whether a brain kind of an incremental dataset is updated batch by batch."""
    return get_method(kind).batched


class EmbeddingsRunConfig(dg.Config):
    """Launch-time overrides for computing embeddings (unset: the YAML's values)."""

    batch_size: int | None = Field(default=None, ge=1, description="images per batch")
    num_workers: int | None = Field(default=None, ge=0, description="decode worker processes")
    device: str | None = Field(default=None, description="'cpu', 'cuda' or 'auto'")


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
        code_version=code_version("ingest", INGEST_VERSION, spec.spec_hash()),
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
        code_version=code_version("ingest", INGEST_VERSION, spec.spec_hash()),
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
    Otherwise the model runs only on samples added or changed since the key's last computation
    (``refresh_embeddings``): a second run on unchanged data embeds nothing.
    """
    deps = [samples_key(spec.dataset)]
    if spec.source == "key":
        deps.append(embeddings_key(spec.dataset, spec.from_key))

    @dg.asset(
        key=embeddings_key(spec.dataset, spec.key),
        deps=deps,
        group_name=spec.dataset,
        partitions_def=batch_partitions(spec.dataset) if incremental else None,
        code_version=code_version("embeddings", EMBEDDINGS_VERSION, spec.spec_hash()),
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
        with run_log(context.log), no_credentials_in_errors():  # progress: run log lines
            return _embed_step(context, config, store.get(), embedder)

    def _embed_step(context, config, db, embedder):
        run_spec = with_overrides(spec, config.model_copy(update={"device": None}))
        if config.device is not None:
            embedder = embedder.model_copy(update={"device": config.device})
        extra_meta: dict[str, Any] = {}
        if context.has_partition_key and _same_model(db, run_spec, embedder):
            batch = db.batch_sample_ids(spec.dataset, context.partition_key)
            emb = update_embeddings(
                run_spec, db, batch, embedder=embedder, run_id=context.run_id, log=context.log
            )
            extra_meta = {"batch": context.partition_key, "batch_vectors": len(emb.ids)}
        elif context.has_partition_key:
            context.log.warning(
                "embeddings %r hold another model's vectors: computing the key for the "
                "whole dataset with %s",
                spec.key,
                run_spec.model or embedder.model,
            )
            emb = compute_embeddings(
                run_spec, db, embedder=embedder, run_id=context.run_id, log=context.log
            )
        else:
            # the whole key: samples whose content and model did not change keep their vectors
            done = refresh_embeddings(
                run_spec, db, embedder=embedder, run_id=context.run_id, log=context.log
            )
            emb = done.emb
            extra_meta = {
                "embedded": done.embedded,
                "reused": done.reused,
                "removed": done.removed,
                "refresh": done.summary,
            }
        return dg.MaterializeResult(
            metadata={
                **extra_meta,
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


def input_key(dataset: str, item: Input) -> dg.AssetKey:
    """The asset key of one input of a brain run."""
    if item.kind == "samples":
        return samples_key(dataset)
    if item.kind == "embeddings":
        return embeddings_key(dataset, item.key)
    return brain_key_asset(dataset, item.key)


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))


@functools.cache
def run_config_class(method: BrainMethod) -> type[dg.Config]:
    """The launch-time config of a method: its ``run_fields``, each optional (unset: the
    YAML's value); a field with ``choices`` is an enum in the launchpad."""
    fields: dict[str, Any] = {}
    for f in method.run_fields:
        typ: Any = f.type
        choices = method.field_choices(f)
        if choices:
            typ = StrEnum(_camel(method.kind) + _camel(f.name), {c: c for c in choices})
        fields[f.name] = (
            typ | None,
            Field(default=None, ge=f.ge, gt=f.gt, le=f.le, description=f.description or None),
        )
    doc = f"Launch-time overrides for a {method.kind} run (unset: the YAML's values)."
    return create_model(
        f"{_camel(method.kind)}RunConfig", __base__=dg.Config, __doc__=doc, **fields
    )


def default_metadata(method: BrainMethod, outcome: RunOutcome) -> dict[str, Any]:
    """Row count, and score statistics when the method has a score column."""
    if method.score is None or method.score.column not in outcome.results:
        return {"dagster/row_count": len(outcome.results)}
    ids = ["sample_id"] + (["label_id"] if "label_id" in outcome.results else [])
    return score_metadata(outcome.results, method.score.column, ids)


def run_metadata(method: BrainMethod, db, outcome: RunOutcome) -> dict[str, Any]:
    """A brain asset's materialisation metadata: the method's own (or row count and score
    statistics) and the run's lineage."""
    render = method.asset_metadata or functools.partial(default_metadata, method)
    rec = outcome.record
    path = str(db.parquet_path(rec.dataset, f"results/{rec.brain_key}"))
    return {**render(outcome), **lineage_metadata(rec, path)}


def build_brain_asset(
    spec: BrainRunSpec, incremental: bool = False, extra_deps: Sequence[dg.AssetKey] = ()
) -> dg.AssetsDefinition:
    """``<dataset>/brain/<brain_key>``: one brain run, with typed launch-time config.

    ``incremental``: a batched method (a similarity index) is partitioned by batch (each
    partition adds its batch with ``add_to_index``); other kinds score the whole dataset and
    refresh eagerly. ``extra_deps``: assets it reads besides its method's inputs (the shared
    kNN graph of its vectors), materialised before it.
    """
    method = get_method(spec.kind, spec.brain_key)  # type: ignore[attr-defined]
    if method.validate is not None:
        method.validate(spec)  # e.g. an unknown backend: refused at load time

    def _compute(context: dg.AssetExecutionContext, config):
        with run_log(context.log), no_credentials_in_errors():  # progress: run log lines
            return _step(context, config)

    def _step(context: dg.AssetExecutionContext, config):
        db = context.resources.store.get()
        kwargs = method.run_kwargs(spec, context.resources)
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
        return dg.MaterializeResult(
            metadata=run_metadata(method, db, outcome),
            data_version=dg.DataVersion(outcome.results_version),
        )

    # Dagster reads the config type from the annotation, so set it per kind.
    _compute.__annotations__["config"] = run_config_class(method)
    batched = incremental and method.batched
    return dg.asset(
        key=brain_key_asset(spec.dataset, spec.brain_key),
        deps=[*(input_key(spec.dataset, item) for item in method.inputs(spec)), *extra_deps],
        group_name=spec.dataset,
        code_version=spec_code_version(spec),
        description=f"{method.kind} brain run {spec.brain_key!r} on {spec.dataset!r}",
        kinds=set(method.asset_kinds(spec)),
        tags={"brain/kind": method.kind},
        metadata={"brain_key": spec.brain_key, "method_version": method.version},
        required_resource_keys={"store", *method.resources(spec)},
        partitions_def=batch_partitions(spec.dataset) if batched else None,
        automation_condition=refresh_condition(spec) if incremental and not batched else None,
    )(_compute)


HEALTH_REPORT = "health_report"  # the report's asset name under <dataset>/brain/


def health_report_key(dataset: str) -> dg.AssetKey:
    """Asset key of a dataset's health report."""
    return dg.AssetKey([dataset, "brain", HEALTH_REPORT])


def build_health_report_asset(
    dataset: str,
    brain_keys: Sequence[str],
    incremental: bool = False,
) -> dg.AssetsDefinition:
    """``<dataset>/brain/health_report``: the dataset's HTML health report from every brain
    run stored for it, downstream of its brain assets (``brain_keys``); on an inbox dataset
    (``incremental``) rewritten as soon as they change. Its metadata links the file and the
    viewer's page for it."""
    if HEALTH_REPORT in brain_keys:
        raise ValueError(
            f"brain key {HEALTH_REPORT!r} on {dataset!r}: this name is the dataset's health "
            "report asset; rename that run"
        )

    @dg.asset(
        key=health_report_key(dataset),
        deps=[samples_key(dataset), *(brain_key_asset(dataset, k) for k in brain_keys)],
        group_name=dataset,
        code_version="health-report-1",
        description=f"Health report of {dataset!r}: one HTML page from all its brain runs",
        kinds={"html"},
        required_resource_keys={"store"},
        automation_condition=dg.AutomationCondition.eager() if incremental else None,
    )
    def _report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from dagster_brain.health_report import write_health_report

        path, report = write_health_report(context.resources.store.get(), dataset)
        context.log.info("%s: health report of %d runs at %s", dataset, len(report.runs), path)
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.path(str(path)),
                # served by the embeddings viewer (`make ui` starts it); the file itself beside
                "report_url": dg.MetadataValue.url(BrainSettings.from_env().report_url(dataset)),
                "report_file_url": dg.MetadataValue.url(path.as_uri()),
                "brain_runs": len(report.runs),
                "issues": report.issues,
                "size_bytes": path.stat().st_size,
            },
            data_version=dg.DataVersion(report.version),
        )

    return _report
