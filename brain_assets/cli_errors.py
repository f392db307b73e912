"""How the ``brain`` command line reports an error: one line with the cause, the file and what
to do (secrets redacted), the traceback only with ``brain --debug`` / ``BRAIN_DEBUG=1``.

Its own module so that the CLI's parts (``cli.py``, ``ingest/cli.py``, ``doctor_cli.py``) report
errors the same way without importing each other.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import click
import duckdb

from dagster_brain.config import BrainConfigError
from dagster_brain.names import BrainNameError
from dagster_brain.redact import redact_text
from dagster_brain.specs import SpecError
from dagster_brain.store import StoreError

USER_ERRORS: tuple[type[Exception], ...] = (
    StoreError,
    SpecError,
    BrainNameError,
    BrainConfigError,
    ValueError,
    KeyError,
    FileNotFoundError,
)

# What to do about an operating-system error, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "free space on that disk (or point --data-dir / BRAIN_DATA_DIR and "
    "DAGSTER_HOME at another one) and run again",
    errno.EDQUOT: "free space within your disk quota and run again",
    errno.EROFS: "point --data-dir / BRAIN_DATA_DIR and DAGSTER_HOME at a writable folder",
    errno.EACCES: "check that folder's permissions",
    errno.EPERM: "check that folder's permissions",
}
# DuckDB's words for those errors in its messages (IOException, a failed commit)
_IO_ADVICE = {
    "no space left on device": _OS_ADVICE[errno.ENOSPC],
    "disk quota exceeded": _OS_ADVICE[errno.EDQUOT],
    "read-only file system": _OS_ADVICE[errno.EROFS],
    "permission denied": _OS_ADVICE[errno.EACCES],
    "conflicting lock": "another process has the store open: wait for it to finish (or stop "
    "that PID) and run again",
}


def debug_enabled() -> bool:
    """Whether tracebacks are shown: ``brain --debug`` or ``BRAIN_DEBUG=1``."""
    if os.environ.get("BRAIN_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions behind it (its cause, or the one it was raised during)."""
    out: list[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        nxt = err.__cause__
        if nxt is None and not err.__suppress_context__:
            nxt = err.__context__
        err = nxt  # type: ignore[assignment]
    return out


def _is_wrapper(err: BaseException) -> bool:
    """An error that only carries another: Dagster's step and user-code wrappers (with their
    cause), DuckDB's failed rollback after the error that made the transaction fail."""
    name = type(err).__name__
    if (type(err).__module__ or "").startswith("dagster") and name.startswith("Dagster"):
        return err.__cause__ is not None or getattr(err, "user_exception", None) is not None
    return isinstance(err, duckdb.TransactionException) and is_failed_rollback(str(err))


def is_failed_rollback(text: str) -> bool:
    """Whether DuckDB's message says a rollback found no transaction (the transaction had
    already failed: the error it was handling is the cause)."""
    text = text.lower()
    return "cannot rollback" in text or "no transaction is active" in text


def _environment_cause(chain: list[BaseException]) -> BaseException | None:
    """The first error in the chain that says the disk, the file system or a lock failed."""
    for err in chain:
        if isinstance(err, OSError) and err.errno in _OS_ADVICE:
            return err
        if isinstance(err, duckdb.Error) and any(k in str(err).lower() for k in _IO_ADVICE):
            return err
    return None


def _cause_line(err: BaseException) -> str:
    """One line for an environment error: the file, the system's words, what to do."""
    if isinstance(err, OSError) and err.errno in _OS_ADVICE:
        place = err.filename or _data_dir_given()
        where = f"{place}: " if err.filename else f"writing under {place}: " if place else ""
        return f"{where}{os.strerror(err.errno)}; {_OS_ADVICE[err.errno]}"
    text = " ".join(str(err).split())
    advice = next(a for k, a in _IO_ADVICE.items() if k in text.lower())
    return f"{text}; {advice}"


def _data_dir_given() -> str | None:
    """The store folder of the command being run (its ``--data-dir``), when it has one."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("data_dir"):
            return str(Path(ctx.params["data_dir"]).expanduser().resolve())
        ctx = ctx.parent
    return None


def _shown(chain: list[BaseException]) -> BaseException:
    """The first error that is not only a wrapper: what failed, in the user's words."""
    return next((e for e in chain if not _is_wrapper(e)), chain[-1])


def error_message(err: BaseException) -> str:
    """The one line the CLI prints for an error (after ``error: ``): the user-facing cause,
    taken out of Dagster's and DuckDB's wrappers, with the file and what to do. The one place
    where the CLI's error text is produced."""
    chain = _chain(err)
    env = _environment_cause(chain)
    shown = _shown(chain)
    if isinstance(shown, KeyError) and shown.args:
        text = str(shown.args[0])
    elif isinstance(shown, USER_ERRORS) or shown is env:
        text = str(shown)
    else:
        text = f"{type(shown).__name__}: {shown}"
    text = " ".join(text.split()) or type(shown).__name__
    if env is not None:
        cause = _cause_line(env)
        if shown is env:
            return cause
        if str(getattr(env, "strerror", None) or env) not in text:
            return f"{text} ({cause})"
        return f"{text}; {cause.rpartition('; ')[2]}"
    if not isinstance(shown, USER_ERRORS + (OSError, duckdb.IOException)):
        text += " (an unexpected error: `brain --debug ...` shows the traceback)"
    return text


def exit_code(err: BaseException) -> int:
    """2 for a user error (bad input, a refusal), 1 for a failure of the machine or the code."""
    chain = _chain(err)
    return 2 if isinstance(_shown(chain), USER_ERRORS) and _environment_cause(chain) is None else 1


def fail(err: BaseException, code: int | None = None) -> NoReturn:
    """Print ``err`` as one line (its traceback first with ``--debug``) and exit."""
    if debug_enabled():
        shown = io.StringIO()
        traceback.print_exception(err, file=shown)
        click.echo(redact_text(shown.getvalue()), err=True, nl=False)
    click.echo(f"error: {redact_text(error_message(err))}", err=True)
    sys.exit(exit_code(err) if code is None else code)


def passes(err: BaseException) -> bool:
    """Click's own exits and usage errors, which click prints itself."""
    return isinstance(err, click.exceptions.ClickException | click.exceptions.Exit | click.Abort)


def user_errors(fn):
    """Print any error as one line (see :func:`error_message`) and exit: 2 for a user error,
    1 otherwise; ``brain --debug`` (or ``BRAIN_DEBUG=1``) prints the traceback too."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if passes(err):
                raise
            fail(err)

    return wrapper
