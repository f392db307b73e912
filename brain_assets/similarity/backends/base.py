"""The small protocol every vector backend implements; the index API is built on top of it.

Conventions every adapter follows, so that the same question gets the same answer on every
backend:

- ids are strings (a sample id, or a label id for patch indexes); adapters map them to what the
  backend needs (UUIDs, hashes) and keep the original string with the vector;
- vectors are float32 rows of length ``dim``; ``upsert`` overwrites vectors with the same id;
- distances are reported in one convention, smaller = nearer:
  ``cosine`` -> ``1 - cos(q, x)`` in [0, 2]; ``euclidean`` -> ``||q - x||``;
  ``dotproduct`` -> ``-<q, x>``;
- ``query`` returns, per query row, up to ``k`` (id, distance) pairs, nearest first, optionally
  restricted to ``allowed`` ids (a view): native filters where the backend has them, else an
  exact scan of the allowed vectors;
- errors that come from an unreachable backend are raised as :class:`BackendUnavailable`
  naming the backend and its URL/path, credentials masked (:mod:`dagster_brain.redact`);
  the SDK's error stays chained to it only when its own text holds no credential.

Each adapter class is also the backend's descriptor: ``name``, ``metrics``, ``sdk`` (the pip
package), ``Settings`` (its brain-config settings and their defaults) and :meth:`embedded`.
The registry, the config defaults and the Dagster resources are all derived from these.
"""

from __future__ import annotations

import importlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dagster_brain.redact import is_secret, redact, redact_text, safe_cause

METRICS: tuple[str, ...] = ("cosine", "euclidean", "dotproduct")
Answer = tuple[list[list[str]], list[np.ndarray]]  # per query row: ids, distances


class BackendUnavailable(RuntimeError):
    """The backend cannot be reached or opened (message names the backend and where).

    The message is redacted: URL userinfo and query-string credentials are masked.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(redact_text(str(message)), *redact(list(args)))


class UnsupportedMetric(ValueError):
    """A metric the backend does not offer."""


def index_field(default: Any = None, description: str | None = None) -> Any:
    """A setting that names or shapes one index rather than the connection (no resource field)."""
    return Field(default, description=description, json_schema_extra={"per_index": True})


class BackendSettings(BaseModel):
    """Brain-config settings every backend has; adapters subclass it with their own.

    Unknown keys are kept (tuning knobs such as ``timeout`` or ``max_filter_ids`` reach the
    adapter as they are). Secrets are recognised by name (``api_key``, ``password``, ...).
    """

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)
    metric: str = index_field("cosine", "default metric of the brain config")

    @classmethod
    def resource_fields(cls) -> list[str]:
        """The connection settings a Dagster resource shows (not the per-index ones)."""
        return [
            name
            for name, info in cls.model_fields.items()
            if not (
                isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("per_index")
            )
        ]


class SdkErrors:
    """Exception classes named ``"module:Class"``, imported on first use (SDKs load lazily)."""

    def __init__(self, *names: str | type[BaseException]):
        self._names = names
        self._resolved: tuple[type[BaseException], ...] | None = None

    def __get__(self, obj: Any, owner: type | None = None) -> tuple[type[BaseException], ...]:
        if self._resolved is None:
            classes = []
            for name in self._names:
                if isinstance(name, str):
                    module, attr = name.split(":")
                    classes.append(getattr(importlib.import_module(module), attr))
                else:
                    classes.append(name)
            self._resolved = tuple(classes)
        return self._resolved


class VectorBackend(ABC):
    """One collection / table / index of string-keyed vectors on one backend."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]] = METRICS
    sdk: ClassVar[str]  # the pip package whose version shapes the answers
    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    # SDK errors meaning "cannot reach / open the backend" (see _guard); SdkErrors for lazy ones
    unavailable: ClassVar[tuple[type[BaseException], ...]] = ()
    exact: ClassVar[bool] = False  # True: query results are exact top-k
    noun: ClassVar[str] = "collection"  # what the backend calls one index, for messages
    k_limit: ClassVar[int | None] = None  # the largest k a query may ask (None: any)
    max_filter_ids: int = sys.maxsize  # views longer than this are answered by a scan
    where: str = ""  # URL or path, for messages
    _dropped: bool = False

    def __init__(self, collection: str, dim: int, metric: str, root: Path, **params: Any):
        """Open (creating if needed) ``collection``; ``root`` is a folder for local files."""
        self.check_metric(metric)
        self.collection = collection
        self.dim = int(dim)
        self.metric = metric
        self.root = Path(root)
        self.params = params

    # -- descriptor -----------------------------------------------------------------------------

    @classmethod
    def check_metric(cls, metric: str) -> None:
        """Refuse an unsupported metric before anything is created."""
        if metric not in cls.metrics:
            raise UnsupportedMetric(
                f"similarity backend {cls.name!r} does not support metric {metric!r} "
                f"(supported: {', '.join(cls.metrics)})"
            )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The brain config's defaults for this backend."""
        return cls.Settings().model_dump()

    @classmethod
    def check_settings(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` checked against :attr:`Settings` (defaults filled, unknown keys kept)."""
        try:
            settings = cls.Settings.model_validate(dict(params))
        except ValidationError as err:
            problems = []
            for e in err.errors():
                field = ".".join(str(p) for p in e["loc"])
                shown = "" if is_secret(field) else redact_text(f" (got {e.get('input')!r})")
                problems.append(f"{field}: {e['msg']}{shown}")
            raise ValueError(
                redact_text(f"similarity backend {cls.name!r} settings: " + "; ".join(problems))
            ) from None
        cls.check_metric(settings.metric)
        return settings.model_dump()

    @classmethod
    def embedded(cls, settings: Mapping[str, Any]) -> str | None:
        """Why these settings keep the store inside one process on one host (None: shareable)."""
        return None

    # -- errors ---------------------------------------------------------------------------------

    def _handle(self) -> Any:
        """What :meth:`_guard` yields (an SDK client); adapters holding one override this."""
        return None

    def _gone(self) -> RuntimeError:
        """The error for use after ``close`` or ``drop``."""
        state = "dropped" if self._dropped else "closed"
        return RuntimeError(f"{self.name} {self.noun} {self.collection!r} is {state}")

    def _unavailable_reason(self, err: BaseException) -> str | None:
        """The message of an :attr:`unavailable` error (None: not about reachability, re-raise)."""
        return str(err)

    @contextmanager
    def _guard(self, what: str | None = None, where: str | None = None) -> Iterator[Any]:
        """Yields :meth:`_handle`; :attr:`unavailable` errors become BackendUnavailable naming
        the backend and ``where`` (default :attr:`where`), and ``what`` could not be done."""
        try:
            yield self._handle()
        except self.unavailable as err:
            reason = self._unavailable_reason(err)
            if reason is None:
                raise
            doing = f"cannot {what}: " if what else ""
            raise BackendUnavailable(
                f"similarity backend {self.name!r} at {where or self.where}: {doing}{reason}"
            ) from safe_cause(err)

    # -- storage --------------------------------------------------------------------------------

    @abstractmethod
    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite vectors by id."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None:
        """Remove vectors by id (ids that are absent are ignored)."""

    @abstractmethod
    def fetch(self, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(found ids, vectors) for ``ids`` in the given order (absent ids left out);
        ``None`` fetches everything (in id order)."""

    @abstractmethod
    def count(self) -> int:
        """Number of vectors stored."""

    def iter_vectors(self, batch: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored (ids, vectors), at most ``batch`` rows at a time, in no set order.

        This default reads everything with :meth:`fetch` first; backends that can page
        (Milvus, LanceDB) override it so that memory stays at one page.
        """
        ids, X = self.fetch(None)
        for start in range(0, len(ids), batch):
            yield ids[start : start + batch], X[start : start + batch]

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection / table / files (``cleanup``)."""

    # -- query ----------------------------------------------------------------------------------

    def query(self, queries: np.ndarray, k: int, allowed: Sequence[str] | None = None) -> Answer:
        """Per query row: up to ``k`` nearest ids and their distances, nearest first.

        Checks the queries and ``k``, answers empty and long views itself (:meth:`plan_view`),
        then asks the backend (:meth:`_query`).
        """
        Q = self._check_queries(queries)
        self._check_k(k)
        view, answer = self.plan_view(Q, k, allowed, self.max_filter_ids)
        if answer is not None:
            return answer
        return self._query(Q, k, view)

    @abstractmethod
    def _query(self, Q: np.ndarray, k: int, view: list[str] | None) -> Answer:
        """The backend's own top-``k`` for checked queries, restricted to ``view`` if given."""

    def _check(self, X: np.ndarray, ids: Sequence[str] | None, what: str) -> np.ndarray:
        """Finite float32 rows of this index's dimension (errors name the id / collection)."""
        from dagster_brain.algorithms.knn import check_vectors

        X = check_vectors(X, list(ids) if ids is not None else None, what=what)
        if X.shape[1] != self.dim:
            raise ValueError(
                f"{self.name} {self.noun} {self.collection!r} holds {self.dim}-d vectors; "
                f"got {what} of dimension {X.shape[1]}"
            )
        return X

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        """Query rows as float32, checked like indexed vectors."""
        what = f"queries on {self.name} {self.noun} {self.collection!r}"
        return self._check(queries, None, what=what)

    def _check_k(self, k: int) -> None:
        """Refuse a ``k`` that is not a whole number in [1, :attr:`k_limit`]."""
        limit = self.k_limit
        if (
            isinstance(k, bool)
            or not isinstance(k, int | np.integer)
            or k < 1
            or (limit is not None and k > limit)
        ):
            bound = ">= 1" if limit is None else f"in [1, {limit}]"
            raise ValueError(
                f"{self.name} {self.noun} {self.collection!r}: k must be {bound}, got {k!r}"
            )

    def plan_view(
        self, queries: np.ndarray, k: int, allowed: Sequence[str] | None, max_filter_ids: int
    ) -> tuple[list[str] | None, Answer | None]:
        """(ids to filter by, or None for no view; an answer when no backend query is needed).

        An empty view answers with empty results; a view longer than ``max_filter_ids`` is
        answered by an exact :meth:`scan`, since a filter that long costs more than a scan.
        """
        if allowed is None:
            return None, None
        view = list(dict.fromkeys(str(s) for s in allowed))
        if not view:
            return view, ([[] for _ in queries], [np.empty(0, np.float32) for _ in queries])
        if len(view) > max_filter_ids:
            return view, self.scan(queries, k, view)
        return view, None

    def scan(self, queries: np.ndarray, k: int, allowed: Sequence[str] | None = None) -> Answer:
        """Exact top-k over the fetched vectors (big views, or ``k`` past a backend's cap)."""
        from dagster_brain.algorithms.knn import exact_knn

        ids, X = self.fetch(None if allowed is None else list(allowed))
        if not ids:
            return [[] for _ in queries], [np.empty(0, np.float32) for _ in queries]
        dist, idx = exact_knn(X, min(k, len(ids)), queries=queries, metric=self.metric)
        return [[ids[j] for j in row] for row in idx], list(dist)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 - optional hook, most adapters need nothing
        """Release clients and file locks (embedded stores lock their folder)."""

    def describe(self) -> dict[str, Any]:
        """Where the vectors live (for lineage and ``get_brain_info``); no secrets."""
        return {"backend": self.name, "collection": self.collection, "metric": self.metric}


def to_distance(metric: str, similarity: np.ndarray) -> np.ndarray:
    """Convert a backend's similarity score to the shared distance convention.

    cosine: similarity is cos -> 1 - cos; dotproduct: similarity is <q, x> -> -<q, x>.
    (Euclidean backends usually report (squared) distances directly; adapters convert.)
    """
    if metric == "cosine":
        return 1.0 - similarity
    if metric == "dotproduct":
        return -similarity
    raise ValueError(f"no similarity->distance conversion for metric {metric!r}")
