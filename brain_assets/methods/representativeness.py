"""Representativeness: how typical each sample (or patch) is of a dense cluster, in [0, 1]."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from dagster_brain.algorithms.knn_graph import nearest_lists
from dagster_brain.algorithms.representativeness import representativeness_scores
from dagster_brain.embeddings import check_model
from dagster_brain.item_media import with_media
from dagster_brain.knn_graphs import find_graph
from dagster_brain.methods.base import (
    BrainMethod,
    RunField,
    ScoreColumn,
    embeddings_input,
    one_row_per_embedding,
)
from dagster_brain.methods.scored import scores_metadata
from dagster_brain.runs import _LOG, RunContext, RunOutcome, commit_outcome, embeddings_lineage
from dagster_brain.specs import NAME, BrainRunSpec
from dagster_brain.store import Store, row_hashes


class RepresentativenessSpec(BrainRunSpec):
    """``compute_representativeness``: how typical each item of an embeddings key (image or
    patch embeddings) is of a dense cluster, in [0, 1].

    ``method``: ``cluster-center`` (closeness to the cluster centre, weighted by the cluster's
    size) or ``cluster-center-downweight`` (also lowers items whose ``neighbours`` nearest
    items already score higher). ``n_clusters``: None chooses about sqrt(n / 2).
    """

    version: ClassVar[str] = "1"
    kind: Literal["representativeness"]
    embeddings: str = Field(pattern=NAME)
    model: str | None = None  # if set, the embeddings key must come from this model
    method: Literal["cluster-center", "cluster-center-downweight"] = "cluster-center"
    n_clusters: int | None = Field(default=None, ge=1)
    neighbours: int = Field(default=5, ge=1, le=100)
    seed: int = 51

    def graph_use(self) -> tuple[str, str, int] | None:
        """The downweight reads ``neighbours`` cosine neighbours (cluster-center reads none)."""
        if self.method != "cluster-center-downweight":
            return None
        return self.embeddings, "cosine", self.neighbours


def run_representativeness(
    spec: RepresentativenessSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """Representativeness of each item of ``spec.embeddings`` (column ``representativeness``,
    with its ``cluster`` and ``centre_distance``). The downweighting method reads the
    neighbours of a stored ``knn_graph`` run of exactly these vectors when one exists."""
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    item_ids = emb.ids
    n = len(item_ids)
    if n < 2:
        raise ValueError(
            f"brain key {spec.brain_key!r}: representativeness needs at least 2 embedded items "
            f"in embeddings key {spec.embeddings!r}, found {n}"
        )
    if spec.n_clusters is not None and spec.n_clusters > n:
        raise ValueError(
            f"brain key {spec.brain_key!r}: n_clusters={spec.n_clusters} exceeds the {n} items "
            f"of embeddings key {spec.embeddings!r}"
        )
    upstream: dict[str, Any] = {"embeddings": embeddings_lineage(emb)}
    neighbors = distances = None
    if spec.method == "cluster-center-downweight":
        hashes = row_hashes(item_ids, emb.vectors)
        shared = find_graph(store, spec.dataset, item_ids, hashes, "cosine", spec.neighbours)
        if shared is not None:
            log.info("%s: neighbours read from the kNN graph %r", spec.brain_key, shared[0])
            upstream["knn_graph"] = shared[0]
            neighbors, distances = shared[1].neighbors, shared[1].distances
        else:
            neighbors, distances = nearest_lists(emb.vectors, spec.neighbours, "cosine")
    try:
        rep = representativeness_scores(
            emb.vectors,
            item_ids,
            method=spec.method,
            n_clusters=spec.n_clusters,
            neighbors=neighbors,
            distances=distances,
            seed=spec.seed,
        )
    except ValueError as err:
        raise ValueError(
            f"brain key {spec.brain_key!r} (embeddings {spec.embeddings!r}): {err}"
        ) from err
    log.info(
        "%s: representativeness of %d %s from embeddings %r (%s, %d clusters)",
        spec.brain_key,
        n,
        "patches" if emb.label_ids else "samples",
        spec.embeddings,
        spec.method,
        rep.n_clusters,
    )
    results = pd.DataFrame({"sample_id": emb.sample_ids})
    if emb.label_ids is not None:
        results["label_id"] = emb.label_ids
    results["representativeness"] = rep.scores.astype(np.float64)
    results["cluster"] = rep.cluster
    results["centre_distance"] = rep.centre_distance.astype(np.float64)
    return commit_outcome(
        spec,
        store,
        RunContext(run_id, log, ids, tuple(artifacts or ())),
        results,
        method=spec.method,
        upstream=upstream,
        packages=("scikit-learn",),
        sample_ids=list(emb.sample_ids),
        label_ids=emb.label_ids,
        summary={
            "items": n,
            "clusters": rep.n_clusters,
            "largest_cluster": int(rep.sizes.max()),
            "mean": float(rep.scores.mean()),
            "shared_graph": "knn_graph" in upstream,
        },
    )


METHOD = BrainMethod(
    kind="representativeness",
    spec=RepresentativenessSpec,
    run=with_media(run_representativeness),
    inputs=embeddings_input,
    expected_rows=one_row_per_embedding,
    score=ScoreColumn("representativeness", 0.0, 1.0),
    summary="How typical each sample (or patch) is of a dense cluster, in [0, 1].",
    run_fields=(
        RunField("method", str, "cluster-center or cluster-center-downweight"),
        RunField("n_clusters", int, "number of clusters (unset: about sqrt(n / 2))", ge=1),
    ),
    asset_metadata=scores_metadata("representativeness"),
)
