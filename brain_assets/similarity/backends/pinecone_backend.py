"""Pinecone adapter: one serverless vector index (or a namespace of one) per collection.

Spoken to through the ``pinecone`` 10.x SDK's REST client: the control plane creates,
describes and deletes the index; a data-plane client on the index's own host upserts,
fetches, counts and queries. Pinecone keys vectors by strings (1-512 ASCII characters), so a
sample or label id is the vector id as it is, and is also stored as metadata (``brain_id``)
so that views become a ``$in`` filter.

Scores are converted to the shared distance convention: cosine similarity ``c`` -> ``1 - c``;
dot product ``p`` -> ``-p``; euclidean scores are *squared* distances -> ``sqrt``.
The cloud index is approximate and only eventually consistent (a write may take a moment
to show in ``count`` and ``query``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, unquote

import numpy as np
from pydantic import Field

from dagster_brain.algorithms.knn import check_vectors
from dagster_brain.redact import redact, redact_text, safe_cause
from dagster_brain.similarity.backends.base import (
    METRICS,
    Answer,
    BackendSettings,
    BackendUnavailable,
    SdkErrors,
    VectorBackend,
    index_field,
    to_distance,
)

DEFAULT_CONTROL_HOST = "https://api.pinecone.io"  # the SDK's default, for messages
DENSE_FIELD = "_values"  # schema field of a vector (dimension/metric) index
ID_KEY = "brain_id"  # metadata copy of the id, for view filters
NAME_MAX_LEN = 45
_NAME_OK = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
ID_MAX_LEN = 512
MAX_K = 10_000  # Pinecone's topK cap; larger k is answered by an exact scan
UPSERT_MAX_VECTORS = 100
REQUEST_MAX_BYTES = 2_000_000  # Pinecone refuses requests over 2 MB
FETCH_MAX_IDS = 100
FETCH_MAX_URL_CHARS = 4_000  # ids travel in the query string
DELETE_MAX_IDS = 1_000
FILTER_BATCH = 1_000  # ids per $in filter
FILTER_MAX_IDS = 10_000  # bigger views: exact scan over the fetched view vectors
WORKERS = 8  # requests in flight at once (queries, upsert and fetch batches)
_T = TypeVar("_T")


# Pinecone ids are ASCII: any other id travels percent-encoded behind this prefix, and an id
# that happens to start with it is encoded too, so the mapping is one-to-one both ways.
WIRE_PREFIX = "~u:"


def to_wire(vid: str) -> str:
    """The Pinecone id of a sample/label id (ASCII ids without the prefix or NUL unchanged)."""
    if vid.isascii() and "\x00" not in vid and not vid.startswith(WIRE_PREFIX):
        return vid
    return WIRE_PREFIX + quote(vid, safe="")


def from_wire(wid: str) -> str:
    """The id a Pinecone id stands for (inverse of :func:`to_wire`)."""
    return unquote(wid[len(WIRE_PREFIX) :]) if wid.startswith(WIRE_PREFIX) else wid


def index_name_for(collection: str) -> str:
    """Pinecone's index-name rules: lower-case alphanumerics and hyphens, at most 45 chars.

    Names that had to be shortened get a hash of the full collection name, so two long
    collection names that share a prefix still get different indexes.
    """
    name = re.sub(r"[^a-z0-9]+", "-", collection.lower()).strip("-")
    if name and len(name) <= NAME_MAX_LEN:
        return name
    digest = hashlib.sha1(collection.encode()).hexdigest()[:8]
    head = name[: NAME_MAX_LEN - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}" if head else f"brain-{digest}"


def _batches(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parallel(fn: Callable[[Any], _T], items: list[Any]) -> list[_T]:
    """``fn`` over ``items`` with a few requests in flight (the SDK client is thread-safe)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        return list(pool.map(fn, items))


class PineconeBackend(VectorBackend):
    """Vectors in a Pinecone serverless index (created on first use, deleted by ``drop``)."""

    name: ClassVar[str] = "pinecone"
    metrics: ClassVar[tuple[str, ...]] = METRICS
    sdk: ClassVar[str] = "pinecone"
    exact: ClassVar[bool] = False  # approximate in the cloud
    noun: ClassVar[str] = "index"
    max_k: ClassVar[int] = MAX_K
    unavailable = SdkErrors(
        "pinecone.errors.exceptions:PineconeConnectionError",
        "pinecone.errors.exceptions:PineconeTimeoutError",
        "pinecone.errors.exceptions:ServiceError",
        "pinecone.errors.exceptions:UnauthorizedError",
    )

    class Settings(BackendSettings):
        """Pinecone: the cloud service (or any host speaking its REST protocol)."""

        api_key: str | None = None
        host: str | None = Field(None, description="control plane; None: Pinecone's cloud")
        index_name: str | None = index_field()
        namespace: str | None = None
        cloud: str | None = "aws"
        region: str | None = "us-east-1"

    def __init__(
        self,
        collection: str,
        dim: int,
        metric: str,
        root: Any,
        *,
        api_key: str | None = None,
        host: str | None = None,
        index_name: str | None = None,
        namespace: str = "",
        cloud: str = "aws",
        region: str = "us-east-1",
        timeout: float = 10.0,
        ready_timeout: int = 300,
    ):
        """Open (creating if needed) the index; ``host`` is the control plane.

        ``api_key`` falls back to ``PINECONE_API_KEY``; ``host`` to
        ``PINECONE_CONTROLLER_HOST`` and then Pinecone's cloud. ``timeout`` bounds each HTTP
        attempt, ``ready_timeout`` the wait for a new index to become ready.
        """
        super().__init__(
            collection,
            dim,
            metric,
            root,
            host=host,
            index_name=index_name,
            namespace=namespace,
            cloud=cloud,
            region=region,
        )
        if index_name is not None and (
            len(index_name) > NAME_MAX_LEN or not _NAME_OK.match(index_name)
        ):
            raise ValueError(
                f"similarity backend 'pinecone': invalid index_name {index_name!r}: use "
                f"lower-case letters, digits and hyphens (at most {NAME_MAX_LEN}, no leading "
                "or trailing hyphen)"
            )
        self.index_name = index_name or index_name_for(collection)
        self.namespace = namespace or ""
        self.cloud, self.region = cloud, region
        self._ready_timeout = ready_timeout
        self._index: Any = None
        self._data_host = ""

        from pinecone import Pinecone, RetryConfig

        self.control_host = host or os.environ.get("PINECONE_CONTROLLER_HOST") or ""
        self.control_host = self.control_host or DEFAULT_CONTROL_HOST
        try:
            self._pc = Pinecone(
                api_key=api_key,
                host=self.control_host,
                timeout=timeout,
                source_tag="dagster_brain",
                # fail fast on an unreachable host: one retry, short backoff
                retry_config=RetryConfig(max_retries=1, backoff_factor=0.2, max_wait=1.0),
            )
        except ValueError as err:  # no key, or one that cannot be an HTTP header
            raise ValueError(f"similarity backend 'pinecone': {err}") from None
        try:
            self._open()
        except BaseException:
            self.close()  # no half-open connection pools
            raise

    # -- errors -------------------------------------------------------------------------------

    @property
    def where(self) -> str:  # type: ignore[override]
        """The index's own host once known, else the control plane (credentials masked)."""
        return redact_text(self._data_host or self.control_host)

    def _unavailable_reason(self, err: BaseException) -> str | None:
        from pinecone.errors.exceptions import UnauthorizedError

        if isinstance(err, UnauthorizedError):
            return (
                f"the API key was rejected ({err.status_code}: {err.message}); "
                "check api_key / PINECONE_API_KEY"
            )
        return str(err)

    @contextmanager
    def _errors(self, what: str, where: str | None = None) -> Iterator[None]:
        """The shared guard (unreachable, bad key); other API errors name the index."""
        from pinecone.errors.exceptions import ApiError

        with self._guard(what, where):
            try:
                yield
            except ApiError as err:
                if isinstance(err, self.unavailable):
                    raise
                raise RuntimeError(
                    redact_text(
                        f"similarity backend 'pinecone' at {where or self.where}: cannot {what} "
                        f"(index {self.index_name!r}): {err}"
                    )
                ) from safe_cause(err)

    # -- opening ------------------------------------------------------------------------------

    def _open(self) -> None:
        from pinecone.errors.exceptions import ConflictError, NotFoundError

        with self._errors(f"open index {self.index_name!r}", self.control_host):
            try:
                desc = self._pc.indexes.describe(self.index_name)
            except NotFoundError:
                desc = None
            if desc is None:
                try:
                    desc = self._pc.indexes.create(
                        name=self.index_name,
                        schema={
                            "fields": {
                                DENSE_FIELD: {
                                    "type": "dense_vector",
                                    "dimension": self.dim,
                                    "metric": self.metric,
                                }
                            }
                        },
                        deployment={
                            "deployment_type": "managed",
                            "cloud": self.cloud,
                            "region": self.region,
                        },
                        timeout=self._ready_timeout,
                    )
                except ConflictError:  # created meanwhile by another process
                    desc = self._pc.indexes.describe(self.index_name)
            desc = self._wait_ready(desc)
        self._check_shape(desc)
        self._data_host = desc.host
        self._index = self._pc.index(host=desc.host)

    def _wait_ready(self, desc: Any) -> Any:
        deadline = time.monotonic() + self._ready_timeout
        while not (desc.status.ready and desc.host):
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"similarity backend 'pinecone' at {self.control_host}: index "
                    f"{self.index_name!r} not ready after {self._ready_timeout}s "
                    f"(state {desc.status.state})"
                )
            time.sleep(2.0)
            desc = self._pc.indexes.describe(self.index_name)
        return desc

    def _check_shape(self, desc: Any) -> None:
        from pinecone.models.indexes.schema import DenseVectorField

        dense = [f for f in desc.schema.fields.values() if isinstance(f, DenseVectorField)]
        if len(dense) != 1:
            raise ValueError(
                f"similarity backend 'pinecone': index {self.index_name!r} is not a single "
                "dense-vector index; pass another index_name"
            )
        dim, metric = dense[0].dimension, str(dense[0].metric).lower()
        if dim != self.dim or metric != self.metric:
            raise ValueError(
                f"similarity backend 'pinecone': index {self.index_name!r} exists with "
                f"dimension {dim} and metric {metric!r}, but this collection needs "
                f"dimension {self.dim} and metric {self.metric!r}; pass another index_name"
            )

    # -- writing ------------------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[str]) -> list[str]:
        """The wire ids of ``ids``; an id whose wire form is empty or too long is refused."""
        wire = []
        for vid in (str(i) for i in ids):
            wid = to_wire(vid)
            if not vid or len(wid) > ID_MAX_LEN:
                shown = vid if len(vid) <= 80 else f"{vid[:40]}...{vid[-20:]}"
                raise ValueError(
                    f"similarity backend 'pinecone': id {shown!r} ({len(vid)} characters, "
                    f"{len(wid)} as a Pinecone id) cannot be a Pinecone vector id: ids must be "
                    f"1-{ID_MAX_LEN} ASCII characters (other characters count as their "
                    "percent-encoding)"
                )
            wire.append(wid)
        return wire

    @staticmethod
    def _wire_ids(ids: Sequence[str]) -> list[str]:
        """Wire ids of ids to look up or remove (ones Pinecone cannot hold are left out)."""
        wire = (to_wire(v) for v in (str(i) for i in ids) if v)
        return [w for w in wire if len(w) <= ID_MAX_LEN]

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite, in requests of at most 100 vectors and ~2 MB."""
        ids = self._check_ids(ids)
        X = check_vectors(vectors, ids, what=f"pinecone index {self.index_name!r}")
        if X.shape[1] != self.dim:
            raise ValueError(
                f"pinecone index {self.index_name!r}: vectors have dimension {X.shape[1]}, "
                f"the index has {self.dim}"
            )
        if self.metric == "cosine":
            zero = np.flatnonzero(~X.any(axis=1))
            if zero.size:  # Pinecone refuses all-zero vectors in a cosine index
                first = from_wire(ids[zero[0]])
                raise ValueError(
                    f"pinecone index {self.index_name!r}: all-zero vector for {first!r} "
                    "has no cosine direction"
                )
        # the last vector of a repeated id wins, as if sent one after the other
        last = {vid: i for i, vid in enumerate(ids)}
        if len(last) < len(ids):
            keep = sorted(last.values())
            ids, X = [ids[i] for i in keep], X[keep]
        # ~24 bytes per float in JSON, plus the id twice (vector id + metadata)
        per_vector = 24 * self.dim + 2 * max(map(len, ids), default=0) + 64
        size = max(1, min(UPSERT_MAX_VECTORS, REQUEST_MAX_BYTES // per_vector))

        def send(start: int) -> None:
            batch = [
                {"id": vid, "values": row.tolist(), "metadata": {ID_KEY: vid}}
                for vid, row in zip(ids[start : start + size], X[start : start + size], strict=True)
            ]
            with self._errors(f"upsert into index {self.index_name!r}"):
                self._index.upsert(vectors=batch, namespace=self.namespace)

        _parallel(send, list(range(0, len(ids), size)))

    def delete(self, ids: Sequence[str]) -> None:
        """Remove by id (absent ids are ignored by Pinecone)."""
        ids = self._wire_ids(ids)
        for batch in _batches(ids, DELETE_MAX_IDS):
            with self._errors(f"delete from index {self.index_name!r}"):
                self._index.delete(ids=list(batch), namespace=self.namespace)

    # -- reading ------------------------------------------------------------------------------

    def _fetch_batches(self, ids: Sequence[str]) -> Iterator[list[str]]:
        """Groups of ids small enough for one GET (count and URL length)."""
        batch: list[str] = []
        chars = 0
        for vid in ids:
            cost = len(quote(vid, safe="")) + 5  # "&ids=" + the encoded id
            if batch and (len(batch) >= FETCH_MAX_IDS or chars + cost > FETCH_MAX_URL_CHARS):
                yield batch
                batch, chars = [], 0
            batch.append(vid)
            chars += cost
        if batch:
            yield batch

    def _fetch_map(self, ids: Sequence[str]) -> dict[str, list[float]]:
        def get(batch: list[str]) -> dict[str, list[float]]:
            with self._errors(f"fetch from index {self.index_name!r}"):
                res = self._index.fetch(ids=batch, namespace=self.namespace)
            return {from_wire(wid): vec.values for wid, vec in res.vectors.items()}

        found: dict[str, list[float]] = {}
        for part in _parallel(get, list(self._fetch_batches(self._wire_ids(ids)))):
            found.update(part)
        return found

    def _all_ids(self) -> list[str]:
        ids: list[str] = []
        with self._errors(f"list ids of index {self.index_name!r}"):
            for page in self._index.list(namespace=self.namespace, limit=100):
                ids.extend(from_wire(item.id) for item in page.vectors if item.id)
        return sorted(set(ids))

    def fetch(self, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Vectors for ``ids`` in order (absent ones left out); ``None``: all, in id order."""
        if ids is None:
            wanted = self._all_ids()
        else:
            wanted = [vid for vid in (str(i) for i in ids) if vid]
        found = self._fetch_map(list(dict.fromkeys(wanted)))
        got = [vid for vid in wanted if vid in found]
        X = np.asarray([found[v] for v in got], dtype=np.float32).reshape(len(got), self.dim)
        return got, X

    def count(self) -> int:
        """Vectors in this collection's namespace (``describe_index_stats``)."""
        with self._errors(f"count vectors of index {self.index_name!r}"):
            stats = self._index.describe_index_stats()
        names = [self.namespace] if self.namespace else ["", "__default__"]
        return sum(stats.namespaces[n].vector_count for n in names if n in stats.namespaces)

    def _distances(self, scores: np.ndarray) -> np.ndarray:
        if self.metric == "euclidean":  # Pinecone scores squared distances
            return np.sqrt(np.maximum(scores, 0.0))
        return to_distance(self.metric, scores)

    def _query_one(
        self, q: np.ndarray, k: int, flt: dict[str, Any] | None
    ) -> tuple[list[str], np.ndarray]:
        with self._errors(f"query index {self.index_name!r}"):
            res = self._index.query(
                vector=q.tolist(),
                top_k=k,
                namespace=self.namespace,
                filter=flt,
                include_values=False,
                include_metadata=False,
            )
        ids = [from_wire(m.id) for m in res.matches]
        return ids, self._distances(np.asarray([m.score for m in res.matches], dtype=np.float64))

    def _query_filtered(
        self, q: np.ndarray, k: int, allowed: list[str]
    ) -> tuple[list[str], np.ndarray]:
        ids: list[str] = []
        dists: list[np.ndarray] = []
        for batch in _batches(allowed, FILTER_BATCH):
            flt = {ID_KEY: {"$in": self._wire_ids(batch)}}
            got, d = self._query_one(q, min(k, len(batch)), flt)
            ids.extend(got)
            dists.append(d)
        D = np.concatenate(dists) if dists else np.zeros(0)
        order = np.argsort(D, kind="stable")[:k]
        return [ids[i] for i in order], D[order]

    @property
    def max_filter_ids(self) -> int:  # type: ignore[override]
        """Views longer than this are answered by an exact scan of their vectors."""
        return FILTER_MAX_IDS

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        Q = check_vectors(queries, what=f"pinecone index {self.index_name!r} queries")
        if Q.shape[1] != self.dim:
            raise ValueError(
                f"pinecone index {self.index_name!r}: queries have dimension {Q.shape[1]}, "
                f"the index has {self.dim}"
            )
        return Q

    def plan_view(
        self, queries: np.ndarray, k: int, allowed: Sequence[str] | None, max_filter_ids: int
    ) -> tuple[list[str] | None, Answer | None]:
        """Ids Pinecone cannot hold are left out of views; ``k`` over its cap is a scan."""
        if allowed is not None:
            allowed = [v for v in map(str, allowed) if v and len(to_wire(v)) <= ID_MAX_LEN]
        view, answer = super().plan_view(queries, k, allowed, max_filter_ids)
        if answer is None and k > MAX_K:
            answer = self.scan(queries, k, view)
        return view, answer

    def _query(self, Q: np.ndarray, k: int, view: list[str] | None) -> Answer:
        """One request per query row (a few in parallel); views become ``$in`` filters."""
        if self.metric == "cosine":
            zero = np.flatnonzero(~Q.any(axis=1))
            if zero.size:
                raise ValueError(
                    f"pinecone index {self.index_name!r}: query row {zero[0]} is all zeros "
                    "(no cosine direction)"
                )

        def one(q: np.ndarray) -> tuple[list[str], np.ndarray]:
            return self._query_one(q, k, None) if view is None else self._query_filtered(q, k, view)

        results = _parallel(one, list(Q))
        return [r[0] for r in results], [r[1] for r in results]

    # -- lifecycle ----------------------------------------------------------------------------

    def drop(self) -> None:
        """Delete the index and wait until it is gone (with a namespace: only its vectors,
        and the index too once no other namespace holds any)."""
        from pinecone.errors.exceptions import NotFoundError

        if self.namespace:
            with self._errors(f"empty namespace {self.namespace!r}"):
                try:
                    self._index.delete(delete_all=True, namespace=self.namespace)
                except NotFoundError:
                    pass
                stats = self._index.describe_index_stats()
            others = {n: s.vector_count for n, s in stats.namespaces.items() if n != self.namespace}
            if any(others.values()):
                return
        with self._errors(f"delete index {self.index_name!r}", self.control_host):
            try:
                self._pc.indexes.delete(self.index_name, timeout=self._ready_timeout)
            except NotFoundError:
                pass

    def close(self) -> None:
        """Close the HTTP connection pools."""
        for client in (self._index, getattr(self, "_pc", None)):
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing is best effort
                    pass
        self._index = None

    def describe(self) -> dict[str, Any]:
        """Where the vectors live; never the API key."""
        return redact(
            {
                **super().describe(),
                "index_name": self.index_name,
                "namespace": self.namespace,
                "host": self.control_host,
                "index_host": self._data_host,
                "cloud": self.cloud,
                "region": self.region,
            }
        )
