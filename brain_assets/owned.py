"""Brain keys owned by their assets: a key declared in the brain-keys YAML (on the project's
store) is written only by materialising its asset through Dagster on the project's instance.

The notebook API and the CLI call :func:`owner_of` before writing a key. For a declared key,
a call whose parameters equal the declaration, or differ only in the method's launch-time
fields (``run_fields``), is run as a materialisation of ``<dataset>/brain/<key>`` with those
fields as run config (so the UI, run history and lineage show it); any other difference is
refused with a message naming the key and the YAML file. Keys not in the YAML are ad-hoc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from dagster_brain.config import get_brain_config
from dagster_brain.methods import RunOutcome, get_method
from dagster_brain.methods.knn_graph import with_shared_graphs
from dagster_brain.runs import frame_version
from dagster_brain.specs import DEFAULT_SPECS_PATH, BrainRunSpec, load_specs
from dagster_brain.store import Store

# Fields that name the run rather than parameterise it.
_IDENTITY = ("kind", "dataset", "brain_key")


class OwnedKeyError(ValueError):
    """A write to an asset-owned brain key that cannot be run as its asset."""


@dataclass(frozen=True)
class Owner:
    """The declaration that owns a brain key: its spec and the YAML file it is in."""

    spec: BrainRunSpec
    yaml_path: Path

    @property
    def asset(self) -> str:
        """The asset key, as the UI writes it."""
        return f"{self.spec.dataset}/brain/{self.spec.brain_key}"

    def refuse(self, why: str) -> OwnedKeyError:
        """An error naming the key, its asset, the YAML file and how to proceed."""
        return OwnedKeyError(
            f"brain key {self.spec.brain_key!r} on {self.spec.dataset!r} is owned by asset "
            f"{self.asset} (declared in {self.yaml_path}): {why}. Edit the YAML entry to change "
            "it, or pass another brain key for an ad-hoc run"
        )


def _is_project_store(store: Store) -> bool:
    """Whether ``store`` is the one the project's Dagster definitions write (brain config
    ``data_dir``); a store elsewhere holds only ad-hoc keys."""
    project = Path(get_brain_config().data_dir).expanduser().resolve()
    return Path(store.data_dir).expanduser().resolve() == project


def owner_of(store: Store, dataset: str, brain_key: str) -> Owner | None:
    """The YAML declaration owning ``dataset``/``brain_key`` on this store, or ``None``."""
    if not _is_project_store(store):
        return None
    # definitions.specs_path's rule, read here without building the definitions
    configured = get_brain_config().brain_keys_path
    path = Path(configured).expanduser() if configured else DEFAULT_SPECS_PATH
    if not path.exists():
        return None
    for spec in with_shared_graphs(load_specs(path).brain_runs):  # generated graphs too
        if spec.dataset == dataset and spec.brain_key == brain_key:
            return Owner(spec, path)
    return None


def launch_config(owner: Owner, call: BrainRunSpec) -> dict[str, Any]:
    """The run config that makes the asset compute what ``call`` asks for.

    A field the call leaves ``None`` takes the declared value (as an unset launchpad field
    does). A difference in another field than the method's ``run_fields`` is refused.
    """
    declared = owner.spec
    if call.kind != declared.kind:  # type: ignore[attr-defined]
        raise owner.refuse(f"it is a {declared.kind} run, not {call.kind}")  # type: ignore[attr-defined]
    launch = {f.name for f in get_method(declared.kind).run_fields}  # type: ignore[attr-defined]
    got, want = call.model_dump(), declared.model_dump()
    diff = {
        name: got[name]
        for name in sorted(call.model_fields_set)
        if name not in _IDENTITY and got[name] is not None and got[name] != want.get(name)
    }
    fixed = [n for n in diff if n not in launch]
    if fixed:
        said = ", ".join(f"{n}={diff[n]!r} (declared {want.get(n)!r})" for n in fixed)
        allowed = sorted(launch) or "none"
        raise owner.refuse(f"this call sets {said}; launch-time fields: {allowed}")
    return {k: v.value if isinstance(v, Enum) else v for k, v in diff.items()}


def project_instance(required_for: Owner | None = None):
    """The project's Dagster instance (``DAGSTER_HOME``; scripts/env.sh sets it). Without it,
    an ephemeral instance, or for an owned key a refusal that says how to set it."""
    import dagster as dg

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    if required_for is not None:
        raise required_for.refuse(
            "DAGSTER_HOME is not set, so the run would not be recorded in the project's "
            "Dagster instance; `source scripts/env.sh` (or set DAGSTER_HOME) and run again"
        )
    return dg.DagsterInstance.ephemeral()


def materialize(defs, keys, instance, run_config: dict[str, Any] | None = None):
    """Materialise the (whole-dataset) assets ``keys`` of ``defs`` in this process, recorded
    in ``instance`` (what ``brain materialize`` runs)."""
    from dagster_brain.definitions import ALL_JOB

    return defs.resolve_job_def(ALL_JOB).execute_in_process(
        instance=instance,
        asset_selection=list(keys),
        raise_on_error=False,
        run_config=run_config or {},
    )


def run_owned(
    owner: Owner, call: BrainRunSpec, store: Store, ids: list[str] | None = None
) -> RunOutcome:
    """Run ``call`` on an owned key as a materialisation of its asset; the outcome is read
    back from the store (its summary names the Dagster run)."""
    from dagster_brain.definitions import build_defs
    from dagster_brain.factory import brain_key_asset

    config = launch_config(owner, call)
    if ids is not None and set(ids) != set(store.sample_ids(call.dataset)):
        raise owner.refuse("the asset runs on the whole dataset, not on a view")
    instance = project_instance(required_for=owner)
    defs = build_defs(owner.yaml_path, store.data_dir)
    key = brain_key_asset(call.dataset, call.brain_key)
    if defs.resolve_asset_graph().get(key).partitions_def is not None:
        raise owner.refuse(
            "it is updated batch by batch by its inbox sensor (brain materialize --batch NAME)"
        )
    op = key.to_python_identifier()
    result = materialize(
        defs, [key], instance, {"ops": {op: {"config": config}}} if config else None
    )
    if not result.success:
        errors = [
            e.event_specific_data.error.message.strip()
            for e in result.all_node_events
            if e.is_step_failure
        ]
        raise OwnedKeyError(
            f"asset {owner.asset}: Dagster run {result.run_id} failed: "
            f"{'; '.join(errors) or 'see the run in the UI'}"
        )
    record = store.get_run(call.dataset, call.brain_key)
    results = store.load_results(call.dataset, call.brain_key)
    summary = {"asset": owner.asset, "dagster_run_id": result.run_id, "run_config": config}
    return RunOutcome(record, results, frame_version(results), summary)
