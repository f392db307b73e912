"""Any transformers image model, by hub name or local ``save_pretrained`` folder.

Pooling: models with ``get_image_features``/``get_text_features`` (CLIP, SigLIP, ...) use their
projected image and text features and support text prompts. Other models use ``pooler_output``
(flattened: CNNs return (n, c, 1, 1)) when present, else the mean of the last hidden state over
tokens (ViT-like) or over space (CNNs). Vectors are returned unnormalised.

The local Hugging Face cache is tried first; the hub only when the model is not cached there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dagster_brain.decode import normalize_image
from dagster_brain.embedding.models import ModelLoadError, resolve_device, state_dict_sha256


def _shortest_side(image_processor) -> int | None:
    """Side both image sides must keep when JPEGs are decoded at reduced scale (None: full)."""
    size = getattr(image_processor, "size", None)
    if not isinstance(size, dict):
        return None
    sides = [v for k, v in size.items() if k in ("shortest_edge", "height", "width") and v]
    return int(max(sides)) if sides else None


class HFPreprocessor:
    """Picklable ``PIL image -> (C, H, W)`` callable around a transformers image processor.

    The image is first brought to its displayed 8-bit RGB (:mod:`dagster_brain.decode`).
    """

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, img: Image.Image) -> torch.Tensor:
        out = self.image_processor(images=normalize_image(img), return_tensors="pt")
        return out["pixel_values"][0].float()


def _pooled(out) -> torch.Tensor:
    """Tensor from a ``get_*_features`` result (a tensor in transformers 4, an output in 5)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    return pooled if pooled is not None else out[0]


class HFEmbedder:
    """A transformers model as an :class:`~dagster_brain.embedding.models.EmbeddingModel`."""

    def __init__(self, name_or_path: str, device: str = "auto"):
        self.name = name_or_path
        self._device = resolve_device(device)
        self.model, self.image_processor, self.tokenizer = _load(name_or_path)
        self.model.eval().to(self._device)
        self.supports_prompts = self.tokenizer is not None
        self._preprocessor = HFPreprocessor(self.image_processor)
        self.decode_size = _shortest_side(self.image_processor)
        self.weights_hash = state_dict_sha256(self.model)[:16]
        probe = self._preprocessor(Image.new("RGB", (64, 64)))
        self.dim = int(self.embed_batch(probe[None]).shape[1])

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def preprocessor(self) -> HFPreprocessor:
        """Picklable preprocessing callable for worker processes."""
        return self._preprocessor

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """Decoded PIL image -> model input tensor."""
        return self._preprocessor(img)

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        """A stacked batch of :meth:`preprocess` outputs -> (n, dim) float32."""
        with torch.inference_mode():
            pixels = batch.to(self._device, non_blocking=True)
            if hasattr(self.model, "get_image_features"):
                feats = _pooled(self.model.get_image_features(pixel_values=pixels))
            else:
                out = self.model(pixel_values=pixels)
                pooled = getattr(out, "pooler_output", None)
                if pooled is not None:
                    feats = pooled.flatten(1)
                else:
                    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                    # tokens (n, t, h) -> mean over tokens; feature maps (n, c, h, w) -> over space
                    feats = hidden.mean(dim=1) if hidden.ndim == 3 else hidden.mean(dim=(2, 3))
            return feats.float().cpu().numpy()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32 image embeddings."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_batch(torch.stack([self.preprocess(im) for im in images]))

    def embed_prompts(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 text embeddings, in the image embedding space (CLIP-style models)."""
        if not self.supports_prompts:
            why = (
                "its folder has no tokenizer files"
                if hasattr(self.model, "get_text_features")
                else "it is not a CLIP-style image-text model"
            )
            raise NotImplementedError(
                f"model {self.name!r} ({type(self.model).__name__}) cannot embed text prompts: "
                f"{why}; use a CLIP-style model (e.g. openai/clip-vit-base-patch32)"
            )
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        cfg = getattr(self.model.config, "text_config", None)
        max_len = getattr(cfg, "max_position_embeddings", None)
        # SigLIP was trained on max-length padded text; CLIP pads to the longest prompt.
        padding = "max_length" if "siglip" in self.model.config.model_type else True
        tokens = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=max_len, return_tensors="pt"
        )
        tokens = {k: v.to(self._device) for k, v in tokens.items() if k != "token_type_ids"}
        with torch.inference_mode():
            feats = _pooled(self.model.get_text_features(**tokens))
        return feats.float().cpu().numpy()


def _load(name_or_path: str):
    """(model, image processor, tokenizer or None); cache first, then the hub."""
    local = Path(os.path.expanduser(name_or_path))
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {str(local)!r} has no config.json; save it with "
                "model.save_pretrained(folder) and image_processor.save_pretrained(folder)"
            )
        try:
            return _from_pretrained(str(local), local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"cannot load model folder {str(local)!r}: {err}") from err
    try:
        return _from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError):
        pass  # not cached: try the hub
    try:
        return _from_pretrained(name_or_path, local_files_only=False)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: it is not a local folder, not in the Hugging "
            f"Face cache, and the hub is unreachable or has no such model ({err}). On a machine "
            "with access run `AutoModel.from_pretrained(name).save_pretrained(folder)` and "
            "`AutoProcessor.from_pretrained(name).save_pretrained(folder)`, copy the folder here "
            "and pass its path as the model name, or use the offline default 'efficientnet-lite0'"
        ) from err


def _from_pretrained(name: str, local_files_only: bool):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(name, local_files_only=local_files_only)
    image_processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_files_only)
    tokenizer = None
    if hasattr(model, "get_text_features"):
        # A missing tokenizer leaves an image-only model; embed_prompts then says why.
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    return model, image_processor, tokenizer
