"""Run plumbing at the bottom: what every brain method's runner shares.

A run's context (:class:`RunContext`), its record (:func:`new_record`: config, ids, code and
data versions, package versions, lineage), its outcome (:class:`RunOutcome`) and the one
commit (:func:`commit_outcome`). Imports only specs and store: methods, similarity and the
Dagster wiring build on it, never the reverse.
"""

from __future__ import annotations

import html
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
from pandas.api.types import infer_dtype

from dagster_brain.specs import BrainRunSpec
from dagster_brain.store import BrainRunRecord, EmbeddingSet, Store, hash_strings
from dagster_brain.store.runs import ADHOC_RUN_PREFIX

_LOG = logging.getLogger("dagster_brain")

# Versions of the two non-method steps (bumped when their output changes).
INGEST_VERSION = "1"
EMBEDDINGS_VERSION = "1"


class RunLog(Protocol):
    """What a runner logs through: a ``logging.Logger`` or Dagster's log manager."""

    def info(self, msg: str, *args: Any) -> Any: ...

    def warning(self, msg: str, *args: Any) -> Any: ...


@dataclass(frozen=True)
class RunContext:
    """Where a run comes from: its run id (``None``: an API run), log, the sample ids it is
    restricted to (``None``: all) and what else it wrote (deleted with the run)."""

    run_id: str | None = None
    log: RunLog = _LOG
    ids: list[str] | None = None
    artifacts: tuple[dict[str, Any], ...] = ()


@dataclass
class RunOutcome:
    """What a brain method produced: the committed record, its results, and a summary."""

    record: BrainRunRecord
    results: pd.DataFrame
    results_version: str
    summary: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        r = self.record
        return (
            f"RunOutcome(dataset={r.dataset!r}, brain_key={r.brain_key!r}, kind={r.kind!r}, "
            f"rows={len(self.results)}, run_id={r.run_id!r})"
        )

    def _repr_html_(self) -> str:
        """In a notebook: the run in one line, then the first rows of its results."""
        head = self.results.head(10).to_html(index=False, escape=True)
        return f"<p>{html.escape(repr(self))}</p>{head}"


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages that shape a result."""
    out = {}
    for name in ("dagster-brain", "numpy", *names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def code_version(kind: str, version: str, spec_hash: str) -> str:
    """Asset code version: method version plus a hash of the spec's parameters."""
    return f"{kind}-v{version}-{spec_hash}"


def spec_code_version(spec: BrainRunSpec) -> str:
    """The code version of a brain-run spec (its class carries the method version)."""
    return code_version(spec.kind, type(spec).version, spec.spec_hash())  # type: ignore[attr-defined]


def frame_version(df: pd.DataFrame) -> str:
    """Content hash of a results frame (same rows, same version)."""
    if df.empty:
        return "empty"
    hashed = pd.util.hash_pandas_object(_hashable(df), index=False)
    return hash_strings([str(int(hashed.sum()) & ((1 << 63) - 1)), str(len(df))])


# what pandas.api.types.infer_dtype calls object columns that hash_pandas_object takes as is
_HASHABLE_OBJECTS = {"string", "empty", "integer", "floating", "mixed-integer-float", "boolean"}


def _hashable(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each column pandas cannot hash as is (lists, dicts, arrays) as text."""
    out = {}
    for i in range(df.shape[1]):
        col = df.iloc[:, i]
        if col.dtype == object and infer_dtype(col, skipna=True) not in _HASHABLE_OBJECTS:
            col = col.astype(str)
        out[i] = col
    return pd.DataFrame(out, index=df.index)


def embeddings_lineage(emb: EmbeddingSet) -> dict[str, Any]:
    """What a run records about the embeddings it read."""
    return {
        "key": emb.key,
        "model": emb.model,
        "model_hash": emb.model_hash,
        "data_version": emb.data_version,
        "patches_field": emb.patches_field,
    }


def new_record(
    spec: BrainRunSpec,
    store: Store,
    *,
    method: str | None,
    sample_ids: list[str],
    run_id: str | None,
    upstream: dict[str, Any],
    label_ids: list[str] | None = None,
    artifacts: Sequence[dict[str, Any]] | None = None,
    packages: tuple[str, ...] = (),
    config: dict[str, Any] | None = None,
) -> BrainRunRecord:
    """The run record of a spec: config, ids, versions, data version and lineage (the store
    redacts config and lineage when it commits the record)."""
    ids = sorted(set(sample_ids))
    return BrainRunRecord(
        dataset=spec.dataset,
        brain_key=spec.brain_key,
        kind=spec.kind,  # type: ignore[attr-defined]
        method=method,
        config=config if config is not None else spec.model_dump(mode="json"),
        sample_ids=ids,
        label_ids=label_ids,
        run_id=run_id or f"{ADHOC_RUN_PREFIX}{uuid.uuid4().hex[:12]}",
        code_version=spec_code_version(spec),
        data_version=store.data_version(spec.dataset, ids),
        versions=package_versions(*packages),
        upstream=upstream,
        artifacts=list(artifacts or []),
    )


def commit_outcome(
    spec: BrainRunSpec,
    store: Store,
    ctx: RunContext,
    results: pd.DataFrame,
    *,
    method: str | None,
    upstream: dict[str, Any],
    packages: tuple[str, ...] = (),
    summary: dict[str, Any] | None = None,
    sample_ids: list[str] | None = None,
    label_ids: list[str] | None = None,
    extra: dict[str, pd.DataFrame | pa.Table] | None = None,
) -> RunOutcome:
    """Record a run of ``spec`` over ``sample_ids`` (default: the samples of ``results``) and
    commit its results (and ``extra`` tables) in one transaction: a failure leaves the
    previous results."""
    if sample_ids is None:
        sample_ids = results["sample_id"].astype(str).tolist() if len(results) else []
    record = new_record(
        spec,
        store,
        method=method,
        sample_ids=sample_ids,
        label_ids=label_ids,
        run_id=ctx.run_id,
        upstream=upstream,
        artifacts=ctx.artifacts,
        packages=packages,
    )
    store.commit_run(record, results, extra=extra)
    return RunOutcome(record, results, frame_version(results), dict(summary or {}))
