"""Brain runs on top of a similarity index: near-duplicates, exact duplicates, unique subsets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.algorithms.duplicates import (
    DISTANCE_METRICS,
    DuplicatesResult,
    choose_threshold,
    exact_duplicate_groups,
    find_duplicates,
    find_unique,
)
from dagster_brain.algorithms.knn_graph import KnnGraph
from dagster_brain.knn_graphs import duplicates_graph_k, find_graph, reads_approximate
from dagster_brain.runs import RunContext, RunOutcome, commit_outcome, frame_version, new_record
from dagster_brain.similarity.compute import load_index
from dagster_brain.similarity.streaming import (
    STREAM_ABOVE,
    pca_points,
    stream_duplicates,
    stream_unique,
)
from dagster_brain.specs import DuplicatesSpec, ExactDuplicatesSpec, UniqueSpec
from dagster_brain.store import Store, row_hashes

_LOG = logging.getLogger("dagster_brain")


def _similarity_upstream(index) -> dict[str, Any]:
    rec = index.record
    return {
        "similarity": {
            "brain_key": index.brain_key,
            "backend": index.config.backend,
            "collection": index.config.collection,
            "run_id": rec.run_id if rec else None,
            "data_version": rec.data_version if rec else None,
        }
    }


def duplicates_frame(
    result: DuplicatesResult, sample_of: dict[str, str], patches: bool
) -> pd.DataFrame:
    """One row per member of a duplicate group: group, role, nearest kept item, distance, path."""
    pairs = result.pairs.set_index("id_b") if len(result.pairs) else None
    kept = set(result.kept_ids)
    rows = []
    for g, members in enumerate(result.groups):
        for item in members:
            row = {
                "group": g,
                "id": item,
                "role": "kept" if item in kept else "duplicate",
                "nearest_id": item,
                "distance": 0.0,
                "path": None,
            }
            if pairs is not None and item in pairs.index:
                hit = pairs.loc[item]
                hit = hit.iloc[0] if isinstance(hit, pd.DataFrame) else hit
                row.update(
                    nearest_id=hit["id_a"], distance=float(hit["distance"]), path=hit.get("path")
                )
            rows.append(row)
    df = pd.DataFrame(rows, columns=["group", "id", "role", "nearest_id", "distance", "path"])
    df.insert(0, "sample_id", df["id"].map(sample_of))
    if patches:
        df = df.rename(columns={"id": "label_id"})
    else:
        df = df.drop(columns="id")
    return df


def pairs_frame(result: DuplicatesResult, sample_of: dict[str, str], patches: bool) -> pd.DataFrame:
    """Every duplicate pair of ``result`` (``all_pairs``): sample ids (and label ids for
    patches) of both members and their distance, sorted by distance."""
    pairs = result.all_pairs
    out = pd.DataFrame(
        {
            "sample_id_a": pairs["id_a"].map(sample_of),
            "sample_id_b": pairs["id_b"].map(sample_of),
        }
    )
    if patches:
        out["label_id_a"] = pairs["id_a"]
        out["label_id_b"] = pairs["id_b"]
    out["distance"] = pairs["distance"].astype(np.float64)
    return out.reset_index(drop=True)


@dataclass
class IndexVectors:
    """A similarity index's vectors (restricted to a view), read once for a run."""

    ids: list[str]
    vectors: np.ndarray
    sample_of: dict[str, str]
    metric: str
    patches: bool
    upstream: dict[str, Any]


def read_index(
    store: Store, dataset: str, brain_key: str, ids: list[str] | None = None
) -> IndexVectors:
    """Open a similarity run's index, read its (view's) vectors, and close it."""
    index = load_index(store, dataset, brain_key)
    try:
        if ids is not None:
            index.use_view(ids)
        return index_vectors(index)
    finally:
        index.close()


def index_vectors(index) -> IndexVectors:
    """The vectors of an open index's view (an in-process backend lends them uncopied)."""
    item_ids, X = index.all_vectors()
    members = index.members.set_index("id")["sample_id"]
    return IndexVectors(
        item_ids,
        X,
        {i: members[i] for i in item_ids},
        index.config.metric,
        index.is_patches,
        _similarity_upstream(index),
    )


STREAMING_BACKENDS = ("milvus", "lancedb")  # page through their vectors by themselves


def _streams(spec: DuplicatesSpec | UniqueSpec, index, explicit: bool = True) -> bool:
    """Whether this run reads the index page by page (see ``streaming`` on the spec)."""
    if spec.streaming is not None:
        return spec.streaming
    return (
        explicit
        and index.config.backend in STREAMING_BACKENDS
        and len(index._view_members()) > STREAM_ABOVE
    )


def _refuse_unexplicit(spec: DuplicatesSpec) -> None:
    """``streaming: true`` needs a threshold that does not need every vector at once."""
    if spec.streaming and (spec.fraction is not None or not isinstance(spec.thresh, float)):
        given = f"fraction {spec.fraction}" if spec.fraction is not None else "thresh: auto"
        raise ValueError(
            f"duplicates brain key {spec.brain_key!r} on {spec.dataset!r}: streaming: true needs "
            f"an explicit thresh (a distance); {given} reads every vector into memory "
            "(give thresh, or set streaming: false or null)"
        )


def run_duplicates(
    spec: DuplicatesSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """Near-duplicate groups on a similarity index's vectors (any backend).

    When a ``knn_graph`` run holds the graph of exactly these vectors with the index's
    metric (and at least 16 neighbours, or ``neighbours`` when verifying), its lists are read
    instead of computed: the same groups and pairs.
    """
    _refuse_unexplicit(spec)
    explicit = spec.fraction is None and isinstance(spec.thresh, float)
    index = load_index(store, spec.dataset, spec.similarity)  # once: it holds the vectors
    try:
        if ids is not None:
            index.use_view(ids)
        if _streams(spec, index, explicit):
            return _run_duplicates_streamed(spec, store, index, run_id, log, artifacts)
        iv = index_vectors(index)
    finally:
        index.close()
    del index
    item_ids, X, sample_of, metric = iv.ids, iv.vectors, iv.sample_of, iv.metric
    patches, upstream = iv.patches, dict(iv.upstream)
    graph = _shared_graph(store, spec, item_ids, X, metric, log)
    knn = None
    if graph is not None:
        upstream["knn_graph"], knn = graph
        if not knn.exact:  # pairs within thresh the approximate lists missed are missing
            upstream["graph_exact"], upstream["graph_recall_at_k"] = False, knn.recall_at_k
    choice = None
    if spec.fraction is not None:
        result = find_duplicates(X, item_ids, fraction=spec.fraction, metric=metric, graph=knn)
        method = "fraction"
    elif spec.thresh != "auto":
        result = find_duplicates(X, item_ids, thresh=float(spec.thresh), metric=metric, graph=knn)
        method = "thresh"
    else:
        choice = choose_threshold(X, item_ids, metric=metric, graph=knn)
        log.info("%s: %s", spec.brain_key, choice.describe())
        if spec.verify and not patches:
            from dagster_brain.algorithms.verify import find_verified_duplicates

            samples = store.samples(spec.dataset, sorted(set(sample_of.values())))
            by_id = samples.set_index("sample_id")
            result = find_verified_duplicates(
                X,
                item_ids,
                {s: by_id.at[s, "filepath"] for s in item_ids},
                content_hashes=[by_id.at[s, "content_hash"] for s in item_ids],
                pixel_hashes=[by_id.at[s, "pixel_hash"] for s in item_ids],
                metric=metric,
                m=spec.neighbours,
                graph=knn,
            )
            method = "auto+verified"
        else:
            result = find_duplicates(X, item_ids, thresh=choice.thresh, metric=metric, graph=knn)
            method = "auto"
    frame = duplicates_frame(result, sample_of, patches)
    pairs = pairs_frame(result, sample_of, patches)
    log.info(
        "%s: %d duplicates in %d groups, %d pairs (thresh %.4g, %s)",
        spec.brain_key,
        len(result.duplicate_ids),
        len(result.groups),
        len(pairs),
        result.thresh,
        method,
    )
    if result.truncated_rows:
        log.warning(
            "%s: %d items reached the neighbour cap (max_k) within thresh %.4g: pairs between "
            "two of them may be missing from the pairs table",
            spec.brain_key,
            result.truncated_rows,
            result.thresh,
        )
    return _commit_duplicates(
        spec,
        store,
        _Found(result, frame, pairs, item_ids, sample_of, patches),
        method=method,
        choice=choice,
        graph_exact=knn is None or knn.exact,
        plotted=X,
        streamed=False,
        provenance=(run_id, upstream, artifacts),
    )


def _run_duplicates_streamed(
    spec: DuplicatesSpec,
    store: Store,
    index,
    run_id: str | None,
    log: Any,
    artifacts: list[dict[str, Any]] | None,
) -> RunOutcome:
    """:func:`run_duplicates` with an explicit thresh, reading the index page by page."""
    source = index.vector_source()
    metric = index.config.metric
    item_ids = source.ids
    members = index.members.set_index("id")["sample_id"]
    sample_of = {i: members[i] for i in item_ids}
    patches = index.is_patches
    upstream = {**_similarity_upstream(index), "streamed": True}
    result = stream_duplicates(source, float(spec.thresh), metric)
    points = pca_points(source)  # 2-D points for the plot, not the vectors
    frame = duplicates_frame(result, sample_of, patches)
    pairs = pairs_frame(result, sample_of, patches)
    log.info(
        "%s: %d duplicates in %d groups, %d pairs (thresh %.4g, streamed in pages of %d, "
        "%d passes)",
        spec.brain_key,
        len(result.duplicate_ids),
        len(result.groups),
        len(pairs),
        result.thresh,
        source.batch,
        source.passes,
    )
    return _commit_duplicates(
        spec,
        store,
        _Found(result, frame, pairs, item_ids, sample_of, patches),
        method="thresh",
        choice=None,
        graph_exact=bool(getattr(index.backend, "exact", False)),
        plotted=points,
        streamed=True,
        provenance=(run_id, upstream, artifacts),
    )


@dataclass(frozen=True)
class _Found:
    """What a duplicates run found, ready to commit."""

    result: DuplicatesResult
    frame: pd.DataFrame
    pairs: pd.DataFrame
    item_ids: list[str]
    sample_of: dict[str, str]
    patches: bool


def _commit_duplicates(
    spec: DuplicatesSpec,
    store: Store,
    found: _Found,
    *,
    method: str,
    choice: Any,
    graph_exact: bool,
    plotted: np.ndarray,
    streamed: bool,
    provenance: tuple[str | None, dict[str, Any], list[dict[str, Any]] | None],
) -> RunOutcome:
    """The one commit of a duplicates run (in memory or streamed): its record with the chosen
    threshold, the groups and the pairs table; ``plotted``: what the plot projects."""
    run_id, upstream, artifacts = provenance
    result, frame, pairs = found.result, found.frame, found.pairs
    record = new_record(
        spec,
        store,
        method=method,
        sample_ids=list(found.sample_of.values()),
        label_ids=found.item_ids if found.patches else None,
        run_id=run_id,
        upstream=upstream,
        artifacts=artifacts,
        packages=("scikit-learn", "imagehash"),
    )
    record.config["chosen"] = {
        "thresh": result.thresh,
        "threshold_choice": choice.describe() if choice else None,
        "est_precision": choice.est_precision if choice else None,
        "est_recall": choice.est_recall if choice else None,
        "pairs": len(pairs),
        "pairs_truncated_rows": result.truncated_rows,
        "streamed": streamed,
    }
    store.commit_run(record, frame, extra={"pairs": pairs})
    summary = {
        "streamed": streamed,
        "duplicates": len(result.duplicate_ids),
        "groups": len(result.groups),
        "pairs": len(pairs),
        "thresh": result.thresh,
        "method": method,
        "graph_exact": graph_exact,
        "choice": choice,
        "result": result,
        "vectors": plotted,
        "ids": found.item_ids,
    }
    return RunOutcome(record, frame, frame_version(frame), summary)


def _shared_graph(
    store: Store, spec: DuplicatesSpec, item_ids: list[str], X: np.ndarray, metric: str, log: Any
) -> tuple[str, KnnGraph] | None:
    """The stored kNN graph of exactly these vectors, if a ``knn_graph`` run holds one."""
    if metric not in DISTANCE_METRICS or len(item_ids) < 2:
        return None
    need = duplicates_graph_k(spec)
    hashes = row_hashes(item_ids, X)
    approximate = reads_approximate(spec)  # only with an explicit thresh
    found = find_graph(store, spec.dataset, item_ids, hashes, metric, need, approximate=approximate)
    if found is not None:
        log.info("%s: neighbours read from the kNN graph %r", spec.brain_key, found[0])
    return found


def run_exact_duplicates(
    spec: ExactDuplicatesSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """Groups of byte-identical or pixel-identical samples (content hashes, no embeddings)."""
    samples = store.samples(spec.dataset, ids)
    frame = exact_duplicate_groups(
        samples["sample_id"].tolist(),
        samples["content_hash"].tolist(),
        samples["pixel_hash"].tolist(),
    )
    log.info(
        "%s: %d samples in %d exact-duplicate groups",
        spec.brain_key,
        len(frame),
        frame["group"].nunique() if len(frame) else 0,
    )
    return commit_outcome(
        spec,
        store,
        RunContext(run_id, log, ids, tuple(artifacts or ())),
        frame,
        method="sha256",
        sample_ids=list(samples["sample_id"]),
        upstream={"samples": {"data_version": store.data_version(spec.dataset, ids)}},
        packages=("scikit-learn", "imagehash"),
        summary={"groups": int(frame["group"].nunique()) if len(frame) else 0},
    )


def run_unique(
    spec: UniqueSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """``count`` maximally spread items of a similarity index (k-center greedy)."""
    index = load_index(store, spec.dataset, spec.similarity)
    try:
        if ids is not None:
            index.use_view(ids)
        streamed = _streams(spec, index)
        if streamed:
            source = index.vector_source()
            item_ids, patches = source.ids, index.is_patches
            by_id = index.members.set_index("id")["sample_id"]
            members = {i: by_id[i] for i in item_ids}
            upstream = {**_similarity_upstream(index), "streamed": True}
            chosen = stream_unique(source, spec.count, index.config.metric, spec.seed)
            X = pca_points(source)  # 2-D points for the plot, not the vectors
        else:
            iv = index_vectors(index)  # the index is opened once: it holds the vectors
    finally:
        index.close()
    del index
    if not streamed:
        item_ids, X, members, patches = iv.ids, iv.vectors, iv.sample_of, iv.patches
        upstream = iv.upstream
        chosen = find_unique(X, item_ids, spec.count, metric=iv.metric, seed=spec.seed)
    frame = pd.DataFrame({"sample_id": [members[i] for i in chosen]})
    if patches:
        frame["label_id"] = chosen
    frame["rank"] = range(len(chosen))
    log.info("%s: %d unique items of %d", spec.brain_key, len(chosen), len(item_ids))
    return commit_outcome(
        spec,
        store,
        RunContext(run_id, log, ids, tuple(artifacts or ())),
        frame,
        method="k-center-greedy",
        sample_ids=[members[i] for i in item_ids],
        label_ids=chosen if patches else None,
        upstream=upstream,
        packages=("scikit-learn", "imagehash"),
        summary={
            "unique": len(chosen),
            "vectors": X,
            "ids": item_ids,
            "unique_ids": chosen,
            "streamed": streamed,
        },
    )
