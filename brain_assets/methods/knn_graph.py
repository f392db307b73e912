"""kNN graph: the nearest neighbours of an embeddings key, computed once and shared.

The graph is exact up to ``APPROX_THRESHOLD`` items and approximate (faiss IVF, recall@k
measured and recorded) above, unless the spec sets ``exact``. Uniqueness and duplicates read
a stored exact graph of the same vectors and metric (with at least the neighbours they need)
instead of computing their own; their results are the same. Approximate graphs are read
only by readers that ask for them (``find_graph(..., approximate=True)``).

When two or more brain runs of a brain-keys YAML read the same vectors with the same metric,
:func:`plan_graphs` adds one graph run for them (brain key ``knn_<embeddings>_<metric>``),
which the Definitions place upstream of those readers; a ``knn_graph`` the user declares for
those vectors is used instead.
"""

from __future__ import annotations

import hashlib
import resource
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from dagster_brain.algorithms import ann_graph
from dagster_brain.algorithms.duplicates import FIRST_PASS_K
from dagster_brain.embeddings import check_model
from dagster_brain.knn_graphs import (
    GRAPH_TABLE,
    GraphChange,
    duplicates_graph_k,
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
from dagster_brain.runs import _LOG, RunOutcome, embeddings_lineage, frame_version, new_record
from dagster_brain.specs import (
    NAME,
    BrainRunSpec,
    DuplicatesSpec,
    SimilaritySpec,
    UniquenessSpec,
)
from dagster_brain.store import EmbeddingSet, Store, row_hashes

if TYPE_CHECKING:
    from dagster_brain.graph_shards import ShardedBuild


class KnnGraphSpec(BrainRunSpec):
    """A kNN graph of an embeddings key: ``k`` nearest other items per item.

    ``k`` defaults to 16, the first pass of duplicates (uniqueness needs 3 by default); a
    reader asking for more neighbours than the graph has computes its own. ``exact``: None
    (default) builds the exact graph up to ``APPROX_THRESHOLD`` items and an approximate one
    above; true always exact; false always approximate. ``shards`` (> 1): the asset builds
    the graph in that many blocks of rows, one Dagster step each (with the celery executor,
    spread over the workers; :mod:`dagster_brain.graph_shards`); the graph is the same.
    """

    version: ClassVar[str] = "1"
    # how the build is split, not what it makes: no part of the code version or the config
    unhashed: ClassVar[frozenset[str]] = frozenset({"shards"})
    kind: Literal["knn_graph"]
    embeddings: str = Field(pattern=NAME)
    model: str | None = None  # if set, the embeddings key must come from this model
    k: int = Field(default=FIRST_PASS_K, ge=1, le=256)
    metric: Literal["cosine", "euclidean"] = "cosine"
    exact: bool | None = None
    shards: int = Field(default=1, ge=1, le=256)


@dataclass(frozen=True, eq=False)
class GraphInputs:
    """What a graph run reads and decides before it builds: the vectors, their row hashes,
    exact or approximate, and the stored graph's change when it can be updated in place."""

    emb: EmbeddingSet
    hashes: np.ndarray
    exact: bool
    change: GraphChange | None


def graph_config(spec: KnnGraphSpec) -> dict[str, Any]:
    """The config a graph run records: the spec without how the build was split (``shards``
    does not change the graph)."""
    return spec.model_dump(mode="json", exclude=set(spec.unhashed))


def graph_inputs(
    spec: KnnGraphSpec,
    store: Store,
    *,
    ids: list[str] | None = None,
    threshold: int | None = None,
) -> GraphInputs:
    """Read a graph run's vectors and decide how its graph is made: exact up to
    ``threshold`` items (default ``APPROX_THRESHOLD``) unless ``spec.exact`` says otherwise,
    updated in place when an exact graph of the same config changed little."""
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    if len(emb.ids) < 2:
        raise ValueError(
            f"brain key {spec.brain_key!r}: a kNN graph needs at least 2 embedded items in "
            f"embeddings key {spec.embeddings!r}, found {len(emb.ids)}"
        )
    hashes = row_hashes(emb.ids, emb.vectors)
    if threshold is None:
        threshold = ann_graph.APPROX_THRESHOLD
    exact = ann_graph.use_exact(len(emb.ids), spec.exact, threshold)
    change = None
    if ids is None and exact:
        change = graph_change(
            store,
            spec.dataset,
            spec.brain_key,
            kind=spec.kind,
            config=graph_config(spec),
            emb=emb,
            hashes=hashes,
            k=spec.k,
            metric=spec.metric,
        )
    return GraphInputs(emb, hashes, exact, change)


def run_knn_graph(
    spec: KnnGraphSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    threshold: int | None = None,
    sharded: ShardedBuild | None = None,
) -> RunOutcome:
    """The kNN graph of an embeddings key (table ``knn``). An exact graph is refreshed
    incrementally when few items changed since the previous run (the same graph as a
    rebuild); an approximate one (``spec.exact``, or above ``threshold`` items, default
    ``APPROX_THRESHOLD``) is rebuilt. ``sharded``: the graph was built in parts by
    :mod:`dagster_brain.graph_shards` (its plan decided exact or approximate); this run
    checks the parts describe the vectors it reads and commits them."""
    if sharded is not None:
        emb = store.read_embeddings(spec.dataset, spec.embeddings)
        check_model(spec.brain_key, emb, spec.model)
        inputs = GraphInputs(emb, row_hashes(emb.ids, emb.vectors), sharded.exact, None)
    else:
        inputs = graph_inputs(spec, store, ids=ids, threshold=threshold)
    emb, hashes, exact, change = inputs.emb, inputs.hashes, inputs.exact, inputs.change
    how = "built" if sharded is None else f"joined from {sharded.shards} shards"
    if change is not None:
        how = f"updated: {len(change.added)} added or changed, {len(change.removed)} removed"
    log.info(
        "%s: %s kNN graph of %d items from embeddings %r (k=%d, %s, %s)",
        spec.brain_key,
        "exact" if exact else "approximate",
        len(emb.ids),
        spec.embeddings,
        spec.k,
        spec.metric,
        how,
    )
    started = time.perf_counter()
    tracing = not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    ann = None
    try:
        if sharded is not None:
            graph, ann = sharded.graph(emb, hashes)
        elif change is None:
            graph, ann = ann_graph.build_graph(
                emb.vectors, emb.ids, spec.k, spec.metric, exact=exact
            )
        else:
            graph = refresh_graph(emb, change, spec.k, spec.metric)
    except ValueError as err:
        raise ValueError(f"brain key {spec.brain_key!r}: {err}") from err
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if tracing:
            tracemalloc.stop()
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
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
        "exact": graph.exact,
        "recall_at_k": None if ann is None else round(ann.recall_at_k, 4),  # None: exact
        "recall_sample": None if ann is None else ann.sample,
        "nlist": None if ann is None else ann.nlist,
        "nprobe": None if ann is None else ann.nprobe,
        "build_seconds": round(seconds, 3),
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_rss_mb": round(rss / 2**20, 1),
        "incremental": change is not None,
        "shards": None if sharded is None else sharded.shards,
    }
    if sharded is not None:  # the build ran in earlier steps: from the plan to this commit
        stats["build_seconds"] = round(sharded.seconds + seconds, 3)
    if ann is not None:
        log.info(
            "%s: approximate graph, recall@%d %.3f on %d sampled rows (nlist %d, nprobe %d)",
            spec.brain_key,
            graph.width,
            ann.recall_at_k,
            ann.sample,
            ann.nlist,
            ann.nprobe,
        )
    record = new_record(
        spec,
        store,
        method="exact" if graph.exact else "faiss_ivf_sq8",
        sample_ids=emb.sample_ids,
        label_ids=emb.label_ids,
        run_id=run_id,
        upstream={
            "embeddings": embeddings_lineage(emb),
            "update": update_lineage(change),
            "graph": stats,
        },
        artifacts=artifacts,
        packages=(),
        config=graph_config(spec),
    )
    store.commit_run(record, results, extra={GRAPH_TABLE: graph_table(graph, emb.ids, hashes)})
    if sharded is not None:
        sharded.remove()  # the parts are in the store now
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
        "nprobe": "exact" if s.get("nprobe") is None else s["nprobe"],
        "build_seconds": s["build_seconds"],
        "build_s": s["build_seconds"],
        "peak_memory_mb": s["peak_memory_mb"],
        "peak_rss": s.get("peak_rss_mb"),
        "incremental": s["incremental"],
        "shards": s.get("shards") or 1,
    }


METHOD = BrainMethod(
    kind="knn_graph",
    spec=KnnGraphSpec,
    run=run_knn_graph,
    inputs=embeddings_input,
    expected_rows=one_row_per_embedding,
    score=ScoreColumn("nearest_distance"),
    summary="kNN graph of an embeddings key (exact, or approximate when large), shared by "
    "uniqueness and duplicates.",
    run_fields=(RunField("k", int, "neighbours per item", ge=1, le=256),),
    asset_metadata=_metadata,
)


# -- graphs generated for the readers of a brain-keys YAML -------------------------------------

# Longest brain key (BrainRunSpec.brain_key's max_length).
_MAX_KEY = 60


@dataclass(frozen=True)
class GraphReader:
    """A brain run that reads a stored kNN graph: its vectors, metric and neighbours needed."""

    spec: BrainRunSpec
    embeddings: str
    metric: str
    k: int


@dataclass
class GraphPlan:
    """The graphs generated for a YAML's readers, and the graph each reader depends on."""

    generated: list[KnnGraphSpec] = field(default_factory=list)
    reads: dict[tuple[str, str], str] = field(default_factory=dict)  # (dataset, key) -> graph


def graph_readers(brain_runs: Sequence[BrainRunSpec]) -> list[GraphReader]:
    """The runs that read a stored graph: uniqueness (its embeddings, metric and ``k``),
    duplicates (its similarity index's embeddings and metric; ``duplicates_graph_k``) and
    every run whose spec says so (``BrainRunSpec.graph_use``)."""
    sims = {(r.dataset, r.brain_key): r for r in brain_runs if isinstance(r, SimilaritySpec)}
    out = []
    for r in brain_runs:
        if isinstance(r, UniquenessSpec):
            out.append(GraphReader(r, r.embeddings, r.metric, r.k))
        elif isinstance(r, DuplicatesSpec):
            sim = sims.get((r.dataset, r.similarity))
            if sim is not None and sim.metric in ("cosine", "euclidean"):
                out.append(GraphReader(r, sim.embeddings, sim.metric, duplicates_graph_k(r)))
        elif (use := r.graph_use()) is not None:  # any other method that reads neighbours
            out.append(GraphReader(r, *use))
    return out


def generated_key(embeddings: str, metric: str) -> str:
    """The brain key of the graph generated for ``embeddings`` and ``metric``:
    ``knn_<embeddings>_<metric>``; when longer than a brain key may be, the embeddings key is
    cut and a 6-digit hash of it keeps the name distinct."""
    key = f"knn_{embeddings}_{metric}"
    if len(key) <= _MAX_KEY:
        return key
    digest = hashlib.sha256(embeddings.encode()).hexdigest()[:6]
    room = _MAX_KEY - len(f"knn__{digest}_{metric}")
    return f"knn_{embeddings[:room].rstrip('_')}_{digest}_{metric}"


def plan_graphs(brain_runs: Sequence[BrainRunSpec]) -> GraphPlan:
    """One graph per (dataset, embeddings key, metric) read by two or more runs, with
    ``k = max(16, the readers' k)``, unless the user declared a ``knn_graph`` for those
    vectors: the readers then depend on that one (on the widest, when it covers their ``k``).

    A generated run takes the readers' ``refresh_cron`` when they all share one. Raises
    ``ValueError`` when the generated brain key is already taken by another run.
    """
    groups: dict[tuple[str, str, str], list[GraphReader]] = {}
    for reader in graph_readers(brain_runs):
        groups.setdefault((reader.spec.dataset, reader.embeddings, reader.metric), []).append(
            reader
        )
    declared = [r for r in brain_runs if isinstance(r, KnnGraphSpec)]
    taken = {(r.dataset, r.brain_key): r for r in brain_runs}
    plan = GraphPlan()
    for (dataset, embeddings, metric), readers in groups.items():
        own = [
            g
            for g in declared
            if (g.dataset, g.embeddings, g.metric) == (dataset, embeddings, metric)
        ]
        if own:
            for reader in readers:
                fits = [g for g in own if g.k >= reader.k]
                if fits:
                    widest = max(fits, key=lambda g: g.k)
                    plan.reads[(dataset, reader.spec.brain_key)] = widest.brain_key
                else:
                    _LOG.warning(
                        "brain run %r on %r needs %d neighbours; the kNN graphs declared for "
                        "embeddings %r (%s) hold fewer (%s): it computes its own",
                        reader.spec.brain_key,
                        dataset,
                        reader.k,
                        embeddings,
                        metric,
                        ", ".join(f"{g.brain_key!r} k={g.k}" for g in own),
                    )
            continue
        if len(readers) < 2:
            continue
        key = generated_key(embeddings, metric)
        names = ", ".join(repr(r.spec.brain_key) for r in readers)
        clash = taken.get((dataset, key))
        if clash is not None:
            raise ValueError(
                f"brain run {key!r} on {dataset!r}: this brain key is the one generated for the "
                f"kNN graph of embeddings {embeddings!r} ({metric}) shared by {names}; rename "
                f"that run, or declare a knn_graph for embeddings {embeddings!r} with metric "
                f"{metric} (under any brain key)"
            )
        crons = {r.spec.refresh_cron for r in readers}
        spec = KnnGraphSpec(
            kind="knn_graph",
            dataset=dataset,
            brain_key=key,
            embeddings=embeddings,
            metric=metric,  # type: ignore[arg-type]
            k=max(FIRST_PASS_K, *(r.k for r in readers)),
            # approximate above the size threshold only when every reader may read it
            exact=None if all(reads_approximate(r.spec) for r in readers) else True,
            refresh_cron=crons.pop() if len(crons) == 1 else None,
        )
        plan.generated.append(spec)
        for reader in readers:
            plan.reads[(dataset, reader.spec.brain_key)] = key
    return plan


def shared_graphs(brain_runs: Sequence[BrainRunSpec]) -> list[KnnGraphSpec]:
    """The graph runs generated for ``brain_runs`` (see :func:`plan_graphs`)."""
    return plan_graphs(brain_runs).generated


def with_shared_graphs(brain_runs: Sequence[BrainRunSpec]) -> list[BrainRunSpec]:
    """The declared runs followed by the graph runs generated for them."""
    return [*brain_runs, *shared_graphs(brain_runs)]
