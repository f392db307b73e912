"""Milvus: milvus-lite (a ``.db`` folder per index) by default, or a Milvus server by ``uri``.

One collection per index: a VARCHAR primary key ``id`` holding the string id and a
FLOAT_VECTOR field ``vector``. Reads use ``consistency_level="Strong"``, or reads right after
writes can miss them.

The vector index is an exact FLAT index until the collection holds ``index_threshold`` rows
(default 100,000; or at once with ``build_index=True``); then it is replaced by an
approximate one (``index_type``, default IVF_FLAT; HNSW and IVF_SQ8 too), built once, when an
upsert or the first query of an opened collection finds the collection past the threshold,
and ``exact`` turns False. ``exact_search=True`` keeps (or puts back) FLAT. milvus-lite 3.2.2
and the Milvus 2.3.5 server both build and use HNSW and IVF indexes. Queries restricted to a
view are answered by an exact scan of the view's vectors while an approximate index is in
use (a filtered graph search can return fewer than ``k`` rows).

The threshold and the index type were measured with benchmarks/milvus_index_threshold.py
(128-d clustered vectors, 2 cores; a streamed-duplicates pass over N rows is one index build
plus N top-17 queries). FLAT vs IVF_FLAT pass: milvus-lite 21 vs 12 s at 25k rows, 103 vs
35 s at 50k, 310 vs 186 s at 100k; the server 87 vs 57 s, 352 vs 79 s, 1324 vs 154 s. Below
100,000 rows one FLAT query costs at most 3 ms (lite) / 13 ms (server), so queries stay
exact; from there FLAT's pass grows with N squared while IVF's grows with N. IVF_FLAT rather
than HNSW: as fast per query (1.2-1.8 ms at 100k, mostly client overhead) with recall@17 1.0
(HNSW 0.9999), and it builds in 1.6 s (lite) / 18 s (server) at 100k rows, HNSW in 36 / 44 s.

Distance conventions, checked on milvus-lite 3.2.2 and a Milvus 2.3.5 server with pymilvus
3.0.2: ``COSINE`` returns ``cos(q, x)`` (and stores the raw vector); ``L2`` returns the
*squared* L2 distance (we take the square root); ``IP`` returns ``<q, x>``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import Field

from dagster_brain.redact import redact, redact_text, safe_cause
from dagster_brain.similarity.backends.base import (
    Answer,
    BackendSettings,
    BackendUnavailable,
    SdkErrors,
    VectorBackend,
    index_field,
)

_METRIC_TYPES = {"cosine": "COSINE", "euclidean": "L2", "dotproduct": "IP"}
MAX_TOPK = 16384  # Milvus caps k (topk) and offset + limit of one query at this
ID_MAX_LENGTH = 512  # VARCHAR length of the id field
SERVER_SCHEMES = ("http", "https", "tcp")  # a uri with one of these names a Milvus server
IndexType = Literal["HNSW", "IVF_FLAT", "IVF_SQ8"]
INDEX_TYPES: tuple[str, ...] = ("HNSW", "IVF_FLAT", "IVF_SQ8")  # the approximate ones offered
INDEX_THRESHOLD = 100_000  # rows from which an approximate index replaces FLAT (measured above)
MIN_INDEX_ROWS = 256  # below this FLAT is as fast, and IVF training has too few rows


def _literal(value: str) -> str:
    """A Milvus string literal of ``value`` (JSON escapes: quotes, backslashes, control
    characters); ids are data, never expression code."""
    return json.dumps(value, ensure_ascii=False)


def default_nlist(rows: int) -> int:
    """IVF lists for ``rows`` vectors: about 4 * sqrt(rows), in [16, 65536]."""
    return int(min(65536, max(16, round(4 * rows**0.5))))


def _ids_in(ids: Sequence[str]) -> str:
    """The filter ``id in [...]`` over these ids, each an escaped literal. (pymilvus' own
    ``ids=`` argument pastes string ids between quotes unescaped, so it is never used.)"""
    return f"id in [{', '.join(_literal(i) for i in ids)}]"


class MilvusBackend(VectorBackend):
    """One Milvus collection of string-keyed vectors (FLAT, then HNSW or IVF when large)."""

    name = "milvus"
    sdk = "pymilvus"
    k_limit = MAX_TOPK
    unavailable = SdkErrors("pymilvus.exceptions:MilvusException")

    class Settings(BackendSettings):
        """Milvus: milvus-lite (a file per index) unless ``uri`` names a server."""

        uri: str | None = Field(None, description="a Milvus server; None: milvus-lite")
        user: str | None = None
        password: str | None = None
        token: str | None = None
        db_name: str | None = "default"
        collection_name: str | None = index_field()
        consistency_level: str | None = "Strong"

    @classmethod
    def embedded(cls, settings: Mapping[str, Any]) -> str | None:
        """milvus-lite (no server uri, or a ``.db`` path) is a file that one process locks."""
        uri = settings.get("uri")
        scheme = urlparse(str(uri)).scheme if uri else ""
        if scheme in SERVER_SCHEMES and not str(uri).endswith(".db"):
            return None
        where = redact_text(f"uri {uri!r}") if uri else "no uri"
        return f"milvus-lite ({where}): a local .db file that one process locks"

    def __init__(
        self,
        collection: str,
        dim: int,
        metric: str,
        root: Path,
        *,
        uri: str | None = None,
        user: str = "",
        password: str = "",
        token: str = "",
        db_name: str = "",
        timeout: float = 10.0,
        max_filter_ids: int = 1000,
        batch_size: int = 1000,
        exact_search: bool = False,
        index_threshold: int = INDEX_THRESHOLD,
        build_index: bool = False,
        index_type: IndexType = "IVF_FLAT",
        hnsw_m: int = 16,
        ef_construction: int = 128,
        ef: int = 128,
        nlist: int | None = None,
        nprobe: int = 32,
    ):
        """Open (creating if needed) ``collection``.

        ``uri`` (e.g. ``http://127.0.0.1:19530``) with ``user``/``password``/``token``/
        ``db_name``: a Milvus server; without ``uri``, milvus-lite in
        ``root / f"milvus_{collection}.db"`` (one process at a time, until :meth:`close`).
        ``max_filter_ids``: views up to this size become an ``id in [...]`` filter, larger
        ones an exact scan of their fetched vectors.

        ``exact_search``: always a FLAT index (an approximate one found is replaced).
        ``index_threshold``/``build_index``: when the ``index_type`` index replaces FLAT
        (never below 256 rows). Build knobs: ``hnsw_m``/``ef_construction`` (HNSW),
        ``nlist`` (IVF; default about 4 * sqrt(rows)); query knobs: ``ef`` (HNSW, raised to
        ``k`` when smaller) and ``nprobe`` (IVF).
        """
        super().__init__(
            collection,
            dim,
            metric,
            root,
            uri=uri,
            db_name=db_name,
            exact_search=exact_search,
            index_threshold=index_threshold,
            build_index=build_index,
            index_type=index_type,
        )
        if index_type not in INDEX_TYPES:
            raise ValueError(
                f"milvus collection {collection!r}: index_type must be one of "
                f"{', '.join(INDEX_TYPES)}, got {index_type!r}"
            )
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.lite_path = None if uri else self.root / f"milvus_{collection}.db"
        self.where = redact_text(uri) if uri else str(self.lite_path)  # for messages
        self.max_filter_ids = max_filter_ids
        self.batch_size = batch_size
        self.exact_search = bool(exact_search)
        self.index_threshold = int(index_threshold)
        self.build_index = bool(build_index)
        self.index_type: str = index_type
        self.build_params = {"M": int(hnsw_m), "efConstruction": int(ef_construction)}
        self.nlist = nlist
        self.ef = int(ef)
        self.nprobe = int(nprobe)
        self.current_index = "FLAT"  # the index type the collection has now
        self._index_checked = False  # whether the first query checked the index
        self._client = None
        if self.lite_path is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._client = MilvusClient(
                uri=uri or str(self.lite_path),
                user=user,
                password=password,
                token=token,
                db_name=db_name,
                timeout=timeout,
                dedicated=True,  # our own channel, closed by close()
            )
        except MilvusException as err:  # refused, timed out, or milvus-lite folder locked
            self._release_lite()
            hint = " (milvus-lite opens a .db folder in one process at a time)" if not uri else ""
            raise BackendUnavailable(
                f"similarity backend 'milvus' at {self.where}: {err.message}{hint}"
            ) from safe_cause(err)
        try:
            self._open_or_create()
        except BaseException:
            self.close()
            raise

    def _handle(self) -> Any:
        """The client (refused after close or drop)."""
        if self._client is None:
            raise self._gone()
        return self._client

    def _unavailable_reason(self, err: BaseException) -> str | None:
        """Unavailable, or failed to connect (codes 2 and 503); other Milvus errors pass."""
        from pymilvus.exceptions import MilvusUnavailableException

        if isinstance(err, MilvusUnavailableException) or getattr(err, "code", None) in (2, 503):
            return getattr(err, "message", str(err))
        return None

    def _open_or_create(self) -> None:
        from pymilvus import DataType

        with self._guard() as client:
            if client.has_collection(self.collection):
                info = client.describe_collection(self.collection)
                field = next(
                    (f for f in info["fields"] if f["type"] == DataType.FLOAT_VECTOR), None
                )
                size = int(field["params"]["dim"]) if field else None
                if field is None or field["name"] != "vector" or size != self.dim:
                    raise ValueError(
                        f"milvus collection {self.collection!r} holds {size}-d vectors, "
                        f"not {self.dim}-d"
                    )
                index = client.describe_index(self.collection, "vector") or {}
                have = index.get("metric_type")
                if have and have != _METRIC_TYPES[self.metric]:
                    raise ValueError(
                        f"milvus collection {self.collection!r} uses metric {have!r}, not "
                        f"{_METRIC_TYPES[self.metric]!r} (metric {self.metric!r})"
                    )
                self.current_index = str(index.get("index_type") or "FLAT")
                client.load_collection(self.collection)  # a restarted server starts released
                return
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            client.create_collection(
                self.collection,
                schema=schema,
                index_params=self._index_params(client, "FLAT", 0),
                consistency_level="Strong",
            )
            self.current_index = "FLAT"

    @property
    def exact(self) -> bool:  # type: ignore[override]
        """Whether queries are exact top-k (a FLAT index, or ``exact_search``)."""
        return self.exact_search or self.current_index == "FLAT"

    def _index_params(self, client: Any, kind: str, rows: int) -> Any:
        """Index parameters for an index of type ``kind`` over ``rows`` vectors."""
        if kind == "HNSW":
            params: dict[str, int] = dict(self.build_params)
        elif kind.startswith("IVF"):
            params = {"nlist": int(self.nlist or default_nlist(rows))}
        else:
            params = {}
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name="vector",
            index_name="vector",
            index_type=kind,
            metric_type=_METRIC_TYPES[self.metric],
            params=params,
        )
        return index_params

    def _wanted_index(self) -> str:
        """The index type the collection should have now (an approximate one, once built, is
        kept as rows come and go)."""
        if self.exact_search:
            return "FLAT"
        if self.current_index != "FLAT":
            return self.current_index
        rows = self.count()
        if rows >= MIN_INDEX_ROWS and (self.build_index or rows >= self.index_threshold):
            return self.index_type
        return "FLAT"

    def _maintain_index(self) -> None:
        """Replace the vector index when the collection's size (or ``exact_search``) asks."""
        self._index_checked = True
        want = self._wanted_index()
        if want != self.current_index:
            self._reindex(want)

    def _reindex(self, kind: str) -> None:
        """Drop the vector index and build a ``kind`` one over every row (FLAT again if that
        fails, so the collection stays loadable)."""
        with self._guard(f"build a {kind} index") as client:
            client.flush(self.collection)  # seal growing segments: the index covers them
            rows = self.count()
            client.release_collection(self.collection)
            for name in client.list_indexes(self.collection, field_name="vector"):
                client.drop_index(self.collection, name)
            try:
                client.create_index(self.collection, self._index_params(client, kind, rows))
            except BaseException:
                client.create_index(self.collection, self._index_params(client, "FLAT", rows))
                client.load_collection(self.collection)
                self.current_index = "FLAT"
                raise
            client.load_collection(self.collection)
        self.current_index = kind

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite vectors by id (the last of repeated ids wins)."""
        ids = [str(i) for i in ids]
        X = self._check(vectors, ids, what=f"vectors for milvus collection {self.collection!r}")
        long = next((s for s in ids if len(s.encode()) > ID_MAX_LENGTH), None)
        if long is not None:
            raise ValueError(
                f"milvus collection {self.collection!r}: id {long[:40]!r}... is longer than "
                f"{ID_MAX_LENGTH} bytes"
            )
        last = {s: row for row, s in enumerate(ids)}
        rows = list(last.values())
        with self._guard() as client:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                data = [{"id": ids[r], "vector": X[r].tolist()} for r in chunk]
                client.upsert(self.collection, data=data)
        self._maintain_index()

    def delete(self, ids: Sequence[str]) -> None:
        """Remove vectors by id (absent ids are ignored)."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        with self._guard() as client:
            for start in range(0, len(ids), self.batch_size):
                batch = ids[start : start + self.batch_size]
                client.delete(self.collection, filter=_ids_in(batch))

    def _rows(self, rows: Sequence[dict]) -> tuple[list[str], np.ndarray]:
        ids = [r["id"] for r in rows]
        X = np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(-1, self.dim)
        return ids, X

    def fetch(self, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(found ids, vectors) in the order asked (absent ids left out); ``None``: all, by id."""
        with self._guard() as client:
            if ids is None:
                # Pages by primary-key cursor, like pymilvus' query_iterator (which does not
                # escape quotes inside string ids): `iterator` makes the server return each
                # page in key order. A short page is not the end: with several segments
                # (sealed and growing) the server stops a page where one segment runs out.
                rows: list[dict] = []
                while True:
                    after = f"id > {_literal(rows[-1]['id'])}" if rows else ""
                    page = client.query(
                        self.collection,
                        filter=after,
                        limit=self.batch_size,
                        output_fields=["id", "vector"],
                        iterator="True",
                        reduce_stop_for_best="True",
                    )
                    if not page:
                        break
                    rows.extend(sorted(page, key=lambda r: r["id"]))
                got, X = self._rows(rows)
                order = sorted(range(len(got)), key=got.__getitem__)
                return [got[i] for i in order], X[order]
            ids = [str(i) for i in ids]
            unique = list(dict.fromkeys(ids))
            found: dict[str, np.ndarray] = {}
            for start in range(0, len(unique), self.batch_size):
                page = client.query(
                    self.collection,
                    filter=_ids_in(unique[start : start + self.batch_size]),
                    output_fields=["id", "vector"],
                )
                got, X = self._rows(page)
                found.update(zip(got, X, strict=True))
        keep = [s for s in ids if s in found]
        X = np.vstack([found[s] for s in keep]) if keep else np.empty((0, self.dim), np.float32)
        return keep, X

    def iter_vectors(self, batch: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored (ids, vectors), one primary-key page of up to ``batch`` rows at a time
        (in id order; ``batch`` is capped at Milvus' 16384 rows per query)."""
        limit = max(1, min(int(batch), MAX_TOPK))
        after: str | None = None
        while True:
            with self._guard() as client:
                page = client.query(
                    self.collection,
                    filter="" if after is None else f"id > {_literal(after)}",
                    limit=limit,
                    output_fields=["id", "vector"],
                    iterator="True",
                    reduce_stop_for_best="True",
                )
            if not page:
                return
            page.sort(key=lambda r: r["id"])
            ids, X = self._rows(page)
            del page
            after = ids[-1]
            yield ids, X  # a short page is not the last one (see fetch)

    def count(self) -> int:
        """Number of vectors stored."""
        with self._guard() as client:
            res = client.query(self.collection, filter="", output_fields=["count(*)"])
            return int(res[0]["count(*)"])

    def _to_distance(self, s: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return np.clip(1.0 - s, 0.0, 2.0)
        if self.metric == "euclidean":
            return np.sqrt(np.maximum(s, 0.0))  # Milvus L2 is squared
        return -s

    def _search_params(self, k: int) -> dict[str, Any]:
        """Search parameters of the current index for top-``k``."""
        params: dict[str, int] = {}
        if self.current_index == "HNSW":
            params = {"ef": max(self.ef, k)}  # Milvus wants ef >= k
        elif self.current_index.startswith("IVF"):
            params = {"nprobe": self.nprobe}
        return {"metric_type": _METRIC_TYPES[self.metric], "params": params}

    def _query(self, Q: np.ndarray, k: int, view: list[str] | None) -> Answer:
        """Batched searches; a view becomes an ``id in [...]`` filter (an exact scan of its
        vectors while an approximate index is in use)."""
        if not self._index_checked:  # a collection grown past the threshold before
            self._maintain_index()
        if view is not None and not self.exact:
            return self.scan(Q, k, view)
        expr = "" if view is None else _ids_in(view)
        out_ids: list[list[str]] = []
        out_d: list[np.ndarray] = []
        params = self._search_params(k)
        with self._guard() as client:
            for start in range(0, len(Q), 256):
                res = client.search(
                    self.collection,
                    data=Q[start : start + 256].tolist(),
                    limit=k,
                    filter=expr,
                    output_fields=["id"],
                    search_params=params,
                    anns_field="vector",
                )
                for hits in res:
                    out_ids.append([h["id"] for h in hits])
                    scores = np.asarray([h["distance"] for h in hits], dtype=np.float64)
                    out_d.append(self._to_distance(scores).astype(np.float32))
        return out_ids, out_d

    def drop(self) -> None:
        """Delete the collection (milvus-lite: and its ``.db`` folder)."""
        if self._client is not None or self.lite_path is None:
            with self._guard() as client:
                if client.has_collection(self.collection):
                    client.drop_collection(self.collection)
        if self.lite_path is not None:
            self.close()  # stop the in-process milvus-lite server, releasing its lock
            shutil.rmtree(self.lite_path, ignore_errors=True)
        self._dropped = True

    def _release_lite(self) -> None:
        """Stop the in-process milvus-lite server of this path (it holds the folder lock)."""
        if self.lite_path is not None:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(str(self.lite_path))

    def close(self) -> None:
        """Release the client (milvus-lite: its in-process server and folder lock, shared by
        every client of that ``.db`` in this process)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._release_lite()

    def describe(self) -> dict[str, Any]:
        """Where the vectors live; never credentials."""
        return redact(
            {
                **super().describe(),
                "where": self.where,
                "exact": self.exact,
                "index_type": self.current_index,
            }
        )
