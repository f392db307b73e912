"""Asset checks on every embeddings key and brain run (blocking: bad results stop downstream).

Each check reads the committed results from the store and compares them with their input:
row counts, NaN and out-of-range scores, index size against the embeddings, and the
embeddings' model and dimension against the spec.

Inbox batches run side by side, so a check never compares with a count another run can change
while it runs: a batch's index update is checked on that batch's own vectors, and a
whole-dataset run whose input moved on after it read it is reported (a warning, the refresh
runs again) rather than failed.
"""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from dagster_brain.factory import brain_key_asset, embeddings_key, samples_key
from dagster_brain.methods import get_method
from dagster_brain.resources.store import BrainStoreResource
from dagster_brain.specs import BrainRunSpec, EmbeddingsSpec
from dagster_brain.store import Store


def as_run(store: Store, spec: BrainRunSpec, method) -> BrainRunSpec:
    """The declared spec with the launch-time fields the committed run used (a run launched
    with ``count=10`` is checked for 10 rows, not the YAML's count)."""
    record = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    if record is None:
        return spec
    used = {f.name: record.config[f.name] for f in method.run_fields if f.name in record.config}
    return type(spec).model_validate({**spec.model_dump(), **used}) if used else spec


# Batched methods whose results list the vectors held by a vector backend.
INDEX_KINDS = frozenset({"similarity"})
FETCH_CHUNK = 10_000  # ids per backend fetch


def batch_vectors_held(
    store: Store, spec: BrainRunSpec, members: pd.DataFrame, batch: str, meta: dict[str, Any]
) -> list[str]:
    """The backend holds every vector the committed index lists for this batch's samples.

    Another batch may be adding or removing its own vectors meanwhile, so the backend's total
    is recorded (``backend_count``) but not compared.
    """
    from dagster_brain.similarity.compute import load_index

    ids = members["id"].astype(str).tolist()
    index = load_index(store, spec.dataset, spec.brain_key)
    try:
        meta["backend_count"] = int(index.backend.count())
        held: set[str] = set()
        for start in range(0, len(ids), FETCH_CHUNK):
            held.update(map(str, index.backend.fetch(ids[start : start + FETCH_CHUNK])[0]))
    finally:
        index.close()
    absent = [i for i in ids if i not in held]
    meta["batch_vectors_held"] = len(ids) - len(absent)
    if absent:
        return [
            f"the backend lacks {len(absent)} of the {len(ids)} vectors batch {batch!r} "
            f"indexed, e.g. {absent[:3]}"
        ]
    return []


def input_moved_on(store: Store, spec: BrainRunSpec) -> str | None:
    """Why the embeddings a committed run read are no longer the key's (another batch landed
    after the run read them), or ``None`` when they still are or the run records none."""
    record = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    read = (record.upstream or {}).get("embeddings") if record is not None else None
    if not isinstance(read, dict) or not read.get("key") or not read.get("data_version"):
        return None
    sets = store.embedding_sets(spec.dataset)
    row = sets[sets["embeddings_key"] == read["key"]]
    now = None if row.empty else row["data_version"].iloc[0]
    if now is None or now == read["data_version"]:
        return None
    return (
        f"embeddings {read['key']!r} changed after the run read them "
        f"({read['data_version']} -> {now}); the refresh runs again"
    )


def check_results(
    store: Store, spec: BrainRunSpec, batch: str | None = None
) -> tuple[bool, dict[str, Any]]:
    """(passed, metadata) for one brain run's committed results.

    ``batch``: an inbox batch's update of an index, checked for that batch (its vectors are
    indexed and held by the backend) rather than against the whole key, which other batches
    may be changing. A row count that differs only because the input changed after the run
    read it is not a problem: it is listed in ``meta["stale"]``.
    """
    method = get_method(spec.kind, spec.brain_key)  # type: ignore[attr-defined]
    spec = as_run(store, spec, method)
    results = store.load_results(spec.dataset, spec.brain_key)
    problems: list[str] = []
    meta: dict[str, Any] = {"rows": len(results)}
    mine: set[str] = set()
    if batch is not None:
        mine = set(store.batch_sample_ids(spec.dataset, batch))
        embedded = mine & set(store.embedded_sample_ids(spec.dataset, spec.embeddings))
        missing = sorted(embedded - set(results["sample_id"]))
        meta["batch"], meta["batch_indexed"] = batch, len(embedded) - len(missing)
        if missing:
            problems.append(
                f"{len(missing)} vectors of batch {batch!r} not indexed, e.g. {missing[:3]}"
            )
    expected = None if batch is not None else method.expected_rows(store, spec)
    if expected is not None:
        meta["expected_rows"] = expected
        if len(results) != expected:
            found = f"{len(results)} rows for {expected} input items"
            moved = input_moved_on(store, spec)
            if moved is None:
                problems.append(found)
            else:
                meta["stale"] = dg.MetadataValue.json([f"{found}: {moved}"])
    numeric = results.select_dtypes("number")
    nan_cols = [c for c in numeric if numeric[c].isna().any() and c != "distance"]
    if nan_cols:
        problems.append(f"NaN in {nan_cols}")
    score = method.score
    if score is not None and score.has_range:
        col, lo, hi = score.column, score.low, score.high
        bad = results.loc[~results[col].between(lo, hi), "sample_id"]
        meta["out_of_range"] = int(len(bad))
        if len(bad):
            problems.append(
                f"{len(bad)} {col} scores outside [{lo}, {hi}], e.g. {bad.head(3).tolist()}"
            )
    if batch is not None and method.kind in INDEX_KINDS:
        mine_rows = results[results["sample_id"].isin(mine)] if len(results) else results
        problems.extend(batch_vectors_held(store, spec, mine_rows, batch, meta))
    elif method.check is not None:
        problems.extend(method.check(store, spec, results, meta))
    patches = "label_id" in results and results["label_id"].notna().any()
    id_col = "label_id" if patches else "sample_id"
    if method.unique_ids and results[id_col].duplicated().any():
        problems.append(f"duplicate {id_col}s")
    meta["problems"] = dg.MetadataValue.json(problems)
    return not problems, meta


def check_embeddings(
    store: Store, spec: EmbeddingsSpec, default_model: str, batch: str | None = None
) -> tuple[bool, dict]:
    """(passed, metadata): count, dimension, model and finiteness of an embeddings key (of
    one inbox batch's samples when ``batch`` is given)."""
    ids = store.batch_sample_ids(spec.dataset, batch) if batch is not None else None
    emb = store.read_embeddings(spec.dataset, spec.key, ids=ids)
    problems: list[str] = []
    meta: dict[str, Any] = {"rows": len(emb.sample_ids), "dim": emb.dim, "model": emb.model or ""}
    if batch is not None:
        meta["batch"] = batch
    if emb.vectors.shape != (len(emb.sample_ids), emb.dim):
        problems.append(f"vectors {emb.vectors.shape} do not match dimension {emb.dim}")
    if not np.isfinite(emb.vectors).all():
        problems.append("non-finite vectors")
    if spec.source == "model":
        from dagster_brain.embedding.models import canonical_name

        want = canonical_name(spec.model or default_model)
        if emb.model is None or canonical_name(emb.model) != want:
            problems.append(f"computed by {emb.model!r}, the spec asks for {want!r}")
        if not emb.sample_ids and ids is not None and not ids:
            pass  # a batch without samples (removed): nothing to check
        elif spec.patches_field is None:
            n = len(ids) if ids is not None else len(store.sample_ids(spec.dataset))
            meta["samples"] = n
            if len(emb.sample_ids) != n and not spec.skip_failures:
                problems.append(f"{len(emb.sample_ids)} vectors for {n} samples")
        else:
            labels = store.labels(spec.dataset, spec.patches_field)
            if ids is not None:
                labels = labels[labels["sample_id"].isin(set(ids))]
            meta["objects"] = len(labels)
            if len(emb.sample_ids) != len(labels) and not spec.skip_failures:
                problems.append(f"{len(emb.sample_ids)} vectors for {len(labels)} objects")
    meta["problems"] = dg.MetadataValue.json(problems)
    return not problems, meta


def _batch(context: dg.AssetCheckExecutionContext) -> str | None:
    """The inbox batch a check runs for (batch runs are partitioned), else ``None``."""
    op = context.op_execution_context
    return op.partition_key if op.has_partition_key else None


RESULTS_VALID = "rows match the input, no NaN, scores in range, index size = embeddings"


def _results_valid(
    context: dg.AssetCheckExecutionContext, store: Store, spec: BrainRunSpec
) -> dg.AssetCheckResult:
    passed, meta = check_results(store, spec, _batch(context))
    if passed and "stale" in meta:  # not wrong, but already behind: shown, not blocking
        return dg.AssetCheckResult(
            check_name="results_valid",
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=meta,
        )
    return dg.AssetCheckResult(check_name="results_valid", passed=passed, metadata=meta)


def build_run_check(spec: BrainRunSpec) -> dg.AssetChecksDefinition:
    """``results_valid`` on a brain run's asset (blocking), and the method's extra checks of
    this spec (``BrainMethod.extra_checks``; blocking as each says, else a warning)."""
    asset = brain_key_asset(spec.dataset, spec.brain_key)
    extras = get_method(spec.kind, spec.brain_key).extra_checks(spec)  # type: ignore[attr-defined]
    if not extras:

        @dg.asset_check(asset=asset, name="results_valid", blocking=True, description=RESULTS_VALID)
        def _check(context: dg.AssetCheckExecutionContext, store: BrainStoreResource):
            return _results_valid(context, store.get(), spec)

        return _check

    specs = [
        dg.AssetCheckSpec("results_valid", asset=asset, blocking=True, description=RESULTS_VALID),
        *(
            dg.AssetCheckSpec(
                x.name, asset=asset, blocking=x.blocking(spec), description=x.description
            )
            for x in extras
        ),
    ]

    @dg.multi_asset_check(specs=specs, name=f"{asset.to_python_identifier()}_checks")
    def _checks(context: dg.AssetCheckExecutionContext, store: BrainStoreResource):
        held = store.get()
        yield _results_valid(context, held, spec)
        for x in extras:
            passed, meta = x.evaluate(held, spec)
            severity = (
                dg.AssetCheckSeverity.ERROR if x.blocking(spec) else dg.AssetCheckSeverity.WARN
            )
            yield dg.AssetCheckResult(
                check_name=x.name, passed=passed, severity=severity, metadata=meta
            )

    return _checks


def build_embeddings_check(spec: EmbeddingsSpec, default_model: str) -> dg.AssetChecksDefinition:
    """``embeddings_valid`` on an embeddings asset (blocking)."""

    @dg.asset_check(
        asset=embeddings_key(spec.dataset, spec.key),
        name="embeddings_valid",
        blocking=True,
        description="one finite vector per sample/object, of the spec's model and dimension",
    )
    def _check(context: dg.AssetCheckExecutionContext, store: BrainStoreResource):
        passed, meta = check_embeddings(store.get(), spec, default_model, _batch(context))
        return dg.AssetCheckResult(passed=passed, metadata=meta)

    return _check


def build_store_health_check(dataset: str) -> dg.AssetChecksDefinition:
    """``store_health`` on a dataset's samples asset (non-blocking, a warning): the cheap part
    of ``brain doctor`` — Parquet copies, indexes against their backends, orphan index files,
    dead locks."""

    @dg.asset_check(
        asset=samples_key(dataset),
        name="store_health",
        blocking=False,
        description="brain doctor's quick checks of this dataset's copies, indexes and locks",
    )
    def _check(store: BrainStoreResource) -> dg.AssetCheckResult:
        from dagster_brain.doctor import quick_check

        findings = quick_check(store.get(), dataset)
        return dg.AssetCheckResult(
            passed=not findings,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "findings": len(findings),
                "report": dg.MetadataValue.md("\n".join(f"- {f}" for f in findings) or "healthy"),
                "repair": "brain doctor --repair" if findings else "",
            },
        )

    return _check
