"""Content hashes: a dataset's data version and an embeddings key's order-free row digest."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

# In SQL, byte for byte what hash_strings gives on "<sample_id>:<content_hash>" in id order.
# Parameters: the empty hash (for a dataset without samples), then the dataset. The optional
# join restricts the samples to a registered ``want(sample_id)`` table.
_DATA_VERSION_SQL = (
    "SELECT coalesce(left(sha256(string_agg(s.sample_id || ':' || "
    "coalesce(s.content_hash, 'None') || chr(0), '' ORDER BY s.sample_id)), 16), "
    "?) FROM samples s "
)
DATA_VERSION_SQL = _DATA_VERSION_SQL + "WHERE s.dataset = ?"
DATA_VERSION_OF_WANTED_SQL = (
    _DATA_VERSION_SQL + "JOIN want w ON w.sample_id = s.sample_id WHERE s.dataset = ?"
)


def hash_strings(values: Sequence[str]) -> str:
    """A short stable content hash of a sequence of strings."""
    h = hashlib.sha256()
    for v in values:
        h.update(str(v).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def rows_digest(ids: Sequence[str], vectors: np.ndarray) -> int:
    """Order-free digest of (id, vector) rows: the sum of 64-bit row hashes, modulo 2**64.

    Adding or removing rows changes it by their own hashes only, so an embeddings key's data
    version can be kept current without reading the vectors it keeps.
    """
    return int(row_hashes(ids, vectors).sum(dtype=np.uint64)) if len(ids) else 0


HASH_ROWS = 16_384  # rows hashed at a time


def row_hashes(ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each (id, vector) row (uint64): tells a changed vector from a kept
    one. Vectorised: the id's hash plus a keyed sum over the vector's bytes, then mixed."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(ids)
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} vectors for {n} ids")
    id_hash = pd.util.hash_array(np.asarray([str(i) for i in ids], dtype=object))
    flat = vectors.reshape(n, -1)
    width = (flat.shape[1] + 1) // 2
    keys = np.random.default_rng(0x5EED).integers(1, 1 << 63, size=width, dtype=np.uint64)
    keys |= np.uint64(1)
    sums = np.empty(n, np.uint64)
    for start in range(0, n, HASH_ROWS):  # rows in blocks: memory of one block, not all
        words = flat[start : start + HASH_ROWS]
        if words.shape[1] % 2:
            pad = np.zeros((len(words), 1), np.float32)
            words = np.concatenate([words, pad], axis=1)
        words = np.ascontiguousarray(words).view(np.uint64)
        with np.errstate(over="ignore"):
            sums[start : start + len(words)] = (words * keys).sum(axis=1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = sums + id_hash * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(29)
    return h


def embeddings_version(count: int, digest: int) -> str:
    """An embeddings key's data version from its row count and :func:`rows_digest`."""
    return f"{count}-{digest:016x}"


def parse_embeddings_version(version: str | None) -> tuple[int, int] | None:
    """(count, digest) of an :func:`embeddings_version`; ``None`` for a version written
    before row digests (it is recomputed from the vectors)."""
    try:
        count, digest = str(version).split("-")
        return int(count), int(digest, 16)
    except ValueError:
        return None


def shifted_version(
    version: str | None,
    count: int,
    removed: tuple[Sequence[str], np.ndarray],
    added: tuple[Sequence[str], np.ndarray] | None = None,
) -> str | None:
    """The key's new version after rows were removed (and others added), from the old
    version alone; ``None`` when the old version carries no digest."""
    parsed = parse_embeddings_version(version)
    if parsed is None:
        return None
    digest = parsed[1] - rows_digest(*removed)
    if added is not None:
        digest += rows_digest(*added)
    return embeddings_version(count, digest % (1 << 64))
