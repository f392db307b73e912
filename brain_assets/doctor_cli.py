"""``brain doctor`` and ``brain restore``: click commands the ``brain`` group attaches."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dagster_brain.names import BrainNameError
from dagster_brain.store import StoreError

_DIR = click.Path(file_okay=False, path_type=Path)
_DATA_DIR_HELP = "Store directory (default: brain config data_dir, env BRAIN_DATA_DIR)."


def _data_dir(data_dir: Path | None) -> Path:
    from dagster_brain.config import get_brain_config

    return Path(data_dir or get_brain_config().data_dir)


def _fail(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(2)


@click.command("doctor")
@click.option("--dataset", default=None, help="Check this dataset only (default: all).")
@click.option(
    "--repair",
    is_flag=True,
    help="Rebuild what can be rebuilt from DuckDB (Parquet copies, indexes), delete orphan "
    "index files, release locks of dead runs.",
)
@click.option("--data-dir", type=_DIR, default=None, help=_DATA_DIR_HELP)
def doctor_cmd(dataset: str | None, repair: bool, data_dir: Path | None) -> None:
    """Check the store against itself: the DuckDB file, Parquet copies, similarity indexes,
    orphan index files and locks of dead runs. Exit code 1 when anything is wrong (after
    --repair: when anything is left)."""
    from dagster_brain import doctor

    root = _data_dir(data_dir)
    try:
        report = doctor.doctor(
            root, dataset, fix=repair, log=lambda line: click.echo(f"repaired: {line}")
        )
    except (StoreError, BrainNameError, ValueError) as err:
        _fail(err)
        return
    shown = report.remaining if repair else report.findings
    for f in shown:
        click.echo(f"{f.code}: {f.what}")
        click.echo(f"    where: {f.where}")
        click.echo(f"    fix:   {f.fix}")
    if not report.findings:
        click.echo(f"{root.resolve()}: healthy")
    elif repair and report.healthy:
        click.echo(f"{root.resolve()}: repaired {len(report.repaired)}; healthy now")
    else:
        n = len(shown)
        fixable = sum(f.repairable for f in shown)
        hint = "" if repair or not fixable else f" ({fixable} repairable with --repair)"
        click.echo(f"{root.resolve()}: {n} finding{'s' * (n != 1)}{hint}", err=True)
        sys.exit(1)


@click.command("restore")
@click.option(
    "--force",
    is_flag=True,
    help="Replace a brain.duckdb that opens and reads cleanly too (default: refused).",
)
@click.option("--data-dir", type=_DIR, default=None, help=_DATA_DIR_HELP)
def restore_cmd(force: bool, data_dir: Path | None) -> None:
    """Rebuild brain.duckdb from the Parquet copies (a damaged file is kept beside it)."""
    from dagster_brain import doctor

    root = _data_dir(data_dir)
    try:
        report = doctor.restore(root, force=force)
    except (StoreError, BrainNameError, ValueError) as err:
        _fail(err)
        return
    for line in report.lines:
        click.echo(f"restored {line}")
    for line in report.missing:
        click.echo(f"not restored: {line}")
    if report.moved_aside is not None:
        click.echo(f"the previous file is kept as {report.moved_aside}")
    click.echo(f"{root.resolve() / 'brain.duckdb'}: rebuilt; run `brain doctor` to check it")
