"""What the store hands back: embedding sets and brain run records, and row -> record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd


def utcnow() -> datetime:
    """Naive UTC timestamp (DuckDB TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class EmbeddingSet:
    """Vectors of one embeddings key, aligned with their sample (and label) ids."""

    key: str
    sample_ids: list[str]
    label_ids: list[str] | None
    vectors: np.ndarray
    model: str | None
    dim: int
    patches_field: str | None = None
    model_hash: str | None = None
    data_version: str | None = None
    count_all: int | None = None  # vectors in the whole key (these may be a subset)

    @property
    def ids(self) -> list[str]:
        """Label ids for patch embeddings, sample ids otherwise."""
        return self.label_ids if self.label_ids is not None else self.sample_ids


@dataclass
class BrainRunRecord:
    """What a brain run is remembered by (``brain_runs`` row)."""

    dataset: str
    brain_key: str
    kind: str
    method: str | None
    config: dict[str, Any]
    sample_ids: list[str]
    label_ids: list[str] | None = None
    run_id: str | None = None
    code_version: str | None = None
    data_version: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    results_table: str | None = None

    def info(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``get_brain_info`` returns)."""
        return {
            "dataset": self.dataset,
            "brain_key": self.brain_key,
            "type": self.kind,
            "method": self.method,
            "timestamp": self.created_at.isoformat() if self.created_at else None,
            "run_id": self.run_id,
            "code_version": self.code_version,
            "data_version": self.data_version,
            "versions": self.versions,
            "config": self.config,
            "upstream": self.upstream,
            "num_samples": len(self.sample_ids),
            "num_labels": None if self.label_ids is None else len(self.label_ids),
            "results_table": self.results_table,
        }

    def table_names(self) -> list[str]:
        """Names of the run's further tables (``commit_run(extra=...)``)."""
        return [a["name"] for a in self.artifacts if a.get("type") == "table"]

    def row(self) -> list[Any]:
        """The ``brain_runs`` row, in column order (JSON columns serialised)."""
        return [
            self.dataset,
            self.brain_key,
            self.kind,
            self.method,
            json.dumps(self.config, sort_keys=True, default=str),
            self.created_at,
            self.run_id,
            self.code_version,
            self.data_version,
            json.dumps(self.versions, sort_keys=True),
            json.dumps(self.upstream, sort_keys=True, default=str),
            list(self.sample_ids),
            self.label_ids,
            self.results_table,
            json.dumps(self.artifacts, sort_keys=True),
        ]


def _list(value: Any) -> list[Any] | None:
    return None if value is None or (np.isscalar(value) or value is pd.NA) else list(value)


def record_from_row(row: pd.Series) -> BrainRunRecord:
    """A :class:`BrainRunRecord` from a ``brain_runs`` row (JSON columns parsed)."""
    return BrainRunRecord(
        dataset=row["dataset"],
        brain_key=row["brain_key"],
        kind=row["kind"],
        method=row["method"],
        config=json.loads(row["config"]),
        sample_ids=_list(row["sample_ids"]) or [],
        label_ids=_list(row["label_ids"]),
        run_id=row["run_id"],
        code_version=row["code_version"],
        data_version=row["data_version"],
        versions=json.loads(row["versions"] or "{}"),
        upstream=json.loads(row["upstream"] or "{}"),
        artifacts=json.loads(row["artifacts"] or "[]"),
        created_at=pd.Timestamp(row["created_at"]).to_pydatetime(),
        results_table=row["results_table"] if isinstance(row["results_table"], str) else None,
    )
