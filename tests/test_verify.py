"""Verification of duplicate pairs on the images: known copies and known look-alikes."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dagster_brain.algorithms.verify import (
    blur,
    candidate_pairs,
    find_verified_duplicates,
    image_descriptors,
    load_thumbnails,
    shift_ncc,
    verify_pairs,
)
from dagster_brain.ingest.images import read_image_info


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits()


def _digit32(digits, i: int) -> np.ndarray:
    """Digit ``i`` as a 32x32 grey image (nearest-neighbour upscaling, as in the demo)."""
    gray = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
    return np.kron(gray, np.ones((4, 4), np.uint8))


def _save(folder, name: str, gray: np.ndarray, fmt: str = "png") -> str:
    path = folder / f"{name}.{fmt}"
    Image.fromarray(gray).convert("RGB").save(path)
    return str(path)


def _shift_noise(gray: np.ndarray, seed: int = 0) -> np.ndarray:
    """One pixel to the right (black fill), plus Gaussian noise of sigma 8."""
    out = np.zeros_like(gray)
    out[:, 1:] = gray[:, :-1]
    noisy = out + np.random.default_rng(seed).normal(0.0, 8.0, out.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def test_shifted_noisy_copy_is_confirmed_and_same_class_digits_are_rejected(tmp_path, digits):
    ones = np.flatnonzero(digits.target == 1)[1:3]  # two different '1's, the closest pair
    paths = {
        "orig": _save(tmp_path, "orig", _digit32(digits, 0)),
        "copy": _save(tmp_path, "copy", _shift_noise(_digit32(digits, 0))),
        "one_a": _save(tmp_path, "one_a", _digit32(digits, ones[0])),
        "one_b": _save(tmp_path, "one_b", _digit32(digits, ones[1])),
    }
    pairs = pd.DataFrame({"id_a": ["orig", "one_a"], "id_b": ["copy", "one_b"]})
    got = verify_pairs(pairs, paths)
    copy, lookalike = got.iloc[0], got.iloc[1]
    assert copy["verified"] and copy["path"] == "shift-ncc"
    assert copy["ncc"] > 0.99 and copy["z"] < 0.2
    assert copy["shift_x"] == pytest.approx(-2 / 64)  # copy(y, x) = orig(y, x - 1 px at 32)
    assert not lookalike["verified"] and lookalike["path"] == ""
    assert lookalike["z"] > 1.0
    assert {"score", "phash_dist", "shift_y"} <= set(got.columns)


def test_hash_paths_and_embedding_path(tmp_path, digits):
    orig = _save(tmp_path, "orig", _digit32(digits, 5))
    byte_copy = str(tmp_path / "byte_copy.png")
    shutil.copyfile(orig, byte_copy)
    paths = {
        "orig": orig,
        "bytes": byte_copy,
        "bmp": _save(tmp_path, "bmp", _digit32(digits, 5), fmt="bmp"),  # same pixels
        "other": _save(tmp_path, "other", _digit32(digits, 6)),
    }
    pixel = {k: read_image_info(p).pixel_hash for k, p in paths.items()}
    pairs = pd.DataFrame(
        {
            "id_a": ["orig", "orig", "orig"],
            "id_b": ["bytes", "bmp", "other"],
            "distance": [0.0, 0.0, 0.001],
        }
    )
    got = verify_pairs(pairs, paths, pixel_hashes=pixel)
    assert got["path"].tolist() == ["hash:bytes", "hash:pixels", ""]
    assert got["score"].tolist()[:2] == [1.0, 1.0]
    # a tiny embedding distance confirms on its own when asked to
    assert verify_pairs(pairs, paths, embedding_thresh=0.01)["path"].iloc[2] == "embedding"


def test_photo_crops_shifted_copy_versus_neighbouring_crop(tmp_path):
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]

    def crop(x: int, y: int, side: int = 160) -> str:
        img = Image.fromarray(photo[y : y + side, x : x + side]).resize((128, 128))
        path = tmp_path / f"crop_{x}_{y}.jpg"
        img.save(path, quality=90)
        return str(path)

    paths = {"a": crop(200, 150), "shifted": crop(206, 147), "other": crop(330, 150)}
    pairs = pd.DataFrame({"id_a": ["a", "a"], "id_b": ["shifted", "other"]})
    got = verify_pairs(pairs, paths)
    assert got["path"].tolist() == ["shift-ncc", ""]


def test_shift_ncc_recovers_the_shift_and_descriptors_ignore_it():
    rng = np.random.default_rng(0)
    big = blur(rng.normal(size=(1, 80, 80)).astype(np.float32) * 50, 2.0)
    a, b = big[:, 8:72, 8:72], big[:, 10:74, 5:69]  # b[y, x] = a[y + 2, x - 3]
    ncc, shift = shift_ncc(a, b)
    assert ncc[0] == pytest.approx(1.0, abs=1e-4)
    assert shift[0].tolist() == [2, -3]
    rolled = np.roll(a, (4, -2), axis=(1, 2))  # circular shift: same amplitude spectrum
    np.testing.assert_allclose(
        image_descriptors(a), image_descriptors(rolled), rtol=1e-4, atol=1e-4
    )


def test_candidate_pairs_union_of_embedding_and_image_neighbours():
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(12)]
    got = candidate_pairs(
        ids,
        vectors=rng.normal(size=(12, 8)),
        descriptors=rng.normal(size=(12, 5)),
        m=2,
    )
    assert list(got.columns) == ["id_a", "id_b", "distance", "source"]
    assert (got["id_a"].map(ids.index) < got["id_b"].map(ids.index)).all()
    assert not got.duplicated(["id_a", "id_b"]).any()
    assert set(got["source"]) <= {"embedding", "image", "embedding+image"}
    assert got["distance"].between(0, 2).all()
    with pytest.raises(ValueError, match="vectors and/or descriptors"):
        candidate_pairs(ids)


def test_find_verified_duplicates_end_to_end(tmp_path, digits):
    n = 40
    ids, paths, vectors = [], [], []
    for i in range(n):
        ids.append(f"d{i:02d}")
        paths.append(_save(tmp_path, ids[-1], _digit32(digits, i)))
        vectors.append(digits.images[i].reshape(-1))
    planted = {"exact": 3, "shift_noise": 7, "bmp": 11}
    for kind, i in planted.items():
        ids.append(f"{kind}_of_d{i:02d}")
        if kind == "exact":
            paths.append(str(tmp_path / f"{ids[-1]}.png"))
            shutil.copyfile(paths[i], paths[-1])
            vectors.append(digits.images[i].reshape(-1))
        elif kind == "bmp":
            paths.append(_save(tmp_path, ids[-1], _digit32(digits, i), fmt="bmp"))
            vectors.append(digits.images[i].reshape(-1))
        else:
            g = _shift_noise(_digit32(digits, i), seed=1)
            paths.append(_save(tmp_path, ids[-1], g))
            vectors.append(g.reshape(8, 4, 8, 4).mean((1, 3)).reshape(-1) * 16 / 255)
    infos = [read_image_info(p) for p in paths]
    res = find_verified_duplicates(
        np.asarray(vectors, np.float32),
        ids,
        paths,
        content_hashes=[x.content_hash for x in infos],
        pixel_hashes=[x.pixel_hash for x in infos],
    )
    assert sorted(res.duplicate_ids) == sorted(f"{k}_of_d{i:02d}" for k, i in planted.items())
    by_dup = dict(zip(res.pairs["id_b"], res.pairs["path"], strict=True))
    assert by_dup == {
        "exact_of_d03": "hash:bytes",
        "shift_noise_of_d07": "shift-ncc",
        "bmp_of_d11": "hash:pixels",
    }
    assert res.neighbors_map["d07"][0][0] == "shift_noise_of_d07"
    assert sorted(res.groups) == [
        ["d03", "exact_of_d03"],
        ["d07", "shift_noise_of_d07"],
        ["d11", "bmp_of_d11"],
    ]
    assert res.checked is not None and res.checked["verified"].sum() == 3
    # by embedding alone, close natural pairs of this tiny pixel space would also pass
    loose = find_verified_duplicates(
        np.asarray(vectors, np.float32), ids, paths, confirm_by_embedding=True
    )
    assert set(res.duplicate_ids) < set(loose.duplicate_ids)
    assert "embedding" in set(loose.pairs["path"])


def test_unreadable_file_names_the_sample(tmp_path):
    with pytest.raises(ValueError, match="'ghost'"):
        load_thumbnails(["ghost"], {"ghost": str(tmp_path / "missing.png")})
