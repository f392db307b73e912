"""Qdrant: embedded local mode (a folder per index) by default, or a Qdrant server by ``url``.

Qdrant point ids must be unsigned ints or UUIDs, so each string id maps to a uuid5 and the
original id is kept in the payload (``id``, keyword-indexed on servers for filters).

Distance conventions, checked on qdrant-client 1.20 local mode: ``Cosine`` scores are
``cos(q, x)`` and the stored vectors are unit-normalised on upsert (so the norm is kept in
the payload to give back the original vector; local mode hands back the raw vector after a
reopen, so fetch normalises before restoring the norm); ``Euclid`` scores are the L2 distance (not
squared); ``Dot`` scores are ``<q, x>``. Local mode is a brute-force numpy scan (exact); a
server searches its HNSW graph (approximate) unless ``exact_search=True``.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from dagster_brain.algorithms.knn import normalize_rows
from dagster_brain.redact import redact, redact_text, safe_cause
from dagster_brain.similarity.backends.base import (
    Answer,
    BackendSettings,
    BackendUnavailable,
    SdkErrors,
    VectorBackend,
    index_field,
)

ID_KEY = "id"  # payload key holding the original string id
NORM_KEY = "norm"  # cosine collections: payload key holding the original vector norm
_NAMESPACE = uuid.UUID("9b1d7c3e-4f0a-5d2b-8e6f-1a2b3c4d5e6f")  # fixed: ids map the same forever
_DISTANCES = {"cosine": "Cosine", "euclidean": "Euclid", "dotproduct": "Dot"}


def point_id(sample_id: str) -> str:
    """The deterministic UUID (uuid5) that stands for a string id in Qdrant."""
    return str(uuid.uuid5(_NAMESPACE, sample_id))


class QdrantBackend(VectorBackend):
    """One Qdrant collection of string-keyed vectors."""

    name = "qdrant"
    sdk = "qdrant-client"
    unavailable = SdkErrors(
        "qdrant_client.http.exceptions:ResponseHandlingException", ConnectionError
    )

    class Settings(BackendSettings):
        """Qdrant: local mode (a folder per index) unless ``url`` names a server."""

        url: str | None = Field(None, description="a Qdrant server; None: local mode")
        api_key: str | None = None
        path: str | None = None
        collection_name: str | None = index_field()

    @classmethod
    def embedded(cls, settings: Mapping[str, Any]) -> str | None:
        """Local mode (no ``url``) is a folder that one process locks."""
        if settings.get("url"):
            return None
        return "Qdrant local mode (no url): a folder under the data dir that one process locks"

    def __init__(
        self,
        collection: str,
        dim: int,
        metric: str,
        root: Path,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: int = 10,
        exact_search: bool = False,
        max_filter_ids: int = 1000,
        batch_size: int = 512,
    ):
        """Open (creating if needed) ``collection``.

        ``url``/``api_key``: a Qdrant server; without ``url``, local mode in
        ``root / f"qdrant_{collection}"`` (locked to one process until :meth:`close`).
        ``exact_search``: servers scan exactly instead of searching HNSW.
        ``max_filter_ids``: views up to this size use a payload filter, larger ones an exact
        scan of their fetched vectors.
        """
        super().__init__(
            collection, dim, metric, root, url=url, timeout=timeout, exact_search=exact_search
        )
        from qdrant_client import QdrantClient

        self.url = url
        self.path = None if url else self.root / f"qdrant_{collection}"
        self.where = redact_text(url) if url else str(self.path)  # for messages: no credentials
        self.exact = url is None or exact_search
        self.exact_search = exact_search
        self.max_filter_ids = max_filter_ids
        self.batch_size = batch_size
        self._client = None
        try:
            if url:
                self._client = QdrantClient(
                    url=url, api_key=api_key, timeout=timeout, check_compatibility=False
                )
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._client = QdrantClient(path=str(self.path))
        except RuntimeError as err:  # local mode: "already accessed by another instance"
            raise BackendUnavailable(
                f"similarity backend 'qdrant' at {self.where}: {err} "
                "(local mode locks its folder to one process: close the other one first)"
            ) from safe_cause(err)
        try:
            self._open_or_create()
        except BaseException:
            self._client.close()
            raise

    def _handle(self) -> Any:
        """The client (refused after close or drop)."""
        if self._client is None:
            raise self._gone()
        return self._client

    def _open_or_create(self) -> None:
        from qdrant_client import models

        with self._guard() as client:
            if client.collection_exists(self.collection):
                params = client.get_collection(self.collection).config.params.vectors
                if not isinstance(params, models.VectorParams):
                    raise ValueError(
                        f"qdrant collection {self.collection!r} uses named vectors; "
                        "expected one unnamed vector per point"
                    )
                if params.size != self.dim:
                    raise ValueError(
                        f"qdrant collection {self.collection!r} holds {params.size}-d vectors, "
                        f"not {self.dim}-d"
                    )
                if params.distance.value != _DISTANCES[self.metric]:
                    raise ValueError(
                        f"qdrant collection {self.collection!r} uses distance "
                        f"{params.distance.value!r}, not {_DISTANCES[self.metric]!r} "
                        f"(metric {self.metric!r})"
                    )
                return
            client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(
                    size=self.dim, distance=models.Distance(_DISTANCES[self.metric])
                ),
            )
            if self.url:  # local mode has no payload indexes (it scans)
                client.create_payload_index(
                    self.collection, ID_KEY, field_schema=models.PayloadSchemaType.KEYWORD
                )

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite vectors by id (the last of repeated ids wins)."""
        from qdrant_client import models

        ids = [str(i) for i in ids]
        X = self._check(vectors, ids, what=f"vectors for qdrant collection {self.collection!r}")
        last = {s: row for row, s in enumerate(ids)}
        rows = list(last.values())
        norms = np.linalg.norm(X, axis=1).astype(float)
        with self._guard() as client:
            for start in range(0, len(rows), self.batch_size):
                points = []
                for row in rows[start : start + self.batch_size]:
                    payload: dict[str, Any] = {ID_KEY: ids[row]}
                    if self.metric == "cosine":
                        payload[NORM_KEY] = norms[row]
                    points.append(
                        models.PointStruct(
                            id=point_id(ids[row]), vector=X[row].tolist(), payload=payload
                        )
                    )
                client.upsert(self.collection, points=points, wait=True)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove vectors by id (absent ids are ignored)."""
        from qdrant_client import models

        pids = [point_id(str(i)) for i in ids]
        with self._guard() as client:
            for start in range(0, len(pids), self.batch_size):
                selector = models.PointIdsList(points=pids[start : start + self.batch_size])
                client.delete(self.collection, points_selector=selector, wait=True)

    def _vectors(self, records: Sequence[Any]) -> tuple[list[str], np.ndarray]:
        """(ids, original vectors) of retrieved records (cosine: norm restored)."""
        ids = [r.payload[ID_KEY] for r in records]
        X = np.asarray([r.vector for r in records], dtype=np.float32).reshape(-1, self.dim)
        if self.metric == "cosine" and len(records):
            # Qdrant stores cosine vectors unit-normalised (local mode: only until the folder
            # is reopened, then it gives back the raw ones): normalise, then restore the norm.
            norms = np.asarray([r.payload.get(NORM_KEY, 1.0) for r in records], np.float32)
            X = normalize_rows(X) * norms[:, None]
        return ids, X

    def fetch(self, ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(found ids, vectors) in the order asked (absent ids left out); ``None``: all, by id."""
        with self._guard() as client:
            if ids is None:
                records, offset = [], None
                while True:
                    page, offset = client.scroll(
                        self.collection,
                        limit=self.batch_size,
                        offset=offset,
                        with_payload=True,
                        with_vectors=True,
                    )
                    records.extend(page)
                    if offset is None:
                        break
                got, X = self._vectors(records)
                order = sorted(range(len(got)), key=got.__getitem__)
                return [got[i] for i in order], X[order]
            ids = [str(i) for i in ids]
            found: dict[str, np.ndarray] = {}
            unique = list(dict.fromkeys(ids))
            for start in range(0, len(unique), self.batch_size):
                chunk = [point_id(s) for s in unique[start : start + self.batch_size]]
                records = client.retrieve(
                    self.collection, chunk, with_payload=True, with_vectors=True
                )
                got, X = self._vectors(records)
                found.update(zip(got, X, strict=True))
        keep = [s for s in ids if s in found]
        X = np.vstack([found[s] for s in keep]) if keep else np.empty((0, self.dim), np.float32)
        return keep, X

    def count(self) -> int:
        """Number of vectors stored."""
        with self._guard() as client:
            return client.count(self.collection, exact=True).count

    def _to_distance(self, scores: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return np.clip(1.0 - scores, 0.0, 2.0)
        if self.metric == "dotproduct":
            return -scores
        return scores  # Euclid scores are already L2 distances

    def _query(self, Q: np.ndarray, k: int, view: list[str] | None) -> Answer:
        """Batched point queries; a view becomes a payload filter on the original ids."""
        from qdrant_client import models

        query_filter = None
        if view is not None:
            query_filter = models.Filter(
                must=[models.FieldCondition(key=ID_KEY, match=models.MatchAny(any=view))]
            )
        params = models.SearchParams(exact=True) if self.exact_search else None
        out_ids: list[list[str]] = []
        out_d: list[np.ndarray] = []
        with self._guard() as client:
            for start in range(0, len(Q), 64):
                requests = [
                    models.QueryRequest(
                        query=q.tolist(),
                        limit=k,
                        filter=query_filter,
                        params=params,
                        with_payload=[ID_KEY],
                    )
                    for q in Q[start : start + 64]
                ]
                for res in client.query_batch_points(self.collection, requests=requests):
                    out_ids.append([p.payload[ID_KEY] for p in res.points])
                    scores = np.asarray([p.score for p in res.points], dtype=np.float64)
                    out_d.append(self._to_distance(scores).astype(np.float32))
        return out_ids, out_d

    def drop(self) -> None:
        """Delete the collection (local mode: and its folder)."""
        if self._client is not None or self.path is None:
            with self._guard() as client:
                if client.collection_exists(self.collection):
                    client.delete_collection(self.collection)
        if self.path is not None:
            self.close()  # release the folder lock before removing the folder
            shutil.rmtree(self.path, ignore_errors=True)
        self._dropped = True

    def close(self) -> None:
        """Release the client (local mode: the folder lock)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def describe(self) -> dict[str, Any]:
        """Where the vectors live; never the API key."""
        return redact({**super().describe(), "where": self.where, "exact": self.exact})
