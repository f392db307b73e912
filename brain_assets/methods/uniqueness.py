"""Uniqueness: a [0, 1] score per sample (or patch) from its nearest neighbours."""

from __future__ import annotations

from dataclasses import dataclass
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
from dagster_brain.methods.base import (
    BrainMethod,
    RunField,
    ScoreColumn,
    embeddings_input,
    one_row_per_embedding,
)
from dagster_brain.runs import _LOG, RunOutcome, embeddings_lineage, frame_version, new_record
from dagster_brain.specs import UniquenessSpec
from dagster_brain.store import EmbeddingSet, Store, row_hashes

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


METHOD = BrainMethod(
    kind="uniqueness",
    spec=UniquenessSpec,
    run=run_uniqueness,
    inputs=embeddings_input,
    expected_rows=one_row_per_embedding,
    score=ScoreColumn("uniqueness", 0.0, 1.0),
    summary="Uniqueness of each sample (or patch) from its nearest neighbours.",
    run_fields=(
        RunField("k", int, "neighbours per item", ge=1, le=100),
        RunField("metric", str, "cosine or euclidean"),
    ),
)
