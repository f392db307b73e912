"""kNN graph: the exact nearest neighbours of an embeddings key, computed once and shared.

Uniqueness and duplicates read a stored graph of the same vectors and metric (with at least
the neighbours they need) instead of computing their own; their results are the same.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from dagster_brain.algorithms.duplicates import FIRST_PASS_K
from dagster_brain.embeddings import check_model
from dagster_brain.knn_graphs import GRAPH_TABLE, graph_change, graph_table, refresh_graph
from dagster_brain.methods.base import (
    BrainMethod,
    RunField,
    ScoreColumn,
    embeddings_input,
    one_row_per_embedding,
)
from dagster_brain.runs import _LOG, RunOutcome, embeddings_lineage, frame_version, new_record
from dagster_brain.specs import NAME, BrainRunSpec
from dagster_brain.store import Store, row_hashes


class KnnGraphSpec(BrainRunSpec):
    """An exact kNN graph of an embeddings key: ``k`` nearest other items per item.

    ``k`` defaults to 16, the first pass of duplicates (uniqueness needs 3 by default); a
    reader asking for more neighbours than the graph has computes its own.
    """

    version: ClassVar[str] = "1"
    kind: Literal["knn_graph"]
    embeddings: str = Field(pattern=NAME)
    model: str | None = None  # if set, the embeddings key must come from this model
    k: int = Field(default=FIRST_PASS_K, ge=1, le=256)
    metric: Literal["cosine", "euclidean"] = "cosine"


def run_knn_graph(
    spec: KnnGraphSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """The exact kNN graph of an embeddings key (table ``knn``), refreshed incrementally when
    few items changed since the previous run (the same graph as a rebuild)."""
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    if len(emb.ids) < 2:
        raise ValueError(
            f"brain key {spec.brain_key!r}: a kNN graph needs at least 2 embedded items in "
            f"embeddings key {spec.embeddings!r}, found {len(emb.ids)}"
        )
    hashes = row_hashes(emb.ids, emb.vectors)
    change = None
    if ids is None:
        change = graph_change(
            store,
            spec.dataset,
            spec.brain_key,
            kind=spec.kind,
            config=spec.model_dump(mode="json"),
            emb=emb,
            hashes=hashes,
            k=spec.k,
            metric=spec.metric,
        )
    log.info(
        "%s: kNN graph of %d items from embeddings %r (k=%d, %s, %s)",
        spec.brain_key,
        len(emb.ids),
        spec.embeddings,
        spec.k,
        spec.metric,
        "built"
        if change is None
        else f"updated: {len(change.added)} added or changed, {len(change.removed)} removed",
    )
    started = time.perf_counter()
    tracing = not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        graph = refresh_graph(emb, change, spec.k, spec.metric)
    except ValueError as err:
        raise ValueError(f"brain key {spec.brain_key!r}: {err}") from err
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if tracing:
            tracemalloc.stop()
    seconds = time.perf_counter() - started
    order = pd.Index(graph.ids).get_indexer(emb.ids)
    names = np.asarray(graph.ids, dtype=object)
    results = pd.DataFrame({"sample_id": emb.sample_ids})
    if emb.label_ids is not None:
        results["label_id"] = emb.label_ids
    results["nearest_id"] = names[graph.neighbors[order, 0]]
    results["nearest_distance"] = graph.distances[order, 0].astype(np.float64)
    results["kth_distance"] = graph.distances[order, -1].astype(np.float64)
    stats = {
        "items": len(graph.ids),
        "k": spec.k,
        "metric": spec.metric,
        "exact": True,
        "recall_at_k": None,  # exact: every list is the true one
        "build_seconds": round(seconds, 3),
        "peak_memory_mb": round(peak / 2**20, 1),
        "incremental": change is not None,
    }
    record = new_record(
        spec,
        store,
        method="exact",
        sample_ids=emb.sample_ids,
        label_ids=emb.label_ids,
        run_id=run_id,
        upstream={
            "embeddings": embeddings_lineage(emb),
            "update": None
            if change is None
            else {"added": len(change.added), "removed": len(change.removed)},
            "graph": stats,
        },
        artifacts=artifacts,
        packages=(),
    )
    store.commit_run(record, results, extra={GRAPH_TABLE: graph_table(graph, emb.ids, hashes)})
    return RunOutcome(record, results, frame_version(results), stats)


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    s = outcome.summary
    return {
        "dagster/row_count": len(outcome.results),
        "N": s["items"],
        "k": s["k"],
        "metric": s["metric"],
        "exact": s["exact"],
        "recall_at_k": "exact" if s["recall_at_k"] is None else s["recall_at_k"],
        "build_seconds": s["build_seconds"],
        "peak_memory_mb": s["peak_memory_mb"],
        "incremental": s["incremental"],
    }


METHOD = BrainMethod(
    kind="knn_graph",
    spec=KnnGraphSpec,
    run=run_knn_graph,
    inputs=embeddings_input,
    expected_rows=one_row_per_embedding,
    score=ScoreColumn("nearest_distance"),
    summary="Exact kNN graph of an embeddings key, shared by uniqueness and duplicates.",
    run_fields=(RunField("k", int, "neighbours per item", ge=1, le=256),),
    asset_metadata=_metadata,
)
