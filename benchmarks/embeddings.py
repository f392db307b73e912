"""Embedding throughput: end to end (decode workers + model), decode alone, and model alone.

    python benchmarks/embeddings.py --json OUT.json [--images N] [--model NAME] [--device auto]

Test images are made offline: N (default 256) random crops of scikit-learn's two sample photos,
resized to 640x480 and saved as JPEG (quality 90) to a temporary folder. Every configuration runs
in a fresh subprocess so its peak RSS is its own: ``peak_rss_mb`` is the main process's peak plus
``workers`` times the largest decode worker's peak (forked workers share pages, so this
over-counts a little). Each configuration embeds all N images after one warm-up batch; worker
start-up is included. Batch sizes 1/16/64 x decode workers 1/2 (and on a GPU all cores but
one) end to end, plus decode alone with the same workers and model alone (batch 1/16/32/64,
pre-decoded tensors). With N=256 a full run
took 86 s on 2 quiet cores (about 3.5 minutes while other jobs shared them). The ratio column
compares images/s with the reference 35-45 img/s (EfficientNet-Lite0, 224 px, batch 32,
channels_last, 2 cores; midpoint 40). The 1-minute load average is recorded per row: these
machines are shared, compare rows within one quiet run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REFERENCE_IMG_S = 40.0  # midpoint of the 35-45 img/s reference (ENVIRONMENT.md)
BATCH_SIZES = (1, 16, 64)
WORKERS = (1, 2)


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n 640x480 JPEGs: random crops (30-100 % of each side) of the two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = photos[i % 2]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.3, 1.0)), int(h * rng.uniform(0.3, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch)).resize((640, 480), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"img_{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(str(path))
    return paths


def peak_rss_mb(workers: int) -> float:
    """Main peak RSS + workers x the largest child's peak RSS (Linux reports KiB)."""
    main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (main + workers * child) / 1024


def run_one(cfg: dict) -> dict:
    """One configuration, in this (fresh) process."""
    import torch
    from torch.utils.data import DataLoader

    from dagster_brain.embedding.models import load_model
    from dagster_brain.embedding.pipeline import _collate, _FileDataset, embed_files, open_image

    paths = json.loads(Path(cfg["paths_file"]).read_text())
    model = load_model(cfg["model"], device=cfg["device"])
    kind, bs, workers = cfg["kind"], cfg["batch_size"], cfg["workers"]
    if kind != "decode_only":  # warm-up: first calls pick kernels and allocate
        model.embed_batch(torch.stack([model.preprocess(open_image(paths[0]))] * bs))
    start = time.perf_counter()
    if kind == "end_to_end":
        got = embed_files(
            model, paths, list(map(str, range(len(paths)))), batch_size=bs, num_workers=workers
        )
        assert len(got) == len(paths)
    elif kind == "decode_only":
        dataset = _FileDataset(paths, model.preprocessor, model.decode_size)
        loader = DataLoader(dataset, batch_size=16, num_workers=workers, collate_fn=_collate)
        assert sum(len(b[0]) for b in loader) == len(paths)
    else:  # model_only: tensors decoded beforehand, outside the timing
        tensors = torch.stack([model.preprocess(open_image(p)) for p in paths])
        start = time.perf_counter()
        for lo in range(0, len(tensors), bs):
            model.embed_batch(tensors[lo : lo + bs])
    seconds = time.perf_counter() - start
    return {
        "kind": kind,
        "model": model.name,
        "batch_size": bs if kind != "decode_only" else None,
        "workers": workers if kind != "model_only" else None,
        "images": len(paths),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(paths) / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(workers if kind != "model_only" else 0), 0),
        "device": model.device,
        "torch_threads": torch.get_num_threads(),
        "ratio_to_reference": round(len(paths) / seconds / REFERENCE_IMG_S, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # > 2 on 2 cores: something else ran too
    }


def worker_counts(device: str) -> list[int]:
    """1, 2 and the pipeline's automatic count on this device (all cores but one on a GPU)."""
    from dagster_brain.embedding.models import resolve_device
    from dagster_brain.embedding.pipeline import auto_workers

    return sorted({*WORKERS, auto_workers(str(resolve_device(device)))} - {0})


def configs(model: str, device: str, paths_file: str) -> list[dict]:
    base = {"model": model, "device": device, "paths_file": paths_file}
    workers = worker_counts(device)
    rows = [
        {**base, "kind": "end_to_end", "batch_size": bs, "workers": w}
        for bs in BATCH_SIZES
        for w in workers
    ]
    rows += [{**base, "kind": "decode_only", "batch_size": 0, "workers": w} for w in workers]
    # model alone also at batch 32, the batch size of the reference figure
    model_sizes = sorted({*BATCH_SIZES, 32})
    rows += [{**base, "kind": "model_only", "batch_size": bs, "workers": 0} for bs in model_sizes]
    return rows


COLUMNS = [  # (header, row key)
    ("kind", "kind"),
    ("model", "model"),
    ("batch", "batch_size"),
    ("workers", "workers"),
    ("images", "images"),
    ("seconds", "seconds"),
    ("img/s", "images_per_s"),
    ("peak RSS MB", "peak_rss_mb"),
    ("device", "device"),
    ("x ref", "ratio_to_reference"),
    ("load", "load_avg_1m"),
]


def print_table(rows: list[dict]) -> None:
    cells = [[("-" if r[k] is None else str(r[k])) for _, k in COLUMNS] for r in rows]
    heads = [h for h, _ in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the result rows")
    parser.add_argument("--images", type=int, default=256, help="images per configuration")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config (JSON)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="embed_bench_") as tmp:
        paths = make_images(Path(tmp), args.images)
        paths_file = Path(tmp) / "paths.json"
        paths_file.write_text(json.dumps(paths))
        for cfg in configs(args.model, args.device, str(paths_file)):
            out = subprocess.run(
                [sys.executable, __file__, "--json", "-", "--one", json.dumps(cfg)],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(
                f"  {rows[-1]['kind']} batch={cfg['batch_size']} workers={cfg['workers']}: "
                f"{rows[-1]['images_per_s']} img/s",
                file=sys.stderr,
            )
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f} s; reference {REFERENCE_IMG_S:g} img/s")
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
