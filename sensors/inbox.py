"""The inbox sensor: new, changed and removed batches become partition runs.

The cursor maps each batch taken to its fingerprint, and counts the runs requested per batch.
Dagster stores it together with the tick's run requests and new partitions, so a sensor stopped
mid-tick stores nothing and its next tick plans the same runs again; each run request carries
``<batch>@<fingerprint>#<runs before>`` as its run key, which Dagster launches once (content
that comes back, like a batch removed and dropped in again, gets a new key). If the cursor is
lost, it is rebuilt from what the batch partitions and their runs recorded, so no batch is
taken twice.
"""

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_brain.factory import batch_partitions, samples_key
from dagster_brain.ingest.inbox import PREDICTIONS_PREFIX, InboxListing, list_batches
from dagster_brain.ingest.sources import data_path
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.specs import DatasetSpec

REMOVED = "removed"
BATCH_RUN_RETRIES = 2


@dataclass(frozen=True)
class BatchRun:
    """One run to request: the batch, why, and the content it is for."""

    batch: str
    event: str  # added | changed | removed
    fingerprint: str
    attempt: int = 0  # runs requested for this batch before

    @property
    def run_key(self) -> str:
        """Unique per request: a batch whose content comes back (a file moved out and back,
        a batch removed and dropped in again) gets a new key, so Dagster runs it again."""
        return f"{self.batch}@{self.fingerprint}#{self.attempt}"


@dataclass
class InboxCursor:
    """Fingerprints of the batches taken, and how many runs each batch was given."""

    seen: dict[str, str] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps({"seen": self.seen, "runs": self.runs}, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> "InboxCursor":
        data = json.loads(text)
        return cls(dict(data.get("seen", {})), dict(data.get("runs", {})))


@dataclass
class TickPlan:
    """What one sensor tick does."""

    runs: list[BatchRun] = field(default_factory=list)
    new_partitions: list[str] = field(default_factory=list)
    cursor: InboxCursor = field(default_factory=InboxCursor)
    waiting: list[str] = field(default_factory=list)

    def request(self, name: str, event: str, fingerprint: str) -> None:
        attempt = self.cursor.runs.get(name, 0)
        self.runs.append(BatchRun(name, event, fingerprint, attempt))
        self.cursor.runs[name] = attempt + 1


def plan_tick(
    listing: InboxListing,
    cursor: InboxCursor,
    partitions: set[str],
    settle_seconds: float,
    now: float | None = None,
) -> TickPlan:
    """Runs for batches that left, then for batches that are complete and new or changed.

    Removals come first, so that a manifest renamed in the inbox gives its samples to the new
    name. ``partitions`` are the registered partition keys. A batch still being written waits
    for a later tick, and so do predictions batches while image batches are being taken
    (their samples must exist first).
    """
    now = time.time() if now is None else now
    seen = cursor.seen
    plan = TickPlan(cursor=InboxCursor(dict(seen), dict(cursor.runs)))
    for name in sorted(set(seen) - set(listing.batches)):
        plan.request(name, REMOVED, f"{REMOVED}-{seen[name]}")
        del plan.cursor.seen[name]
    todo = []
    for name, batch in sorted(listing.batches.items()):
        if seen.get(name) == batch.fingerprint:
            continue
        if not batch.is_ready(settle_seconds, now):
            plan.waiting.append(name)
            continue
        todo.append((name, batch))
    samples_first = any(not n.startswith(PREDICTIONS_PREFIX) for n, _ in todo) or any(
        not n.startswith(PREDICTIONS_PREFIX) for n in plan.waiting
    )
    for name, batch in todo:
        if samples_first and name.startswith(PREDICTIONS_PREFIX):
            plan.waiting.append(name)
            continue
        plan.request(name, "changed" if name in seen else "added", batch.fingerprint)
        plan.cursor.seen[name] = batch.fingerprint
        if name not in partitions:
            plan.new_partitions.append(name)
    return plan


def recorded_cursor(instance: dg.DagsterInstance, dataset: str) -> InboxCursor:
    """The cursor as the batch partitions of ``dataset`` and their runs recorded it (cursor
    recovery)."""
    key = samples_key(dataset)
    cursor = InboxCursor()
    for part in instance.get_dynamic_partitions(batch_partitions(dataset).name):
        runs = instance.get_runs_count(
            filters=dg.RunsFilter(tags={"brain/dataset": dataset, "brain/batch": part})
        )
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[part]), limit=1
        ).records
        cursor.runs[part] = max(runs, len(records))
        latest = records[0].asset_materialization.metadata if records else None
        if latest is not None and latest.get("fingerprint") and latest["fingerprint"].value:
            cursor.seen[part] = str(latest["fingerprint"].value)
    return cursor


def sensor_interval_s() -> int:
    """Seconds between inbox and refresh sensor ticks: ``BRAIN_SENSOR_INTERVAL_S`` (30)."""
    return int(os.environ.get("BRAIN_SENSOR_INTERVAL_S", "30"))


def build_inbox_sensor(
    spec: DatasetSpec, job: Any, interval_s: int | None = None
) -> dg.SensorDefinition:
    """``<dataset>_inbox``: watches the dataset's inbox and requests a run per batch."""
    source = spec.source

    @dg.sensor(
        name=f"{spec.name}_inbox",
        job=job,
        minimum_interval_seconds=interval_s or sensor_interval_s(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New, changed and removed batches in the inbox of {spec.name!r}",
    )
    def _inbox(context: dg.SensorEvaluationContext, store: BrainStoreResource):
        root = data_path(source.path, Path(store.data_dir))
        listing = list_batches(source, root)
        for entry, why in listing.rejected.items():
            context.log.warning("inbox %s: %s is not a batch: %s", root, entry, why)
        cursor = (
            InboxCursor.loads(context.cursor)
            if context.cursor
            else recorded_cursor(context.instance, spec.name)
        )
        partitions = set(context.instance.get_dynamic_partitions(batch_partitions(spec.name).name))
        plan = plan_tick(listing, cursor, partitions, source.settle_seconds)
        requests = [
            dg.RunRequest(
                run_key=run.run_key,
                partition_key=run.batch,
                tags={
                    "brain/dataset": spec.name,
                    "brain/batch": run.batch,
                    "brain/batch_event": run.event,
                    # a failed batch run is re-executed from its failed step by the daemon
                    # (run retries in dagster.yaml), step failures included
                    "dagster/max_retries": str(BATCH_RUN_RETRIES),
                    "dagster/retry_on_asset_or_op_failure": "true",
                },
            )
            for run in plan.runs
        ]
        dynamic = (
            [batch_partitions(spec.name).build_add_request(plan.new_partitions)]
            if plan.new_partitions
            else []
        )
        skip = None
        if not requests:
            skip = f"no new batches in {root}" + (
                f" ({len(plan.waiting)} still being written: {plan.waiting[:5]})"
                if plan.waiting
                else ""
            )
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=dynamic,
            cursor=plan.cursor.dumps(),
            skip_reason=skip,
        )

    return _inbox
