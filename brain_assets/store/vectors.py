"""(n, d) float32 arrays <-> Arrow list columns, without Python loops, in bounded blocks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

BLOCK_ROWS = 32_768  # rows converted at a time when streaming vectors in or out


def vectors_to_arrow(vectors: np.ndarray) -> pa.Array:
    """An (n, d) float32 array as an Arrow list column without a Python loop."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """An Arrow list column of equal-length float lists as an (n, d) float32 array (one copy,
    chunk by chunk)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    n = sum(len(c) for c in chunks)
    if n == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    parts = [block_vectors(c) for c in chunks if len(c)]
    width = parts[0].shape[1]
    out = np.empty((n, width), dtype=np.float32)
    start = 0
    for part in parts:
        out[start : start + len(part)] = part
        start += len(part)
    return out


def block_vectors(chunk: pa.Array) -> np.ndarray:
    """One chunk of a list column as an (rows, d) float32 array (a view where Arrow allows)."""
    flat = chunk.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(chunk), -1)


def vector_rows(
    columns: dict[str, str | Sequence[str | None]], vectors: np.ndarray, rows: int = BLOCK_ROWS
) -> pa.RecordBatchReader:
    """A stream of record batches: the string ``columns`` (a str is the same value on every
    row) then ``vector``, ``rows`` at a time, so that writing n vectors holds one block of
    Arrow data, never all of it. Read it once."""
    n = len(vectors)
    schema = pa.schema(
        [*((name, pa.string()) for name in columns), ("vector", pa.list_(pa.float32()))]
    )

    def blocks() -> Iterator[pa.RecordBatch]:
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            arrays = [
                pa.array(
                    [v] * (stop - start) if isinstance(v, str) else list(v[start:stop]), pa.string()
                )
                for v in columns.values()
            ]
            arrays.append(vectors_to_arrow(vectors[start:stop]))
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, blocks())
