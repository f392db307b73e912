"""Errors reach ``brain`` users as one line with the cause, the file and what to do; the
traceback only with ``brain --debug`` (or ``BRAIN_DEBUG=1``). A disk that fills during an
ingest leaves no phantom dataset behind."""

from __future__ import annotations

import errno
import sys

import duckdb
import pytest
from brain_env import use_brain_env
from click.testing import CliRunner
from conftest import write_images

from dagster_brain.cli import main
from dagster_brain.cli_errors import error_message
from dagster_brain.store import Store, StoreError
from dagster_brain.store.connection import Transaction
from dagster_brain.store.samples import SampleTables

WAL = "/data/brain.duckdb.wal"


@pytest.fixture
def store(tmp_path, request, monkeypatch) -> Store:
    """An empty store named by the environment; no project instance."""
    use_brain_env(request, monkeypatch, {"BRAIN_DATA_DIR": str(tmp_path / "data")})
    monkeypatch.setenv("DAGSTER_HOME", "")
    monkeypatch.delenv("BRAIN_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return Store(tmp_path / "data")


def _raise_in_datasets(monkeypatch, err: BaseException) -> None:
    def boom(self):
        raise err

    monkeypatch.setattr(SampleTables, "list_datasets", boom)


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", WAL)


def test_disk_full_is_one_line_with_the_file_and_no_traceback(store, monkeypatch):
    _raise_in_datasets(monkeypatch, _disk_full())
    out = CliRunner().invoke(main, ["datasets"])
    assert out.exit_code == 1
    assert out.stderr.splitlines() == [
        f"error: {WAL}: No space left on device; free space on that disk (or point --data-dir "
        "/ BRAIN_DATA_DIR and DAGSTER_HOME at another one) and run again"
    ]
    assert "Traceback" not in out.output


@pytest.mark.parametrize("how", [["--debug"], "env"])
def test_debug_shows_the_traceback_too(store, monkeypatch, how):
    _raise_in_datasets(monkeypatch, _disk_full())
    if how == "env":
        monkeypatch.setenv("BRAIN_DEBUG", "1")
        how = []
    out = CliRunner().invoke(main, [*how, "datasets"])
    assert out.exit_code == 1
    assert "Traceback (most recent call last)" in out.stderr
    assert "in boom" in out.stderr  # where it was raised
    assert out.stderr.splitlines()[-1].startswith(f"error: {WAL}: No space left on device; ")


def test_read_only_file_system_says_what_to_do(store, monkeypatch):
    _raise_in_datasets(monkeypatch, OSError(errno.EROFS, "Read-only file system", WAL))
    out = CliRunner().invoke(main, ["datasets"])
    assert out.exit_code == 1
    assert out.stderr == (
        f"error: {WAL}: Read-only file system; point --data-dir / BRAIN_DATA_DIR and "
        "DAGSTER_HOME at a writable folder\n"
    )


def test_duckdb_lock_conflict_names_the_pid(store, monkeypatch):
    text = (
        'IO Error: Could not set lock on file "/data/brain.duckdb": Conflicting lock is held '
        "in /usr/bin/python3.11 (PID 4242) by user ana. See also "
        "https://duckdb.org/docs/stable/connect/concurrency"
    )
    _raise_in_datasets(monkeypatch, duckdb.IOException(text))
    out = CliRunner().invoke(main, ["datasets"])
    assert out.exit_code == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"error: {text}; another process has the store open: wait for it")
    assert "(PID 4242)" in line and "Traceback" not in out.output


def test_a_failed_rollback_does_not_hide_its_cause():
    """What DuckDB raises when the disk fills inside a transaction."""
    try:
        try:
            raise _disk_full()
        except OSError:  # raised while handling the disk error, as DuckDB's ROLLBACK is
            raise duckdb.TransactionException(  # noqa: B904
                "TransactionContext Error: cannot rollback - no transaction is active"
            )
    except duckdb.TransactionException as err:
        message = error_message(err)
    assert message.startswith(f"{WAL}: No space left on device; ")
    assert "rollback" not in message


def test_a_dagster_step_error_is_unwrapped_to_the_users_error():
    from dagster._core.errors import DagsterExecutionStepExecutionError

    try:
        try:
            raise ValueError("brain key 'uniq' on 'toy': embeddings 'emb' are missing")
        except ValueError as cause:
            raise DagsterExecutionStepExecutionError(
                'Error occurred while executing op "toy__brain__uniq":',
                user_exception=cause,
                original_exc_info=sys.exc_info(),
                step_key="toy__brain__uniq",
                op_name="toy__brain__uniq",
                op_def_name="toy__brain__uniq",
            ) from cause
    except DagsterExecutionStepExecutionError as err:
        assert error_message(err) == "brain key 'uniq' on 'toy': embeddings 'emb' are missing"


def test_a_user_error_keeps_its_message_and_code_2(store):
    out = CliRunner().invoke(main, ["runs", "list", "nope"])
    assert out.exit_code == 2
    assert out.stderr.startswith("error: no dataset 'nope' in ")
    assert len(out.stderr.splitlines()) == 1


def test_an_unexpected_error_is_one_line_that_points_at_debug(store, monkeypatch):
    _raise_in_datasets(monkeypatch, ZeroDivisionError("division by zero"))
    out = CliRunner().invoke(main, ["datasets"])
    assert out.exit_code == 1
    assert out.stderr == (
        "error: ZeroDivisionError: division by zero (an unexpected error: `brain --debug ...` "
        "shows the traceback)\n"
    )


# -- a disk that fills during `brain ingest` ---------------------------------------------------


def _fill_disk_on(name: str, monkeypatch) -> None:
    """Make the store fail as a full disk does while a transaction writes ``name``: DuckDB
    ends the transaction, so the rollback that follows finds none."""
    register = Transaction.register

    def full(self, what, frame):
        if what == name:
            self.conn.execute("ROLLBACK")
            # as pyarrow says it: no file name
            raise OSError(errno.ENOSPC, "Error writing bytes to file: No space left on device")
        return register(self, what, frame)

    monkeypatch.setattr(Transaction, "register", full)


def test_disk_full_during_ingest_leaves_no_dataset_and_names_the_cause(
    store, tmp_path, monkeypatch
):
    write_images(tmp_path / "images", 3)
    with monkeypatch.context() as m:
        _fill_disk_on("new_samples", m)
        out = CliRunner().invoke(main, ["ingest", "folder", str(tmp_path / "images"), "-d", "pics"])
    assert out.exit_code == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith(
        f"error: writing under {store.data_dir}: No space left on device; free space on that disk"
    )
    assert "rollback" not in out.output and "Traceback" not in out.output
    assert store.list_datasets() == []
    assert store.query("SELECT count(*) AS n FROM samples")["n"].iloc[0] == 0


def test_disk_full_on_an_existing_dataset_keeps_it_as_it_was(store, tmp_path, monkeypatch):
    write_images(tmp_path / "images", 3)
    runner = CliRunner()
    ingest = ["ingest", "folder", str(tmp_path / "images"), "-d", "pics"]
    assert runner.invoke(main, ingest).exit_code == 0
    before = store.sample_ids("pics")
    write_images(tmp_path / "images", 5)
    with monkeypatch.context() as m:
        _fill_disk_on("new_samples", m)
        out = runner.invoke(main, ingest)
    assert out.exit_code == 1 and "No space left on device" in out.stderr
    assert store.list_datasets() == ["pics"] and store.sample_ids("pics") == before


def test_store_errors_name_the_disk_cause_they_were_raised_from():
    try:
        try:
            raise _disk_full()
        except OSError as cause:
            raise StoreError("could not write the Parquet copy of 'pics' samples") from cause
    except StoreError as err:
        assert error_message(err) == (
            f"could not write the Parquet copy of 'pics' samples ({WAL}: No space left on "
            "device; free space on that disk (or point --data-dir / BRAIN_DATA_DIR and "
            "DAGSTER_HOME at another one) and run again)"
        )


@pytest.mark.parametrize("debug", [False, True])
def test_a_credential_in_an_error_is_never_printed(store, monkeypatch, debug):
    """An SDK error naming a URL with a password: the line (and the --debug traceback) show
    the host, not the password."""
    secret = "Pa55-word-9f3c"
    _raise_in_datasets(monkeypatch, RuntimeError(f"cannot reach http://admin:{secret}@db:6333/x"))
    out = CliRunner().invoke(main, ["--debug", "datasets"] if debug else ["datasets"])
    assert out.exit_code == 1
    assert secret not in out.output
    assert "error: RuntimeError: cannot reach http://****@db:6333/x" in out.stderr
    assert ("Traceback" in out.stderr) is debug
