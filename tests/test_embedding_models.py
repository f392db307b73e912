"""Embedding models: the offline EfficientNet-Lite0 and transformers models from a local folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from tiny_models import make_tiny_clip

from dagster_brain.embedding.efficientnet_lite import EfficientNetLite0, weights_path
from dagster_brain.embedding.models import (
    DEFAULT_MODEL,
    EmbeddingModel,
    ModelLoadError,
    load_model,
)

# ImageNet-1k class indexes: 698 palace, 442 bell cote, 663 monastery, 483 castle, 497 church;
# 985 daisy (the closest class to the dahlia in flower.jpg).
CHINA_CLASSES = {698, 442, 663, 483, 497}
DAISY = 985


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg


@pytest.fixture(scope="module")
def effnet():
    return load_model(DEFAULT_MODEL, device="cpu")


def test_weights_load_strict():
    net = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in net.parameters()) == 4_652_008


def test_default_model_embeds_photos(effnet, photos):
    assert isinstance(effnet, EmbeddingModel)
    assert (effnet.name, effnet.dim, effnet.device, effnet.supports_prompts) == (
        "efficientnet-lite0",
        1280,
        "cpu",
        False,
    )
    assert len(effnet.weights_hash) == 16
    vecs = effnet.embed_images([photos[0], photos[0].copy(), photos[1]])
    assert vecs.shape == (3, 1280) and vecs.dtype == np.float32
    assert np.isfinite(vecs).all() and (vecs >= 0).all()  # ReLU6 then mean pooling
    np.testing.assert_array_equal(vecs[0], vecs[1])  # identical images, identical vectors
    cos = vecs[0] @ vecs[2] / np.linalg.norm(vecs[0]) / np.linalg.norm(vecs[2])
    assert cos < 0.5


def test_default_model_classifies_photos(effnet, photos):
    probs = torch.softmax(torch.from_numpy(effnet.logits(photos)), dim=1).numpy()
    top = probs.argmax(axis=1)
    assert top[0] in CHINA_CLASSES and top[1] == DAISY
    assert probs.max(axis=1).min() > 0.25  # confident (chance is 0.001)


def test_default_model_rejects_prompts(effnet):
    with pytest.raises(NotImplementedError, match="efficientnet-lite0"):
        effnet.embed_prompts(["a photo of a dog"])


def test_aliases_and_bad_device():
    assert load_model("default", device="cpu").name == DEFAULT_MODEL
    with pytest.raises(ModelLoadError, match="device"):
        load_model("default", device="tpu")


# -- transformers, from tiny random-initialised models saved to a temp folder -----------------


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    config = ViTConfig(
        hidden_size=24,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_vit")
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_tiny_clip_embeds_images_and_text(tiny_clip_dir, photos):
    model = load_model(str(tiny_clip_dir), device="cpu")
    assert isinstance(model, EmbeddingModel)
    assert model.supports_prompts and model.dim == 16 and model.name == str(tiny_clip_dir)
    images = model.embed_images(photos)
    texts = model.embed_prompts(["a photo of a temple", "a flower", "x"])
    assert images.shape == (2, 16) and texts.shape == (3, 16)
    assert images.dtype == texts.dtype == np.float32
    assert np.isfinite(images).all() and np.isfinite(texts).all()
    assert not np.allclose(images[0], images[1]) and not np.allclose(texts[0], texts[1])
    # the same prompt alone or in a padded batch gives the same vector
    np.testing.assert_allclose(model.embed_prompts(["x"])[0], texts[2], atol=1e-5)
    # the same folder loads the same weights
    assert load_model(str(tiny_clip_dir), device="cpu").weights_hash == model.weights_hash


def test_tiny_vit_is_image_only(tiny_vit_dir, photos):
    model = load_model(str(tiny_vit_dir), device="cpu")
    assert not model.supports_prompts and model.dim == 24
    vecs = model.embed_images(photos)
    assert vecs.shape == (2, 24) and np.isfinite(vecs).all()
    with pytest.raises(NotImplementedError, match=str(tiny_vit_dir)):
        model.embed_prompts(["a photo"])


def test_unreachable_hub_names_the_fix(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    with pytest.raises(ModelLoadError, match="hub is unreachable") as err:
        load_model("no-such-org/no-such-model", device="cpu")
    assert "local" in str(err.value) and "no-such-org/no-such-model" in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path), device="cpu")
