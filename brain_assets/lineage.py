"""Lineage answers from the store: what produced a result, and what is stale since."""

from __future__ import annotations

from typing import Any

from dagster_brain.redact import redact
from dagster_brain.store import BrainRunRecord, Store


def _stale_reasons(store: Store, record: BrainRunRecord) -> list[str]:
    """Why a run's inputs no longer match what it recorded (empty: current)."""
    reasons = []
    current_data = store.data_version(record.dataset, record.sample_ids)
    if record.data_version and current_data != record.data_version:
        reasons.append(
            f"its samples changed (data version {record.data_version} -> {current_data})"
        )
    emb = record.upstream.get("embeddings")
    if emb and emb.get("key"):
        sets = store.embedding_sets(record.dataset)
        row = sets[sets["embeddings_key"] == emb["key"]]
        if row.empty:
            reasons.append(f"embeddings key {emb['key']!r} no longer exists")
        elif row["data_version"].iloc[0] != emb.get("data_version"):
            reasons.append(f"embeddings {emb['key']!r} were recomputed since")
    sim = record.upstream.get("similarity")
    if sim and sim.get("brain_key"):
        parent = store.get_run(record.dataset, sim["brain_key"], missing_ok=True)
        if parent is None:
            reasons.append(f"similarity index {sim['brain_key']!r} no longer exists")
        elif parent.run_id != sim.get("run_id"):
            reasons.append(
                f"similarity index {sim['brain_key']!r} was rebuilt since (run {parent.run_id})"
            )
    return reasons


def lineage(
    store: Store, dataset: str, brain_key: str, sample_id: str | None = None
) -> dict[str, Any]:
    """Which run, model, data and code produced a brain key's results (for one sample), and
    which downstream runs are stale since."""
    record = store.get_run(dataset, brain_key)
    info: dict[str, Any] = {
        "dataset": dataset,
        "brain_key": brain_key,
        "type": record.kind,
        "run_id": record.run_id,
        "timestamp": record.created_at.isoformat() if record.created_at else None,
        "code_version": record.code_version,
        "data_version": record.data_version,
        "versions": record.versions,
        "upstream": redact(record.upstream),
        "stale": _stale_reasons(store, record),
    }
    if sample_id is not None:
        if sample_id not in set(record.sample_ids):
            raise KeyError(
                f"sample {sample_id!r} is not among the {len(record.sample_ids)} "
                f"samples brain run {brain_key!r} ran on"
            )
        results = store.load_results(dataset, brain_key)
        rows = results[results["sample_id"] == sample_id] if "sample_id" in results else results
        sample = store.samples(dataset, [sample_id]).iloc[0]
        info["sample"] = {
            "sample_id": sample_id,
            "filepath": sample["filepath"],
            "content_hash": sample["content_hash"],
            "results": rows.to_dict(orient="records"),
        }
    downstream = []
    for key in store.list_runs(dataset)["brain_key"]:
        other = store.get_run(dataset, key)
        if (other.upstream.get("similarity") or {}).get("brain_key") == brain_key:
            downstream.append(
                {"brain_key": key, "type": other.kind, "stale": _stale_reasons(store, other)}
            )
    info["downstream"] = downstream
    info["history"] = redact(
        store.query(
            "SELECT event, event_at, run_id, code_version, data_version, detail "
            "FROM brain_run_history WHERE dataset = ? AND brain_key = ? ORDER BY event_at",
            [dataset, brain_key],
        )
        .astype(str)
        .to_dict(orient="records")
    )
    return info
