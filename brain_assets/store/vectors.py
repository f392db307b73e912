"""(n, d) float32 arrays <-> Arrow list columns, without Python loops."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def vectors_to_arrow(vectors: np.ndarray) -> pa.Array:
    """An (n, d) float32 array as an Arrow list column without a Python loop."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """An Arrow list column of equal-length float lists as an (n, d) float32 array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, dim or 0), dtype=np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1)
