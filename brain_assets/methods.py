"""Brain methods as plain functions of (spec, store): the code both the assets and the API run.

Each method reads its inputs from the store, computes, and commits its run record and results
in one transaction (:meth:`Store.commit_run`), so a failure leaves the previous results.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dagster_brain.algorithms.knn_graph import (
    KnnGraph,
    build_knn_graph,
    graph_from_arrow,
    graph_to_arrow,
    update_knn_graph,
)
from dagster_brain.algorithms.uniqueness import uniqueness_from_graph
from dagster_brain.embeddings import check_model
from dagster_brain.specs import BrainRunSpec, SimilaritySpec, UniquenessSpec
from dagster_brain.store import BrainRunRecord, EmbeddingSet, Store, hash_strings, row_hashes

# Bumped when a method's algorithm changes its output; part of each asset's code version.
METHOD_VERSIONS: dict[str, str] = {
    "uniqueness": "2",
    "similarity": "1",
    "duplicates": "1",
    "exact_duplicates": "1",
    "unique": "1",
    "mistakenness": "1",
    "hardness": "1",
    "visualization": "1",
    "embeddings": "1",
    "ingest": "1",
}

_LOG = logging.getLogger("dagster_brain")


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages that shape a result."""
    out = {}
    for name in ("dagster-brain", "numpy", *names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def code_version(kind: str, spec_hash: str) -> str:
    """Asset code version: method version plus a hash of the spec's parameters."""
    return f"{kind}-v{METHOD_VERSIONS[kind]}-{spec_hash}"


def frame_version(df: pd.DataFrame) -> str:
    """Content hash of a results frame (same rows, same version)."""
    if df.empty:
        return "empty"
    hashed = pd.util.hash_pandas_object(df.astype(str), index=False)
    return hash_strings([str(int(hashed.sum()) & ((1 << 63) - 1)), str(len(df))])


def embeddings_lineage(emb: EmbeddingSet) -> dict[str, Any]:
    """What a run records about the embeddings it read."""
    return {
        "key": emb.key,
        "model": emb.model,
        "model_hash": emb.model_hash,
        "data_version": emb.data_version,
        "patches_field": emb.patches_field,
    }


def new_record(
    spec: BrainRunSpec,
    store: Store,
    *,
    method: str | None,
    sample_ids: list[str],
    run_id: str | None,
    upstream: dict[str, Any],
    label_ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    packages: tuple[str, ...] = (),
    config: dict[str, Any] | None = None,
) -> BrainRunRecord:
    """The run record of a spec: config, ids, versions, data version and lineage."""
    kind = spec.kind  # type: ignore[attr-defined]
    ids = sorted(set(sample_ids))
    return BrainRunRecord(
        dataset=spec.dataset,
        brain_key=spec.brain_key,
        kind=kind,
        method=method,
        config=config if config is not None else spec.model_dump(mode="json"),
        sample_ids=ids,
        label_ids=label_ids,
        run_id=run_id or f"api-{uuid.uuid4().hex[:12]}",
        code_version=code_version(kind, spec.spec_hash()),
        data_version=store.data_version(spec.dataset, ids),
        versions=package_versions(*packages),
        upstream=upstream,
        artifacts=list(artifacts or []),
    )


@dataclass
class RunOutcome:
    """What a brain method produced: the committed record, its results, and a summary."""

    record: BrainRunRecord
    results: pd.DataFrame
    results_version: str
    summary: dict[str, Any] = field(default_factory=dict)


# Above this share of changed items an update costs about as much as a rebuild.
MAX_UPDATE_SHARE = 0.5


@dataclass
class GraphChange:
    """How the items of a uniqueness run changed since its stored kNN graph."""

    graph: KnnGraph
    removed: list[str]
    added: list[str]  # new items and items whose vector changed


def _graph_change(
    spec: UniquenessSpec, store: Store, emb: EmbeddingSet, hashes: np.ndarray
) -> GraphChange | None:
    """The stored kNN graph of the previous run and what changed since, or ``None`` when the
    run must be computed afresh (no previous run, another config or model, too many changes).
    """
    prev = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    if prev is None or prev.kind != "uniqueness" or prev.config != spec.model_dump(mode="json"):
        return None
    tables = {a.get("name") for a in prev.artifacts if a.get("type") == "table"}
    before = prev.upstream.get("embeddings", {})
    if "knn" not in tables or (before.get("model"), before.get("key")) != (emb.model, emb.key):
        return None
    table = store.load_extra(spec.dataset, spec.brain_key, "knn", arrow=True)
    old = pd.Series(table.column("row_hash").to_numpy(), index=table.column("item_id").to_pylist())
    now = pd.Series(hashes, index=emb.ids)
    removed = old.index.difference(now.index, sort=False).tolist()
    before = old.reindex(now.index)
    added = now.index[before.isna().to_numpy() | (before.to_numpy() != now.to_numpy())].tolist()
    if len(removed) + len(added) > MAX_UPDATE_SHARE * len(emb.ids):
        return None
    graph = graph_from_arrow(table, k=spec.k, metric=spec.metric)
    return GraphChange(graph, removed, added)


def run_uniqueness(
    spec: UniquenessSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """``compute_uniqueness`` on an embeddings key; writes ``uniqueness`` per sample/patch.

    The run keeps its exact kNN graph (table ``knn``). When the run is refreshed with the same
    config and model and few items changed, only the added, changed and removed items'
    neighbourhoods are recomputed (``update_knn_graph``): the scores equal a full run's.
    ``artifacts`` lists what else the run wrote (e.g. embeddings it computed), deleted with it.
    """
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    item_ids = emb.ids
    if len(item_ids) < 2:
        raise ValueError(
            f"brain key {spec.brain_key!r}: uniqueness needs at least 2 embedded items in "
            f"embeddings key {spec.embeddings!r}, found {len(item_ids)}"
        )
    hashes = row_hashes(item_ids, emb.vectors)
    change = _graph_change(spec, store, emb, hashes) if ids is None else None
    try:
        if change is None:
            log.info(
                "%s: uniqueness of %d %s from embeddings %r (k=%d, %s)",
                spec.brain_key,
                len(item_ids),
                "patches" if emb.label_ids else "samples",
                spec.embeddings,
                spec.k,
                spec.metric,
            )
            graph = build_knn_graph(emb.vectors, item_ids, spec.k, spec.metric)
        else:
            log.info(
                "%s: uniqueness updated from the stored kNN graph: %d items added or changed, "
                "%d removed, %d in all",
                spec.brain_key,
                len(change.added),
                len(change.removed),
                len(item_ids),
            )
            pos = pd.Index(item_ids)
            at = pos.get_indexer(change.graph.ids)  # -1: removed since
            X_old = np.where((at >= 0)[:, None], emb.vectors[at], 0.0).astype(np.float32)
            add_at = pos.get_indexer(change.added)
            graph, _ = update_knn_graph(
                change.graph,
                X_old,
                remove_ids=change.removed,
                add_ids=change.added,
                X_add=emb.vectors[add_at],
            )
        scores = uniqueness_from_graph(graph, spec.weights)
    except ValueError as err:
        raise ValueError(f"brain key {spec.brain_key!r}: {err}") from err
    order = pd.Index(graph.ids).get_indexer(item_ids)  # graph rows in the key's order
    graph_ids = np.asarray(graph.ids, dtype=object)
    results = pd.DataFrame({"sample_id": emb.sample_ids})
    if emb.label_ids is not None:
        results["label_id"] = emb.label_ids
    results["uniqueness"] = scores[order]
    results["nearest_id"] = graph_ids[graph.neighbors[order, 0]]
    results["nearest_distance"] = graph.distances[order, 0].astype(np.float64)
    knn = graph_to_arrow(graph).append_column(
        "row_hash", pa.array(pd.Series(hashes, index=item_ids).loc[graph.ids].to_numpy())
    )
    record = new_record(
        spec,
        store,
        method="knn",
        sample_ids=emb.sample_ids,
        label_ids=emb.label_ids,
        run_id=run_id,
        upstream={
            "embeddings": embeddings_lineage(emb),
            "update": None
            if change is None
            else {"added": len(change.added), "removed": len(change.removed)},
        },
        artifacts=artifacts,
        packages=("scikit-learn",),
    )
    store.commit_run(record, results, extra={"knn": knn})
    summary = {
        "items": len(results),
        "mean": float(np.mean(scores)),
        "min": float(np.min(scores)),
        "incremental": change is not None,
    }
    return RunOutcome(record, results, frame_version(results), summary)


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
    from dagster_brain.similarity.compute import build_index, update_index

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


def _lazy(module: str, name: str) -> Callable[..., RunOutcome]:
    """A runner imported on first use (keeps optional dependencies off the import path)."""

    def run(*args: Any, **kwargs: Any) -> RunOutcome:
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return run


RUNNERS: dict[str, Callable[..., RunOutcome]] = {
    "uniqueness": run_uniqueness,
    "similarity": run_similarity,
    "duplicates": _lazy("dagster_brain.similarity.runs", "run_duplicates"),
    "exact_duplicates": _lazy("dagster_brain.similarity.runs", "run_exact_duplicates"),
    "unique": _lazy("dagster_brain.similarity.runs", "run_unique"),
    "mistakenness": _lazy("dagster_brain.scores", "run_mistakenness"),
    "hardness": _lazy("dagster_brain.scores", "run_hardness"),
    "visualization": _lazy("dagster_brain.visualization_runs", "run_visualization"),
}


def delete_brain_run(store: Store, dataset: str, brain_key: str) -> BrainRunRecord:
    """Delete a run and everything it wrote, backend collections included.

    If the backend cannot be reached, nothing is deleted (the error names the backend).
    """
    record = store.get_run(dataset, brain_key)
    if record.kind == "similarity":
        from dagster_brain.similarity.compute import delete_index

        delete_index(store, record)
    return store.delete_run(dataset, brain_key)


def run_brain(
    spec: BrainRunSpec, store: Store, *, lock_wait_s: float = 0.0, **kwargs: Any
) -> RunOutcome:
    """Run the method of a brain-run spec, holding its brain key for the whole run (a run
    already holding it is waited for up to ``lock_wait_s`` seconds, then refused)."""
    kind = spec.kind  # type: ignore[attr-defined]
    if kind not in RUNNERS:
        raise ValueError(f"brain key {spec.brain_key!r}: no method for kind {kind!r}")
    holder = f"run {kwargs.get('run_id') or 'api'}"
    with store.run_lock(spec.dataset, spec.brain_key, holder, wait_s=lock_wait_s):
        return RUNNERS[kind](spec, store, **kwargs)
