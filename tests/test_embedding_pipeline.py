"""Batched embedding of files and patches, precomputed-vector checks, and the Dagster resource."""

import logging
import re

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from dagster_brain.embedding.models import load_model
from dagster_brain.embedding.pipeline import (
    ImageLoadError,
    embed_files,
    embed_patches,
    expand_box,
    open_image,
    pixel_box,
    validate_precomputed,
)
from dagster_brain.resources.embedder import EmbedderResource


@pytest.fixture(scope="module")
def model():
    return load_model("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Six small JPEGs (240x180): crops of the two scikit-learn photos; s5 repeats s0's pixels."""
    folder = tmp_path_factory.mktemp("images")
    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    crops = [
        china.crop((0, 0, 320, 240)),
        china.crop((300, 150, 620, 390)),
        flower.crop((100, 50, 420, 290)),
        flower.crop((0, 0, 640, 427)),
        china,
        china.crop((0, 0, 320, 240)),
    ]
    out = {}
    for i, img in enumerate(crops):
        out[f"s{i}"] = str(folder / f"s{i}.jpg")
        img.resize((240, 180)).save(out[f"s{i}"], quality=90)
    return out


def test_workers_match_in_process(model, files):
    ids, paths = list(files), list(files.values())
    calls = []
    serial = embed_files(model, paths, ids, batch_size=4, num_workers=0)
    parallel = embed_files(
        model,
        paths,
        ids,
        batch_size=4,
        num_workers=2,
        progress=lambda *a: calls.append(a),
        progress_every_s=0,
    )
    assert serial.ids == parallel.ids == ids and not serial.failures
    assert serial.vectors.shape == (6, 1280) and serial.vectors.dtype == np.float32
    np.testing.assert_allclose(parallel.vectors, serial.vectors, atol=1e-5)
    np.testing.assert_array_equal(serial.vectors[0], serial.vectors[5])  # same pixels
    assert [c[:2] for c in calls] == [(4, 6), (6, 6), (6, 6)] and all(c[2] > 0 for c in calls)
    # the file path gives the same vector as the decoded image
    direct = model.embed_images([Image.open(files["s1"])])
    np.testing.assert_allclose(direct[0], serial.vectors[1], atol=1e-4)


def test_large_jpeg_decoded_at_reduced_scale(model, tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(load_sample_images().images[1]).resize((1280, 854)).save(path, quality=90)
    assert open_image(str(path), decode_size=256).size == (640, 427)  # DCT scale 1/2
    assert open_image(str(path)).size == (1280, 854)
    fast = embed_files(model, [str(path)], ["big"], num_workers=0).vectors[0]
    full = model.embed_images([Image.open(path)])[0]
    assert fast @ full / np.linalg.norm(fast) / np.linalg.norm(full) > 0.99


def test_missing_file_names_id_and_path(model, files, tmp_path):
    bad = tmp_path / "gone.jpg"
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match=rf"'s9'.*{re.escape(str(bad))}"):
        embed_files(model, [files["s0"], str(bad)], ["s0", "s9"], num_workers=0)
    with pytest.raises(ImageLoadError, match=rf"'s8'.*{re.escape(str(junk))}"):
        embed_files(model, [str(junk), files["s0"]], ["s8", "s0"], num_workers=2)
    got = embed_files(
        model,
        [files["s0"], str(bad), str(junk), files["s2"]],
        ["s0", "s9", "s8", "s2"],
        num_workers=2,
        skip_failures=True,
    )
    assert got.ids == ["s0", "s2"] and got.vectors.shape == (2, 1280)
    assert set(got.failures) == {"s9", "s8"} and str(bad) in got.failures["s9"]


def test_files_argument_errors(model, files):
    with pytest.raises(ValueError, match="duplicate sample id 's0'"):
        embed_files(model, [files["s0"]] * 2, ["s0", "s0"], num_workers=0)
    with pytest.raises(ValueError, match="2 file paths for 1 ids"):
        embed_files(model, [files["s0"]] * 2, ["s0"], num_workers=0)


def test_box_geometry():
    np.testing.assert_allclose(expand_box([0.25, 0.25, 0.5, 0.5], alpha=0.2), [0.2, 0.2, 0.8, 0.8])
    # a 0.25 x 0.25 box on a 2:1 image is 2:1 in pixels; squaring doubles its height
    np.testing.assert_allclose(
        expand_box([0.5, 0.5, 0.25, 0.25], force_square=True, aspect=2.0),
        [0.5, 0.375, 0.75, 0.875],
    )
    assert pixel_box(np.array([0.0, 0.0, 1.0, 1.0]), (240, 180)) == (0, 0, 240, 180)
    assert pixel_box(np.array([-0.1, 0.5, 1.2, 0.5]), (240, 180)) == (0, 90, 240, 91)


def test_patches(model, files):
    boxes = pd.DataFrame(
        {
            "sample_id": ["s1", "s0", "s1", "s0", "s2"],
            "label_id": ["l1a", "l0full", "l1b", "l0left", "l2"],
            "box": [
                [0.0, 0.0, 0.5, 0.5],
                [0.0, 0.0, 1.0, 1.0],
                [0.5, 0.5, 0.5, 0.5],
                [0.0, 0.0, 0.5, 1.0],
                [0.25, 0.25, 0.5, 0.5],
            ],
        }
    )
    got = embed_patches(model, files, boxes, batch_size=3, num_workers=2)
    assert got.ids == boxes["label_id"].tolist() and got.sample_ids == boxes["sample_id"].tolist()
    assert got.vectors.shape == (5, 1280)
    # a box covering the whole image is the whole image
    whole = embed_files(model, [files["s0"]], ["s0"], num_workers=0).vectors[0]
    np.testing.assert_allclose(got.vectors[1], whole, atol=1e-4)
    # each vector is its own crop's embedding
    img = Image.open(files["s1"]).convert("RGB")
    crops = [img.crop((0, 0, 120, 90)), img.crop((120, 90, 240, 180))]
    np.testing.assert_allclose(got.vectors[[0, 2]], model.embed_images(crops), atol=1e-4)
    assert not np.allclose(got.vectors[0], got.vectors[2], atol=1e-2)
    # alpha grows the box: a half box grown by 100 % about its centre is the whole image
    grown = embed_patches(model, files, boxes.iloc[[4]], alpha=1.0, num_workers=0).vectors[0]
    np.testing.assert_allclose(
        grown, embed_files(model, [files["s2"]], ["s2"], num_workers=0).vectors[0], atol=1e-4
    )


def test_patch_errors(model, files, tmp_path):
    def frame(sample, box):
        return pd.DataFrame({"sample_id": [sample], "label_id": ["lx"], "box": [box]})

    with pytest.raises(ValueError, match="label 'lx'.*bad box"):
        embed_patches(model, files, frame("s0", [0.1, 0.1, 0.0, 0.2]), num_workers=0)
    with pytest.raises(ValueError, match="label 'lx'.*off the image"):
        embed_patches(model, files, frame("s0", [1.2, 0.1, 0.1, 0.2]), num_workers=0)
    with pytest.raises(ValueError, match="no file path for sample 'nope'"):
        embed_patches(model, files, frame("nope", [0.1, 0.1, 0.1, 0.2]), num_workers=0)
    paths = {**files, "gone": str(tmp_path / "gone.jpg")}
    boxes = pd.DataFrame(
        {
            "sample_id": ["gone", "s0", "gone"],
            "label_id": ["g1", "a", "g2"],
            "box": [[0.1, 0.1, 0.5, 0.5]] * 3,
        }
    )
    with pytest.raises(ImageLoadError, match="sample 'gone'.*gone.jpg"):
        embed_patches(model, paths, boxes, num_workers=0)
    got = embed_patches(model, paths, boxes, num_workers=0, skip_failures=True)
    assert got.ids == ["a"] and set(got.failures) == {"g1", "g2"}


def test_validate_precomputed():
    ids = ["a", "b", "c"]
    np.testing.assert_array_equal(validate_precomputed(np.eye(3), ids), np.eye(3, dtype="f4"))
    column = pd.Series([[1, 2], [3, 4], [5, 6]])
    assert validate_precomputed(column, ids, dim=2).shape == (3, 2)
    with pytest.raises(ValueError, match=r"\(2, 3\) do not match 3 ids"):
        validate_precomputed(np.eye(2, 3), ids)
    with pytest.raises(ValueError, match="2 precomputed embeddings for 3 sample ids"):
        validate_precomputed([[1.0], [2.0]], ids)
    with pytest.raises(ValueError, match="sample 'b': embedding has non-finite"):
        validate_precomputed(np.array([[1.0, 2], [np.nan, 0], [1, 1]]), ids)
    with pytest.raises(ValueError, match="sample 'c': embedding has 3 values, expected 2"):
        validate_precomputed([[1, 2], [3, 4], [5, 6, 7]], ids)
    with pytest.raises(ValueError, match="label 'b' has no embedding"):
        validate_precomputed([[1, 2], None, [5, 6]], ids, what="label")
    with pytest.raises(ValueError, match="sample 'a': embedding has 2 values, expected 4"):
        validate_precomputed(column, ids, dim=4)


def test_resource_logs_progress(files, caplog):
    embedder = EmbedderResource(num_workers=0, batch_size=4, progress_every_s=1e-9)
    assert embedder.load() is embedder.load()  # cached per process
    log = logging.getLogger("test_embedder")
    with caplog.at_level(logging.INFO, logger="test_embedder"):
        got = embedder.embed_files(list(files.values()), list(files), log=log)
    assert got.vectors.shape == (6, 1280)
    assert "embedded 6/6 images (" in caplog.text and "img/s)" in caplog.text


def test_resource_in_an_asset(files):
    @dg.asset
    def vectors(context: dg.AssetExecutionContext, embedder: EmbedderResource) -> int:
        got = embedder.embed_files(list(files.values()), list(files), log=context.log)
        return got.vectors.shape[1]

    result = dg.materialize([vectors], resources={"embedder": EmbedderResource(num_workers=0)})
    assert result.success and result.output_for_node("vectors") == 1280
