"""Stored kNN graphs: load, refresh incrementally and find the graph that fits some vectors.

A graph is kept as a brain run's table ``knn`` (``item_id``, ``row``, ``neighbor_rows``,
``distances``, ``row_hash``; neighbours are row numbers). The row hash of each (id, vector)
tells whether the graph still describes the vectors: readers use a stored graph only when
every hash matches, so a reader's results are those it would compute itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dagster_brain.algorithms.ann_graph import APPROX_THRESHOLD, build_graph
from dagster_brain.algorithms.duplicates import FIRST_PASS_K
from dagster_brain.algorithms.knn import Metric
from dagster_brain.algorithms.knn_graph import (
    KnnGraph,
    graph_from_arrow,
    graph_to_arrow,
    reorder_graph,
    update_knn_graph,
)
from dagster_brain.specs import DuplicatesSpec
from dagster_brain.store import EmbeddingSet, Store

# The brain-run kind whose runs hold a shared graph (methods/knn_graph.py).
GRAPH_KIND = "knn_graph"
# The table of a run that holds its graph.
GRAPH_TABLE = "knn"
# Above this share of changed items an update costs about as much as a rebuild.
MAX_UPDATE_SHARE = 0.5


def duplicates_graph_k(spec: DuplicatesSpec) -> int:
    """Neighbours per item a duplicates run reads from a graph: the radius graph's first
    pass, or the candidates it confirms on the images when wider (``thresh: auto`` with
    ``verify``)."""
    verified = spec.fraction is None and spec.thresh == "auto" and spec.verify
    return max(FIRST_PASS_K, spec.neighbours) if verified else FIRST_PASS_K


def reads_approximate(spec: Any) -> bool:
    """Whether a reader's results may come from an approximate graph (then they record
    ``graph_exact: false`` and the graph's recall): uniqueness (a score per item from its
    mean neighbour distance) and duplicates with an explicit numeric ``thresh``. Duplicates
    with ``fraction`` or ``thresh: auto`` choose their threshold from the neighbour
    distances, so they read exact graphs only."""
    if isinstance(spec, DuplicatesSpec):
        return isinstance(spec.thresh, float) and spec.fraction is None
    return getattr(spec, "kind", None) == "uniqueness"


@dataclass
class GraphChange:
    """How the items of a run changed since its stored kNN graph."""

    graph: KnnGraph
    removed: list[str]
    added: list[str]  # new items and items whose vector changed


def update_lineage(change: GraphChange | None) -> dict[str, int] | None:
    """What a run records about an incremental update (None for a full build)."""
    if change is None:
        return None
    return {"added": len(change.added), "removed": len(change.removed)}


def graph_change(
    store: Store,
    dataset: str,
    brain_key: str,
    *,
    kind: str,
    config: dict[str, Any],
    emb: EmbeddingSet,
    hashes: np.ndarray,
    k: int,
    metric: Metric,
) -> GraphChange | None:
    """The graph stored by the previous run of ``brain_key`` and what changed since, or
    ``None`` when it must be built afresh (no previous run, another config or model, too many
    changes)."""
    prev = store.get_run(dataset, brain_key, missing_ok=True)
    if prev is None or prev.kind != kind or prev.config != config:
        return None
    before = prev.upstream.get("embeddings", {})
    if GRAPH_TABLE not in prev.table_names() or (before.get("model"), before.get("key")) != (
        emb.model,
        emb.key,
    ):
        return None
    table = store.load_extra(dataset, brain_key, GRAPH_TABLE, arrow=True)
    old = pd.Series(table.column("row_hash").to_numpy(), index=table.column("item_id").to_pylist())
    now = pd.Series(hashes, index=emb.ids)
    removed = old.index.difference(now.index, sort=False).tolist()
    was = old.reindex(now.index)
    added = now.index[was.isna().to_numpy() | (was.to_numpy() != now.to_numpy())].tolist()
    if len(removed) + len(added) > MAX_UPDATE_SHARE * len(emb.ids):
        return None
    return GraphChange(graph_from_arrow(table, k=k, metric=metric), removed, added)


def refresh_graph(
    emb: EmbeddingSet,
    change: GraphChange | None,
    k: int,
    metric: Metric,
    *,
    exact: bool | None = True,
    threshold: int = APPROX_THRESHOLD,
) -> KnnGraph:
    """The graph of ``emb``: built, or updated from ``change`` (the same graph as a rebuild).

    ``exact``: True builds the exact graph, False the approximate one, None decides by size
    (``use_exact``; :func:`build_graph` also returns how an approximate one was built).
    ``change`` is for exact graphs only: the update is exact."""
    if change is None:
        return build_graph(emb.vectors, emb.ids, k, metric, exact=exact, threshold=threshold)[0]
    pos = pd.Index(emb.ids)
    at = pos.get_indexer(change.graph.ids)  # -1: removed since (those rows are not read)
    if np.array_equal(at, np.arange(len(at))):  # items only added at the end: no copy
        X_old = emb.vectors[: len(at)]
    else:
        X_old = emb.vectors[np.maximum(at, 0)]
    at_add = pos.get_indexer(change.added)
    if at_add.size and np.array_equal(at_add, np.arange(len(at), len(emb.ids))):
        X_add = emb.vectors[len(at) :]  # right after the old rows: update_knn_graph joins them
    else:
        X_add = emb.vectors[at_add]
    graph, _ = update_knn_graph(
        change.graph, X_old, remove_ids=change.removed, add_ids=change.added, X_add=X_add
    )
    return graph


def graph_table(graph: KnnGraph, ids: list[str], hashes: np.ndarray) -> pa.Table:
    """The stored form of a graph, with the row hash of each item (``hashes`` by ``ids``)."""
    by_id = pd.Series(hashes, index=ids).loc[graph.ids].to_numpy()
    return graph_to_arrow(graph).append_column("row_hash", pa.array(by_id))


def find_graph(
    store: Store,
    dataset: str,
    ids: list[str],
    hashes: np.ndarray,
    metric: str,
    k: int,
    *,
    approximate: bool = False,
) -> tuple[str, KnnGraph] | None:
    """A stored shared graph of exactly these items and vectors (``hashes`` by ``ids``),
    with this metric and at least ``k`` neighbours, rows in the order of ``ids``, cut to
    ``k`` neighbours; with the brain key that holds it. ``None``: there is none.

    Only exact graphs qualify unless ``approximate`` is true (a reader whose results may
    come from approximate neighbours); the graph returned says which it is (``exact``,
    ``recall_at_k``). An exact graph is preferred to an approximate one."""
    runs = store.list_runs(dataset, kind=GRAPH_KIND)
    want = pd.Series(hashes, index=ids)
    found: list[tuple[bool, str, Any]] = []
    for key in runs["brain_key"]:
        rec = store.get_run(dataset, key)
        if rec.config.get("metric") != metric or int(rec.config.get("k", 0)) < k:
            continue
        exact = graph_is_exact(rec.upstream)
        if not (exact or approximate) or GRAPH_TABLE not in rec.table_names():
            continue
        found.append((not exact, key, rec))
    for _, key, rec in sorted(found, key=lambda f: f[0]):
        table = store.load_extra(dataset, key, GRAPH_TABLE, arrow=True)
        have = pd.Series(
            table.column("row_hash").to_numpy(), index=table.column("item_id").to_pylist()
        )
        if len(have) != len(want) or not have.index.isin(want.index).all():
            continue
        if not (have.loc[want.index].to_numpy() == want.to_numpy()).all():
            continue
        graph = graph_from_arrow(table, k=int(rec.config["k"]), metric=metric)  # type: ignore[arg-type]
        stats = rec.upstream.get("graph") or {}
        if not graph_is_exact(rec.upstream):
            graph = KnnGraph(
                ids=graph.ids,
                neighbors=graph.neighbors,
                distances=graph.distances,
                metric=graph.metric,
                k=graph.k,
                exact=False,
                recall_at_k=stats.get("recall_at_k"),
            )
        return key, cut_graph(reorder_graph(graph, ids), k)
    return None


def graph_is_exact(upstream: dict[str, Any]) -> bool:
    """Whether a graph run's record (its ``upstream``) holds an exact graph; runs recorded
    before approximate graphs existed are exact."""
    return bool((upstream.get("graph") or {}).get("exact", True))


def cut_graph(graph: KnnGraph, k: int) -> KnnGraph:
    """The first ``k`` neighbours of each row (the graph itself when it has no more)."""
    if k >= graph.k:
        return graph
    w = min(k, len(graph.ids) - 1)
    return KnnGraph(
        ids=graph.ids,
        neighbors=graph.neighbors[:, :w],
        distances=graph.distances[:, :w],
        metric=graph.metric,
        k=k,
        exact=graph.exact,
        recall_at_k=graph.recall_at_k,
    )
