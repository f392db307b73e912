"""Uniqueness: a [0, 1] score per sample (or patch) from its nearest neighbours."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.algorithms.uniqueness import uniqueness_from_graph
from dagster_brain.embeddings import check_model
from dagster_brain.item_media import with_media
from dagster_brain.knn_graphs import (
    GRAPH_TABLE,
    find_graph,
    graph_change,
    graph_table,
    reads_approximate,
    refresh_graph,
    update_lineage,
)
from dagster_brain.methods.base import (
    BrainMethod,
    RunField,
    ScoreColumn,
    embeddings_input,
    one_row_per_embedding,
)
from dagster_brain.methods.scored import scores_metadata
from dagster_brain.runs import _LOG, RunOutcome, embeddings_lineage, frame_version, new_record
from dagster_brain.specs import UniquenessSpec
from dagster_brain.store import Store, row_hashes


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
    When a ``knn_graph`` run holds the graph of exactly these vectors with this metric and
    at least ``k`` neighbours, its first ``k`` neighbours are read instead (the same scores).
    ``artifacts`` lists what else the run wrote (e.g. embeddings it computed), deleted with it.
    """
    with store.pinned():  # the reads, without opening the store file for each
        emb, hashes, shared, change = _inputs(spec, store, ids)
    item_ids = emb.ids
    exact = shared is None or shared[1].exact
    try:
        if shared is not None:
            log.info(
                "%s: uniqueness of %d items from the kNN graph %r (k=%d, %s)",
                spec.brain_key,
                len(item_ids),
                shared[0],
                spec.k,
                spec.metric,
            )
            graph = shared[1]
        elif change is None:
            log.info(
                "%s: uniqueness of %d %s from embeddings %r (k=%d, %s)",
                spec.brain_key,
                len(item_ids),
                "patches" if emb.label_ids else "samples",
                spec.embeddings,
                spec.k,
                spec.metric,
            )
            graph = refresh_graph(emb, None, spec.k, spec.metric)
        else:
            log.info(
                "%s: uniqueness updated from the stored kNN graph: %d items added or changed, "
                "%d removed, %d in all",
                spec.brain_key,
                len(change.added),
                len(change.removed),
                len(item_ids),
            )
            graph = refresh_graph(emb, change, spec.k, spec.metric)
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
    knn = graph_table(graph, item_ids, hashes)
    with store.pinned():
        record = new_record(
            spec,
            store,
            method="knn",
            sample_ids=emb.sample_ids,
            label_ids=emb.label_ids,
            run_id=run_id,
            upstream={
                "embeddings": embeddings_lineage(emb),
                "update": update_lineage(change),
                **({} if shared is None else {"knn_graph": shared[0]}),
                **(
                    {}
                    if exact
                    else {"graph_exact": False, "graph_recall_at_k": shared[1].recall_at_k}
                ),
            },
            artifacts=artifacts,
            packages=("scikit-learn",),
        )
        store.commit_run(record, results, extra={GRAPH_TABLE: knn})
    summary = {
        "items": len(results),
        "mean": float(np.mean(scores)),
        "min": float(np.min(scores)),
        "incremental": change is not None,
        "shared_graph": shared is not None,
        "graph_exact": exact,
        "graph_recall_at_k": None if exact else shared[1].recall_at_k,
    }
    return RunOutcome(record, results, frame_version(results), summary)


def _inputs(spec: UniquenessSpec, store: Store, ids: list[str] | None):
    """(the key's vectors, their row hashes, a shared graph to read or None, the change to
    refresh the run's own graph with or None)."""
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    item_ids = emb.ids
    if len(item_ids) < 2:
        raise ValueError(
            f"brain key {spec.brain_key!r}: uniqueness needs at least 2 embedded items in "
            f"embeddings key {spec.embeddings!r}, found {len(item_ids)}"
        )
    hashes = row_hashes(item_ids, emb.vectors)
    shared = find_graph(
        store,
        spec.dataset,
        item_ids,
        hashes,
        spec.metric,
        spec.k,
        approximate=reads_approximate(spec),
    )
    change = None
    previous = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    # a stored graph read from an approximate one is not refreshed in place (that assumes
    # exact lists): the run recomputes its own
    stored_exact = previous is None or previous.upstream.get("graph_exact", True) is not False
    if shared is None and ids is None and stored_exact:
        change = graph_change(
            store,
            spec.dataset,
            spec.brain_key,
            kind="uniqueness",
            config=spec.model_dump(mode="json"),
            emb=emb,
            hashes=hashes,
            k=spec.k,
            metric=spec.metric,
        )
    return emb, hashes, shared, change


METHOD = BrainMethod(
    kind="uniqueness",
    spec=UniquenessSpec,
    run=with_media(run_uniqueness),
    inputs=embeddings_input,
    expected_rows=one_row_per_embedding,
    score=ScoreColumn("uniqueness", 0.0, 1.0),
    summary="Uniqueness of each sample (or patch) from its nearest neighbours.",
    run_fields=(
        RunField("k", int, "neighbours per item", ge=1, le=100),
        RunField("metric", str, "cosine or euclidean"),
    ),
    asset_metadata=scores_metadata("uniqueness"),
)
