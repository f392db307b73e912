"""Batched embedding of image files and object patches, decoding in worker processes.

Decoding and preprocessing run in a ``torch.utils.data.DataLoader`` with ``num_workers`` worker
processes (``0`` = in the calling process); only the model's picklable ``preprocessor`` goes to
the workers, the network stays in the calling process. Large JPEGs are decoded at reduced scale
(``PIL.Image.draft``) down to the model's ``decode_size``; patches are always cropped from the
full-resolution image, each image decoded once for all its boxes. Decoding follows
:mod:`dagster_brain.decode` (EXIF orientation applied, deep bit depths scaled, alpha on white),
so box coordinates are relative to the displayed image.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dagster_brain.decode import decode
from dagster_brain.embedding.models import EmbeddingModel
from dagster_brain.progress import Progress

ProgressFn = Callable[[int, int, float], None]
"""Called with (done, total, items per second) every ``progress_every_s`` and at the end."""


class ImageLoadError(RuntimeError):
    """An image file that is missing or cannot be decoded (the message names its id and file)."""


@dataclass(frozen=True)
class Embedded:
    """Vectors aligned with the ids that were embedded (input order, failures left out)."""

    ids: list[str]  # sample ids, or label ids for patches
    vectors: np.ndarray  # (len(ids), dim) float32
    failures: dict[str, str] = field(default_factory=dict)  # id -> "file: error" (skipped)
    sample_ids: list[str] | None = None  # patches: the sample of each label id

    def __len__(self) -> int:
        return len(self.ids)


def open_image(path: str, decode_size: int | None = None) -> Image.Image:
    """Decode an image to RGB (:func:`dagster_brain.decode.decode`); JPEGs at the smallest DCT
    scale keeping both sides >= decode_size. Raises ``ImageReadError`` naming the file."""
    return decode(path, draft_size=decode_size).image


class _FileDataset(Dataset):
    def __init__(self, paths: Sequence[str], preprocessor, decode_size: int | None):
        self.paths = list(paths)
        self.preprocessor = preprocessor
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, [self.preprocessor(open_image(self.paths[i], self.decode_size))], None
        except Exception as err:  # reported per file in the calling process
            return i, [], f"{type(err).__name__}: {err}"


class _PatchDataset(Dataset):
    """One item per image: the preprocessed crops of all its boxes, in box order."""

    def __init__(self, paths, boxes, preprocessor, alpha: float, force_square: bool):
        self.paths = list(paths)
        self.boxes = list(boxes)  # per image: (k, 4) relative [x, y, w, h]
        self.preprocessor = preprocessor
        self.alpha = alpha
        self.force_square = force_square

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = open_image(self.paths[i])  # full resolution: crops may be small
            aspect = img.width / img.height
            crops = [
                img.crop(pixel_box(expand_box(b, self.alpha, self.force_square, aspect), img.size))
                for b in self.boxes[i]
            ]
            return i, [self.preprocessor(c) for c in crops], None
        except Exception as err:  # reported per image in the calling process
            return i, [], f"{type(err).__name__}: {err}"


def _collate(items):
    """Items -> (item indexes, tensor counts, stacked tensors or None, [(index, error)])."""
    index = [i for i, tensors, err in items if err is None]
    counts = [len(tensors) for i, tensors, err in items if err is None]
    tensors = [t for i, ts, err in items if err is None for t in ts]
    errors = [(i, err) for i, _, err in items if err is not None]
    return index, counts, torch.stack(tensors) if tensors else None, errors


def expand_box(
    box: Sequence[float], alpha: float = 0.0, force_square: bool = False, aspect: float = 1.0
) -> np.ndarray:
    """Relative [x, y, w, h] -> relative [x0, y0, x1, y1], grown by ``alpha`` about its centre.

    ``force_square`` grows the shorter side (in pixels; ``aspect`` = width / height of the image)
    to the longer one. The result may extend past the image; :func:`pixel_box` clips it.
    """
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + w / 2, y + h / 2
    if force_square:
        side = max(w * aspect, h)  # in units of image height
        w, h = side / aspect, side
    w, h = w * (1 + alpha), h * (1 + alpha)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def pixel_box(rel: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Relative [x0, y0, x1, y1] -> integer pixel crop box inside the image, at least 1 px."""
    width, height = size
    x0 = min(max(math.floor(rel[0] * width + 1e-6), 0), width - 1)
    y0 = min(max(math.floor(rel[1] * height + 1e-6), 0), height - 1)
    x1 = min(max(math.ceil(rel[2] * width - 1e-6), x0 + 1), width)
    y1 = min(max(math.ceil(rel[3] * height - 1e-6), y0 + 1), height)
    return x0, y0, x1, y1


def usable_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(device: str) -> int:
    """Decode processes when none are configured: on a GPU, every core but the one feeding
    it (the model no longer needs them); on the CPU, at most 2, which leaves the model the
    rest (measured best on 2 cores in ``benchmarks/embeddings.py``)."""
    cpus = usable_cpus()
    if torch.device(device).type == "cuda":
        return max(1, min(cpus - 1, 32))
    return min(2, max(cpus - 1, 0))


def _run(
    model: EmbeddingModel,
    dataset: Dataset,
    total: int,
    batch_size: int,
    num_workers: int | None,
    progress: ProgressFn | None,
    progress_every_s: float,
    on_error: Callable[[int, str], None],
    forward_batch: int | None = None,
    unit: str = "images",
) -> tuple[list[int], np.ndarray]:
    """Embed every item; returns (item index per vector, vectors).

    Progress: ``progress`` every ``progress_every_s`` and at the end, and a
    :mod:`dagster_brain.progress` bar (outside Dagster) or run-log messages (in a run, when no
    ``progress`` callback already logs them).
    """
    forward_batch = forward_batch or batch_size
    if num_workers is None:
        num_workers = auto_workers(str(model.device))
    if batch_size < 1 or num_workers < 0:
        raise ValueError(
            f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
        )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=torch.device(model.device).type == "cuda",
    )
    owners: list[int] = []
    chunks: list[np.ndarray] = []
    start = last = time.perf_counter()
    done = 0
    tracker = Progress(
        f"embedding {total:,} {unit} with {getattr(model, 'name', 'the model')}",
        total,
        unit,
        messages=progress is None,
    )
    with tracker:
        for index, counts, batch, errors in loader:
            n = _embed_batch(
                model, index, counts, batch, errors, on_error, forward_batch, chunks, owners
            )
            done += n
            tracker.update(n)
            now = time.perf_counter()
            if progress is not None and now - last >= progress_every_s:
                progress(done, total, done / max(now - start, 1e-9))
                last = now
    if progress is not None:
        progress(done, total, done / max(time.perf_counter() - start, 1e-9))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, model.dim), np.float32)
    return owners, np.ascontiguousarray(vectors, dtype=np.float32)


def _embed_batch(model, index, counts, batch, errors, on_error, forward_batch, chunks, owners):
    """One loader batch: report its failures, append its vectors; returns the crops done."""
    for i, err in errors:
        on_error(i, err)
    if batch is None:
        return 0
    # Patch batches vary in size: run the network on forward_batch crops at a time.
    for lo in range(0, len(batch), forward_batch):
        chunks.append(model.embed_batch(batch[lo : lo + forward_batch]))
    owners.extend(i for i, c in zip(index, counts, strict=True) for _ in range(c))
    return len(batch)


def _check_ids(ids: Sequence[str], what: str) -> list[str]:
    ids = [str(i) for i in ids]
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"duplicate {what} id {i!r}")
        seen.add(i)
    return ids


def embed_files(
    model: EmbeddingModel,
    filepaths: Sequence[str],
    ids: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressFn | None = None,
    progress_every_s: float = 5.0,
    skip_failures: bool = False,
) -> Embedded:
    """Embed image files; ``ids[i]`` names ``filepaths[i]`` in errors and in the result.

    A missing or undecodable file raises :class:`ImageLoadError` naming its id and file, unless
    ``skip_failures``: then it is left out of the result and listed in ``failures``.
    """
    ids = _check_ids(ids, "sample")
    paths = [str(p) for p in filepaths]
    if len(paths) != len(ids):
        raise ValueError(f"{len(paths)} file paths for {len(ids)} ids")
    failures: dict[str, str] = {}

    def on_error(i: int, err: str) -> None:
        if not skip_failures:
            raise ImageLoadError(f"cannot read image of sample {ids[i]!r} ({paths[i]}): {err}")
        failures[ids[i]] = f"{paths[i]}: {err}"

    dataset = _FileDataset(paths, model.preprocessor, model.decode_size)
    owners, vectors = _run(
        model, dataset, len(ids), batch_size, num_workers, progress, progress_every_s, on_error
    )
    return Embedded([ids[i] for i in owners], vectors, failures)


def embed_patches(
    model: EmbeddingModel,
    filepaths_by_sample: Mapping[str, str],
    boxes: pd.DataFrame,
    *,
    alpha: float = 0.0,
    force_square: bool = False,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressFn | None = None,
    progress_every_s: float = 5.0,
    skip_failures: bool = False,
) -> Embedded:
    """Embed object patches: one vector per ``boxes`` row, aligned with its ``label_id``.

    ``boxes`` has columns ``sample_id``, ``label_id`` and ``box`` = relative [x, y, w, h] (top-left
    corner, width, height in [0, 1]). Boxes grow by ``alpha`` (0.1 = 10 % wider and taller) about
    their centre, optionally squared first, then are clipped to the image. Each image is decoded
    once (full resolution) for all its boxes; ``batch_size`` counts crops per forward pass.
    """
    missing = {"sample_id", "label_id", "box"} - set(boxes.columns)
    if missing:
        raise ValueError(f"boxes frame lacks columns {sorted(missing)}")
    if alpha <= -1:
        raise ValueError(f"alpha must be > -1, got {alpha}")
    label_ids = _check_ids(boxes["label_id"].tolist(), "label")
    sample_of = [str(s) for s in boxes["sample_id"]]
    rel: list[np.ndarray] = []
    for lid, sid, box in zip(label_ids, sample_of, boxes["box"], strict=True):
        b = np.asarray(box if box is not None else [], dtype=np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all() or b[2] <= 0 or b[3] <= 0:
            raise ValueError(
                f"label {lid!r} (sample {sid!r}): bad box {b.tolist()}, want relative "
                "[x, y, w, h] with w, h > 0"
            )
        if b[0] >= 1 or b[1] >= 1 or b[0] + b[2] <= 0 or b[1] + b[3] <= 0:
            raise ValueError(f"label {lid!r} (sample {sid!r}): box {b.tolist()} is off the image")
        if sid not in filepaths_by_sample:
            raise ValueError(f"label {lid!r}: no file path for sample {sid!r}")
        rel.append(b)

    # One worker item per image (first-seen order), holding all its boxes.
    order: dict[str, list[int]] = {}
    for row, sid in enumerate(sample_of):
        order.setdefault(sid, []).append(row)
    samples = list(order)
    paths = [str(filepaths_by_sample[s]) for s in samples]
    dataset = _PatchDataset(
        paths,
        [np.stack([rel[r] for r in order[s]]) for s in samples],
        model.preprocessor,
        alpha,
        force_square,
    )
    failures: dict[str, str] = {}

    def on_error(i: int, err: str) -> None:
        sid, path = samples[i], paths[i]
        if not skip_failures:
            raise ImageLoadError(f"cannot read image of sample {sid!r} ({path}): {err}")
        for r in order[sid]:
            failures[label_ids[r]] = f"{path}: {err}"

    # Worker batches hold about batch_size crops, so many boxes per image do not blow up memory.
    per_batch = max(1, round(batch_size * len(samples) / max(len(label_ids), 1)))
    owners, vectors = _run(
        model,
        dataset,
        len(label_ids),
        per_batch,
        num_workers,
        progress,
        progress_every_s,
        on_error,
        forward_batch=batch_size,
        unit="patches",
    )
    # owners are image indexes, one per crop in box order: map back to rows, then to input order
    rows: list[int] = []
    seen: dict[int, int] = {}
    for i in owners:
        k = seen.get(i, 0)
        rows.append(order[samples[i]][k])
        seen[i] = k + 1
    perm = np.argsort(rows, kind="stable")
    rows = [rows[p] for p in perm]
    return Embedded(
        [label_ids[r] for r in rows], vectors[perm], failures, [sample_of[r] for r in rows]
    )


def validate_precomputed(
    vectors: np.ndarray | Sequence | pd.Series,
    ids: Sequence[str],
    *,
    what: str = "sample",
    dim: int | None = None,
) -> np.ndarray:
    """Check precomputed embeddings against their ids; returns an (n, d) float32 array.

    ``vectors`` is an (n, d) array or a list-like column of n vectors. Wrong counts, missing or
    ragged vectors, a ``dim`` mismatch and non-finite values raise ``ValueError`` naming the id.
    """
    ids = [str(i) for i in ids]
    if isinstance(vectors, pd.Series):
        vectors = vectors.tolist()
    if isinstance(vectors, np.ndarray) and vectors.dtype != object:
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(f"precomputed embeddings {vectors.shape} do not match {len(ids)} ids")
        rows = list(vectors)
    else:
        rows = list(vectors)
        if len(rows) != len(ids):
            raise ValueError(f"{len(rows)} precomputed embeddings for {len(ids)} {what} ids")
    want = dim
    out = []
    for i, row in zip(ids, rows, strict=True):
        if row is None:
            raise ValueError(f"{what} {i!r} has no embedding")
        try:
            v = np.asarray(row, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what} {i!r}: embedding is not numeric ({err})") from err
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"{what} {i!r}: embedding has shape {v.shape}, want a 1-d vector")
        if want is None:
            want = v.size
        elif v.size != want:
            raise ValueError(f"{what} {i!r}: embedding has {v.size} values, expected {want}")
        if not np.isfinite(v).all():
            raise ValueError(f"{what} {i!r}: embedding has non-finite values (NaN or inf)")
        out.append(v)
    if not out:
        return np.zeros((0, want or 0), np.float32)
    return np.stack(out)
