"""Image issues: statistics by hand, planted issues found, identical images unflagged, data vs
fixed thresholds, unreadable files reported, and the method through the registry."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import sample_frame, write_images
from PIL import Image, ImageFilter
from sklearn.datasets import load_sample_images

import dagster_brain as fob
from dagster_brain.algorithms.image_issues import (
    ISSUES,
    PIXEL_ISSUES,
    RULES,
    STAT_COLUMNS,
    image_stats,
    issue_lists,
    score_issues,
)
from dagster_brain.methods import METHODS
from dagster_brain.methods.image_issues import ImageIssuesSpec, file_stats
from dagster_brain.store import Store

# -- statistics by hand ----------------------------------------------------------------------


def test_stats_of_a_flat_and_a_two_level_image():
    flat = np.full((10, 20, 3), (100, 100, 100), np.uint8)
    s = image_stats(flat)
    assert (s["width"], s["height"]) == (20.0, 10.0)
    assert s["luma_mean"] == pytest.approx(100 / 255)
    assert s["luma_p10"] == s["luma_p90"] == pytest.approx(100 / 255)
    assert s["entropy"] == 0.0
    assert math.isnan(s["sharpness"])  # no contrast: nothing to judge
    assert s["colorfulness"] == 0.0

    # left half black, right half white: 1 bit; a colour image has spread / range > 0
    two = np.zeros((8, 8, 3), np.uint8)
    two[:, 4:] = 255
    s = image_stats(two)
    assert s["entropy"] == pytest.approx(1.0)
    assert s["luma_p10"] == 0.0 and s["luma_p90"] == 1.0
    assert s["colorfulness"] == 0.0
    red = two.copy()
    red[:, 4:] = (255, 0, 0)  # grey 76: spread 255 over a range of 76 levels
    assert image_stats(red)["colorfulness"] == pytest.approx(255 / 76)
    with pytest.raises(ValueError, match="uint8"):
        image_stats(np.zeros((4, 4, 3), np.float32))


def test_blur_lowers_sharpness_and_darkening_does_not():
    rng = np.random.default_rng(0)
    rgb = np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    sharp = image_stats(rgb)["sharpness"]
    blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(2)))
    assert image_stats(blurred)["sharpness"] < 0.5 * sharp
    darker = (rgb // 4).astype(np.uint8)
    assert image_stats(darker)["sharpness"] == pytest.approx(sharp, rel=0.05)


# -- scores and flags ------------------------------------------------------------------------


def _stats(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS), dtype=float)


def test_identical_images_score_zero_unflagged():
    photo = np.asarray(load_sample_images().images[0])[100:300, 100:300]
    stats = _stats([image_stats(photo)] * 5)
    for mode in ("data", "fixed"):
        got = score_issues(stats, [True] * 5, thresholds=mode)
        assert np.isfinite(got.scores.to_numpy()).all()
        assert not got.flags.to_numpy().any()
        if mode == "data":
            assert (got.scores.to_numpy() == 0).all()
    one = score_issues(stats.iloc[:1], [True])  # one image: defined too
    assert not one.flags.to_numpy().any()


def test_score_is_one_half_at_the_threshold():
    # four entropies of 7 (MAD 0: the scale is the floor), one just inside the threshold
    # centre - cutoff * floor and one just past it
    rule = RULES["low_information"]
    base = {c: 1.0 for c in STAT_COLUMNS} | {"luma_mean": 0.5, "luma_p10": 0.1, "luma_p90": 0.9}
    rows = [base | {"entropy": 7.0} for _ in range(4)]
    rows += [base | {"entropy": 7.0 - f * rule.cutoff * rule.floor} for f in (0.999, 1.001)]
    got = score_issues(_stats(rows), [True] * 6, issues=["low_information"])
    assert got.scores["low_information"].iloc[-2:].tolist() == pytest.approx([0.5, 0.5], abs=1e-3)
    assert got.scores["low_information"].iloc[:4].tolist() == [0.0] * 4
    assert got.flags["low_information"].tolist() == [False] * 5 + [True]
    assert got.thresholds["low_information"]["threshold"] == pytest.approx(7.0 - 0.1 * rule.cutoff)


def test_data_thresholds_follow_the_dataset_fixed_ones_do_not():
    # a dataset of uniformly dim images (mean luminance 0.08): alike, so none is odd by the
    # data; the fixed cutoff (mean < 0.17) calls every one dark
    rng = np.random.default_rng(1)
    dim = [image_stats((rng.integers(0, 40, (48, 48, 3))).astype(np.uint8)) for _ in range(12)]
    stats = _stats(dim)
    data = score_issues(stats, [True] * 12, issues=["dark"], thresholds="data")
    fixed = score_issues(stats, [True] * 12, issues=["dark"], thresholds="fixed")
    assert not data.flags["dark"].any()
    assert fixed.flags["dark"].all()
    with pytest.raises(ValueError, match="unknown image issues"):
        score_issues(stats, [True] * 12, issues=["fuzzy"])


def test_unreadable_rows_score_one_on_unreadable_only():
    stats = _stats([{c: math.nan for c in STAT_COLUMNS}, image_stats(np.zeros((4, 4, 3), "u1"))])
    got = score_issues(stats, [False, True])
    assert got.flags["unreadable"].tolist() == [True, False]
    assert got.scores.loc[0, "unreadable"] == 1.0
    assert not got.flags.loc[0, list(PIXEL_ISSUES)].any()
    assert issue_lists(got.flags)[0] == "unreadable"


# -- planted issues in files -----------------------------------------------------------------


def _clean_crops(n: int, seed: int) -> list[np.ndarray]:
    """Well-exposed, textured crops of scikit-learn's sample photographs (~200 px)."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(im) for im in load_sample_images().images]
    out = []
    while len(out) < n:
        photo = photos[len(out) % len(photos)]
        h, w = (int(v) for v in rng.integers(180, 260, 2))
        y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
        crop = photo[y : y + h, x : x + w]
        grey = crop.mean(axis=2)
        if 64 <= grey.mean() <= 190 and grey.std() >= 30:
            out.append(np.ascontiguousarray(crop))
    return out


def _planted(folder) -> dict[str, str]:
    """30 clean JPEGs and one file per issue kind: name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    crops = _clean_crops(38, seed=3)
    files = {}
    for i, crop in enumerate(crops[:30]):
        files[f"clean_{i:02d}"] = crop
    base = crops[30:]
    files["dark"] = (base[0] * 0.15).astype(np.uint8)
    files["bright"] = (255 - (255 - base[1].astype(float)) * 0.15).astype(np.uint8)
    files["blurry"] = np.asarray(Image.fromarray(base[2]).filter(ImageFilter.GaussianBlur(2.5)))
    rng = np.random.default_rng(4)
    flat = np.full((220, 220, 3), (90, 140, 120), float) + rng.normal(0, 1.5, (220, 220, 3))
    files["low_information"] = np.clip(flat, 0, 255).astype(np.uint8)
    files["odd_size"] = np.asarray(Image.fromarray(base[3]).resize((20, 18)))
    strips = [b[:90] for b in (base[4], base[5], base[6], base[4])]
    files["odd_aspect_ratio"] = np.concatenate(strips, axis=1)  # ~ 800 x 90
    files["grayscale"] = np.asarray(Image.fromarray(base[7]).convert("L").convert("RGB"))
    paths = {}
    for name, rgb in files.items():
        path = folder / f"{name}.jpg"
        Image.fromarray(rgb).save(path, quality=92)
        paths[name] = str(path)
    cut = folder / "truncated.png"
    Image.fromarray(base[0]).save(cut)
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    paths["truncated"] = str(cut)
    paths["empty"] = str(empty)
    return paths


def _expected(name: str) -> str:
    return "unreadable" if name in ("truncated", "empty") else name


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _planted(tmp_path_factory.mktemp("planted"))


def test_each_planted_issue_is_flagged_and_clean_images_are_not(planted):
    names = list(planted)
    stats = file_stats([planted[n] for n in names], workers=1)
    got = score_issues(stats, stats["error"].isna().to_numpy())
    flagged = dict(zip(names, issue_lists(got.flags), strict=True))
    for name in names:
        if name.startswith("clean"):
            assert flagged[name] == "", name
        else:
            assert _expected(name) in flagged[name].split(","), (name, flagged[name])
    assert "truncated" in stats.loc[names.index("truncated"), "error"]
    assert "truncated.png" in stats.loc[names.index("truncated"), "error"]
    assert "empty.jpg" in stats.loc[names.index("empty"), "error"]
    # the planted kind is the only flag of these images (a strongly darkened or washed-out
    # image has also lost most grey levels, so it may be low_information as well)
    for name in ("blurry", "grayscale", "odd_aspect_ratio", "truncated", "empty"):
        assert flagged[name] == _expected(name), (name, flagged[name])
    for name in ("dark", "bright"):
        assert set(flagged[name].split(",")) <= {name, "low_information"}, flagged[name]


def test_workers_give_the_same_statistics(planted):
    paths = list(planted.values()) * 2  # two chunks and more
    inline = file_stats(paths, workers=1)
    pooled = file_stats(paths, workers=2)
    pd.testing.assert_frame_equal(inline, pooled)


# -- the method ------------------------------------------------------------------------------


def test_the_method_through_the_registry_reuses_unchanged_files(planted, tmp_path):
    names = sorted(planted)
    store = Store(tmp_path / "data")
    frame = sample_frame([planted[n] for n in names])
    store.write_samples("shots", frame)
    ids = dict(zip(names, frame["sample_id"], strict=True))
    ds = fob.Dataset("shots", store)

    out = fob.compute_brain(ds, "image_issues", "issues", workers=1)
    res = out.results.set_index("sample_id")
    assert len(res) == len(names)
    for issue in ISSUES:
        assert res[f"{issue}_score"].between(0, 1).all()
        assert res[f"is_{issue}"].dtype == bool
    assert res["image_issue_score"].between(0, 1).all()
    for name in names:
        row = res.loc[ids[name]]
        if name.startswith("clean"):
            assert row["issues"] == "" and row["image_issue_score"] < 0.5
        else:
            assert _expected(name) in row["issues"].split(","), (name, row["issues"])
            assert row["image_issue_score"] >= 0.5
    assert res.loc[ids["empty"], "image_issue_score"] == 1.0
    assert "empty.jpg" in res.loc[ids["empty"], "error"]
    assert out.summary["decoded"] == len(names) and out.summary["reused"] == 0
    assert out.summary["flagged"]["unreadable"] == 2
    record = store.get_run("shots", "issues")
    assert record.kind == "image_issues"
    assert set(record.upstream["thresholds"]) == set(PIXEL_ISSUES)

    # a second run decodes only what changed (here: the unreadable files, and one new hash)
    frame.loc[frame["sample_id"] == ids["clean_00"], "content_hash"] = "changed"
    store.write_samples("shots", frame)
    again = fob.compute_image_issues(ds, brain_key="issues", workers=1)
    assert again.summary["decoded"] == 3 and again.summary["reused"] == len(names) - 3
    cols = ["issues", "image_issue_score", "image_width", "entropy", "sharpness"]
    pd.testing.assert_frame_equal(
        again.results.set_index("sample_id")[cols], res[cols], check_exact=False
    )

    # fixed thresholds, a subset of issues, and a view
    fixed = fob.compute_image_issues(
        ds, brain_key="fixed", thresholds="fixed", issues=["dark", "unreadable"], workers=1
    )
    assert [c for c in fixed.results if c.startswith("is_")] == ["is_dark", "is_unreadable"]
    assert set(fixed.results.loc[fixed.results["is_dark"], "sample_id"]) == {ids["dark"]}
    view = ds.view([ids["dark"], ids["clean_01"], ids["clean_02"]])
    assert len(fob.compute_image_issues(view, brain_key="view", workers=1).results) == 3
    with pytest.raises(Exception, match="thresholds"):
        ImageIssuesSpec(brain_key="k", kind="image_issues", dataset="shots", thresholds="auto")


def test_the_asset_materialises_and_passes_its_check(tmp_path):
    from dagster_brain.definitions import build_defs
    from dagster_brain.factory import brain_key_asset

    folder = tmp_path / "images"
    write_images(folder, 4, seed=5)
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"name": "toy", "source": {"type": "image_folder", "path": str(folder)}}
                ],
                "brain_runs": [
                    {"brain_key": "issues", "kind": "image_issues", "dataset": "toy", "workers": 1}
                ],
            }
        )
    )
    defs = build_defs(keys, tmp_path / "data")
    result = dg.materialize([*defs.assets, *defs.asset_checks], resources=defs.resources)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    check = next(e for e in evaluations if e.asset_key == brain_key_asset("toy", "issues"))
    assert check.passed
    res = Store(tmp_path / "data").load_results("toy", "issues")
    assert len(res) == 4 and not res["is_unreadable"].any()
    assert METHODS["image_issues"].score.column == "image_issue_score"
