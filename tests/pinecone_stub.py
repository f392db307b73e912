"""A local stand-in for Pinecone's REST API, so the adapter's tests never touch the cloud.

Standard library (``http.server`` + ``json``) and numpy only. One server answers the control
plane (``/indexes``); every index gets its own data-plane server on another loopback port, and
its description's ``host`` is ``http://127.0.0.1:PORT``, as a real index has a host of its own.
The wire format is what the ``pinecone`` 10.x SDK sends and expects (API version ``2026-07``):

- control plane: ``POST /indexes``, ``GET /indexes``, ``GET|PATCH|DELETE /indexes/{name}``;
- data plane: ``POST /vectors/upsert``, ``POST /query``, ``GET /vectors/fetch?ids=..&ids=..``,
  ``GET /vectors/list``, ``POST /vectors/delete``, ``POST /describe_index_stats``.

Scores follow Pinecone's definitions, computed exactly (no approximate index):
``cosine`` -> cos(q, x) (higher = nearer); ``dotproduct`` -> <q, x> (higher = nearer);
``euclidean`` -> the *squared* Euclidean distance ||q - x||^2 (lower = nearer), as Pinecone's
docs state ("a similarity score equal to the squared Euclidean distance").

Limits enforced as Pinecone documents them: index names of lower-case alphanumerics and
hyphens (at most 45), vector ids of 1-512 ASCII characters, at most 1,000 vectors per upsert,
fetch or delete, 2 MB per data-plane request, ``topK`` up to 10,000, 10,000 values per
``$in``/``$nin``, 40 KB of metadata per vector, dimensions up to 20,000. Every request must carry
the stub's ``Api-Key`` (401 otherwise); the ``X-Pinecone-Api-Version`` a client sends is
echoed back. Writes are visible immediately (the cloud is only eventually consistent).

Use ``with PineconeStub() as stub: ... stub.url ...`` in tests, or run
``python tests/pinecone_stub.py --port 5080 --api-key KEY`` for a standalone server.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

API_VERSION = "2026-07"
DEFAULT_API_KEY = "pinecone-stub-key"
DEFAULT_NAMESPACE = "__default__"  # how stats name the namespace requests address by omitting it
DENSE_FIELD = "_values"  # the schema field name of a vector (dimension/metric) index
METRICS = ("cosine", "euclidean", "dotproduct")
NAME_MAX_LEN = 45
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
ID_MAX_LEN = 512
MAX_DIMENSION = 20_000
MAX_BATCH = 1_000  # vectors per upsert, ids per fetch / delete
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_TOP_K = 10_000
MAX_IN_VALUES = 10_000
MAX_METADATA_BYTES = 40 * 1024
LIST_LIMIT_MAX = 100


class PineconeApiError(Exception):
    """An error answer: HTTP status, Pinecone error code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _bad(message: str) -> PineconeApiError:
    return PineconeApiError(400, "INVALID_ARGUMENT", message)


def _not_found(message: str) -> PineconeApiError:
    return PineconeApiError(404, "NOT_FOUND", message)


# -- metadata filters ------------------------------------------------------------------------

Predicate = Callable[[dict[str, Any]], bool]
_SCALAR = (str, int, float, bool)


def _field_values(meta: dict[str, Any], key: str) -> list[Any] | None:
    """A field's values as a list (list-of-strings metadata matches element-wise)."""
    if key not in meta:
        return None
    value = meta[key]
    return list(value) if isinstance(value, list) else [value]


def _same(a: Any, b: Any) -> bool:
    # bools are not numbers in Pinecone's filters; 1 == 1.0 still holds
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _compare(op: str, limit: Any) -> Callable[[Any], bool]:
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise _bad(f"Invalid filter: {op} needs a number, got {limit!r}")
    checks = {
        "$gt": lambda v: v > limit,
        "$gte": lambda v: v >= limit,
        "$lt": lambda v: v < limit,
        "$lte": lambda v: v <= limit,
    }
    check = checks[op]
    return lambda v: not isinstance(v, bool) and isinstance(v, int | float) and check(v)


def _field_predicate(key: str, op: str, arg: Any) -> Predicate:
    if op in ("$eq", "$ne"):
        if not isinstance(arg, _SCALAR):
            raise _bad(f"Invalid filter: {op} on {key!r} needs a string, number or boolean")
        has = lambda m: any(_same(v, arg) for v in (_field_values(m, key) or []))  # noqa: E731
        return has if op == "$eq" else (lambda m: not has(m))
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not all(isinstance(v, _SCALAR) for v in arg):
            raise _bad(f"Invalid filter: {op} on {key!r} needs a list of strings or numbers")
        if len(arg) > MAX_IN_VALUES:
            raise _bad(
                f"Invalid filter: {op} on {key!r} has {len(arg)} values; "
                f"the maximum is {MAX_IN_VALUES}"
            )
        wanted = {(isinstance(v, bool), v) for v in arg}

        def has_any(m: dict[str, Any]) -> bool:
            return any((isinstance(v, bool), v) in wanted for v in (_field_values(m, key) or []))

        return has_any if op == "$in" else (lambda m: not has_any(m))
    if op in ("$gt", "$gte", "$lt", "$lte"):
        check = _compare(op, arg)
        return lambda m: any(check(v) for v in (_field_values(m, key) or []))
    if op == "$exists":
        if not isinstance(arg, bool):
            raise _bad(f"Invalid filter: $exists on {key!r} needs true or false")
        return lambda m: (key in m) == arg
    raise _bad(f"Invalid filter: unsupported operator {op!r} on {key!r}")


def compile_filter(spec: Any) -> Predicate:
    """A metadata filter (``$eq $ne $gt $gte $lt $lte $in $nin $exists $and $or``) as a test."""
    if not isinstance(spec, dict):
        raise _bad(f"Invalid filter: expected an object, got {spec!r}")
    parts: list[Predicate] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad(f"Invalid filter: {key} needs a non-empty list")
            subs = [compile_filter(s) for s in value]
            if key == "$and":
                parts.append(lambda m, subs=subs: all(s(m) for s in subs))
            else:
                parts.append(lambda m, subs=subs: any(s(m) for s in subs))
        elif key.startswith("$"):
            raise _bad(f"Invalid filter: unsupported operator {key!r}")
        elif isinstance(value, dict):
            if not value:
                raise _bad(f"Invalid filter: empty condition on {key!r}")
            parts.extend(_field_predicate(key, op, arg) for op, arg in value.items())
        else:
            parts.append(_field_predicate(key, "$eq", value))
    return lambda m: all(p(m) for p in parts)


# -- state -----------------------------------------------------------------------------------


@dataclass
class _Namespace:
    """Vectors of one namespace; the stacked matrix is rebuilt lazily after writes."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    _stacked: tuple[list[str], np.ndarray] | None = None

    def stacked(self, dim: int) -> tuple[list[str], np.ndarray]:
        if self._stacked is None:
            ids = sorted(self.vectors)
            X = np.vstack([self.vectors[i] for i in ids]) if ids else np.zeros((0, dim))
            self._stacked = (ids, X.astype(np.float64))
        return self._stacked

    def put(self, vid: str, values: np.ndarray, meta: dict[str, Any] | None) -> None:
        self.vectors[vid] = values
        if meta:
            self.metadata[vid] = meta
        else:
            self.metadata.pop(vid, None)
        self._stacked = None

    def remove(self, vid: str) -> None:
        if self.vectors.pop(vid, None) is not None:
            self.metadata.pop(vid, None)
            self._stacked = None


@dataclass
class _Index:
    name: str
    dimension: int
    metric: str
    deployment: dict[str, Any]
    deletion_protection: str = "disabled"
    tags: dict[str, str] | None = None
    namespaces: dict[str, _Namespace] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None
    deleted: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def describe(self) -> dict[str, Any]:
        """The 2026-07 index description, plus the 9.x top-level fields older clients read."""
        d = self.deployment
        if d["deployment_type"] == "managed":
            spec = {"serverless": {"cloud": d["cloud"], "region": d["region"]}}
        else:
            spec = {d["deployment_type"]: {k: v for k, v in d.items() if k != "deployment_type"}}
        return {
            "name": self.name,
            "host": self.host,
            "status": {"ready": True, "state": "Ready"},
            "schema": {
                "fields": {
                    DENSE_FIELD: {
                        "type": "dense_vector",
                        "dimension": self.dimension,
                        "metric": self.metric,
                    }
                }
            },
            "deployment": dict(d),
            "deletion_protection": self.deletion_protection,
            "tags": self.tags,
            "dimension": self.dimension,
            "metric": self.metric,
            "vector_type": "dense",
            "spec": spec,
        }

    def namespace(self, name: Any, create: bool = False) -> _Namespace | None:
        if name is None:
            name = ""
        if not isinstance(name, str):
            raise _bad(f"namespace must be a string, got {name!r}")
        key = DEFAULT_NAMESPACE if name in ("", DEFAULT_NAMESPACE) else name
        if key not in self.namespaces and create:
            self.namespaces[key] = _Namespace()
        return self.namespaces.get(key)


# -- request validation ----------------------------------------------------------------------


def _check_id(vid: Any, what: str = "Vector ID") -> str:
    if not isinstance(vid, str) or not vid:
        raise _bad(f"{what} must be a non-empty string, got {vid!r}")
    if len(vid) > ID_MAX_LEN:
        raise _bad(f"{what} must be 1-{ID_MAX_LEN} characters long, got {len(vid)}")
    if not vid.isascii() or "\x00" in vid:
        raise _bad(f"{what} must be ASCII without NUL characters, got {vid!r}")
    return vid


def _check_values(values: Any, index: _Index, what: str) -> np.ndarray:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise _bad(f"{what}: values must be a list of numbers")
    if len(values) != index.dimension:
        raise _bad(
            f"Vector dimension {len(values)} does not match the dimension of the index "
            f"{index.dimension}"
        )
    arr = np.asarray(values, dtype=np.float32)  # Pinecone stores float32
    if not np.isfinite(arr).all():
        raise _bad(f"{what}: values must be finite")
    if index.metric == "cosine" and not arr.any():
        raise _bad(f"{what}: Dense vectors must contain at least one non-zero value")
    return arr


def _check_metadata(meta: Any, vid: str) -> dict[str, Any] | None:
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise _bad(f"Metadata of vector {vid!r} must be an object")
    for key, value in meta.items():
        ok = isinstance(value, _SCALAR) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        if not ok:
            raise _bad(
                f"Metadata value of {key!r} for vector {vid!r} must be a string, number, "
                "boolean or list of strings"
            )
    size = len(json.dumps(meta).encode())
    if size > MAX_METADATA_BYTES:
        raise _bad(
            f"Metadata size is {size} bytes, which exceeds the limit of "
            f"{MAX_METADATA_BYTES} bytes per vector"
        )
    return meta


def _check_ids(ids: Any, what: str) -> list[str]:
    if not isinstance(ids, list) or not ids:
        raise _bad(f"{what}: ids must be a non-empty list")
    if len(ids) > MAX_BATCH:
        raise _bad(f"{what}: {len(ids)} ids exceed the maximum of {MAX_BATCH} per request")
    return [_check_id(i) for i in ids]


def scores(metric: str, Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pinecone's score of every row of ``X`` for the query ``Q`` (1-D), in float64."""
    q = Q.astype(np.float64)
    if metric == "dotproduct":
        return X @ q
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1) * np.linalg.norm(q)
        return (X @ q) / np.where(norms > 0, norms, 1.0)
    diff = X - q
    return np.einsum("ij,ij->i", diff, diff)  # euclidean: squared distance


# -- the stub --------------------------------------------------------------------------------


class PineconeStub:
    """A Pinecone REST stand-in on 127.0.0.1: ``with PineconeStub() as stub: stub.url``."""

    def __init__(self, port: int = 0, api_key: str = DEFAULT_API_KEY, verbose: bool = False):
        self.port = port
        self.api_key = api_key
        self.verbose = verbose
        self.indexes: dict[str, _Index] = {}
        self.calls: list[tuple[str, str, str | None]] = []  # (method, path, api version)
        self._lock = threading.RLock()
        self._control: ThreadingHTTPServer | None = None

    # lifecycle

    @property
    def url(self) -> str:
        """The control-plane URL (``host=`` of ``pinecone.Pinecone``)."""
        if self._control is None:
            raise RuntimeError("PineconeStub is not running; call start() first")
        return f"http://127.0.0.1:{self._control.server_address[1]}"

    def start(self) -> PineconeStub:
        """Listen on 127.0.0.1 (the given port, or a free one) in a background thread."""
        if self._control is None:
            self._control = self._serve(self.port, None)
        return self

    def stop(self) -> None:
        """Stop the control plane and every index's data plane; forget all indexes."""
        with self._lock:
            for index in self.indexes.values():
                self._stop_index(index)
            self.indexes.clear()
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            self._control = None

    def __enter__(self) -> PineconeStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, port: int, index: _Index | None) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        server.daemon_threads = True
        server.stub = self  # type: ignore[attr-defined]
        server.index = index  # type: ignore[attr-defined]
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"pinecone-stub-{index.name if index else 'control'}",
            daemon=True,
        )
        thread.start()
        return server

    def _stop_index(self, index: _Index) -> None:
        index.deleted = True
        if index.server is not None:
            index.server.shutdown()
            index.server.server_close()

    # control plane

    def create_index(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("Invalid request: index name is required")
        if len(name) > NAME_MAX_LEN or not NAME_RE.match(name):
            raise _bad(
                f"Invalid index name {name!r}: must consist of lower-case alphanumeric "
                f"characters or '-', start and end with an alphanumeric character, and be "
                f"at most {NAME_MAX_LEN} characters"
            )
        dimension, metric = _dense_schema(body)
        deployment = _deployment(body)
        protection = body.get("deletion_protection", "disabled")
        if protection not in ("enabled", "disabled"):
            raise _bad(f"Invalid deletion_protection {protection!r}")
        with self._lock:
            if name in self.indexes:
                raise PineconeApiError(409, "ALREADY_EXISTS", f"Resource {name} already exists")
            index = _Index(
                name=name,
                dimension=dimension,
                metric=metric,
                deployment=deployment,
                deletion_protection=protection,
                tags=body.get("tags"),
            )
            index.server = self._serve(0, index)
            self.indexes[name] = index
            return index.describe()

    def get_index(self, name: str) -> _Index:
        with self._lock:
            index = self.indexes.get(name)
        if index is None:
            raise _not_found(f"Resource {name} not found")
        return index

    def configure_index(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        index = self.get_index(name)
        if "deletion_protection" in body:
            if body["deletion_protection"] not in ("enabled", "disabled"):
                raise _bad(f"Invalid deletion_protection {body['deletion_protection']!r}")
            index.deletion_protection = body["deletion_protection"]
        if "tags" in body:
            index.tags = {**(index.tags or {}), **(body["tags"] or {})}
        return index.describe()

    def delete_index(self, name: str) -> None:
        index = self.get_index(name)
        if index.deletion_protection == "enabled":
            raise PineconeApiError(
                403,
                "FORBIDDEN",
                "Deletion protection is enabled for this index. Disable deletion protection "
                "before retrying.",
            )
        with self._lock:
            self.indexes.pop(name, None)
        self._stop_index(index)

    # data plane

    def upsert(self, index: _Index, body: dict[str, Any]) -> dict[str, Any]:
        vectors = body.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise _bad("Invalid request: vectors must be a non-empty list")
        if len(vectors) > MAX_BATCH:
            raise _bad(
                f"Invalid request: {len(vectors)} vectors exceed the maximum of "
                f"{MAX_BATCH} vectors per upsert request"
            )
        rows = []
        for v in vectors:
            if not isinstance(v, dict):
                raise _bad("Invalid request: each vector must be an object")
            if v.get("sparseValues") or v.get("sparse_values"):
                raise _bad("Sparse values are not supported by this stub")
            vid = _check_id(v.get("id"))
            values = _check_values(v.get("values"), index, vid)
            rows.append((vid, values, _check_metadata(v.get("metadata"), vid)))
        with index.lock:
            ns = index.namespace(body.get("namespace"), create=True)
            assert ns is not None
            for vid, values, meta in rows:
                ns.put(vid, values, meta)
        return {"upsertedCount": len(rows)}

    def query(self, index: _Index, body: dict[str, Any]) -> dict[str, Any]:
        top_k = body.get("topK")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise _bad(f"Invalid request: topK must be an integer from 1 to {MAX_TOP_K}")
        if (body.get("vector") is None) == (body.get("id") is None):
            raise _bad("Invalid request: exactly one of vector or id is required")
        if body.get("sparseVector") is not None:
            raise _bad("Sparse vectors are not supported by this stub")
        include_values = bool(body.get("includeValues", False))
        include_metadata = bool(body.get("includeMetadata", False))
        match = compile_filter(body["filter"]) if body.get("filter") is not None else None
        namespace = body.get("namespace", "")
        with index.lock:
            ns = index.namespace(namespace)
            if body.get("id") is not None:
                qid = _check_id(body["id"])
                if ns is None or qid not in ns.vectors:
                    raise _bad(f"Vector with id {qid!r} not found in namespace {namespace!r}")
                q = ns.vectors[qid]
            else:
                q = _check_values(body["vector"], index, "query vector")
            ids, X = ns.stacked(index.dimension) if ns is not None else ([], np.zeros((0, 1)))
            if match is not None and ids:
                keep = [i for i, vid in enumerate(ids) if match(ns.metadata.get(vid, {}))]
                ids, X = [ids[i] for i in keep], X[keep]
            s = scores(index.metric, q, X) if ids else np.zeros(0)
            # nearest first; ties by id for a stable answer
            key = s if index.metric == "euclidean" else -s
            order = np.lexsort((np.arange(len(ids)), key))[:top_k]
            matches = []
            for i in order:
                m: dict[str, Any] = {"id": ids[i], "score": float(s[i]), "values": []}
                if include_values:
                    m["values"] = [float(x) for x in ns.vectors[ids[i]]]
                if include_metadata and ids[i] in ns.metadata:
                    m["metadata"] = ns.metadata[ids[i]]
                matches.append(m)
        return {
            "results": [],
            "matches": matches,
            "namespace": namespace or "",
            "usage": {"readUnits": max(1, len(ids) // 1000)},
        }

    def fetch(self, index: _Index, query: dict[str, list[str]]) -> dict[str, Any]:
        ids = _check_ids(query.get("ids"), "fetch")
        namespace = (query.get("namespace") or [""])[0]
        out = {}
        with index.lock:
            ns = index.namespace(namespace)
            for vid in ids:
                if ns is not None and vid in ns.vectors:
                    v: dict[str, Any] = {"id": vid, "values": [float(x) for x in ns.vectors[vid]]}
                    if vid in ns.metadata:
                        v["metadata"] = ns.metadata[vid]
                    out[vid] = v
        return {"vectors": out, "namespace": namespace, "usage": {"readUnits": 1}}

    def list_ids(self, index: _Index, query: dict[str, list[str]]) -> dict[str, Any]:
        namespace = (query.get("namespace") or [""])[0]
        prefix = (query.get("prefix") or [""])[0]
        try:
            limit = int((query.get("limit") or [LIST_LIMIT_MAX])[0])
        except ValueError as err:
            raise _bad("Invalid request: limit must be an integer") from err
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise _bad(f"Invalid request: limit must be from 1 to {LIST_LIMIT_MAX}")
        token = (query.get("paginationToken") or [None])[0]
        after = ""
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except ValueError as err:
                raise _bad("Invalid pagination token") from err
        with index.lock:
            ns = index.namespace(namespace)
            ids = ns.stacked(index.dimension)[0] if ns is not None else []
        page = [i for i in ids if i.startswith(prefix) and i > after]
        out: dict[str, Any] = {
            "vectors": [{"id": i} for i in page[:limit]],
            "namespace": namespace,
            "usage": {"readUnits": 1},
        }
        if len(page) > limit:
            token = base64.urlsafe_b64encode(page[limit - 1].encode()).decode()
            out["pagination"] = {"next": token}
        return out

    def delete(self, index: _Index, body: dict[str, Any]) -> dict[str, Any]:
        chosen = [k for k in ("ids", "deleteAll", "filter") if body.get(k) not in (None, False)]
        if len(chosen) != 1:
            raise _bad("Invalid request: exactly one of ids, deleteAll or filter is required")
        with index.lock:
            ns = index.namespace(body.get("namespace"))
            if ns is None:
                return {}
            if chosen == ["ids"]:
                for vid in _check_ids(body["ids"], "delete"):
                    ns.remove(vid)
            elif chosen == ["deleteAll"]:
                for vid in list(ns.vectors):
                    ns.remove(vid)
            else:
                match = compile_filter(body["filter"])
                for vid in [v for v in ns.vectors if match(ns.metadata.get(v, {}))]:
                    ns.remove(vid)
        return {}

    def stats(self, index: _Index, body: dict[str, Any]) -> dict[str, Any]:
        match = compile_filter(body["filter"]) if body.get("filter") is not None else None
        counts = {}
        with index.lock:
            for name, ns in index.namespaces.items():
                n = (
                    len(ns.vectors)
                    if match is None
                    else sum(match(ns.metadata.get(v, {})) for v in ns.vectors)
                )
                if n:
                    counts[name] = {"vectorCount": n}
        return {
            "namespaces": counts,
            "dimension": index.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(c["vectorCount"] for c in counts.values()),
            "metric": index.metric,
            "vectorType": "dense",
        }


def _dense_schema(body: dict[str, Any]) -> tuple[int, str]:
    """(dimension, metric) from a 2026-07 ``schema`` or the 9.x top-level fields."""
    schema = body.get("schema")
    if schema is not None:
        fields = schema.get("fields") if isinstance(schema, dict) else None
        if not isinstance(fields, dict) or list(fields) != [DENSE_FIELD]:
            raise _bad(
                "This stub serves vector indexes only: schema must be "
                f'{{"fields": {{"{DENSE_FIELD}": {{"type": "dense_vector", ...}}}}}}'
            )
        spec = fields[DENSE_FIELD]
        if not isinstance(spec, dict) or spec.get("type") != "dense_vector":
            raise _bad(f"Invalid schema: field {DENSE_FIELD!r} must have type dense_vector")
        dimension, metric = spec.get("dimension"), spec.get("metric", "cosine")
    else:
        dimension, metric = body.get("dimension"), body.get("metric", "cosine")
    if isinstance(dimension, bool) or not isinstance(dimension, int):
        raise _bad("Invalid request: dimension must be an integer")
    if not 1 <= dimension <= MAX_DIMENSION:
        raise _bad(f"Invalid request: dimension must be from 1 to {MAX_DIMENSION}")
    metric = str(metric).lower()
    if metric not in METRICS:
        raise _bad(f"Invalid request: metric must be one of {', '.join(METRICS)}")
    return dimension, metric


def _deployment(body: dict[str, Any]) -> dict[str, Any]:
    """A 2026-07 ``deployment`` (default: managed on aws/us-east-1), also from a 9.x ``spec``."""
    deployment = body.get("deployment")
    spec = body.get("spec")
    if deployment is None and isinstance(spec, dict) and "serverless" in spec:
        deployment = {"deployment_type": "managed", **spec["serverless"]}
    elif deployment is None and isinstance(spec, dict) and "pod" in spec:
        deployment = {"deployment_type": "pod", **spec["pod"]}
    if deployment is None:
        deployment = {"deployment_type": "managed", "cloud": "aws", "region": "us-east-1"}
    if not isinstance(deployment, dict):
        raise _bad("Invalid request: deployment must be an object")
    kind = deployment.get("deployment_type")
    if kind == "managed":
        return {
            "deployment_type": "managed",
            "cloud": deployment.get("cloud", "aws"),
            "region": deployment.get("region", "us-east-1"),
        }
    if kind == "pod":
        return {
            "deployment_type": "pod",
            "environment": deployment.get("environment", "us-east-1-aws"),
            "pod_type": deployment.get("pod_type", "p1.x1"),
            "replicas": deployment.get("replicas", 1),
            "shards": deployment.get("shards", 1),
        }
    if kind == "byoc":
        return {"deployment_type": "byoc", "environment": deployment.get("environment", "")}
    raise _bad(f"Invalid deployment_type {kind!r}: expected managed, pod or byoc")


# -- HTTP ------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's httpx pool expects
    server_version = "pinecone-stub/1.0"
    # One buffered write per reply, Nagle off: no 40 ms delayed-ACK stall per request.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.stub.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        stub: PineconeStub = self.server.stub  # type: ignore[attr-defined]
        index: _Index | None = self.server.index  # type: ignore[attr-defined]
        version = self.headers.get("X-Pinecone-Api-Version")
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        stub.calls.append((method, path, version))
        try:
            raw = self._read_body()
            if not hmac.compare_digest(
                (self.headers.get("Api-Key") or "").encode(), stub.api_key.encode()
            ):
                missing = not self.headers.get("Api-Key")
                raise PineconeApiError(
                    401, "UNAUTHENTICATED", "API key missing" if missing else "Invalid API Key"
                )
            if index is not None and len(raw) > MAX_REQUEST_BYTES:
                raise PineconeApiError(
                    413,
                    "OUT_OF_RANGE",
                    f"Request size {len(raw)} bytes exceeds the maximum supported size of "
                    f"{MAX_REQUEST_BYTES} bytes",
                )
            body: dict[str, Any] = {}
            if raw.strip():
                try:
                    body = json.loads(raw, parse_constant=_reject_constant)
                except ValueError as err:
                    raise _bad(f"Invalid request body: {err}") from err
                if not isinstance(body, dict):
                    raise _bad("Invalid request body: expected a JSON object")
            query = parse_qs(parts.query, keep_blank_values=True)
            if index is None:
                status, result = self._control(stub, method, path, body)
            else:
                status, result = self._data(stub, index, method, path, body, query)
        except PineconeApiError as err:
            status = err.status
            if index is None:  # control plane: {"error": {...}, "status": N}
                result = {"error": {"code": err.code, "message": err.message}, "status": status}
            else:  # data plane: gRPC-gateway style
                code = _GRPC_CODES.get(err.code, 2)
                result = {"code": code, "message": err.message, "details": []}
        self._send(status, result, version)

    def _control(
        self, stub: PineconeStub, method: str, path: str, body: dict[str, Any]
    ) -> tuple[int, Any]:
        if path == "/indexes":
            if method == "GET":
                with stub._lock:
                    return 200, {"indexes": [i.describe() for i in stub.indexes.values()]}
            if method == "POST":
                return 201, stub.create_index(body)
        elif path.startswith("/indexes/") and path.count("/") == 2:
            name = unquote(path.split("/")[2])
            if method == "GET":
                return 200, stub.get_index(name).describe()
            if method == "PATCH":
                return 200, stub.configure_index(name, body)
            if method == "DELETE":
                stub.delete_index(name)
                return 202, None
        raise _not_found(f"No route for {method} {path}")

    def _data(
        self,
        stub: PineconeStub,
        index: _Index,
        method: str,
        path: str,
        body: dict[str, Any],
        query: dict[str, list[str]],
    ) -> tuple[int, Any]:
        if index.deleted:
            raise _not_found(f"Index {index.name} not found")
        routes = {
            ("POST", "/vectors/upsert"): lambda: stub.upsert(index, body),
            ("POST", "/query"): lambda: stub.query(index, body),
            ("GET", "/vectors/fetch"): lambda: stub.fetch(index, query),
            ("GET", "/vectors/list"): lambda: stub.list_ids(index, query),
            ("POST", "/vectors/delete"): lambda: stub.delete(index, body),
            ("POST", "/describe_index_stats"): lambda: stub.stats(index, body),
            ("GET", "/describe_index_stats"): lambda: stub.stats(index, {}),
        }
        route = routes.get((method, path))
        if route is None:
            raise _not_found(f"No route for {method} {path}")
        return 200, route()

    def _send(self, status: int, result: Any, version: str | None) -> None:
        payload = b"" if result is None else json.dumps(result).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-pinecone-api-version", version or API_VERSION)
        self.end_headers()
        self.wfile.write(payload)


_GRPC_CODES = {
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "FORBIDDEN": 7,
    "OUT_OF_RANGE": 11,
    "UNAUTHENTICATED": 16,
}


def main(argv: list[str] | None = None) -> None:
    """``python tests/pinecone_stub.py --port P [--api-key K]``: serve until interrupted."""
    parser = argparse.ArgumentParser(description="Local Pinecone REST stand-in (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5080, help="control-plane port (0: any)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the Api-Key to accept")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    stub = PineconeStub(port=args.port, api_key=args.api_key, verbose=args.verbose).start()
    print(f"pinecone stub listening on {stub.url}", flush=True)

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM and SIGINT both stop it cleanly, even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stub.stop()


if __name__ == "__main__":
    main()
