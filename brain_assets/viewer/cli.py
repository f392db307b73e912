"""``brain view`` (start the viewer) and ``brain views list|show|delete`` (saved views).

Attached to the ``brain`` command group by :func:`attach`.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from dagster_brain.config import BrainConfigError, get_brain_config
from dagster_brain.names import BrainNameError
from dagster_brain.store import StoreError

_USER_ERRORS = (StoreError, BrainNameError, BrainConfigError, ValueError, OSError)


def _user_errors(fn):
    """Print a user error as one line and exit 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper


_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store directory (default: brain config data_dir, env BRAIN_DATA_DIR).",
)


def _store(data_dir: Path | None):
    from dagster_brain.store import Store

    config = get_brain_config()
    return Store(data_dir or config.data_dir, memory_limit=config.store_memory_limit)


@click.command("view")
@click.option("--port", type=int, default=None, help="Port (default: viewer_port, 3100).")
@click.option("--host", default=None, help="Loopback address (default: viewer_host).")
@_data_dir
@_user_errors
def view_cmd(port: int | None, host: str | None, data_dir: Path | None) -> None:
    """Start the embeddings viewer (interactive plots of visualization runs) on 127.0.0.1."""
    from dagster_brain.viewer.server import check_host, serve

    config = get_brain_config()
    host = check_host(host or config.viewer_host)
    port = port or int(config.viewer_port)
    store = _store(data_dir)
    click.echo(f"embeddings viewer on http://{host}:{port}/ (store {store.data_dir}); Ctrl-C stops")
    serve(store.data_dir, host=host, port=port)


@click.group("views")
def views_group() -> None:
    """Saved views: named selections of samples (saved from the viewer or the API)."""


@views_group.command("list")
@click.argument("dataset")
@_data_dir
@_user_errors
def views_list(dataset: str, data_dir: Path | None) -> None:
    """The saved views of DATASET: name, size, when, from which run."""
    store = _store(data_dir)
    store.require_dataset(dataset)
    frame = store.saved_views(dataset)
    if frame.empty:
        click.echo(f"dataset {dataset!r} has no saved views")
        return
    click.echo(frame.to_string(index=False))


@views_group.command("show")
@click.argument("dataset")
@click.argument("name")
@click.option("-n", "limit", default=20, show_default=True, help="Rows to print (0: all).")
@_data_dir
@_user_errors
def views_show(dataset: str, name: str, limit: int, data_dir: Path | None) -> None:
    """The samples of one saved view, in order, with their files."""
    store = _store(data_dir)
    ids = store.load_view_ids(dataset, name)
    paths = store.samples(dataset, ids).set_index("sample_id")["filepath"]
    shown = ids if limit == 0 else ids[:limit]
    click.echo(f"{dataset}/{name}: {len(ids)} samples")
    for sample_id in shown:
        click.echo(f"{sample_id}\t{paths.get(sample_id, '')}")
    if len(shown) < len(ids):
        click.echo(f"... {len(ids) - len(shown)} more (-n 0 prints all)")


@views_group.command("delete")
@click.argument("dataset")
@click.argument("name")
@_data_dir
@_user_errors
def views_delete(dataset: str, name: str, data_dir: Path | None) -> None:
    """Delete one saved view."""
    _store(data_dir).delete_view(dataset, name)
    click.echo(f"deleted view {name!r} of dataset {dataset!r}")


def attach(group: click.Group) -> click.Group:
    """Add ``view`` and ``views`` to a command group (the ``brain`` CLI)."""
    group.add_command(view_cmd)
    group.add_command(views_group)
    return group
