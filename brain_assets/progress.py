"""Progress of long loops: a bar on a terminal or in a notebook, messages in a Dagster run's log.

One way to report it, for every long step (embedding, kNN graph blocks, index uploads, 2-d
projections)::

    with progress("embedding images", total=len(paths), unit="images") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

or ``for item in track(items, "uploading vectors"): ...``. Algorithms import only this module
(no Dagster): inside a Dagster step the run log comes from :func:`run_log`, which the asset
factories set around each step, or else from Dagster's current execution context.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

LOG_EVERY_S: float = 10.0
"""In a Dagster run: at most one progress message per loop every this many seconds, besides
the opening one (with the total) and the closing one. A 1-hour embedding logs about 360 lines;
a loop shorter than this logs two."""

ENV_VAR = "BRAIN_PROGRESS"
"""``BRAIN_PROGRESS=1`` shows bars even when stderr is not a terminal, ``0`` never shows them."""

_RUN_LOG: ContextVar[Any | None] = ContextVar("brain_progress_run_log", default=None)


@contextlib.contextmanager
def run_log(log: Any) -> Iterator[None]:
    """Within this block, progress goes to ``log`` (a Dagster run's ``context.log``) as
    messages instead of a bar."""
    token = _RUN_LOG.set(log)
    try:
        yield
    finally:
        _RUN_LOG.reset(token)


def _dagster_log() -> Any | None:
    """The log of the Dagster step running in this context, if any (Dagster already loaded)."""
    log = _RUN_LOG.get()
    if log is not None or "dagster" not in sys.modules:
        return log
    try:
        return sys.modules["dagster"].AssetExecutionContext.get().log
    except Exception:  # no step in scope (or an asset check's context): not a run
        return None


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def bars_enabled(requested: bool | None = None) -> bool:
    """Whether a loop outside Dagster shows a bar: ``BRAIN_PROGRESS`` (0/1) decides when set,
    then the caller's ``requested``, else only on a terminal or in a notebook."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env in ("0", "1"):
        return env == "1"
    if requested is not None:
        return requested
    if _in_notebook():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Counts work done out of ``total`` and reports it (see the module docstring).

    ``bar``: show a bar outside Dagster even when stderr is not a terminal (``BRAIN_PROGRESS``
    still wins). ``log``: send messages there instead of a bar. ``messages=False``: the caller
    already logs this loop's progress, so in a Dagster run nothing more is reported.
    ``enabled=False``: report nothing (a loop that turned out short).
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        unit: str = "items",
        *,
        bar: bool | None = None,
        log: Any = None,
        messages: bool = True,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self._clock = clock
        self._start = self._last = clock()
        self._log = log if log is not None else _dagster_log()
        self._bar = None
        self._closed = False
        if not enabled:
            self._log = None
        elif self._log is not None and not messages:  # the caller logs its own progress
            self._log = None
        elif self._log is not None:
            size = f"{total:,} {unit}" if total is not None else unit
            self._log.info("%s: started (%s)", desc, size)
        elif bars_enabled(bar):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=sys.stderr)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log is not None:
            now = self._clock()
            if now - self._last >= LOG_EVERY_S:
                self._last = now
                self._log.info("%s: %s", self.desc, self._status(now))

    def _status(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        of = f"/{self.total:,}" if self.total is not None else ""
        return f"{self.done:,}{of} {self.unit} ({self.done / elapsed:,.1f} {self.unit}/s)"

    def close(self, failed: bool = False) -> None:
        """Final report (once); ``failed``: the loop stopped on an error."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._log is not None:
            now = self._clock()
            self._log.info(
                "%s: %s, %s in %.1f s",
                self.desc,
                "stopped" if failed else "done",
                self._status(now),
                now - self._start,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)


def progress(desc: str, total: int | None, unit: str = "items", **kw: Any) -> Progress:
    """A :class:`Progress` for a block of work (use as a context manager)."""
    return Progress(desc, total, unit, **kw)


def track(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "items", **kw: Any
) -> Iterator[T]:
    """Yield ``items``, counting one unit per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit, **kw) as bar:
        for item in items:
            yield item
            bar.update(1)
