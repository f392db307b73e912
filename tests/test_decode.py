"""dagster_brain.decode: orientation, bit depth, alpha and modes, checked against hand-computed
pixels, and its use by ingestion, exact duplicates, embeddings, verification and thumbnails."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from dagster_brain import api
from dagster_brain.algorithms.verify import load_thumbnails
from dagster_brain.contact_sheet import thumbnail_data_uri
from dagster_brain.decode import ImageReadError, decode, normalize_image
from dagster_brain.embedding.pipeline import open_image
from dagster_brain.ingest.image_folder import ingest_image_folder
from dagster_brain.ingest.images import pixel_hash, read_image_info
from dagster_brain.store import Store


def _pattern() -> np.ndarray:
    """A fixed 7x9 RGB pattern (its PNG pixel hash is pinned below)."""
    y, x = np.mgrid[0:7, 0:9]
    return np.stack([x * 28, y * 36, (x * y) % 256], axis=-1).astype(np.uint8)


def _rgb(path) -> list:
    return np.asarray(decode(path).image).tolist()


# -- ordinary 8-bit files: unchanged ---------------------------------------------------------


def test_ordinary_8bit_pixel_hashes_are_unchanged(tmp_path):
    rgb = _pattern()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    # hashes stored before decode.py existed (Image.open(f).convert("RGB"))
    assert read_image_info(tmp_path / "rgb.png").pixel_hash == (
        "a88a89a700f992df657585edc97c427dd924958fb098416b87757c28964ab6ad"
    )
    assert read_image_info(tmp_path / "l.png").pixel_hash == (
        "654d85aecea2bb29063c497db4c8aa2036fe407549ac3386b2adf286dd343b50"
    )
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    pal = Image.new("P", (3, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
    pal.putdata([0, 1, 2])
    pal.save(tmp_path / "p.png")
    for name in ("rgb.jpg", "rgb.bmp", "p.png"):
        with Image.open(tmp_path / name) as im:
            old = pixel_hash(np.asarray(im.convert("RGB")))
        assert read_image_info(tmp_path / name).pixel_hash == old, name
    assert _rgb(tmp_path / "p.png") == [[[10, 20, 30], [200, 100, 50], [0, 255, 0]]]


def test_grey_mode_matches_the_old_verification_decode(tmp_path):
    rgb = np.repeat(np.repeat(_pattern(), 40, axis=0), 40, axis=1)  # 280 x 360
    Image.fromarray(rgb).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft("L", (128, 128))
        old_jpg = np.asarray(im.convert("L"))
    with Image.open(tmp_path / "big.png") as im:
        old_png = np.asarray(im.convert("L"))
    new_jpg = decode(tmp_path / "big.jpg", mode="L", draft_size=128).image
    assert new_jpg.mode == "L" and new_jpg.size == (180, 140)  # DCT scale 1/2
    assert np.array_equal(np.asarray(new_jpg), old_jpg)
    assert np.array_equal(np.asarray(decode(tmp_path / "big.png", mode="L").image), old_png)


# -- bit depth -----------------------------------------------------------------------------


def test_16bit_pngs_keep_their_range_and_are_not_exact_duplicates(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    a = np.array([[300, 65535, 40000], [1000, 256, 33000]], dtype=np.uint16)
    b = np.array([[300, 65535, 20000], [1000, 256, 33000]], dtype=np.uint16)
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "b.png")
    Image.fromarray(a).save(folder / "a_copy.tif")  # same samples, another format
    # the defect this guards against: clipping makes both files (almost) all white
    with Image.open(folder / "a.png") as ia, Image.open(folder / "b.png") as ib:
        assert ia.mode == "I;16"
        assert np.array_equal(np.asarray(ia.convert("RGB")), np.asarray(ib.convert("RGB")))
    got = np.asarray(decode(folder / "a.png").image)
    want = [[1, 255, 156], [3, 1, 128]]  # v >> 8: 40000 // 256 = 156, 33000 // 256 = 128
    assert got.shape == (2, 3, 3)
    assert (got == np.array(want)[..., None]).all()

    store = Store(tmp_path / "data")
    ingest_image_folder(store, "deep", folder)
    samples = store.samples("deep").set_index("sample_id")
    assert samples.loc["a", "pixel_hash"] != samples.loc["b", "pixel_hash"]
    assert samples.loc["a", "pixel_hash"] == samples.loc["a_copy", "pixel_hash"]
    groups = api.compute_exact_duplicates(api.load_dataset("deep", tmp_path / "data")).results
    assert sorted(groups["sample_id"]) == ["a", "a_copy"]
    assert set(groups["match"]) == {"pixels"}


def test_32bit_integer_images(tmp_path):
    Image.fromarray(np.array([[256, 65535, 0]], dtype=np.int32)).save(tmp_path / "in16.tif")
    Image.fromarray(np.array([[-100, 100, 0, 50]], dtype=np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.full((2, 2), -7, dtype=np.int32)).save(tmp_path / "flat.tif")
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    assert [p[0] for p in _rgb(tmp_path / "in16.tif")[0]] == [1, 255, 0]  # as 16-bit
    # min-max over [-100, 100]: 0 -> 127.5 -> 128, 50 -> 191.25 -> 191
    assert [p[0] for p in _rgb(tmp_path / "wide.tif")[0]] == [0, 255, 128, 191]
    assert np.asarray(decode(tmp_path / "flat.tif").image).max() == 0  # constant: no 0/0


def test_float_tiffs(tmp_path):
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    wide = np.array([[-1.0, 0.0, 3.0, np.nan, np.inf]], dtype=np.float32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    Image.fromarray(np.full((2, 2), 5.0, dtype=np.float32)).save(tmp_path / "flat.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    # [0, 1] as is: 63.75 -> 64, 127.5 -> 128
    assert _rgb(tmp_path / "unit.tif") == [[[v] * 3 for v in (0, 64, 128, 255)]]
    # min-max over the finite [-1, 3]: 0 -> 63.75 -> 64; NaN -> low end, +inf -> high end
    assert [p[0] for p in _rgb(tmp_path / "wide.tif")[0]] == [0, 64, 255, 0, 255]
    assert np.asarray(decode(tmp_path / "flat.tif").image).max() == 0


# -- alpha, palette, CMYK, 1-bit, frames ---------------------------------------------------


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    # a = 128: (200*128 + 255*127) / 255 = 227.4; (100*128 + 32385) / 255 = 177.2; 152.1
    assert _rgb(tmp_path / "rgba.png") == [[[255, 255, 255], [200, 100, 50], [227, 177, 152]]]
    la = Image.merge("LA", [Image.new("L", (3, 1), 100), Image.new("L", (3, 1))])
    la.putdata([(100, 0), (100, 255), (100, 128)])
    la.save(tmp_path / "la.png")
    assert _rgb(tmp_path / "la.png") == [[[255] * 3, [100] * 3, [177] * 3]]
    assert np.asarray(decode(tmp_path / "la.png", mode="L").image).tolist() == [[255, 100, 177]]


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (3, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 0])
    pal.putdata([0, 1, 2])
    pal.save(tmp_path / "index.png", transparency=2)  # one transparent index
    assert _rgb(tmp_path / "index.png") == [[[10, 20, 30], [200, 100, 50], [255, 255, 255]]]
    pal.save(tmp_path / "alpha.png", transparency=b"\xff\x80\x00")  # per-entry alpha
    assert _rgb(tmp_path / "alpha.png") == [[[10, 20, 30], [227, 177, 152], [255, 255, 255]]]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(tmp_path / "c.jpg", quality=100)
    got = np.asarray(decode(tmp_path / "c.jpg").image)
    # (255 - C)(255 - K) / 255: 245*215/255 = 206.6, 235*215/255 = 198.1, 225*215/255 = 189.7
    assert got.shape == (16, 16, 3)
    assert np.abs(got.astype(int) - [207, 198, 190]).max() <= 2  # JPEG rounding


def test_one_bit_and_first_frame(tmp_path):
    bits = Image.new("1", (3, 1))
    bits.putdata([0, 255, 0])
    bits.save(tmp_path / "bits.png")
    assert _rgb(tmp_path / "bits.png") == [[[0] * 3, [255] * 3, [0] * 3]]
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert np.asarray(decode(tmp_path / "anim.gif").image)[0, 0].tolist() == [255, 0, 0]


# -- orientation -----------------------------------------------------------------------------


@pytest.fixture
def rotated_jpeg(tmp_path):
    """A 60x20 JPEG (stored) with EXIF orientation 6 and a red stored top-left corner."""
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[..., 1] = np.linspace(0, 250, 60).astype(np.uint8)[None, :]
    arr[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "imgs" / "turned.jpg"
    path.parent.mkdir()
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_is_applied(tmp_path, rotated_jpeg):
    with Image.open(rotated_jpeg) as im:
        stored = np.asarray(im.convert("RGB"))  # the pixels as stored, no rotation
    assert stored.shape == (20, 60, 3)
    d = decode(rotated_jpeg)
    got = np.asarray(d.image)
    assert d.orientation == 6 and got.shape == (60, 20, 3)
    # orientation 6 = turn 90 degrees clockwise to display: out[i, j] = stored[h - 1 - j, i]
    h = stored.shape[0]
    i, j = np.mgrid[0:60, 0:20]
    assert np.array_equal(got, stored[h - 1 - j, i])
    assert got[0, -1].tolist() == stored[0, 0].tolist()  # red corner now top-right
    assert got[0, -1, 0] > 200 and got[0, -1, 1] < 60
    # decoding the decoded image again does not turn it a second time
    assert normalize_image(d.image) is d.image

    store = Store(tmp_path / "data")
    ingest_image_folder(store, "turned", rotated_jpeg.parent)
    row = store.samples("turned").iloc[0]
    assert (row.width, row.height) == (20, 60)
    assert row.pixel_hash == pixel_hash(got)
    assert read_image_info(rotated_jpeg).orientation == 6


def test_orientation_of_a_16bit_tiff(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.array([[0, 10000, 20000], [30000, 40000, 50000]], dtype=np.uint16)
    Image.fromarray(stored).save(tmp_path / "o.tif", exif=exif)
    d = decode(tmp_path / "o.tif")
    # high bytes [[0, 39, 78], [117, 156, 195]] turned clockwise
    assert (d.orientation, d.stored_mode) == (6, "I;16")
    assert np.asarray(d.image)[..., 0].tolist() == [[117, 0], [156, 39], [195, 78]]


def test_every_consumer_sees_the_displayed_image(tmp_path, rotated_jpeg):
    upright = np.asarray(decode(rotated_jpeg).image)
    assert open_image(str(rotated_jpeg)).size == (20, 60)
    assert open_image(str(rotated_jpeg), decode_size=8).size == (10, 30)  # DCT scale 1/2
    uri = thumbnail_data_uri(str(rotated_jpeg), size=128)
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert thumb.size == (40, 120)  # 20x60 scaled by 128 // 60 = 2
    Image.fromarray(upright).save(tmp_path / "upright.png")
    with Image.open(rotated_jpeg) as im:
        im.convert("RGB").save(tmp_path / "stored.png")  # the stored, unturned pixels
    names = ["jpg", "upright", "stored"]
    files = [str(rotated_jpeg), str(tmp_path / "upright.png"), str(tmp_path / "stored.png")]
    t = load_thumbnails(names, files).images
    # same picture (the JPEG's grey comes from its luma channel, the PNGs' from RGB)
    assert np.abs(t[0] - t[1]).mean() < 1.0
    assert np.abs(t[0] - t[2]).mean() > 20.0


def test_model_preprocessing_applies_orientation(rotated_jpeg):
    from dagster_brain.embedding.efficientnet_lite import preprocess_image

    with Image.open(rotated_jpeg) as im:
        from_file = preprocess_image(im)
        stored = Image.fromarray(np.asarray(im.convert("RGB")))  # pixels only, no EXIF
    from_decode = preprocess_image(decode(rotated_jpeg).image)
    assert np.array_equal(from_file.numpy(), from_decode.numpy())
    assert not np.allclose(from_file.numpy(), preprocess_image(stored).numpy())


# -- errors ----------------------------------------------------------------------------------


def test_unreadable_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageReadError, match=rf"^image file not found: {missing}$"):
        decode(missing)
    with pytest.raises(ImageReadError, match=rf"^cannot decode image {junk}: "):
        decode(junk)
    with pytest.raises(ImageReadError, match="^cannot read image file "):
        decode(tmp_path)  # a folder
    with pytest.raises(ImageReadError, match=rf"^cannot decode image {junk}: "):
        read_image_info(junk)
    with pytest.raises(ImageReadError, match="^cannot decode image upload.png: "):
        decode(b"\x89PNG\r\n\x1a\ntruncated", name="upload.png")
    with pytest.raises(ImageReadError, match=rf"{junk}"):
        open_image(str(junk))
    assert thumbnail_data_uri(str(junk)) is None
    assert thumbnail_data_uri(str(missing)) is None
    with pytest.raises(ValueError, match="mode must be 'RGB' or 'L'"):
        decode(junk, mode="RGBA")
