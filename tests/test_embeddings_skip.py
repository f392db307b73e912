"""A second materialisation of unchanged data runs the model on nothing; a changed image is
embedded again (and only it)."""

import dagster as dg
import numpy as np
import torch
import yaml
from PIL import Image

from dagster_brain.definitions import build_defs
from dagster_brain.factory import embeddings_key, samples_key
from dagster_brain.resources.embedder import EmbedderResource
from dagster_brain.store import Store

CALLS = {"images": 0}


def _pixels(img: Image.Image) -> torch.Tensor:
    """4x4 RGB thumbnail as a 48-d vector (a stand-in preprocessor)."""
    return torch.tensor(np.asarray(img.resize((4, 4)), dtype=np.float32).reshape(-1) / 255)


class CountingModel:
    """A model whose vectors are the thumbnails; counts the images it embeds."""

    name = "counting"
    weights_hash = "c0ffee"
    dim = 48
    device = "cpu"
    decode_size = None
    preprocessor = staticmethod(_pixels)

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        CALLS["images"] += len(batch)
        return batch.numpy().astype(np.float32)


class CountingEmbedder(EmbedderResource):
    """The embedder resource with the counting model."""

    def load(self) -> CountingModel:
        return CountingModel()


def _image(path, seed):
    arr = np.random.default_rng(seed).integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _project(tmp_path):
    folder = tmp_path / "images"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            _image(folder / cls / f"{i}.png", seed=10 * len(cls) + i + (cls == "dog") * 100)
    keys = tmp_path / "brain_keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"name": "pets", "source": {"type": "image_folder", "path": str(folder)}}
                ],
                "embeddings": [
                    {"key": "default", "dataset": "pets", "num_workers": 0, "batch_size": 4}
                ],
            }
        )
    )
    return folder, keys, tmp_path / "data"


def _materialize(keys, data_dir, instance):
    defs = build_defs(keys, data_dir)
    wanted = {samples_key("pets"), embeddings_key("pets", "default")}
    assets = [a for a in defs.assets if set(a.keys) & wanted]
    resources = {**defs.resources, "embedder": CountingEmbedder()}
    CALLS["images"] = 0
    result = dg.materialize(assets, resources=resources, instance=instance)
    assert result.success
    meta = result.asset_materializations_for_node("pets__embeddings__default")[0].metadata
    return CALLS["images"], {k: v.value for k, v in meta.items()}, result


def _vectors(data_dir):
    emb = Store(data_dir).read_embeddings("pets", "default")
    return dict(zip(emb.sample_ids, emb.vectors, strict=True)), emb.data_version


def test_unchanged_data_is_not_embedded_again(tmp_path):
    folder, keys, data_dir = _project(tmp_path)
    with dg.instance_for_test() as instance:
        calls, meta, _ = _materialize(keys, data_dir, instance)
        assert calls == 6 and meta["embedded"] == 6 and meta["reused"] == 0
        first, version = _vectors(data_dir)

        calls, meta, result = _materialize(keys, data_dir, instance)
        assert calls == 0  # the model saw no image
        assert meta["embedded"] == 0 and meta["reused"] == 6
        assert meta["refresh"].startswith("unchanged: 6 embeddings reused (data version ")
        logged = [
            e.message
            for e in instance.all_logs(result.run_id)
            if "unchanged: 6 embeddings reused" in (e.message or "")
        ]
        assert len(logged) == 1
        second, version2 = _vectors(data_dir)
        assert version2 == version and second.keys() == first.keys()
        assert all(np.array_equal(first[s], second[s]) for s in first)

        # one image changes: it (and only it) is embedded again
        _image(folder / "dog" / "1.png", seed=999)
        changed = (
            Store(data_dir)
            .samples("pets")
            .set_index("filepath")
            .loc[str(folder / "dog" / "1.png"), "sample_id"]
        )
        calls, meta, _ = _materialize(keys, data_dir, instance)
        assert calls == 1 and meta["embedded"] == 1 and meta["reused"] == 5
        third, version3 = _vectors(data_dir)
        assert version3 != version and third.keys() == first.keys()
        assert not np.array_equal(third[changed], first[changed])
        expected = _pixels(Image.open(folder / "dog" / "1.png").convert("RGB")).numpy()
        np.testing.assert_allclose(third[changed], expected, rtol=1e-6)
        assert all(np.array_equal(first[s], third[s]) for s in first if s != changed)


def test_model_change_recomputes_every_vector(tmp_path):
    _, keys, data_dir = _project(tmp_path)
    with dg.instance_for_test() as instance:
        _materialize(keys, data_dir, instance)
        CountingModel.weights_hash = "other"
        try:
            calls, meta, _ = _materialize(keys, data_dir, instance)
        finally:
            CountingModel.weights_hash = "c0ffee"
    assert calls == 6 and meta["embedded"] == 6 and meta["reused"] == 0
