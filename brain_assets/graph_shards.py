"""A kNN graph built in parts, so that the steps of one run (Celery workers, pods) share it.

1. :func:`plan_shards` takes what a whole graph run reads and decides (``graph_inputs``: the
   vectors, exact or approximate, an in-place change), saves a copy of the vectors beside the
   plan, and leaves to the commit an exact graph that changed little (updated in place) or a
   collection too small to split. For an approximate graph it trains and fills the IVF index
   and calibrates ``nprobe`` once, and saves both. It returns one :class:`ShardTask` per
   contiguous block of rows.
2. :func:`search_shard` (any worker, any order) maps the plan's copy of the vectors and saves
   the neighbour lists of its rows: exact ones, or from the saved index.
3. The commit is the graph run itself (``run_knn_graph(..., sharded=ShardedBuild(...))``),
   under the brain-key lock: it joins the parts, checks they cover every row of the vectors it
   reads, finishes an approximate graph (rows short of neighbours, recall on the plan's
   sample) and writes the run; then the parts are removed.

Each row's list depends only on that row, the vectors and the plan, so the joined graph equals
the one a single process builds. Parts live under ``<data_dir>/graph_shards/<dataset>/
<brain_key>/<run id>/``, which every worker must see (the shared data directory); a new plan of
a brain key removes the parts of its earlier plans.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dagster_brain.algorithms import ann_graph
from dagster_brain.algorithms.knn_graph import KnnGraph, _index_dtype, _nearest
from dagster_brain.runs import _LOG
from dagster_brain.store import EmbeddingSet, Store

SHARDS_DIR = "graph_shards"
"""Under the store's data directory: the parts of graphs being built in shards."""

_PLAN = "plan.pkl"
_INDEX = "index.faiss"
_VECTORS = "vectors.npy"


@dataclass(frozen=True)
class ShardTask:
    """One block of rows ``[start, stop)`` of a planned graph (``whole``: no parts; the
    commit builds or updates the graph itself)."""

    plan_dir: str
    shard: int
    start: int
    stop: int
    whole: bool = False

    @property
    def path(self) -> Path:
        """Where the shard's lists are saved."""
        return Path(self.plan_dir) / f"shard-{self.shard:04d}.npz"


@dataclass(frozen=True, eq=False)
class _Plan:
    """What was decided from the vectors: their digest, the graph's shape and, when
    approximate, the index's settings (the index itself is a file beside)."""

    digest: str
    n: int
    k: int
    width: int
    metric: str
    exact: bool
    ann: ann_graph.AnnPlan | None
    started: float  # wall clock when planning began (time.time)


def vectors_digest(hashes: np.ndarray) -> str:
    """One hash of every (id, vector) row, in order: the vectors a plan was made from."""
    return hashlib.sha256(np.ascontiguousarray(hashes).tobytes()).hexdigest()


def plan_dir(store: Store, dataset: str, brain_key: str, run_id: str) -> Path:
    """The folder of one run's parts of a brain key's graph."""
    return store.data_dir / SHARDS_DIR / dataset / brain_key / run_id


def plan_shards(
    spec: Any, store: Store, inputs: Any, *, run_id: str, shards: int, log: Any = _LOG
) -> list[ShardTask]:
    """Split the graph of ``spec`` (a ``KnnGraphSpec``) into ``shards`` blocks of rows, as
    ``inputs`` (its ``graph_inputs``: vectors, exact or not, in-place change) decide; one
    ``whole`` task when the commit should build it alone (an in-place update of an exact graph,
    or fewer rows than ``2 * shards``)."""
    started = time.time()
    here = plan_dir(store, spec.dataset, spec.brain_key, run_id)
    _remove_others(here)
    n = len(inputs.emb.ids)
    if inputs.change is not None or n < 2 * shards:
        why = "an in-place update" if inputs.change is not None else f"{n} items"
        log.info("%s: graph built by one step (%s), not in shards", spec.brain_key, why)
        return [ShardTask(str(here), 0, 0, n, whole=True)]
    here.mkdir(parents=True, exist_ok=True)
    X, width = inputs.emb.vectors, min(spec.k, n - 1)

    def save_vectors(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, X)

    _atomic(here / _VECTORS, save_vectors)  # the shards map this copy instead of each reading
    ann = None
    if not inputs.exact:
        import faiss

        ann, index = ann_graph.plan_ann(X, spec.k, spec.metric)
        _atomic(here / _INDEX, lambda tmp: faiss.write_index(index, str(tmp)))
        del index
    plan = _Plan(
        vectors_digest(inputs.hashes), n, spec.k, width, spec.metric, inputs.exact, ann, started
    )
    _atomic(here / _PLAN, lambda tmp: tmp.write_bytes(pickle.dumps(plan)))
    bounds = np.linspace(0, n, shards + 1).round().astype(int)
    log.info(
        "%s: %s graph of %d items planned in %d shards%s",
        spec.brain_key,
        "exact" if inputs.exact else "approximate",
        n,
        shards,
        "" if ann is None else f" (nlist {ann.nlist}, nprobe {ann.nprobe})",
    )
    return [ShardTask(str(here), i, int(bounds[i]), int(bounds[i + 1])) for i in range(shards)]


def search_shard(task: ShardTask, spec: Any, log: Any = _LOG) -> Path | None:
    """The neighbour lists of one block of rows, saved beside the plan (None for a
    ``whole`` task), from the plan's copy of the vectors (memory-mapped: workers on one host
    share its pages; the commit checks the store still holds those vectors)."""
    if task.whole:
        return None
    plan = _load_plan(task, spec)
    X = np.load(Path(task.plan_dir) / _VECTORS, mmap_mode="r")  # pages shared on one host
    rows = slice(task.start, task.stop)
    started = time.perf_counter()
    if plan.ann is None:
        nbr, dist = _nearest(X, np.arange(task.start, task.stop), plan.width, plan.metric)  # type: ignore[arg-type]
    else:
        import faiss

        index = faiss.read_index(str(Path(task.plan_dir) / _INDEX))
        nbr = np.empty((task.stop - task.start, plan.width), dtype=_index_dtype(plan.n))
        dist = np.empty(nbr.shape, dtype=np.float32)
        for a in range(task.start, task.stop, ann_graph._CHUNK):
            b = min(a + ann_graph._CHUNK, task.stop)
            got = ann_graph.ann_lists(X, index, plan.ann, slice(a, b))
            nbr[a - task.start : b - task.start], dist[a - task.start : b - task.start] = got
    seconds = time.perf_counter() - started

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, neighbors=nbr, distances=dist, rows=[rows.start, rows.stop])

    _atomic(task.path, save)
    log.info(
        "%s: shard %d, rows %d-%d of %d, searched in %.1f s",
        spec.brain_key,
        task.shard,
        task.start,
        task.stop,
        plan.n,
        seconds,
    )
    return task.path


@dataclass(frozen=True)
class ShardedBuild:
    """The parts of a graph built in shards, as the commit reads them."""

    tasks: tuple[ShardTask, ...]

    @property
    def whole(self) -> bool:
        """The plan left the graph to the commit (no parts)."""
        return any(t.whole for t in self.tasks)

    @property
    def shards(self) -> int:
        """How many parts the graph was built in."""
        return len(self.tasks)

    @property
    def exact(self) -> bool:
        """Whether the plan made an exact graph."""
        return self._plan().exact

    @property
    def seconds(self) -> float:
        """Wall-clock seconds from the start of the plan until now."""
        return time.time() - self._plan().started

    def _plan(self) -> _Plan:
        return _load_plan(self.tasks[0], None)

    def graph(self, emb: EmbeddingSet, hashes: np.ndarray):
        """The joined graph of ``emb`` (checked against the plan) and, when approximate,
        its stats."""
        plan = self._plan()
        _check_vectors(plan, emb, hashes, None, "committing the graph")
        nbr = np.empty((plan.n, plan.width), dtype=_index_dtype(plan.n))
        dist = np.empty((plan.n, plan.width), dtype=np.float32)
        covered = np.zeros(plan.n + 1, dtype=np.int64)  # +1/-1 at each part's ends
        for task in sorted(self.tasks, key=lambda t: t.start):
            if not task.path.exists():
                raise ValueError(
                    f"kNN graph in shards: part {task.shard} (rows {task.start}-{task.stop}) "
                    f"is missing from {task.plan_dir}; was its step skipped, or did a newer "
                    "plan of the same brain key replace this one?"
                )
            with np.load(task.path) as part:
                nbr[task.start : task.stop] = part["neighbors"]
                dist[task.start : task.stop] = part["distances"]
            covered[task.start] += 1
            covered[task.stop] -= 1
        if not (np.cumsum(covered)[:-1] == 1).all():
            raise ValueError(
                f"kNN graph in shards: the {self.shards} parts in {self.tasks[0].plan_dir} do "
                f"not cover each of the {plan.n} rows once"
            )
        if plan.ann is None:
            graph = KnnGraph(
                ids=emb.ids,
                neighbors=nbr,
                distances=dist,
                metric=plan.metric,
                k=plan.k,  # type: ignore[arg-type]
            )
            return graph, None
        return ann_graph.finish_ann(emb.vectors, emb.ids, nbr, dist, plan.ann, time.perf_counter())

    def remove(self) -> None:
        """Delete the parts (after the commit)."""
        shutil.rmtree(self.tasks[0].plan_dir, ignore_errors=True)


def _load_plan(task: ShardTask, spec: Any) -> _Plan:
    path = Path(task.plan_dir) / _PLAN
    try:
        return pickle.loads(path.read_bytes())
    except FileNotFoundError:
        what = f"brain key {spec.brain_key!r}: " if spec is not None else ""
        raise ValueError(
            f"{what}kNN graph in shards: no plan at {path}; a newer plan of the same brain key "
            "replaced it, or the folder is not shared with this worker (BRAIN_DATA_DIR)"
        ) from None


def _check_vectors(
    plan: _Plan, emb: EmbeddingSet, hashes: np.ndarray, spec: Any, doing: str
) -> None:
    if len(emb.ids) != plan.n or vectors_digest(hashes) != plan.digest:
        what = f"brain key {spec.brain_key!r}: " if spec is not None else ""
        raise ValueError(
            f"{what}kNN graph in shards: the embeddings changed between the plan and "
            f"{doing} ({plan.n} items planned, {len(emb.ids)} now); run it again"
        )


def remove_parts(store: Store, dataset: str, brain_key: str) -> None:
    """Every part left of a brain key's builds in shards (a failed or stopped run's)."""
    shutil.rmtree(store.data_dir / SHARDS_DIR / dataset / brain_key, ignore_errors=True)


def _remove_others(here: Path) -> None:
    """Parts of earlier plans of the same brain key (finished, failed or replaced)."""
    if here.parent.is_dir():
        for other in here.parent.iterdir():
            if other != here:
                shutil.rmtree(other, ignore_errors=True)


def _atomic(path: Path, write) -> None:
    """Write through a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
