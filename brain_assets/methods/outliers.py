"""Outliers: an out-of-distribution score per sample (or patch) from its k nearest neighbours,
and the same statistic within the item's class when a label field is given."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from dagster_brain.algorithms.outliers import (
    Z_FLAG,
    class_outlier_scores,
    outliers_from_graph,
)
from dagster_brain.embeddings import check_model
from dagster_brain.item_media import with_media
from dagster_brain.knn_graphs import find_graph, refresh_graph
from dagster_brain.methods.base import (
    BrainMethod,
    Input,
    RunField,
    ScoreColumn,
    one_row_per_embedding,
)
from dagster_brain.methods.scored import scores_metadata
from dagster_brain.runs import _LOG, RunContext, RunOutcome, commit_outcome, embeddings_lineage
from dagster_brain.specs import NAME, BrainRunSpec
from dagster_brain.store import EmbeddingSet, Store, row_hashes


class OutliersSpec(BrainRunSpec):
    """``compute_outliers``: how far each item lies from its ``k`` nearest neighbours against
    the collection's own spread (a [0, 1] score; 0.5 at the outlier flag), and within its class
    of ``label_field`` when given."""

    version: ClassVar[str] = "1"
    kind: Literal["outliers"]
    embeddings: str = Field(pattern=NAME)
    model: str | None = None  # if set, the embeddings key must come from this model
    # 16: chosen on the benchmark's tuning seeds; also the width of the shared kNN graph
    k: int = Field(default=16, ge=1, le=100)
    metric: Literal["cosine", "euclidean"] = "cosine"
    label_field: str | None = Field(default=None, pattern=NAME)

    def graph_use(self) -> tuple[str, str, int] | None:
        """The outlier score reads ``k`` neighbours."""
        return self.embeddings, self.metric, self.k


def _inputs(spec: OutliersSpec) -> list[Input]:
    """The embeddings key, and the samples' labels when scoring within classes."""
    out = [Input("embeddings", spec.embeddings)]
    return out + [Input("samples")] if spec.label_field else out


def _item_labels(store: Store, spec: OutliersSpec, emb: EmbeddingSet) -> list[str | None]:
    """The ``label_field`` label of each item: by label id for patches, else by sample (a
    classification field)."""
    fld = spec.label_field
    assert fld is not None
    kind, _ = store.label_field(spec.dataset, fld)
    labels = store.labels(spec.dataset, fld)
    if emb.label_ids is not None:
        by_label = labels.set_index("label_id")["label"]
        return [_text(by_label.get(i)) for i in emb.label_ids]
    if kind != "classification":
        raise ValueError(
            f"brain key {spec.brain_key!r}: label field {fld!r} holds {kind}; per-class "
            f"outliers of whole samples need a classification field (or patch embeddings)"
        )
    by_sample = labels.drop_duplicates("sample_id").set_index("sample_id")["label"]
    return [_text(by_sample.get(s)) for s in emb.sample_ids]


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else str(value)


def run_outliers(
    spec: OutliersSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """``compute_outliers`` on an embeddings key; writes ``outlier`` per sample/patch (and
    ``class_outlier`` with a label field). Reads the dataset's shared kNN graph of these
    vectors when one fits (the same scores), else computes the neighbours."""
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    item_ids = emb.ids
    if len(item_ids) < 2:
        raise ValueError(
            f"brain key {spec.brain_key!r}: outliers need at least 2 embedded items in "
            f"embeddings key {spec.embeddings!r}, found {len(item_ids)}"
        )
    labels = _item_labels(store, spec, emb) if spec.label_field else None
    hashes = row_hashes(item_ids, emb.vectors)
    shared = find_graph(
        store, spec.dataset, item_ids, hashes, spec.metric, spec.k, approximate=True
    )
    if shared is not None:
        log.info(
            "%s: outliers of %d items from the kNN graph %r (k=%d, %s)",
            spec.brain_key,
            len(item_ids),
            shared[0],
            spec.k,
            spec.metric,
        )
        graph = shared[1]
    else:
        log.info(
            "%s: outliers of %d items of embeddings %r (k=%d, %s)",
            spec.brain_key,
            len(item_ids),
            spec.embeddings,
            spec.k,
            spec.metric,
        )
        graph = refresh_graph(emb, None, spec.k, spec.metric)
    exact = graph.exact
    try:
        got = outliers_from_graph(graph, spec.k)
        per_class = (
            class_outlier_scores(
                emb.vectors, item_ids, labels, k=spec.k, metric=spec.metric, graph=graph
            )
            if labels is not None
            else None
        )
    except ValueError as err:
        raise ValueError(f"brain key {spec.brain_key!r}: {err}") from err
    order = pd.Index(graph.ids).get_indexer(item_ids)  # graph rows in the key's order
    graph_ids = np.asarray(graph.ids, dtype=object)
    results = pd.DataFrame({"sample_id": emb.sample_ids})
    if emb.label_ids is not None:
        results["label_id"] = emb.label_ids
    results["outlier"] = got.score[order]
    results["outlier_z"] = got.z[order]
    results["k_distance"] = got.k_distance[order]
    results["is_outlier"] = got.flagged[order]
    results["nearest_id"] = graph_ids[graph.neighbors[order, 0]]
    summary: dict[str, Any] = {
        "items": len(results),
        "outliers": int(got.flagged.sum()),
        "z_flag": Z_FLAG,
        "shared_graph": shared is not None,
        "graph_exact": exact,
    }
    if per_class is not None:
        cls = per_class.scores
        # a class of one item, or an unlabelled item, has no class of its own to be
        # compared with: it keeps its global score
        alone = np.isnan(cls.score)
        results["label"] = labels
        results["class_outlier"] = np.where(alone, results["outlier"], cls.score)
        results["class_outlier_z"] = np.where(alone, results["outlier_z"], cls.z)
        results["class_is_outlier"] = np.where(alone, results["is_outlier"], cls.flagged)
        summary["class_outliers"] = int(results["class_is_outlier"].sum())
        summary["classes_too_small"] = per_class.too_small
        summary["unlabelled"] = int(sum(v is None for v in labels))
        if per_class.too_small or summary["unlabelled"]:
            log.warning(
                "%s: %d items keep their global score as class score (classes of one item: "
                "%s; unlabelled: %d)",
                spec.brain_key,
                int(alone.sum()),
                per_class.too_small[:5],
                summary["unlabelled"],
            )
    upstream: dict[str, Any] = {"embeddings": embeddings_lineage(emb)}
    if shared is not None:
        upstream["knn_graph"] = shared[0]
    if not exact:
        upstream.update(graph_exact=False, graph_recall_at_k=graph.recall_at_k)
    if spec.label_field:
        upstream["labels"] = {
            "label_field": spec.label_field,
            "data_version": store.data_version(spec.dataset, ids),
        }
    context = RunContext(run_id=run_id, log=log, ids=ids, artifacts=tuple(artifacts or ()))
    return commit_outcome(
        spec,
        store,
        context,
        results,
        method="knn",
        upstream=upstream,
        packages=("scikit-learn",),
        summary=summary,
        sample_ids=emb.sample_ids,
        label_ids=emb.label_ids,
    )


METHOD = BrainMethod(
    kind="outliers",
    spec=OutliersSpec,
    run=with_media(run_outliers),
    inputs=_inputs,
    expected_rows=one_row_per_embedding,
    score=ScoreColumn("outlier", 0.0, 1.0),
    summary="Out-of-distribution score of each sample (or patch) from its nearest neighbours.",
    run_fields=(
        RunField("k", int, "neighbours per item", ge=1, le=100),
        RunField("metric", str, "cosine or euclidean"),
    ),
    asset_metadata=scores_metadata("outlier"),
)
