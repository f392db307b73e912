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
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@dataclass(frozen=True)
class ProjectHome:
    """Where the project's Dagster instance is (``home``; None: not found) and how it was
    found: ``DAGSTER_HOME`` in the environment, or a ``.env`` file in the current directory
    (what scripts/setup.sh writes, and what Dagster's CLI reads there)."""

    home: Path | None
    source: str  # "DAGSTER_HOME", the .env path, or "" when not found
    env: dict[str, str]  # the .env values to apply while the instance is loaded
    note: str | None = None  # the .env here names another instance than DAGSTER_HOME

    def line(self) -> str:
        """One line naming the instance directory, or saying that none was found."""
        if self.home is None:
            return (
                f"warning: no project Dagster instance ({self.source or NO_INSTANCE}): these "
                "runs go to a temporary instance and the UI will not show them; run from the "
                "repository root after `bash scripts/setup.sh` (it writes .env), or "
                "`source scripts/env.sh`"
            )
        return f"instance: {self.home} (from {self.source})" + (
            f"; note: {self.note}" if self.note else ""
        )


NO_INSTANCE = "DAGSTER_HOME is not set and there is no .env with DAGSTER_HOME here"


def find_project_home(cwd: str | Path | None = None) -> ProjectHome:
    """The project's Dagster instance directory: ``DAGSTER_HOME`` if set, else the
    ``DAGSTER_HOME`` of ``.env`` in ``cwd`` (default: the current directory). A
    ``DAGSTER_HOME`` set to the empty string asks for no project instance."""
    from dotenv import dotenv_values  # a Dagster dependency: the parser Dagster's CLI uses

    env_file = Path(cwd or os.getcwd()) / ".env"
    dot = (
        {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        if env_file.is_file()
        else {}
    )
    dot_home = dot.get("DAGSTER_HOME")
    given = os.environ.get("DAGSTER_HOME")
    if given == "":
        return ProjectHome(None, "DAGSTER_HOME is set to ''", {})
    if given:
        home = Path(given).expanduser().resolve()
        note = None
        if dot_home and Path(dot_home).expanduser().resolve() != home:
            note = (
                f"{env_file} names DAGSTER_HOME={dot_home}, which `dagster dev` run here "
                "uses instead: these runs will not show there"
            )
        return ProjectHome(home, "DAGSTER_HOME", {}, note)
    if dot_home:
        if not Path(dot_home).is_absolute():
            raise ValueError(
                f"{env_file}: DAGSTER_HOME={dot_home} is not an absolute path (Dagster needs "
                "one); run `bash scripts/setup.sh` to rewrite it"
            )
        return ProjectHome(Path(dot_home), str(env_file), dot)
    return ProjectHome(None, "", {})


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with those of ``values`` it lacks, as Dagster's CLI reads a .env."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextmanager
def project_instance(
    required_for: Owner | None = None, say: Callable[[str], None] | None = None
) -> Iterator[Any]:
    """The project's Dagster instance (see :func:`find_project_home`), open for the block;
    ``say`` gets one line naming it. Without one, an ephemeral instance (the line is a
    warning), or for an owned key a refusal that says how to get one."""
    import dagster as dg

    found = find_project_home()
    if found.home is None and required_for is not None:
        raise required_for.refuse(
            f"{found.source or NO_INSTANCE}, so the run would not be recorded in the "
            "project's Dagster instance; run from the repository root after `bash "
            "scripts/setup.sh` (it writes .env), or `source scripts/env.sh`, and run again"
        )
    if say is not None:
        say(found.line())
    if found.home is None:
        with dg.DagsterInstance.ephemeral() as instance:
            yield instance
        return
    # the .env's variables stay set while the instance is used: dagster.yaml's storage
    # settings (BRAIN_DAGSTER_STORAGE_DIR) are read when each part of the instance is first used
    with _environ(found.env), dg.DagsterInstance.from_config(str(found.home)) as instance:
        yield instance


# The run's Dagster log goes to the instance's event log (the UI shows it); the terminal gets
# what the caller's event listener prints.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def materialize(
    defs,
    keys,
    instance,
    run_config: dict[str, Any] | None = None,
    on_event: Callable[[Any], None] | None = None,
    job_name: str | None = None,
    partition_key: str | None = None,
):
    """Materialise the assets ``keys`` of ``defs`` in this process, recorded in ``instance``
    (what ``brain materialize`` runs). Dagster's own log stays in the run's event log;
    ``on_event`` is called with each event-log entry of the run as it happens. The run is
    tagged with this process (:mod:`dagster_brain.run_liveness`), so that it is marked failed
    if the process is killed; runs of killed processes are marked so first."""
    from dagster_brain.definitions import ALL_JOB
    from dagster_brain.run_liveness import fail_dead_marked_runs, liveness_tags, marked_run

    for line in fail_dead_marked_runs(instance):  # runs of killed processes end here
        _to_stderr(f"note: {line}")
    run_id = str(uuid.uuid4())
    if on_event is not None:
        instance.add_event_listener(run_id, on_event)
    with marked_run(instance, run_id):
        return defs.resolve_job_def(job_name or ALL_JOB).execute_in_process(
            instance=instance,
            asset_selection=list(keys),
            raise_on_error=False,
            run_config={**QUIET, **(run_config or {})},
            run_id=run_id,
            partition_key=partition_key,
            tags=liveness_tags(),
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
    with project_instance(required_for=owner, say=_to_stderr) as instance:
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
            error_text(e.step_failure_data.error)
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


def error_text(error) -> str:
    """A step's error (a ``SerializableErrorInfo``) as the user's code raised it: Dagster's
    wrapping errors, a failed rollback hiding its cause and the exception's module path taken
    off."""
    if error is None:
        return ""
    while True:
        if error.cause is not None and error.cls_name.startswith("Dagster"):
            error = error.cause
        elif error.context is not None and _failed_rollback(error):
            error = error.context  # the error that made the transaction fail
        else:
            break
    text = error.message.strip()
    head, sep, rest = text.partition(": ")
    if sep and head.endswith("." + error.cls_name):
        text = f"{error.cls_name}: {rest}"
    return text


def _failed_rollback(error) -> bool:
    """Whether a ``SerializableErrorInfo`` is DuckDB's rollback of an already failed
    transaction."""
    text = error.message.lower()
    return "cannot rollback" in text or "no transaction is active" in text


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)
