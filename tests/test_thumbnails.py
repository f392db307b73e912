"""Thumbnail grids in the asset metadata: the right items in the right tiles, the byte budget,
placeholders for missing files, patches cropped to their box, duplicate groups by row."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dagster_brain.contact_sheet import GRID_BUDGET_BYTES, Tile, compose_grid
from dagster_brain.item_media import ItemMedia
from dagster_brain.metadata import (
    THUMBNAILS_KEY,
    group_thumbnails,
    score_thumbnails,
    score_tiles,
)
from dagster_brain.methods import get_method, run_brain
from dagster_brain.specs import UniquenessSpec
from dagster_brain.store import Store

RED = (255, 0, 0)
N = 20


def grid_image(markdown: str) -> Image.Image:
    """The image of the data: URI in a Markdown entry."""
    uri = re.search(r"\]\((data:image/(png|jpeg);base64,[^)]+)\)", markdown).group(1)
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def tile_centre(img: Image.Image, placed) -> tuple[int, int, int]:
    return img.getpixel((placed.x + placed.size // 2, placed.y + placed.size // 2))


@pytest.fixture
def scored(tmp_path) -> tuple[Store, list[str]]:
    """20 solid 32x32 images (s00 red, the others shades of blue), labelled cat/dog, and
    vectors in which s00 lies far from the rest."""
    store = Store(tmp_path / "data")
    ids = [f"s{i:02d}" for i in range(N)]
    paths = []
    for i in range(N):
        path = tmp_path / f"img{i:02d}.png"
        Image.new("RGB", (32, 32), RED if i == 0 else (0, 0, 10 * i)).save(path)
        paths.append(str(path))
    samples = pd.DataFrame(
        {
            "sample_id": ids,
            "filepath": paths,
            "tags": [[] for _ in ids],
            "content_hash": [f"h{i}" for i in range(N)],
        }
    )
    gt = pd.DataFrame(
        {
            "sample_id": ids,
            "label_id": [f"g{i}" for i in range(N)],
            "label": ["cat" if i % 2 else "dog" for i in range(N)],
        }
    )
    labels = {"ground_truth": ("classification", ["cat", "dog"], gt)}
    store.write_samples("ds", samples, labels=labels)
    vectors = np.random.default_rng(0).normal(size=(N, 8)) * 0.01 + 1.0
    vectors[0] = -5.0  # s00: the most unique by far
    store.write_embeddings("ds", "e", ids, vectors.astype(np.float32), model="m")
    return store, paths


def test_uniqueness_metadata_shows_top_and_bottom_items_in_score_order(scored):
    store, _ = scored
    spec = UniquenessSpec(brain_key="u", kind="uniqueness", dataset="ds", embeddings="e", k=2)
    outcome = run_brain(spec, store)
    meta = get_method("uniqueness").asset_metadata(outcome)
    res = outcome.results
    ranked = res.sort_values("uniqueness", ascending=False, kind="stable")["sample_id"].tolist()
    assert ranked[0] == "s00"

    thumbs = score_thumbnails(res, "uniqueness", outcome.summary["media"])
    grid = thumbs.grid
    assert grid.items(0) == ranked[:8]  # highest first
    assert grid.items(1) == ranked[::-1][:8]  # lowest first
    assert grid.titles == ("highest uniqueness: top 8", "lowest uniqueness: bottom 8")
    assert not any(p.placeholder for p in grid.layout)
    # the Dagster entry is this grid, inline
    assert meta[THUMBNAILS_KEY].value == thumbs.markdown
    assert grid.data_uri in thumbs.markdown
    assert f"top: {', '.join(ranked[:8])}" in thumbs.markdown

    img = grid_image(thumbs.markdown)
    assert grid.format == "png" and img.size == (grid.width, grid.height)
    assert grid.tile == 96 and img.width == 6 + 8 * (96 + 6)
    by_item = {(p.row, p.item): p for p in grid.layout}
    assert tile_centre(img, by_item[(0, "s00")]) == RED  # the planted red image, top-left
    assert by_item[(0, "s00")].col == 0
    others = [p for p in grid.layout if p.item != "s00"]
    assert all(tile_centre(img, p)[0] == 0 for p in others)  # no other tile is red
    assert len(thumbs.markdown) <= GRID_BUDGET_BYTES


def test_captions_show_score_label_and_prediction():
    rows = pd.DataFrame(
        {
            "sample_id": ["a"],
            "mistakenness": [0.91234],
            "label": ["cat"],
            "prediction": ["dog"],
            "filepath": ["/x/a.png"],
            "box": [None],
            "media_label": [None],
        }
    )
    (tile,) = score_tiles(rows, "mistakenness")
    assert tile.caption == ("a", "score 0.912", "label: cat", "pred: dog")
    rows = rows.drop(columns=["label", "prediction"]).assign(media_label="bird")
    rows = rows.rename(columns={"mistakenness": "rank"}).assign(rank=3)
    assert score_tiles(rows, "rank")[0].caption == ("a", "rank 3", "label: bird")


def test_byte_budget_holds_for_16_large_images(tmp_path):
    rng = np.random.default_rng(1)
    tiles = []
    for i in range(16):  # noise that survives downscaling: the worst case for compression
        path = tmp_path / f"big{i}.png"
        arr = rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8)
        Image.fromarray(arr).resize((1024, 768), Image.Resampling.NEAREST).save(path)
        tiles.append(Tile(f"b{i}", str(path), (f"b{i}", "score 0.5", "label: x")))
    rows = [("top", tiles[:8]), ("bottom", tiles[8:])]
    grid = compose_grid(rows)
    assert len(grid.data_uri) <= GRID_BUDGET_BYTES
    assert [p.item for p in grid.layout] == [t.item for t in tiles]
    assert not any(p.placeholder for p in grid.layout)
    print(f"16 noise images: {grid.format}, tile {grid.tile}, {len(grid.data_uri)} bytes")

    media = _PathMedia({f"b{i}": str(tmp_path / f"big{i}.png") for i in range(16)})
    res = pd.DataFrame({"sample_id": [f"b{i}" for i in range(16)], "s": np.linspace(1, 0, 16)})
    thumbs = score_thumbnails(res, "s", media)
    assert thumbs.grid is not None and len(thumbs.markdown.encode()) <= GRID_BUDGET_BYTES
    # a smaller budget is kept too, by smaller tiles
    small = score_thumbnails(res, "s", media, budget=30_000)
    assert len(small.markdown.encode()) <= 30_000 and small.grid.tile < 96
    print(f"entry {len(thumbs.markdown)} B; 30 kB: {len(small.markdown)} B, tile {small.grid.tile}")


class _PathMedia:
    """Stands in for ItemMedia: file paths from a dict, no boxes or labels."""

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def frame(self, items: pd.DataFrame) -> pd.DataFrame:
        out = items.reset_index(drop=True).copy()
        out["filepath"] = [self.paths.get(s) for s in out["sample_id"]]
        out["box"] = None
        out["media_label"] = None
        return out


def test_missing_and_unreadable_files_give_placeholders(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), RED).save(good)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    media = _PathMedia(
        {"good": str(good), "gone": str(tmp_path / "gone_file.png"), "junk": str(junk)}
    )
    res = pd.DataFrame({"sample_id": ["good", "gone", "junk"], "s": [0.9, 0.5, 0.1]})
    thumbs = score_thumbnails(res, "s", media)
    assert thumbs.grid is not None, thumbs.markdown
    placed = {p.item: p for p in thumbs.grid.layout}
    assert [p.placeholder for p in thumbs.grid.layout] == [False, True, True]
    img = grid_image(thumbs.markdown)
    assert tile_centre(img, placed["good"]) == RED
    assert thumbs.grid.items(0) == ["good", "gone"] and thumbs.grid.items(1) == ["junk"]
    for name in ("gone", "junk"):  # grey tiles with text (the file named), nothing red
        p = placed[name]
        tile = img.crop((p.x, p.y, p.x + p.size, p.y + p.size))
        assert RED not in set(tile.getdata()) and len(set(tile.getdata())) > 2
    assert compose_grid([("r", [Tile("x", None)])]).layout[0].placeholder


def test_patch_tiles_crop_their_box(tmp_path):
    store = Store(tmp_path / "data")
    img = np.zeros((40, 80, 3), np.uint8)
    img[..., 2] = 255  # blue image...
    img[20:40, 40:80] = RED  # ...with a red bottom-right quarter
    path = tmp_path / "scene.png"
    Image.fromarray(img).save(path)
    samples = pd.DataFrame(
        {"sample_id": ["a"], "filepath": [str(path)], "tags": [[]], "content_hash": ["h"]}
    )
    boxes = pd.DataFrame(
        {
            "sample_id": ["a", "a"],
            "label_id": ["red_box", "blue_box"],
            "label": ["fire", "sky"],
            "box": [[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]],
        }
    )
    store.write_samples("ds", samples, labels={"objects": ("detections", ["fire", "sky"], boxes)})
    media = ItemMedia(store, "ds", patches_field="objects")
    res = pd.DataFrame(
        {"sample_id": ["a", "a"], "label_id": ["red_box", "blue_box"], "u": [0.8, 0.2]}
    )
    thumbs = score_thumbnails(res, "u", media, n=1)
    assert thumbs.grid.items(0) == ["red_box"] and thumbs.grid.items(1) == ["blue_box"]
    out = grid_image(thumbs.markdown)
    placed = {p.item: p for p in thumbs.grid.layout}
    red, blue = placed["red_box"], placed["blue_box"]
    tile = np.asarray(out.crop((red.x, red.y, red.x + red.size, red.y + red.size)))
    # the 40x20 red box enlarged 2x fills 80x40 pixels (the whole image would give 40x20)
    assert int((tile == RED).all(axis=-1).sum()) == 80 * 40
    assert tile_centre(out, blue) == (0, 0, 255)  # the whole image's centre is red
    assert "label: fire" in score_tiles(media.frame(res.head(1)), "u")[0].caption


def test_duplicate_groups_one_row_each(tmp_path):
    paths = {}
    for name in ("a", "b", "c", "d", "e"):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (8, 8), RED if name == "c" else (0, 0, 0)).save(paths[name])
    res = pd.DataFrame(
        {
            "group": [1, 0, 0, 1, 1],
            "sample_id": ["c", "a", "b", "d", "e"],
            "role": ["kept", "kept", "duplicate", "duplicate", "duplicate"],
            "distance": [0.0, 0.0, 0.01, 0.02, 0.03],
        }
    )
    thumbs = group_thumbnails(res, _PathMedia(paths))
    grid = thumbs.grid
    assert grid.titles == ("group 0: 2 items", "group 1: 3 items")
    assert grid.items(0) == ["a", "b"] and grid.items(1) == ["c", "d", "e"]
    assert tile_centre(grid_image(thumbs.markdown), grid.layout[2]) == RED  # c: row 1, col 0
    assert "2 of 2 duplicate groups shown" in thumbs.markdown
    assert group_thumbnails(res, _PathMedia(paths), groups=1).grid.titles == ("group 0: 2 items",)


def test_composition_does_not_import_dagster():
    code = "import sys, dagster_brain.contact_sheet; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
