"""The ``brain`` command line: config, ingestion, materialisation, brain runs, export."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

import click

from dagster_brain.cli_errors import debug_enabled, fail, passes, user_errors
from dagster_brain.config import BrainConfigError, get_brain_config


class BrainGroup(click.Group):
    """The ``brain`` group: an error from any subcommand is one line (see :func:`fail`)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as err:
            if passes(err):
                raise
            fail(err)


def data_dir_option(fn):
    """``--data-dir``, defaulting to the brain config's data directory."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Store directory (default: brain config data_dir, env BRAIN_DATA_DIR).",
    )(fn)


def _store(data_dir: Path | None):
    from dagster_brain.store import Store

    config = get_brain_config()
    return Store(data_dir or config.data_dir, memory_limit=config.store_memory_limit)


@click.group(cls=BrainGroup)
@click.option(
    "--debug",
    is_flag=True,
    help="Print the traceback of an error too (env BRAIN_DEBUG=1).",
)
@click.version_option(package_name="dagster-brain")
def main(debug: bool) -> None:
    """Dataset intelligence for computer-vision data, as Dagster assets."""
    fail_dead_runs_here()


def fail_dead_runs_here() -> None:
    """Mark failed the project's Dagster runs whose ``brain`` process was killed (one note
    line each); costs a look at the run markers when there is none."""
    from dagster_brain.owned import find_project_home, project_instance
    from dagster_brain.run_liveness import dead_markers, fail_dead_marked_runs

    try:
        home = find_project_home().home
        if home is None or not dead_markers(home):
            return
        _quiet_dagster()
        with project_instance() as instance:
            for line in fail_dead_marked_runs(instance):
                click.echo(f"note: {line}", err=True)
    except Exception as err:  # never in the way of the command itself
        if debug_enabled():
            traceback.print_exception(err, file=sys.stderr)
        logging.getLogger("dagster_brain").debug("no check for killed runs: %s", err)


@main.command("config")
@click.argument("field", required=False)
@user_errors
def config_cmd(field: str | None) -> None:
    """Print the merged brain config (secrets masked), or one FIELD of it."""
    from dagster_brain.config import masked

    config = get_brain_config()
    if field is None:
        click.echo(config.to_json())
        click.echo(
            f"# JSON file: {config.config_path}"
            + ("" if config.config_path.exists() else " (not present)"),
            err=True,
        )
        return
    value: object = masked(config.as_dict())
    path: list[str] = []
    for part in field.split("."):  # a dotted path reaches into the nested settings
        if not isinstance(value, dict) or part not in value:
            where = ".".join(path) or "brain config"
            choices = sorted(value) if isinstance(value, dict) else []
            raise BrainConfigError(f"{where} has no field {part!r} (fields: {choices})")
        value = value[part]
        path.append(part)
    click.echo(json.dumps(value, indent=4) if isinstance(value, dict) else value)


@main.command("datasets")
@data_dir_option
@user_errors
def datasets_cmd(data_dir: Path | None) -> None:
    """List the datasets in the store with their sample counts."""
    store = _store(data_dir)
    for name in store.list_datasets():
        click.echo(f"{name}\t{len(store.sample_ids(name))} samples")


@main.command("materialize")
@click.option(
    "--select",
    "selection",
    default="*",
    show_default=True,
    help="Dagster asset selection (the UI's syntax), e.g. 'group:digits', 'key:digits/*'.",
)
@click.option(
    "--brain-keys",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Brain-keys YAML (default: brain config brain_keys_path, else the demo).",
)
@click.option(
    "--batch",
    default=None,
    help="Inbox datasets: take this batch (a folder or manifest in the inbox) into the "
    "selected batch assets, as the inbox sensor would.",
)
@data_dir_option
@user_errors
def materialize_cmd(
    selection: str, brain_keys: Path | None, batch: str | None, data_dir: Path | None
) -> None:
    """Materialise brain assets in this process, recorded in the project's Dagster instance.

    Prints the instance, one line per materialised asset (and per failed step or check), then
    a summary; Dagster's own log is in the run's event log (the UI's run page)."""
    ok = materialize_selection(selection, brain_keys, batch, data_dir)
    if not ok:
        sys.exit(1)


def _quiet_dagster() -> None:
    """Keep Dagster's notices about its own beta, preview and superseded APIs (which it uses
    internally) out of the terminal."""
    import warnings

    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)


class RunPrinter:
    """An event listener: one line per materialised asset, failed step, failed check and step
    warning; the rest of a run's events stay in its event log."""

    def __init__(self, keys=()) -> None:
        self.names = {k.to_python_identifier(): k.to_user_string() for k in keys}
        self.materialized: set = set()
        self.failed_steps: dict[str, str] = {}
        self.started: set[str] = set()

    def __call__(self, entry) -> None:
        import logging

        event = entry.dagster_event
        if event is None:  # a logged message; a step that never started was skipped
            if entry.level >= logging.WARNING and (
                entry.step_key in self.started or not entry.step_key
            ):
                where = entry.step_key or entry.job_name
                click.echo(f"{'warning':<13} {where}: {entry.user_message}")
            return
        if event.is_step_start:
            self.started.add(event.step_key)
        elif event.is_step_materialization:
            key = event.asset_key
            self.materialized.add(key)
            part = f" [{event.partition}]" if event.partition else ""
            click.echo(f"{'materialized':<13} {key.to_user_string()}{part}")
        elif event.is_step_failure:
            from dagster_brain.owned import error_text

            message = error_text(event.step_failure_data.error) or event.message or "failed"
            self.failed_steps[event.step_key] = message
            step = self.names.get(event.step_key, event.step_key)
            click.echo(f"{'FAILED':<13} {step}: {message}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                click.echo(
                    f"{'check failed':<13} {evaluation.asset_key.to_user_string()} "
                    f"{evaluation.check_name}" + (" (blocking)" if evaluation.blocking else "")
                )
        elif event.is_run_failure and not self.failed_steps:
            from dagster_brain.owned import error_text

            error = error_text(getattr(event.event_specific_data, "error", None))
            click.echo(f"{'run failed':<13} {error or event.message}")


def materialize_selection(
    selection: str,
    brain_keys: Path | None,
    batch: str | None,
    data_dir: Path | None,
) -> bool:
    """``brain materialize``: run the selected assets on the project's instance, print the
    progress and the summary; whether every run succeeded."""
    import time

    import dagster as dg

    from dagster_brain.definitions import batch_job_name, build_defs
    from dagster_brain.owned import find_project_home, materialize, project_instance

    _quiet_dagster()
    started = time.monotonic()
    defs = build_defs(brain_keys, data_dir)
    graph = defs.resolve_asset_graph()
    try:
        keys = dg.AssetSelection.from_string(selection).resolve(graph)
    except dg.DagsterError as err:  # DagsterInvalidAssetSelectionError (not exported)
        raise ValueError(
            f"asset selection {selection!r} is not valid ({err}); examples: '*', "
            "'group:digits', 'key:\"digits/brain/uniqueness\"', '+key:\"digits/brain/unique\"'"
        ) from err
    if not keys:
        raise ValueError(f"asset selection {selection!r} matches no asset")
    batched = {k for k in keys if graph.get(k).partitions_def is not None}
    if batch is not None:
        if not batched:
            raise ValueError(f"--batch {batch!r}: {selection!r} selects no inbox batch asset")
        _check_batch(
            brain_keys, defs.resources["store"].data_dir, {k.path[0] for k in batched}, batch
        )
        keys = batched
    elif batched:
        click.echo(
            f"skipped {len(batched)} batch assets of inbox datasets (their sensors take "
            "each batch; or pass --batch NAME)"
        )
        keys = keys - batched
        if not keys:
            raise ValueError(f"asset selection {selection!r} matches only batch assets")
    printer = RunPrinter(keys)
    results = []
    with project_instance(say=click.echo) as instance:
        if batch is not None:
            for dataset in sorted({k.path[0] for k in keys}):
                mine = [k for k in keys if k.path[0] == dataset]
                instance.add_dynamic_partitions(graph.get(mine[0]).partitions_def.name, [batch])
                results.append(
                    materialize(
                        defs,
                        mine,
                        instance,
                        on_event=printer,
                        job_name=batch_job_name(dataset),
                        partition_key=batch,
                    )
                )
        else:
            results.append(materialize(defs, keys, instance, on_event=printer))
    store = _store(data_dir)
    missing = sorted(k.to_user_string() for k in keys - printer.materialized)
    failed = f", {len(printer.failed_steps)} failed" if printer.failed_steps else ""
    click.echo(
        f"{len(keys & printer.materialized)} of {len(keys)} assets materialized{failed} in "
        f"{time.monotonic() - started:.0f} s"
        + (f"; not materialized: {', '.join(missing)}" if missing else "")
    )
    click.echo(
        f"store:    {store.db_path}  (DuckDB: tables samples, labels, embeddings, "
        "brain_runs; schema results)"
    )
    click.echo(
        f"parquet:  {store.parquet_dir}/<dataset>/{{samples,embeddings/*,results/*}}.parquet"
    )
    if find_project_home().home is not None:
        click.echo("UI:       dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000  (make ui)")
    from dagster_brain.demo_report import demo_report

    ran = {(k.path[0], k.path[2]) for k in printer.materialized if k.path[1:2] == ["brain"]}
    for line in demo_report(store, runs=ran):
        click.echo(f"found:    {line}")
    return all(r.success for r in results)


def _check_batch(brain_keys: Path | None, data_dir: str, datasets: set[str], batch: str) -> None:
    """Refuse a batch name that is not in the inbox of each of these inbox datasets."""
    from dagster_brain.definitions import specs_path
    from dagster_brain.ingest.inbox import list_batches
    from dagster_brain.ingest.sources import data_path
    from dagster_brain.specs import load_specs

    for spec in load_specs(brain_keys or specs_path()).datasets:
        if spec.name not in datasets:
            continue
        root = data_path(spec.source.path, Path(data_dir))
        found = sorted(list_batches(spec.source, root).batches)
        if batch not in found:
            raise ValueError(
                f"--batch {batch!r}: no such batch in the inbox of {spec.name!r} ({root}); "
                f"batches there: {found[:20]}"
            )


@main.group("runs")
def runs_group() -> None:
    """Brain runs: list, info, view, rename, delete."""


@runs_group.command("list")
@click.argument("dataset")
@click.option("--type", "kind", default=None, help="Only runs of this type (e.g. uniqueness).")
@click.option("--method", default=None, help="Only runs of this method.")
@data_dir_option
@user_errors
def runs_list(dataset: str, kind: str | None, method: str | None, data_dir: Path | None) -> None:
    """List DATASET's brain runs."""
    store = _store(data_dir)
    store.require_dataset(dataset)
    df = store.list_runs(dataset, kind=kind, method=method)
    if df.empty:
        click.echo(f"no brain runs on {dataset!r}", err=True)
        return
    click.echo(df.to_string(index=False))


@runs_group.command("info")
@click.argument("dataset")
@click.argument("brain_key")
@data_dir_option
@user_errors
def runs_info(dataset: str, brain_key: str, data_dir: Path | None) -> None:
    """Config, timestamp, versions and lineage of one run (JSON)."""
    click.echo(
        json.dumps(_store(data_dir).get_run(dataset, brain_key).info(), indent=2, default=str)
    )


@runs_group.command("view")
@click.argument("dataset")
@click.argument("brain_key")
@click.option("-n", "limit", default=20, show_default=True, help="Rows to print (0: all).")
@data_dir_option
@user_errors
def runs_view(dataset: str, brain_key: str, limit: int, data_dir: Path | None) -> None:
    """The ids the run ran on, with its results."""
    from dagster_brain.api import Dataset

    df = Dataset(dataset, _store(data_dir)).load_brain_view(brain_key).to_pandas()
    click.echo(df.to_string(index=False, max_rows=limit or None))


@runs_group.command("rename")
@click.argument("dataset")
@click.argument("brain_key")
@click.argument("new_brain_key")
@data_dir_option
@user_errors
def runs_rename(dataset: str, brain_key: str, new_brain_key: str, data_dir: Path | None) -> None:
    """Rename a run (its results move with it)."""
    _store(data_dir).rename_run(dataset, brain_key, new_brain_key)
    click.echo(f"renamed {dataset}/{brain_key} -> {new_brain_key}")


@runs_group.command("delete")
@click.argument("dataset")
@click.argument("brain_key")
@data_dir_option
@user_errors
def runs_delete(dataset: str, brain_key: str, data_dir: Path | None) -> None:
    """Delete a run and everything it wrote (results, Parquet copy, backend collection)."""
    from dagster_brain.methods import delete_brain_run

    delete_brain_run(_store(data_dir), dataset, brain_key)
    click.echo(f"deleted {dataset}/{brain_key}")


@main.command("export")
@click.argument("dataset")
@click.argument("brain_key")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@data_dir_option
@user_errors
def export_cmd(dataset: str, brain_key: str, out: Path, data_dir: Path | None) -> None:
    """Write a run's results (ids plus every score column) to OUT.parquet."""
    path = _store(data_dir).export_results(dataset, brain_key, out)
    click.echo(f"wrote {path}")


@main.command("uniqueness")
@click.argument("dataset")
@click.option("--embeddings", required=True, help="Embeddings key to score.")
@click.option("--brain-key", default="uniqueness", show_default=True)
@click.option("-k", "k", default=3, show_default=True, help="Neighbours per sample.")
@click.option("--metric", type=click.Choice(["cosine", "euclidean"]), default="cosine")
@data_dir_option
@user_errors
def uniqueness_cmd(
    dataset: str, embeddings: str, brain_key: str, k: int, metric: str, data_dir: Path | None
) -> None:
    """compute_uniqueness on DATASET from an embeddings key."""
    from dagster_brain.api import Dataset, compute_uniqueness

    out = compute_uniqueness(
        Dataset(dataset, _store(data_dir)),
        embeddings=embeddings,
        brain_key=brain_key,
        k=k,
        metric=metric,
    )
    _owned_run(out)
    top = out.results.nlargest(5, "uniqueness")
    click.echo(f"{brain_key}: {len(out.results)} scored; most unique:")
    click.echo(top.to_string(index=False))


def _owned_run(out) -> bool:
    """Print which asset and Dagster run wrote an asset-owned key (True), else False."""
    run_id = out.summary.get("dagster_run_id")
    if run_id is None:
        return False
    config = out.summary.get("run_config") or {}
    click.echo(
        f"materialized asset {out.summary['asset']} in Dagster run {run_id}"
        + (f" (run config {json.dumps(config)})" if config else "")
    )
    return True


def _dataset_of(store, brain_key: str, dataset: str | None) -> str:
    """The dataset holding a brain key (given, or the only one that has it)."""
    if dataset:
        return dataset
    holders = [d for d in store.list_datasets() if store.get_run(d, brain_key, missing_ok=True)]
    if len(holders) == 1:
        return holders[0]
    if not holders:
        raise ValueError(f"no dataset in {store.data_dir} has a brain run {brain_key!r}")
    raise ValueError(f"brain key {brain_key!r} exists on {holders}: pass --dataset")


def dataset_option(fn):
    """``--dataset``: needed only when several datasets share the brain key."""
    return click.option("--dataset", default=None, help="Dataset (when the key is ambiguous).")(fn)


@main.group("similarity")
def similarity_group() -> None:
    """Query similarity indexes."""


@similarity_group.command("query")
@click.argument("brain_key")
@click.option("--id", "ids", multiple=True, help="Query sample/label id (repeat for several).")
@click.option(
    "--vector-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A .npy file with one vector or a 2-D array of vectors.",
)
@click.option("--prompt", default=None, help="A text prompt (CLIP-style models).")
@click.option("-k", "k", default=10, show_default=True, type=int)
@click.option("--reverse", is_flag=True, help="Least similar first.")
@click.option("--exclude-query", is_flag=True, help="Leave the query ids out of the result.")
@click.option("--save", "save_as", default=None, help="Also write the result to this view.")
@dataset_option
@data_dir_option
@user_errors
def similarity_query(
    brain_key, ids, vector_file, prompt, k, reverse, exclude_query, save_as, dataset, data_dir
) -> None:
    """Print the k items nearest to (or, with --reverse, farthest from) the query."""
    import numpy as np

    from dagster_brain.api import Dataset, sort_by_similarity

    given = [bool(ids), vector_file is not None, prompt is not None]
    if sum(given) != 1:
        raise ValueError("give exactly one of --id, --vector-file, --prompt")
    query = list(ids) if ids else (np.load(vector_file) if vector_file else prompt)
    store = _store(data_dir)
    ds = Dataset(_dataset_of(store, brain_key, dataset), store)
    view = sort_by_similarity(
        ds, query, k=k, reverse=reverse, brain_key=brain_key, include_query=not exclude_query
    )
    df = view.to_pandas()
    cols = [c for c in ("sample_id", "label_id", "distance", "filepath") if c in df]
    click.echo(df[cols].to_string(index=False))
    if save_as:
        click.echo(f"saved to {view.save(save_as)}")


@main.command("duplicates")
@click.argument("brain_key")
@click.option("--thresh", type=float, default=None, help="A fixed distance threshold.")
@click.option("--fraction", type=float, default=None, help="Flag about this share of items.")
@click.option("--no-verify", is_flag=True, help="Embeddings only (no check on the images).")
@click.option(
    "--brain-key",
    "out_key",
    default="duplicates",
    show_default=True,
    help="Brain key the result is stored under.",
)
@click.option("--pairs", "show_pairs", is_flag=True, help="Also print every duplicate pair.")
@dataset_option
@data_dir_option
@user_errors
def duplicates_cmd(
    brain_key, thresh, fraction, no_verify, out_key, show_pairs, dataset, data_dir
) -> None:
    """Near-duplicate groups on similarity index BRAIN_KEY (default: data-chosen threshold).

    The groups table is stored as the run's results and every duplicate pair (within the
    threshold; with image verification, every confirmed pair) as its ``pairs`` table
    (``--pairs`` prints it).
    """
    from dagster_brain.api import Dataset, compute_near_duplicates

    if thresh is not None and fraction is not None:
        raise ValueError("give at most one of --thresh and --fraction")
    store = _store(data_dir)
    ds = Dataset(_dataset_of(store, brain_key, dataset), store)
    out = compute_near_duplicates(
        ds,
        similarity=brain_key,
        thresh=thresh if thresh is not None else "auto",
        fraction=fraction,
        verify=not no_verify,
        brain_key=out_key,
    )
    s = out.summary
    if not _owned_run(out):
        click.echo(
            f"{out_key}: {s['duplicates']} duplicates in {s['groups']} groups, "
            f"{s['pairs']} pairs (thresh {s['thresh']:.4g}, {s['method']})"
        )
        if s["choice"] is not None:
            click.echo(f"threshold: {s['choice'].describe()}")
    if len(out.results):
        click.echo(out.results.head(40).to_string(index=False))
    if show_pairs:
        pairs = store.load_extra(ds.name, out_key, "pairs")
        click.echo(f"{len(pairs)} pairs (nearest first):")
        click.echo(pairs.to_string(index=False) if len(pairs) else "(none)")


@main.command("unique")
@click.argument("brain_key")
@click.argument("count", type=int)
@click.option("--brain-key", "out_key", default="unique", show_default=True)
@dataset_option
@data_dir_option
@user_errors
def unique_cmd(brain_key, count, out_key, dataset, data_dir) -> None:
    """COUNT maximally spread items of similarity index BRAIN_KEY."""
    from dagster_brain.api import Dataset, compute_brain

    store = _store(data_dir)
    ds = Dataset(_dataset_of(store, brain_key, dataset), store)
    out = compute_brain(ds, "unique", out_key, similarity=brain_key, count=count)
    _owned_run(out)
    click.echo(out.results.to_string(index=False, max_rows=60))


@main.command("mistakenness")
@click.argument("dataset")
@click.option("--pred-field", required=True, help="Predictions (classification or detections).")
@click.option("--label-field", default="ground_truth", show_default=True)
@click.option("--brain-key", default="mistakenness", show_default=True)
@click.option(
    "--method",
    type=click.Choice(["confident_learning", "reference"]),
    default=None,
    help="confident_learning (classification default) or reference; detections: reference "
    "or leave out for the default rule.",
)
@click.option("--missing-conf", type=float, default=None, help="Detections: confidence cut.")
@click.option("--copy-missing", is_flag=True, help="Detections: add missing objects to GT.")
@data_dir_option
@user_errors
def mistakenness_cmd(
    dataset, pred_field, label_field, brain_key, method, missing_conf, copy_missing, data_dir
) -> None:
    """compute_mistakenness: how likely each annotation of DATASET is wrong."""
    from dagster_brain.api import Dataset, compute_mistakenness

    extra = {} if missing_conf is None else {"missing_conf": missing_conf}
    out = compute_mistakenness(
        Dataset(dataset, _store(data_dir)),
        pred_field,
        label_field,
        brain_key,
        method=method,
        copy_missing=copy_missing,
        **extra,
    )
    _owned_run(out)
    click.echo(f"{brain_key}: {len(out.results)} samples scored; most likely mistakes:")
    cols = [
        c
        for c in (
            "sample_id",
            "mistakenness",
            "mistakenness_loc",
            "possible_missing",
            "possible_spurious",
            "label",
            "prediction",
        )
        if c in out.results
    ]
    click.echo(out.results.nlargest(10, "mistakenness")[cols].to_string(index=False))


@main.command("hardness")
@click.argument("dataset")
@click.option("--label-field", required=True, help="The predictions field with logits.")
@click.option("--brain-key", default="hardness", show_default=True)
@click.option(
    "--method", type=click.Choice(["entropy", "margin"]), default="entropy", show_default=True
)
@data_dir_option
@user_errors
def hardness_cmd(dataset, label_field, brain_key, method, data_dir) -> None:
    """compute_hardness: the model's uncertainty per sample of DATASET."""
    from dagster_brain.api import Dataset, compute_hardness

    out = compute_hardness(Dataset(dataset, _store(data_dir)), label_field, brain_key, method)
    _owned_run(out)
    click.echo(f"{brain_key}: {len(out.results)} samples scored; hardest:")
    click.echo(out.results.nlargest(10, "hardness").to_string(index=False))


@main.command("visualization")
@click.argument("dataset")
@click.option("--embeddings", default=None, help="Embeddings key (or --similarity).")
@click.option("--similarity", default=None, help="Brain key of a similarity index.")
@click.option(
    "--method", type=click.Choice(["umap", "tsne", "pca"]), default="umap", show_default=True
)
@click.option("--num-dims", type=click.IntRange(2, 3), default=2, show_default=True)
@click.option("--label-field", default=None, help="Colour points by this label field.")
@click.option("--brain-key", default="visualization", show_default=True)
@data_dir_option
@user_errors
def visualization_cmd(
    dataset, embeddings, similarity, method, num_dims, label_field, brain_key, data_dir
) -> None:
    """compute_visualization: 2-D/3-D points with a PNG and an interactive HTML plot."""
    from dagster_brain.api import Dataset, compute_visualization

    if (embeddings is None) == (similarity is None):
        raise ValueError("give exactly one of --embeddings and --similarity")
    out = compute_visualization(
        Dataset(dataset, _store(data_dir)),
        embeddings=embeddings,
        similarity_index=similarity,
        method=method,
        num_dims=num_dims,
        label_field=label_field,
        brain_key=brain_key,
    )
    s = out.summary
    if _owned_run(out):
        return
    click.echo(
        f"{brain_key}: {len(out.results)} points ({method}); "
        f"timings {', '.join(f'{k} {v:.2f}' for k, v in s['timings'].items())}"
    )
    click.echo(f"png:  {s['png_path']}\nhtml: {s['html_path']}")


@main.command("lineage")
@click.argument("brain_key")
@click.option("--sample", "sample_id", default=None, help="Also show this sample's results.")
@dataset_option
@data_dir_option
@user_errors
def lineage_cmd(brain_key, sample_id, dataset, data_dir) -> None:
    """Which run, model, data version and code produced BRAIN_KEY; what is stale since."""
    from dagster_brain.lineage import lineage

    store = _store(data_dir)
    info = lineage(store, _dataset_of(store, brain_key, dataset), brain_key, sample_id)
    click.echo(json.dumps(info, indent=2, default=str))


@main.command("top")
@click.argument("brain_key")
@click.option("-n", "limit", default=20, show_default=True, help="How many items.")
@click.option("--ascending", is_flag=True, help="Lowest scores first (e.g. least unique).")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a contact sheet of thumbnails to this file.",
)
@dataset_option
@data_dir_option
@user_errors
def top_cmd(brain_key, limit, ascending, html_out, dataset, data_dir) -> None:
    """The top-scored items of a brain run: ids, paths and scores."""
    from dagster_brain.api import Dataset

    store = _store(data_dir)
    ds = Dataset(_dataset_of(store, brain_key, dataset), store)
    record = store.get_run(ds.name, brain_key)
    from dagster_brain.methods import get_method

    ranked = get_method(record.kind, brain_key).score
    if ranked is None:
        raise ValueError(f"brain run {brain_key!r} is a {record.kind} run: it has no scores")
    score = ranked.column
    view = ds.load_brain_view(brain_key)
    ascending = ascending or ranked.ascending
    rows = view.sort_by(score, reverse=not ascending).to_pandas().head(limit)
    cols = [c for c in ("sample_id", "label_id", score, "filepath") if c in rows]
    click.echo(rows[cols].to_string(index=False))
    if html_out:
        from dagster_brain.contact_sheet import write_contact_sheet

        path = write_contact_sheet(rows, score, f"{ds.name}/{brain_key}: top {limit}", html_out)
        click.echo(f"contact sheet: {path}")


def _parse_field(ctx, param, values: tuple[str, ...]) -> dict:
    """``FIELD=VALUE`` pairs, each value read as YAML (``k=5``, ``verify=false``)."""
    import yaml

    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not FIELD=VALUE", ctx=ctx, param=param)
        out[name.strip()] = yaml.safe_load(value)
    return out


def _method_command(kind: str) -> click.Command | None:
    """``brain compute KIND DATASET``: one registered brain method, run through run_brain."""
    from dagster_brain.methods import METHODS

    method = METHODS.get(kind)
    if method is None:
        return None
    fields = ", ".join(f for f in method.spec.model_fields if f not in ("kind", "dataset"))

    @click.command(kind, help=f"{method.summary}\n\nSpec fields: {fields}.")
    @click.argument("dataset")
    @click.option("--brain-key", default=kind, show_default=True)
    @click.option(
        "--set",
        "fields",
        multiple=True,
        callback=_parse_field,
        metavar="FIELD=VALUE",
        help="A spec field (repeatable; the value is read as YAML).",
    )
    @data_dir_option
    @user_errors
    def run(dataset: str, brain_key: str, fields: dict, data_dir: Path | None) -> None:
        from dagster_brain.api import Dataset, compute_brain

        out = compute_brain(Dataset(dataset, _store(data_dir)), kind, brain_key, **fields)
        _owned_run(out)
        click.echo(f"{kind} {dataset}/{brain_key}: {len(out.results)} rows")
        if len(out.results):
            click.echo(out.results.head(20).to_string(index=False))

    return run


class _MethodGroup(click.Group):
    """One subcommand per registered brain method (read from the registry when used)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from dagster_brain.methods import METHODS

        return sorted(METHODS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _method_command(cmd_name)


@main.group("compute", cls=_MethodGroup)
def compute_group() -> None:
    """Run any brain method on a dataset: brain compute KIND DATASET --set FIELD=VALUE."""


@main.command("report")
@click.argument("dataset")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The HTML file (default: <data_dir>/reports/DATASET.html).",
)
@data_dir_option
@user_errors
def report_cmd(dataset: str, out: Path | None, data_dir: Path | None) -> None:
    """Write DATASET's health report: one self-contained HTML page from all its brain runs."""
    from dagster_brain.health_report import write_health_report

    path, report = write_health_report(_store(data_dir), dataset, out)
    click.echo(
        f"{dataset}: {len(report.runs)} brain runs, {report.issues} issues flagged\n"
        f"report: {path}\n{path.as_uri()}"
    )


def _attach_optional_groups() -> None:
    """Subcommands that live beside their code (ingestion; the demo's data; the viewer; the
    store's health)."""
    from dagster_brain.doctor_cli import doctor_cmd, restore_cmd
    from dagster_brain.ingest.cli import demo, ingest
    from dagster_brain.viewer.cli import attach as attach_viewer

    main.add_command(ingest)
    attach_viewer(main)
    main.add_command(doctor_cmd)
    main.add_command(restore_cmd)
    for command in demo.commands.values():
        demo_group.add_command(command)


@main.group("demo", invoke_without_command=True)
@data_dir_option
@click.pass_context
def demo_group(ctx: click.Context, data_dir: Path | None) -> None:
    """The offline demo datasets with planted mistakes.

    Without a subcommand: materialise every demo asset (the bundled brain-keys YAML) on the
    project's Dagster instance and report what the brain found (what `make demo` runs after
    setting up)."""
    if ctx.invoked_subcommand is not None:
        return
    from dagster_brain.specs import DEFAULT_SPECS_PATH

    ok = user_errors(materialize_selection)("*", DEFAULT_SPECS_PATH, None, data_dir)
    if not ok:
        sys.exit(1)


_attach_optional_groups()

if __name__ == "__main__":
    main()
