"""Build, load and delete similarity indexes as brain runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dagster_brain.config import BrainConfig, BrainSettings, get_brain_config
from dagster_brain.progress import progress
from dagster_brain.redact import MASK, has_credentials, is_secret, redact_text
from dagster_brain.runs import embeddings_lineage, new_record
from dagster_brain.similarity.backends.registry import BACKEND_METRICS, SDKS, check_settings
from dagster_brain.similarity.index import (
    ADD_BATCH,
    SimilarityConfig,
    SimilarityError,
    SimilarityIndex,
    bulk_writes,
    new_collection_name,
    open_backend,
    release_backend,
)
from dagster_brain.specs import SimilaritySpec
from dagster_brain.store import BrainRunRecord, EmbeddingSet, Store

_LOG = logging.getLogger("dagster_brain")


def backend_settings(
    backend: str,
    overrides: dict[str, Any] | None = None,
    config: BrainSettings | BrainConfig | None = None,
) -> dict[str, Any]:
    """A backend's parameters: brain config (defaults < file < env < runtime) < overrides,
    checked against the backend's ``Settings``. ``config``: the settings the caller was
    given (the Definitions' ``BrainSettings``); None: the notebook API's brain config."""
    params = (config or get_brain_config()).backend_params(backend)
    params.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return check_settings(backend, params)


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters safe to store and show: no secrets, no values carrying credentials (a URL
    with ``user:pass@`` or ``?api_key=``: reopening takes those from the brain config), no
    empty values."""
    return {
        k: v
        for k, v in params.items()
        if v is not None and not is_secret(k) and not has_credentials(v)
    }


def recorded_params(params: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded backend parameters, fit to reopen its index: values that were masked
    when stored (``http://****@host``) are left out, so the brain config's own values apply."""
    return {
        k: v for k, v in public_params(params).items() if not (isinstance(v, str) and MASK in v)
    }


def entry_settings(spec: SimilaritySpec, params: dict[str, Any] | None) -> dict[str, Any]:
    """What a run overrides the brain config with: ``params`` (the similarity resource's
    settings under Dagster, the call's keywords from the API), then the brain-keys entry's own
    ``backend_params`` over them (the entry is the runtime layer, the resource the config's)."""
    return {**(params or {}), **spec.backend_params}


def model_supports_prompts(model: str | None, log: Any = _LOG) -> bool:
    """Whether a model name embeds text (loads transformers models once to find out)."""
    if not model:
        return False
    from dagster_brain.embedding.models import DEFAULT_MODEL, canonical_name, load_model

    if canonical_name(model) == DEFAULT_MODEL:
        return False
    try:
        return bool(load_model(model, device="cpu").supports_prompts)
    except Exception as err:  # an unreachable hub must not fail the index build
        log.warning(
            "model %r could not be loaded to check for a text tower: %s",
            model,
            redact_text(str(err)),
        )
        return False


def resolve_backend(spec: SimilaritySpec, config: BrainSettings | BrainConfig | None = None) -> str:
    """The backend a spec uses; refuses unknown backends and unsupported metrics up front."""
    name = spec.backend or (config or get_brain_config()).default_similarity_backend
    if name not in BACKEND_METRICS:
        raise SimilarityError(
            f"brain key {spec.brain_key!r}: unknown similarity backend {name!r}; available: "
            f"{sorted(BACKEND_METRICS)}"
        )
    if spec.metric not in BACKEND_METRICS[name]:
        raise SimilarityError(
            f"brain key {spec.brain_key!r}: backend {name!r} does not support metric "
            f"{spec.metric!r} (supported: {', '.join(BACKEND_METRICS[name])})"
        )
    return name


def build_index(
    spec: SimilaritySpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    params: dict[str, Any] | None = None,
    overwrite: bool = True,
    artifacts: list[dict[str, Any]] | None = None,
) -> tuple[SimilarityIndex, BrainRunRecord, pd.DataFrame]:
    """Index an embeddings key into a fresh backend collection, then switch the run to it.

    The previous collection is dropped only after the new run record is committed, so a
    failure (an unreachable backend, bad vectors) leaves the previous index and run intact.
    Settings, highest first: the entry's ``backend_params`` > ``params`` > the brain config.
    """
    backend_name = resolve_backend(spec)
    settings = backend_settings(backend_name, entry_settings(spec, params))
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    if not len(emb.sample_ids):
        raise SimilarityError(
            f"brain key {spec.brain_key!r}: embeddings key {spec.embeddings!r} has no vectors"
            + (" for the requested samples" if ids is not None else "")
        )
    model = spec.model or emb.model
    index_cfg = SimilarityConfig(
        backend=backend_name,
        metric=spec.metric,
        dim=emb.dim,
        collection=new_collection_name(spec.dataset, spec.brain_key),
        embeddings_key=spec.embeddings,
        model=model,
        patches_field=emb.patches_field,
        supports_prompts=model_supports_prompts(model, log),
        params=public_params(settings),
    )
    existing = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    if existing is not None and existing.kind == "similarity" and not overwrite:
        old = existing.config.get("spec", {})
        if old != spec.model_dump(mode="json"):
            raise SimilarityError(
                f"brain key {spec.brain_key!r} already exists on {spec.dataset!r} with a "
                f"different config ({old}); pass overwrite=True or use another key"
            )
    log.info(
        "%s: indexing %d %s vectors (dim %d) on %s (%s) as %s",
        spec.brain_key,
        len(emb.sample_ids),
        "patch" if emb.label_ids else "sample",
        emb.dim,
        backend_name,
        spec.metric,
        index_cfg.collection,
    )
    backend = open_backend(store, spec.dataset, index_cfg, settings)
    ids_ = emb.ids
    try:
        desc = f"{spec.brain_key}: uploading {len(ids_):,} vectors to {backend_name}"
        # in-process backends take the key's array itself (emb is not written after this)
        adopt = getattr(backend, "adopt", None) if backend.count() == 0 else None
        with bulk_writes(backend), progress(desc, len(ids_), "vectors") as bar:
            if adopt is not None:
                adopt(ids_, emb.vectors)
                bar.update(len(ids_))
            for start in range(0, len(ids_) if adopt is None else 0, ADD_BATCH):
                batch = ids_[start : start + ADD_BATCH]
                backend.upsert(batch, emb.vectors[start : start + ADD_BATCH])
                bar.update(len(batch))
    except BaseException:
        _drop_quietly(backend, log)
        raise
    members = pd.DataFrame(
        {
            "id": ids_,
            "sample_id": emb.sample_ids,
            "label_id": emb.label_ids if emb.label_ids is not None else [None] * len(ids_),
        }
    )
    record = new_record(
        spec,
        store,
        method=backend_name,
        sample_ids=emb.sample_ids,
        label_ids=emb.label_ids,
        run_id=run_id,
        upstream={"embeddings": embeddings_lineage(emb), "backend": backend.describe()},
        artifacts=artifacts,
        packages=(_sdk(backend_name),),
        config={"spec": spec.model_dump(mode="json"), "index": index_cfg.to_dict()},
    )
    try:
        store.commit_run(record, members)
    except BaseException:
        _drop_quietly(backend, log)
        raise
    if existing is not None and existing.kind == "similarity":
        _drop_collection(store, existing, log)
    index = SimilarityIndex(
        store, spec.dataset, spec.brain_key, index_cfg, backend, members, record=record
    )
    return index, record, members


@dataclass(frozen=True)
class SampleChange:
    """Samples whose vectors changed (re-read from the key) and samples that left."""

    sample_ids: list[str]
    dropped: list[str] = field(default_factory=list)


def _key_lineage(store: Store, dataset: str, key: str) -> dict[str, Any]:
    """What a run records about an embeddings key, without reading its vectors."""
    sets = store.embedding_sets(dataset)
    row = sets[sets["embeddings_key"] == key].iloc[0]
    text = {c: (row[c] if isinstance(row[c], str) else None) for c in row.index}
    return {
        "key": key,
        "model": text["model"],
        "model_hash": text["model_hash"],
        "data_version": text["data_version"],
        "patches_field": text["patches_field"],
    }


def update_index(
    spec: SimilaritySpec,
    store: Store,
    change: SampleChange,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    params: dict[str, Any] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> tuple[SimilarityIndex, BrainRunRecord, pd.DataFrame]:
    """Bring an existing index in line with changed samples by ``add_to_index`` and
    ``remove_from_index`` (no rebuild), then commit the run's new membership and lineage.

    The index follows the embeddings key: samples the key holds but the index lacks are added
    too, samples the key lost are removed. Without a run for the brain key, or with one made
    from another config, model or dimension, the index is built instead.
    A failure between the backend writes and the commit leaves extra vectors that the next
    update of the same samples overwrites (writes are upserts by id).
    """
    with store.pinned():  # the reads below, without opening the store file for each
        prior = _prior_index(spec, store, change, params)
    if prior is None:
        log.info(
            "%s: no index to update (or its config, model or dimension changed): building it",
            spec.brain_key,
        )
        return build_index(spec, store, run_id=run_id, log=log, params=params, artifacts=artifacts)
    index, emb = prior.index, prior.vectors
    gone = (prior.indexed - prior.in_key) | set(change.dropped) | set(change.sample_ids)
    with index.deferred_persist():
        removed = index.remove_from_index(sample_ids=sorted(gone))
        added = (
            index.add_to_index(emb.vectors, emb.sample_ids, label_ids=emb.label_ids)
            if emb.ids
            else 0
        )
    members = index.members
    log.info(
        "%s: index updated in place: %d vectors removed, %d added, %d in all",
        spec.brain_key,
        removed,
        added,
        len(members),
    )
    with store.pinned():
        record = new_record(
            spec,
            store,
            method=index.config.backend,
            sample_ids=members["sample_id"].tolist(),
            label_ids=members["label_id"].tolist() if index.is_patches else None,
            run_id=run_id,
            upstream={
                "embeddings": prior.key,
                "backend": index.backend.describe(),
                "update": {"added": added, "removed": removed},
            },
            artifacts=artifacts if artifacts is not None else prior.run.artifacts,
            packages=(_sdk(index.config.backend),),
            config=prior.run.config,
        )
        store.commit_run(record, members, event="updated")
    return index, record, members


@dataclass
class _PriorIndex:
    """A stored index to update, and what the update needs."""

    index: SimilarityIndex
    run: BrainRunRecord
    key: dict[str, Any]  # the embeddings key's lineage
    vectors: EmbeddingSet  # the samples to (re-)add
    in_key: set[str]  # the sample ids the key holds
    indexed: set[str]  # the sample ids the index holds


def _prior_index(
    spec: SimilaritySpec, store: Store, change: SampleChange, params: dict[str, Any] | None
) -> _PriorIndex | None:
    """The stored index to update; None when it must be built instead (no run, or its config,
    model or dimension changed)."""
    existing = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    if (
        existing is None
        or existing.kind != "similarity"
        or existing.config.get("spec") != spec.model_dump(mode="json")
    ):
        return None
    key = _key_lineage(store, spec.dataset, spec.embeddings)
    before = existing.upstream.get("embeddings", {})
    if (before.get("model"), before.get("model_hash")) != (key["model"], key["model_hash"]):
        return None
    index = load_index(store, spec.dataset, spec.brain_key, entry_settings(spec, params))
    # The index follows the key: the changed samples, plus any sample the key holds that the
    # index lacks (a batch whose update failed or overlapped), minus samples the key lost.
    in_key = set(store.embedded_sample_ids(spec.dataset, spec.embeddings))
    indexed = set(index.members["sample_id"])
    wanted = sorted((set(change.sample_ids) & in_key) | (in_key - indexed))
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=wanted)
    if len(emb.ids) and emb.dim != index.config.dim:
        index.close()
        return None
    return _PriorIndex(index, existing, key, emb, in_key, indexed)


def _sdk(backend: str) -> str:
    """The package whose version shapes a backend's answers."""
    return SDKS.get(backend, backend)


def _drop_quietly(backend, log: Any) -> None:
    try:
        backend.drop()
        release_backend(backend)
    except Exception as err:  # the original error matters more
        log.warning(
            "could not drop the half-built collection %s: %s",
            backend.collection,
            redact_text(str(err)),
        )


def _drop_collection(store: Store, record: BrainRunRecord, log: Any) -> None:
    """Drop the collection of a superseded similarity run (best effort)."""
    try:
        cfg = SimilarityConfig.from_dict(record.config["index"])
        backend = open_backend(
            store, record.dataset, cfg, backend_settings(cfg.backend, recorded_params(cfg.params))
        )
        backend.drop()
        release_backend(backend)
    except Exception as err:
        log.warning(
            "could not drop the previous collection of %r: %s",
            record.brain_key,
            redact_text(str(err)),
        )


def load_index(
    store: Store, dataset: str, brain_key: str, params: dict[str, Any] | None = None
) -> SimilarityIndex:
    """The similarity index of a brain run, reopened on its backend."""
    record = store.get_run(dataset, brain_key)
    if record.kind != "similarity":
        raise SimilarityError(
            f"brain key {brain_key!r} on {dataset!r} is a {record.kind} run, not a similarity index"
        )
    cfg = SimilarityConfig.from_dict(record.config["index"])
    settings = backend_settings(cfg.backend, {**recorded_params(cfg.params), **(params or {})})
    backend = open_backend(store, dataset, cfg, settings)
    members = store.load_results(dataset, brain_key)
    return SimilarityIndex(store, dataset, brain_key, cfg, backend, members, record=record)


def delete_index(store: Store, record: BrainRunRecord) -> None:
    """Drop a similarity run's backend collection (raises if the backend is unreachable)."""
    cfg = SimilarityConfig.from_dict(record.config["index"])
    backend = open_backend(
        store, record.dataset, cfg, backend_settings(cfg.backend, recorded_params(cfg.params))
    )
    try:
        backend.drop()
    finally:
        release_backend(backend)
