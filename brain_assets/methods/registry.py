"""The one registry of brain methods, and the one write path that runs them (``run_brain``).

Adding a method: a module defining its spec and ``METHOD = BrainMethod(...)``, one line in
``_BUILTIN`` below (or :func:`register` for a plug-in), a test and a README line. The asset
factory, the checks, the CLI and the API read this registry; none of them lists kinds.
"""

from __future__ import annotations

from typing import Any

from dagster_brain.methods import (
    duplicates,
    exact_duplicates,
    hardness,
    image_issues,
    knn_graph,
    label_summary,
    leaky_splits,
    mistakenness,
    outliers,
    representativeness,
    similarity,
    unique,
    uniqueness,
    visualization,
)
from dagster_brain.methods.base import BrainMethod
from dagster_brain.runs import RunOutcome
from dagster_brain.specs import BrainRunSpec
from dagster_brain.store import BrainRunRecord, Store

_BUILTIN: tuple[BrainMethod, ...] = (
    uniqueness.METHOD,
    similarity.METHOD,
    duplicates.METHOD,
    exact_duplicates.METHOD,
    unique.METHOD,
    mistakenness.METHOD,
    hardness.METHOD,
    visualization.METHOD,
    knn_graph.METHOD,
    outliers.METHOD,
    representativeness.METHOD,
    leaky_splits.METHOD,
    label_summary.METHOD,
    image_issues.METHOD,
)

METHODS: dict[str, BrainMethod] = {m.kind: m for m in _BUILTIN}

# Who holds a brain key while a run without a Dagster run id (notebook, CLI) writes it.
API_HOLDER = "run api"


def register(method: BrainMethod) -> BrainMethod:
    """Add a brain method (refused when incomplete or when its kind is taken)."""
    problems = method.problems()
    if problems:
        raise ValueError("; ".join(problems))
    if method.kind in METHODS and METHODS[method.kind] is not method:
        raise ValueError(f"brain method {method.kind!r} is already registered")
    METHODS[method.kind] = method
    return method


def get_method(kind: str, brain_key: str | None = None) -> BrainMethod:
    """The method of a kind (the error names the brain key and the known kinds)."""
    if kind not in METHODS:
        where = f"brain key {brain_key!r}: " if brain_key else ""
        raise ValueError(f"{where}no brain method {kind!r}; known: {sorted(METHODS)}")
    return METHODS[kind]


def run_brain(
    spec: BrainRunSpec, store: Store, *, lock_wait_s: float = 0.0, **kwargs: Any
) -> RunOutcome:
    """Run the method of a brain-run spec, holding its brain key for the whole run (a run
    already holding it is waited for up to ``lock_wait_s`` seconds, then refused)."""
    method = get_method(spec.kind, spec.brain_key)  # type: ignore[attr-defined]
    holder = f"run {kwargs['run_id']}" if kwargs.get("run_id") else API_HOLDER
    with store.run_lock(spec.dataset, spec.brain_key, holder, wait_s=lock_wait_s):
        return method.run(spec, store, **kwargs)


def delete_brain_run(store: Store, dataset: str, brain_key: str) -> BrainRunRecord:
    """Delete a run and everything it wrote, backend collections included.

    If the backend cannot be reached, nothing is deleted (the error names the backend).
    """
    record = store.get_run(dataset, brain_key)
    if record.kind == "similarity":
        from dagster_brain.similarity.compute import delete_index

        delete_index(store, record)
    deleted = store.delete_run(dataset, brain_key)
    if record.kind == "knn_graph":  # what a failed build in shards left behind
        from dagster_brain.graph_shards import remove_parts

        remove_parts(store, dataset, brain_key)
    return deleted
