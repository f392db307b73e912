"""The embedding model as a Dagster resource: loaded once per process, progress in the run log."""

import logging
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from dagster_brain.embedding.names import DEFAULT_MODEL, canonical_name

if TYPE_CHECKING:  # torch is imported on first use, not when the definitions load
    from dagster_brain.embedding.models import EmbeddingModel
    from dagster_brain.embedding.pipeline import Embedded, ProgressFn


@cache
def _cached_model(name: str, device: str) -> "EmbeddingModel":
    # Per process: the multiprocess executor loads once per step process, in-process runs once.
    from dagster_brain.embedding.models import load_model

    return load_model(name, device)


def _progress(log: logging.Logger | dg.DagsterLogManager | None, unit: str) -> "ProgressFn | None":
    if log is None:
        return None

    per = "img" if unit == "images" else unit

    def report(done: int, total: int, rate: float) -> None:
        log.info(f"embedded %d/%d {unit} (%.1f {per}/s)", done, total, rate)

    return report


class EmbedderResource(dg.ConfigurableResource):
    """Embeds image files and object patches with one model (offline EfficientNet-Lite0 default).

    ``model`` is ``"efficientnet-lite0"`` (alias ``"default"``), a Hugging Face hub name, or a
    local folder written by ``save_pretrained``; ``device="auto"`` uses CUDA when available.
    """

    model: str = Field(default=DEFAULT_MODEL, description="model name or local folder")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    batch_size: int = Field(default=16, ge=1, description="images per forward pass")
    num_workers: int | None = Field(
        default=None,
        ge=0,
        description="decode processes; 0 = in-process; unset = auto (GPU: all cores but one, "
        "CPU: 2)",
    )
    progress_every_s: float = Field(default=10.0, gt=0, description="progress log interval")

    def load(self) -> "EmbeddingModel":
        """The model, loaded on first use and cached for the life of the process."""
        return _cached_model(canonical_name(self.model), self.device)

    def embed_files(
        self,
        filepaths: Sequence[str],
        ids: Sequence[str],
        log: logging.Logger | dg.DagsterLogManager | None = None,
        skip_failures: bool = False,
    ) -> "Embedded":
        """Vectors for image files, aligned with ``ids`` (see ``pipeline.embed_files``)."""
        from dagster_brain.embedding.pipeline import embed_files

        return embed_files(
            self.load(),
            filepaths,
            ids,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            progress=_progress(log, "images"),
            progress_every_s=self.progress_every_s,
            skip_failures=skip_failures,
        )

    def embed_patches(
        self,
        filepaths_by_sample: Mapping[str, str],
        boxes: pd.DataFrame,
        alpha: float = 0.0,
        force_square: bool = False,
        log: logging.Logger | dg.DagsterLogManager | None = None,
        skip_failures: bool = False,
    ) -> "Embedded":
        """Vectors per ``boxes`` row (label id), see ``pipeline.embed_patches``."""
        from dagster_brain.embedding.pipeline import embed_patches

        return embed_patches(
            self.load(),
            filepaths_by_sample,
            boxes,
            alpha=alpha,
            force_square=force_square,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            progress=_progress(log, "patches"),
            progress_every_s=self.progress_every_s,
            skip_failures=skip_failures,
        )

    def embed_prompts(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings in the image space (CLIP-style models only)."""
        return self.load().embed_prompts(list(texts))
