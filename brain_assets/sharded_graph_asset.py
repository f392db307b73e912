"""The asset of a kNN graph built in shards: one Dagster step per block of rows.

A ``knn_graph`` brain run with ``shards: N`` (N > 1) is a graph-backed asset of three ops:
``plan`` (reads the vectors, trains the approximate index once), ``search`` mapped over the N
blocks of rows (dynamic outputs: with the celery executor each block is a task any worker
takes), and ``commit``, the graph run itself under the brain-key lock, which joins the parts
(:mod:`dagster_brain.graph_shards`). Launch-time config is given as for any brain asset
(``ops: {<asset>: {config: {k: ...}}}``) and reaches all three ops.
"""

import warnings
from collections.abc import Sequence

import dagster as dg

from dagster_brain.factory import (
    brain_key_asset,
    input_key,
    no_credentials_in_errors,
    refresh_condition,
    run_config_class,
    run_metadata,
    with_overrides,
)
from dagster_brain.graph_shards import ShardedBuild, ShardTask, plan_shards, search_shard
from dagster_brain.methods import get_method, run_brain
from dagster_brain.methods.knn_graph import graph_inputs
from dagster_brain.progress import run_log
from dagster_brain.runs import spec_code_version


def build_sharded_graph_asset(
    spec, incremental: bool = False, extra_deps: Sequence[dg.AssetKey] = ()
) -> dg.AssetsDefinition:
    """``<dataset>/brain/<brain_key>`` of a ``knn_graph`` spec with ``shards > 1``."""
    method = get_method(spec.kind, spec.brain_key)
    config_cls = run_config_class(method)
    key = brain_key_asset(spec.dataset, spec.brain_key)
    name = key.to_python_identifier()
    tags = {"brain/kind": method.kind}

    def same_config(config) -> dict:
        """The asset's launch config, given to each of its ops."""
        values = {k: v for k, v in config.model_dump(mode="json").items() if v is not None}
        return {f"{name}__{op}": {"config": values} for op in ("plan", "search", "commit")}

    def plan(context: dg.OpExecutionContext, config):
        run_spec, db = with_overrides(spec, config), context.resources.store.get()
        with run_log(context.log), no_credentials_in_errors():
            tasks = plan_shards(
                run_spec,
                db,
                graph_inputs(run_spec, db),
                run_id=context.run_id,
                shards=spec.shards,
                log=context.log,
            )
        for task in tasks:
            yield dg.DynamicOutput(task, mapping_key=f"shard_{task.shard}")

    def search(context: dg.OpExecutionContext, config, task: ShardTask) -> ShardTask:
        with run_log(context.log), no_credentials_in_errors():
            search_shard(task, with_overrides(spec, config), context.log)
        return task

    def commit(context: dg.OpExecutionContext, config, tasks: list[ShardTask]):
        db = context.resources.store.get()
        build = ShardedBuild(tuple(tasks))
        with run_log(context.log), no_credentials_in_errors():
            outcome = run_brain(
                with_overrides(spec, config),
                db,
                run_id=context.run_id,
                log=context.log,
                sharded=None if build.whole else build,
            )
        with warnings.catch_warnings():  # an Output's data_version is a beta parameter
            warnings.simplefilter("ignore", dg.BetaWarning)
            out = dg.Output(
                None,
                metadata=run_metadata(method, db, outcome),
                data_version=dg.DataVersion(outcome.results_version),
            )
        yield out

    deps = [*(input_key(spec.dataset, item) for item in method.inputs(spec)), *extra_deps]
    ins = {f"dep_{i}": dg.AssetIn(key=k, dagster_type=dg.Nothing) for i, k in enumerate(deps)}
    # Dagster reads the config type from the annotation, so set it before decorating
    for fn in (plan, search, commit, same_config):
        fn.__annotations__["config"] = config_cls
    ops = {
        "plan": dg.op(
            name=f"{name}__plan",
            ins={dep: dg.In(dg.Nothing) for dep in ins},  # one per upstream asset
            out=dg.DynamicOut(ShardTask),
            required_resource_keys={"store"},
            tags=tags,
        )(plan),
        "search": dg.op(name=f"{name}__search", tags=tags)(search),
        "commit": dg.op(name=f"{name}__commit", required_resource_keys={"store"}, tags=tags)(
            commit
        ),
    }

    def compose(**upstream):
        tasks = ops["plan"](**upstream)
        return ops["commit"](tasks.map(ops["search"]).collect())

    compose.__signature__ = _signature(ins)  # graph_asset matches ins to parameters
    return dg.graph_asset(
        compose,
        key=key,
        ins=ins,
        config=dg.config_mapping(same_config),
        group_name=spec.dataset,
        code_version=spec_code_version(spec),
        description=f"{method.kind} brain run {spec.brain_key!r} on {spec.dataset!r}, built in "
        f"{spec.shards} shards",
        kinds=set(method.asset_kinds(spec)),
        tags=tags,
        metadata={"brain_key": spec.brain_key, "method_version": method.version},
        automation_condition=refresh_condition(spec) if incremental else None,
    )


def _signature(ins: dict):
    import inspect

    kw = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature([inspect.Parameter(n, kw) for n in ins])
