"""Offline demo datasets with planted mistakes and duplicates, deterministic given a seed.

``digits``: scikit-learn's 8x8 digits as 32x32 PNGs, ground truth with planted label flips,
out-of-fold predictions (log-probabilities as logits), a 64-d ``pixels`` embedding and planted
near-duplicates. ``shapes``: Pillow-drawn circles, squares and triangles with COCO ground truth
(planted wrong labels, shifted, deleted and spurious boxes) and COCO results as predictions.
Each folder has a ``truth.json`` that lists what was planted.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dagster_brain.ingest.coco import ingest_coco
from dagster_brain.ingest.errors import IngestReport
from dagster_brain.ingest.manifest import ingest_manifest
from dagster_brain.store import Store

DIGIT_CLASSES = [str(d) for d in range(10)]
SHAPE_CLASSES = ["circle", "square", "triangle"]
DUPLICATE_KINDS = ("exact", "reencoded", "noise", "shift")
# Planted ground-truth errors, as fractions of the real objects (at least one of each).
SHAPE_ERROR_RATES = {"mislabeled": 0.04, "shifted": 0.04, "missing": 0.04, "spurious": 0.03}
FALSE_POSITIVE_RATE = 0.05  # low-confidence false-positive predictions per image
DEMOS = ("digits", "shapes")


@dataclass(frozen=True)
class DemoFiles:
    """Where a demo's files are; ``truth`` lists what was planted."""

    root: Path
    images_dir: Path
    truth: Path
    manifest: Path | None = None
    annotations: Path | None = None
    predictions: Path | None = None

    def load_truth(self) -> dict[str, Any]:
        """The parsed ``truth.json``."""
        return json.loads(self.truth.read_text())


def _reusable(files: DemoFiles, params: dict) -> bool:
    """Files from an earlier call with the same parameters, complete (truth.json is last)."""
    if not files.truth.is_file():
        return False
    try:
        same = files.load_truth().get("params") == params
    except (OSError, json.JSONDecodeError):
        return False
    paths = [files.manifest, files.annotations, files.predictions]
    return same and all(p.is_file() for p in paths if p is not None)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# -- digits ------------------------------------------------------------------------------


def _pool_features(gray32: np.ndarray) -> np.ndarray:
    """(n, 32, 32) uint8 -> (n, 64) mean of each 4x4 block, in [0, 1]."""
    n = gray32.shape[0]
    return gray32.reshape(n, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(n, 64) / 255.0


def make_digits_demo(
    out_dir: str | os.PathLike,
    seed: int = 51,
    flip_fraction: float = 0.05,
    n_duplicates: int = 40,
    n_samples: int | None = None,
    reuse: bool = True,
) -> DemoFiles:
    """Digits as PNGs plus ``manifest.parquet`` and ``truth.json`` (see the module docstring).

    ``n_samples`` takes the first n of the 1,797 digits (for quick tests). Copies are sample
    ids after the originals; they copy unflipped originals and keep their label. Predictions
    come from ``LogisticRegression`` on 4x4-pooled pixels trained on the noisy labels, out of
    fold, with each copy in its original's fold; logits are natural-log probabilities.
    """
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    out = Path(out_dir)
    files = DemoFiles(
        root=out,
        images_dir=out / "images",
        truth=out / "truth.json",
        manifest=out / "manifest.parquet",
    )
    params = {
        "demo": "digits",
        "version": 1,
        "seed": seed,
        "flip_fraction": flip_fraction,
        "n_duplicates": n_duplicates,
        "n_samples": n_samples,
    }
    if reuse and _reusable(files, params):
        return files
    files.truth.unlink(missing_ok=True)  # written last: marks complete files
    digits = load_digits()
    n = len(digits.target) if n_samples is None else int(n_samples)
    if not 50 <= n <= len(digits.target):
        raise ValueError(f"n_samples must be in [50, {len(digits.target)}], not {n}")
    if not 0 <= flip_fraction < 0.5 or not 0 <= n_duplicates <= n // 2:
        raise ValueError("flip_fraction must be in [0, 0.5) and n_duplicates in [0, n_samples/2]")
    rng = np.random.default_rng(seed)
    y_true = digits.target[:n].astype(int)
    gray8 = np.round(digits.images[:n] * (255 / 16)).astype(np.uint8)
    gray = np.kron(gray8, np.ones((1, 4, 4), dtype=np.uint8))  # nearest-neighbour 8 -> 32

    n_flip = int(round(flip_fraction * n))
    flipped = np.sort(rng.choice(n, n_flip, replace=False))
    y_noisy = y_true.copy()
    y_noisy[flipped] = (y_true[flipped] + rng.integers(1, 10, n_flip)) % 10
    clean = np.setdiff1d(np.arange(n), flipped)
    originals = rng.choice(clean, n_duplicates, replace=False)

    files.images_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"digit_{i:04d}" for i in range(n + n_duplicates)]
    rel_paths = []
    for i in range(n):
        rel_paths.append(f"images/{ids[i]}.png")
        Image.fromarray(gray[i]).convert("RGB").save(out / rel_paths[i])
    copies, duplicates = [], []
    for j, orig in enumerate(originals):
        kind = DUPLICATE_KINDS[j % len(DUPLICATE_KINDS)]
        cid = ids[n + j]
        pixels = gray[orig]
        if kind == "exact":
            rel = f"images/{cid}.png"
            shutil.copyfile(out / rel_paths[orig], out / rel)
        elif kind == "reencoded":
            rel = f"images/{cid}.bmp"  # same pixels, other bytes
            Image.fromarray(pixels).convert("RGB").save(out / rel)
        else:
            if kind == "noise":
                noise = rng.normal(0.0, 8.0, pixels.shape)
                pixels = np.clip(np.round(pixels + noise), 0, 255).astype(np.uint8)
            else:  # one pixel to the right
                pixels = np.concatenate([np.zeros_like(pixels[:, :1]), pixels[:, :-1]], axis=1)
            rel = f"images/{cid}.png"
            Image.fromarray(pixels).convert("RGB").save(out / rel)
        rel_paths.append(rel)
        copies.append(pixels)
        duplicates.append({"copy_id": cid, "original_id": ids[orig], "kind": kind})

    all_gray = np.concatenate([gray, np.asarray(copies, np.uint8).reshape(-1, 32, 32)])
    features = _pool_features(all_gray)
    labels = np.concatenate([y_noisy, y_noisy[originals]])
    groups = np.concatenate([np.arange(n), originals])
    smallest = np.bincount(labels)[np.bincount(labels) > 0].min()
    n_splits = int(np.clip(smallest, 2, 5))  # small subsets: no fold without a class
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    seen_proba = cross_val_predict(
        LogisticRegression(max_iter=2000),
        features,
        labels,
        groups=groups,
        cv=cv,
        method="predict_proba",
    )
    proba = np.zeros((len(labels), len(DIGIT_CLASSES)))
    proba[:, np.unique(labels)] = seen_proba  # columns follow the classes present
    logits = np.log(np.clip(proba, 1e-12, 1.0))
    pred = proba.argmax(axis=1)
    split = np.where(rng.random(len(ids)) < 0.8, "train", "val")

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": ids,
            "filepath": rel_paths,
            "split": split.tolist(),
            "ground_truth": [DIGIT_CLASSES[c] for c in labels],
            "prediction": [DIGIT_CLASSES[c] for c in pred],
            "confidence": proba.max(axis=1),
            "logits": logits.tolist(),
            "pixels": features.astype(np.float32).tolist(),
        }
    )
    pq.write_table(table, files.manifest)
    noisy_flipped = y_noisy[flipped]
    _write_json(
        files.truth,
        {
            "params": params,
            "classes": DIGIT_CLASSES,
            "logits": "natural-log class probabilities (log predict_proba, clipped at 1e-12) "
            "of an out-of-fold LogisticRegression on 4x4-pooled pixels, trained on the noisy "
            "ground truth",
            "oof_accuracy_vs_true": float(np.mean(pred[:n] == y_true)),
            "flips": [
                {"sample_id": ids[i], "true": DIGIT_CLASSES[t], "noisy": DIGIT_CLASSES[f]}
                for i, t, f in zip(flipped, y_true[flipped], noisy_flipped, strict=True)
            ],
            "duplicates": duplicates,
        },
    )
    return files


# -- shapes ------------------------------------------------------------------------------


def _overlaps(box: list[float], others: list[list[float]], margin: float = 2.0) -> bool:
    x, y, w, h = box
    return any(
        x < ox + ow + margin
        and ox < x + w + margin
        and y < oy + oh + margin
        and oy < y + h + margin
        for ox, oy, ow, oh in others
    )


def _free_box(rng, size: int, taken: list[list[float]], lo: int, hi: int) -> list[float] | None:
    """A square box of side in [lo, hi] inside the image that overlaps none of ``taken``."""
    for _ in range(50):
        s = int(rng.integers(lo, hi + 1))
        x, y = (int(v) for v in rng.integers(1, size - s - 1, 2))
        box = [float(x), float(y), float(s), float(s)]
        if not _overlaps(box, taken):
            return box
    return None


def _contrasting(rng, background: np.ndarray) -> tuple[int, int, int]:
    for _ in range(100):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background).sum() > 200:
            break
    return tuple(int(c) for c in colour)


def _draw(draw: ImageDraw.ImageDraw, cls: str, box: list[float], colour) -> None:
    x, y, s, _ = box
    x1, y1 = x + s - 1, y + s - 1
    if cls == "circle":
        draw.ellipse([x, y, x1, y1], fill=colour)
    elif cls == "square":
        draw.rectangle([x, y, x1, y1], fill=colour)
    else:
        draw.polygon([(x + (s - 1) / 2, y), (x, y1), (x1, y1)], fill=colour)


def _jitter(rng, box: list[float], size: int) -> list[float]:
    """A predicted box near ``box``: each side moved by a few percent, kept in the image."""
    x, y, w, h = box
    dx0, dy0, dx1, dy1 = rng.normal(0.0, 0.03, 4) * np.array([w, h, w, h])
    x0, y0 = round(max(0.0, x + dx0), 2), round(max(0.0, y + dy0), 2)
    x1, y1 = round(min(float(size), x + w + dx1), 2), round(min(float(size), y + h + dy1), 2)
    return [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]  # corners rounded: stays inside


def make_shapes_demo(
    out_dir: str | os.PathLike,
    seed: int = 51,
    n_images: int = 200,
    image_size: int = 128,
    reuse: bool = True,
) -> DemoFiles:
    """Shapes PNGs, ``annotations.json`` (COCO), ``predictions.json`` (COCO results), truth.

    Planted in the ground truth (label ids as ingested with the default field names):
    ``mislabeled`` (class swapped), ``shifted`` (moved by half the box width), ``missing``
    (GT deleted; its prediction ``predictions:<n>`` stays), ``spurious`` (GT box on empty
    background, no prediction); plus low-confidence ``false_positives`` among predictions.
    Other predictions are the true boxes jittered by ~3% with confidence in [0.75, 0.99].
    """
    out = Path(out_dir)
    files = DemoFiles(
        root=out,
        images_dir=out / "images",
        truth=out / "truth.json",
        annotations=out / "annotations.json",
        predictions=out / "predictions.json",
    )
    params = {
        "demo": "shapes",
        "version": 1,
        "seed": seed,
        "n_images": n_images,
        "image_size": image_size,
    }
    if reuse and _reusable(files, params):
        return files
    files.truth.unlink(missing_ok=True)
    if n_images < 10 or image_size < 64:
        raise ValueError("n_images must be >= 10 and image_size >= 64")
    rng = np.random.default_rng(seed)
    files.images_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = image_size // 8, image_size * 5 // 16

    images, objects = [], []  # objects: (image index, class, box)
    for k in range(n_images):
        name = f"shape_{k:04d}.png"
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0.0, 1.0, image_size)[:, None, None]
        canvas = np.broadcast_to(top + (bottom - top) * ramp, (image_size, image_size, 3))
        img = Image.fromarray(np.round(canvas).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        taken: list[list[float]] = []
        for _ in range(int(rng.integers(1, 5))):
            box = _free_box(rng, image_size, taken, lo, hi)
            if box is None:
                continue
            cls = SHAPE_CLASSES[int(rng.integers(3))]
            _draw(draw, cls, box, _contrasting(rng, (top + bottom) / 2))
            taken.append(box)
            objects.append((k, cls, box))
        img.save(files.images_dir / name)
        images.append(
            {
                "id": k + 1,
                "file_name": name,
                "width": image_size,
                "height": image_size,
                "taken": taken,
            }
        )

    n_obj = len(objects)
    counts = {key: max(1, int(round(rate * n_obj))) for key, rate in SHAPE_ERROR_RATES.items()}
    order = rng.permutation(n_obj)
    n_mis, n_shift, n_miss = counts["mislabeled"], counts["shifted"], counts["missing"]
    mislabeled = set(order[:n_mis].tolist())
    shifted = set(order[n_mis : n_mis + n_shift].tolist())
    missing = set(order[n_mis + n_shift : n_mis + n_shift + n_miss].tolist())

    gt_by_image: dict[int, list[dict]] = {k: [] for k in range(n_images)}
    pred_by_image: dict[int, list[dict]] = {k: [] for k in range(n_images)}
    for o, (k, cls, box) in enumerate(objects):
        pred = {
            "cls": cls,
            "box": _jitter(rng, box, image_size),
            "score": round(float(rng.uniform(0.75, 0.99)), 4),
            "planted": None,
        }
        if o in missing:
            pred["planted"] = "missing"
        pred_by_image[k].append(pred)
        if o in missing:
            continue
        gt = {"cls": cls, "box": list(box), "planted": None, "true_cls": cls, "true_box": box}
        if o in mislabeled:
            others = [c for c in SHAPE_CLASSES if c != cls]
            gt["cls"], gt["planted"] = others[int(rng.integers(2))], "mislabeled"
        elif o in shifted:
            x, y, w, h = box
            x = x + w / 2 if x + 1.5 * w <= image_size else x - w / 2
            gt["box"], gt["planted"] = [x, y, w, h], "shifted"
            images[k]["taken"].append(gt["box"])
        gt_by_image[k].append(gt)

    def _plant_empty(kind: str, count: int) -> None:
        for k in rng.permutation(n_images).tolist():
            if count == 0:
                return
            box = _free_box(rng, image_size, images[k]["taken"], lo, hi)
            if box is None:
                continue
            images[k]["taken"].append(box)
            cls = SHAPE_CLASSES[int(rng.integers(3))]
            if kind == "spurious":
                gt_by_image[k].append({"cls": cls, "box": box, "planted": "spurious"})
            else:
                score = round(float(rng.uniform(0.05, 0.3)), 4)
                pred_by_image[k].append(
                    {"cls": cls, "box": box, "score": score, "planted": "false_positive"}
                )
            count -= 1

    _plant_empty("spurious", counts["spurious"])
    _plant_empty("false_positive", max(1, int(round(FALSE_POSITIVE_RATE * n_images))))

    cat_id = {c: i + 1 for i, c in enumerate(SHAPE_CLASSES)}
    truth: dict[str, list] = {
        "mislabeled": [],
        "shifted": [],
        "missing": [],
        "spurious": [],
        "false_positives": [],
    }
    annotations, results = [], []
    for k, im in enumerate(images):
        sample_id = im["file_name"].removesuffix(".png")
        for gt in gt_by_image[k]:
            ann_id = len(annotations) + 1
            x, y, w, h = gt["box"]
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": im["id"],
                    "category_id": cat_id[gt["cls"]],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            entry = {"label_id": f"ground_truth:{ann_id}", "sample_id": sample_id}
            if gt["planted"] == "mislabeled":
                truth["mislabeled"].append({**entry, "true": gt["true_cls"], "noisy": gt["cls"]})
            elif gt["planted"] == "shifted":
                tx, ty, tw, th = gt["true_box"]
                rel = [tx / image_size, ty / image_size, tw / image_size, th / image_size]
                truth["shifted"].append({**entry, "true_box": rel})
            elif gt["planted"] == "spurious":
                truth["spurious"].append({**entry, "label": gt["cls"]})
        for pred in pred_by_image[k]:
            results.append(
                {
                    "image_id": im["id"],
                    "category_id": cat_id[pred["cls"]],
                    "bbox": pred["box"],
                    "score": pred["score"],
                }
            )
            entry = {"label_id": f"predictions:{len(results)}", "sample_id": sample_id}
            if pred["planted"] == "missing":
                truth["missing"].append({**entry, "label": pred["cls"]})
            elif pred["planted"] == "false_positive":
                truth["false_positives"].append({**entry, "confidence": pred["score"]})
        del im["taken"]

    _write_json(
        files.annotations,
        {
            "info": {"description": f"dagster-brain shapes demo (seed {seed})"},
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": i, "name": c, "supercategory": "shape"} for c, i in cat_id.items()
            ],
        },
    )
    _write_json(files.predictions, results)
    _write_json(files.truth, {"params": params, "classes": SHAPE_CLASSES, **truth})
    return files


# -- both --------------------------------------------------------------------------------


def _drop_stale(store: Store, dataset: str, new_ids: set[str]) -> list[str]:
    """Delete a demo dataset that holds samples the regenerated files no longer have."""
    if dataset in store.list_datasets() and set(store.sample_ids(dataset)) - new_ids:
        store.delete_dataset(dataset)
        return [f"demo files changed: rebuilt dataset {dataset!r}"]
    return []


def ingest_demo_dataset(
    store: Store,
    root: str | os.PathLike,
    name: str,
    seed: int = 51,
    dataset: str | None = None,
    digits_samples: int | None = None,
    digits_duplicates: int = 40,
    shapes_images: int = 200,
) -> IngestReport:
    """Make (or reuse) one demo (``digits`` or ``shapes``) under ``root/<name>`` and ingest it.

    ``dataset`` defaults to ``name``. A dataset holding samples that the (re)made files no
    longer have is deleted first, so it matches the files exactly.
    """
    import pyarrow.parquet as pq

    dataset = dataset or name
    root = Path(root)
    if name == "digits":
        files = make_digits_demo(
            root / "digits", seed=seed, n_duplicates=digits_duplicates, n_samples=digits_samples
        )
        ids = pq.read_table(files.manifest, columns=["id"]).column("id").to_pylist()
        notes = _drop_stale(store, dataset, set(ids))
        report = ingest_manifest(
            store,
            dataset,
            files.manifest,
            label_column="ground_truth",
            prediction_column="prediction",
            confidence_column="confidence",
            logits_column="logits",
            embedding_columns={"pixels": "pixels"},
            classes=DIGIT_CLASSES,
            split_column="split",
            tags=("demo",),
        )
    elif name == "shapes":
        files = make_shapes_demo(root / "shapes", seed=seed, n_images=shapes_images)
        images = json.loads(files.annotations.read_text())["images"]
        notes = _drop_stale(store, dataset, {im["file_name"].removesuffix(".png") for im in images})
        report = ingest_coco(
            store,
            dataset,
            files.annotations,
            images_dir=files.images_dir,
            predictions_json=files.predictions,
            tags=("demo",),
        )
    else:
        raise ValueError(f"unknown demo {name!r} (demos: digits, shapes)")
    report.notes[:0] = notes
    return report


def ingest_demo(
    store: Store,
    root: str | os.PathLike,
    seed: int = 51,
    digits_samples: int | None = None,
    digits_duplicates: int = 40,
    shapes_images: int = 200,
) -> dict[str, IngestReport]:
    """Make (or reuse) both demos under ``root`` and ingest datasets ``digits`` and ``shapes``.

    Running it again with the same arguments reuses the files and re-ingests the same rows.
    """
    sizes = dict(
        digits_samples=digits_samples,
        digits_duplicates=digits_duplicates,
        shapes_images=shapes_images,
    )
    return {name: ingest_demo_dataset(store, root, name, seed=seed, **sizes) for name in DEMOS}


def drop_inbox_batches(
    demo_dir: str | os.PathLike,
    inbox: str | os.PathLike,
    count: int = 1,
    batch_size: int = 300,
    seed: int = 51,
) -> list[Path]:
    """Copy the next ``count`` batches of the digits demo into ``inbox`` as class folders
    (``batch_001/<label>/<id>.png``), as a camera or a labelling tool would drop them.

    Batches already in the inbox are skipped; returns the folders written (none when every
    digit has been dropped). Each folder is written under a temporary name and renamed, so a
    sensor never sees half a batch.
    """
    import shutil

    import pandas as pd

    files = make_digits_demo(Path(demo_dir) / "digits", seed=seed)
    manifest = pd.read_parquet(files.manifest)
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    starts = range(0, len(manifest), batch_size)
    for number, start in enumerate(starts, 1):
        folder = inbox / f"batch_{number:03d}"
        if folder.exists():
            continue
        if len(written) == count:
            break
        tmp = inbox / f".{folder.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        for row in manifest.iloc[start : start + batch_size].itertuples():
            src = Path(row.filepath)
            src = src if src.is_absolute() else files.root / src
            (tmp / str(row.ground_truth)).mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / str(row.ground_truth) / f"{row.id}.png")
        tmp.rename(folder)
        written.append(folder)
    return written
