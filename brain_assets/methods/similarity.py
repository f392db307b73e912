"""Similarity: a nearest-neighbour index of an embeddings key on a vector backend."""

from __future__ import annotations

from typing import Any

from dagster_brain.methods.base import (
    BrainMethod,
    RunField,
    embeddings_input,
    one_row_per_embedding,
)
from dagster_brain.runs import _LOG, RunOutcome, frame_version
from dagster_brain.similarity.compute import build_index, resolve_backend, update_index
from dagster_brain.specs import SimilaritySpec
from dagster_brain.store import Store


def run_similarity(
    spec: SimilaritySpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    params: dict[str, Any] | None = None,
    overwrite: bool = True,
    change: Any = None,
) -> RunOutcome:
    """``compute_similarity``: index an embeddings key on a backend (see similarity.compute).

    With ``change`` (a :class:`~dagster_brain.similarity.compute.SampleChange`) the existing
    index is updated in place for those samples instead of rebuilt.
    """
    if change is not None:
        index, record, members = update_index(
            spec, store, change, run_id=run_id, log=log, params=params, artifacts=artifacts
        )
    else:
        index, record, members = build_index(
            spec,
            store,
            run_id=run_id,
            log=log,
            ids=ids,
            params=params,
            overwrite=overwrite,
            artifacts=artifacts,
        )
    index.close()
    cfg = index.config
    summary = {
        "items": len(members),
        "backend": cfg.backend,
        "metric": cfg.metric,
        "dim": cfg.dim,
        "collection": cfg.collection,
    }
    return RunOutcome(record, members, frame_version(members), summary)


def _backend(spec: SimilaritySpec) -> str:
    from dagster_brain.config import get_brain_config

    return spec.backend or get_brain_config().default_similarity_backend


def _resources(spec: SimilaritySpec) -> set[str]:
    from dagster_brain.resources.similarity import resource_key

    return {resource_key(_backend(spec))}


def _run_kwargs(spec: SimilaritySpec, resources: Any) -> dict[str, Any]:
    from dagster_brain.resources.similarity import resource_key

    return {"params": getattr(resources, resource_key(_backend(spec))).params()}


def _backend_count(store: Store, spec: SimilaritySpec, results, meta: dict[str, Any]) -> list[str]:
    """The backend holds exactly the vectors the run indexed."""
    from dagster_brain.similarity.compute import load_index

    index = load_index(store, spec.dataset, spec.brain_key)
    try:
        stored = index.backend.count()
    finally:
        index.close()
    meta["backend_count"] = stored
    if stored != len(results):
        return [f"backend holds {stored} vectors, the run indexed {len(results)}"]
    return []


def _validate(spec: SimilaritySpec) -> None:
    """An unknown backend or a metric it lacks: refused at load time."""
    resolve_backend(spec)


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    import dagster as dg

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


METHOD = BrainMethod(
    kind="similarity",
    spec=SimilaritySpec,
    run=run_similarity,
    inputs=embeddings_input,
    expected_rows=one_row_per_embedding,
    score=None,
    summary="A nearest-neighbour index of an embeddings key on a vector backend.",
    run_fields=(RunField("metric", str, "cosine, euclidean or dotproduct", choices=()),),
    asset_kinds=lambda spec: {"duckdb", _backend(spec)},
    asset_metadata=_metadata,
    check=_backend_count,
    validate=_validate,
    batched=True,
    resources=_resources,
    run_kwargs=_run_kwargs,
)
