"""Leaky splits and representativeness on planted truth.

    python benchmarks/methods_leaks.py [--quick] [--json OUT.json] [--model]

**Leaky splits.** scikit-learn's ``load_digits()`` images (8x8, upscaled to 32x32 grey PNGs,
nearest) are split 80 % train / 20 % test at random. For 1 % of the images per kind, a copy of
a train image is planted in test: ``exact`` (byte copy), ``reencoded`` (JPEG quality 85),
``noisy`` (Gaussian noise, sigma 6-12 grey levels) and ``shifted`` (content moved 1-2 px, black
fill). As many train images get a copy inside train (these must not be reported). Originals
whose pixels are identical and sit in different splits are natural leaks and count as truth.
Embeddings: the images' centred 8x8 grey thumbnails (64-d; ``--model``: the default model,
slower). A predicted pair is an unordered cross-split pair.

- ``ours``: :func:`dagster_brain.algorithms.leaky_splits.find_leaks` as the ``leaky_splits``
  run calls it (candidates: cross-split top-5 by embedding and by image descriptor, hash
  matches, pairs within the strict embedding cut; confirmed on the pixels, ``thresh: auto``).
- ``reference-rule``: every cross-split pair within cosine distance 0.2, the reference's
  default near-duplicate threshold (BRAIN_REFERENCE.md section 9).

**Representativeness.** 10 Gaussian clusters in 64-d (known centres) plus a ring of 2 %
outliers on random directions away from every centre. AUROC of "the quarter of each cluster
nearest its true centre" against the ring, and of all cluster members against the ring, for
``cluster-center`` and ``cluster-center-downweight``; the time of one run at that size.

``run(quick)`` returns the rows and the bar check (leaky-split pair recall >= 0.98 at
precision >= 0.95 for ``ours``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

KINDS = ("exact", "reencoded", "noisy", "shifted")
SIZE = 32
REFERENCE_THRESH = 0.2  # the reference's default near-duplicate distance (normalised vectors)
BAR_RECALL, BAR_PRECISION = 0.98, 0.95


def _digit_png(gray8: np.ndarray) -> np.ndarray:
    """A 0-16 8x8 digit as a 32x32 uint8 image (nearest upscale)."""
    img = np.clip(gray8 * 15.0, 0, 255).astype(np.uint8)
    return np.kron(img, np.ones((SIZE // 8, SIZE // 8), dtype=np.uint8))


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path)


def _copy(kind: str, src: Path, dst: Path, rng: np.random.Generator) -> Path:
    """Write a planted copy of ``src`` (returns its path; JPEG for ``reencoded``)."""
    arr = np.asarray(Image.open(src).convert("L"))
    if kind == "exact":
        shutil.copyfile(src, dst)
        return dst
    if kind == "reencoded":
        dst = dst.with_suffix(".jpg")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
        dst.write_bytes(buf.getvalue())
        return dst
    if kind == "noisy":
        sigma = rng.uniform(6, 12)
        out = np.clip(arr + rng.normal(0, sigma, arr.shape), 0, 255).astype(np.uint8)
    else:  # shifted
        dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(1, 3, size=2))
        out = np.zeros_like(arr)
        ys, yd = (
            (slice(0, SIZE - dy), slice(dy, SIZE))
            if dy >= 0
            else (
                slice(-dy, SIZE),
                slice(0, SIZE + dy),
            )
        )
        xs, xd = (
            (slice(0, SIZE - dx), slice(dx, SIZE))
            if dx >= 0
            else (
                slice(-dx, SIZE),
                slice(0, SIZE + dx),
            )
        )
        out[yd, xd] = arr[ys, xs]
    _save_png(out, dst)
    return dst


def make_leaks(folder: Path, n: int, seed: int = 0) -> tuple[pd.DataFrame, set, dict]:
    """The digits with planted copies: (frame of id/filepath/split/kind/content_hash, the
    true cross-split pairs, the pairs per kind)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits().images[:n]
    n = len(digits)
    rows = []
    for i, d in enumerate(digits):
        path = folder / f"d{i:04d}.png"
        _save_png(_digit_png(d), path)
        rows.append({"id": f"d{i:04d}", "filepath": str(path), "kind": "original"})
    split = np.where(rng.random(n) < 0.8, "train", "test").astype(object)
    for r, s in zip(rows, split, strict=True):
        r["split"] = s
    train = np.flatnonzero(split == "train")
    per = max(1, round(0.01 * n))
    chosen = rng.choice(train, size=per * (len(KINDS) + 1), replace=False)
    truth: set = set()
    by_kind: dict[str, set] = {k: set() for k in KINDS}
    for k, kind in enumerate(KINDS):
        for j, src in enumerate(chosen[k * per : (k + 1) * per]):
            cid = f"c_{kind}_{j:03d}"
            path = _copy(kind, Path(rows[src]["filepath"]), folder / f"{cid}.png", rng)
            rows.append({"id": cid, "filepath": str(path), "kind": kind, "split": "test"})
            pair = frozenset((rows[src]["id"], cid))
            truth.add(pair)
            by_kind[kind].add(pair)
    for j, src in enumerate(chosen[len(KINDS) * per :]):  # copies inside train: no leak
        cid = f"w_{j:03d}"
        path = _copy("noisy", Path(rows[src]["filepath"]), folder / f"{cid}.png", rng)
        rows.append({"id": cid, "filepath": str(path), "kind": "within", "split": "train"})
    df = pd.DataFrame(rows)
    df["content_hash"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in df.filepath]
    # natural leaks: identical originals in different splits
    keys = {}
    for i, d in enumerate(digits):
        keys.setdefault(d.tobytes(), []).append(i)
    natural = set()
    for group in keys.values():
        for a in group:
            for b in group:
                if a < b and split[a] != split[b]:
                    natural.add(frozenset((rows[a]["id"], rows[b]["id"])))
    by_kind["natural"] = natural
    return df, truth | natural, by_kind


def pixel_embeddings(paths: list[str]) -> np.ndarray:
    """Centred 8x8 grey thumbnails (64-d)."""
    out = []
    for p in paths:
        g = np.asarray(Image.open(p).convert("L").resize((8, 8), Image.Resampling.BOX), np.float32)
        out.append(g.ravel() - g.mean())
    return np.stack(out)


def model_embeddings(df: pd.DataFrame) -> np.ndarray:
    """Default-model vectors, in ``df`` order."""
    from dagster_brain.embedding.models import load_model
    from dagster_brain.embedding.pipeline import embed_files

    got = embed_files(load_model(), df["filepath"].tolist(), df["id"].tolist(), num_workers=2)
    if got.ids != df["id"].tolist():
        raise RuntimeError("the model skipped some images")
    return np.asarray(got.vectors, dtype=np.float32)


def _score(pred: set, truth: set, by_kind: dict[str, set]) -> dict:
    tp = len(pred & truth)
    out = {
        "pairs_predicted": len(pred),
        "pairs_true": len(truth),
        "precision": tp / len(pred) if pred else 1.0,
        "recall": tp / len(truth) if truth else 1.0,
    }
    for kind, pairs in by_kind.items():
        out[f"recall_{kind}"] = len(pred & pairs) / len(pairs) if pairs else None
    return out


def leaks_rows(n: int, seed: int = 0, use_model: bool = False) -> list[dict]:
    """One row per method: pair precision/recall (overall and per kind) and seconds."""
    from dagster_brain.algorithms.leaky_splits import find_leaks

    tmp = Path(tempfile.mkdtemp(prefix="leaks_bench_"))
    try:
        df, truth, by_kind = make_leaks(tmp, n, seed)
        X = model_embeddings(df) if use_model else pixel_embeddings(df["filepath"].tolist())
        ids, splits = df["id"].tolist(), df["split"].tolist()
        rows = []
        t0 = time.perf_counter()
        ours = find_leaks(
            X,
            ids,
            splits,
            filepaths=dict(zip(ids, df["filepath"], strict=True)),
            content_hashes=df["content_hash"].tolist(),
            split_order=["train", "test"],
        )
        sec = time.perf_counter() - t0
        pred = {frozenset(p) for p in zip(ours.pairs["id_a"], ours.pairs["id_b"], strict=True)}
        rows.append({"method": "ours", "seconds": sec, **_score(pred, truth, by_kind)})
        t0 = time.perf_counter()
        ref = find_leaks(X, ids, splits, thresh=REFERENCE_THRESH)
        sec = time.perf_counter() - t0
        pred = {frozenset(p) for p in zip(ref.pairs["id_a"], ref.pairs["id_b"], strict=True)}
        rows.append({"method": "reference-rule", "seconds": sec, **_score(pred, truth, by_kind)})
        for r in rows:
            r.update(items=len(df), embeddings="model" if use_model else "pixels8x8")
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def representativeness_rows(n: int, seed: int = 0, dim: int = 64) -> list[dict]:
    """AUROC of cluster cores / members against a ring of outliers, and seconds, per method."""
    from dagster_brain.algorithms.knn_graph import nearest_lists
    from dagster_brain.algorithms.representativeness import representativeness_scores

    rng = np.random.default_rng(seed)
    k = 10
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k] * 10.0
    ring_n = int(0.02 * n)
    per = (n - ring_n) // k
    X = np.concatenate([c + 1.5 * rng.normal(size=(per, dim)) for c in centres])
    truth = np.repeat(np.arange(k), per)
    ring = []
    while len(ring) < ring_n:
        v = rng.normal(size=dim)
        v /= np.linalg.norm(v)
        if np.max(centres @ v / 10.0) < 0.3:
            ring.append(10.0 * v)
    X = np.concatenate([X, np.asarray(ring)]).astype(np.float32)
    ids = [str(i) for i in range(len(X))]
    U = X[: len(truth)] / np.linalg.norm(X[: len(truth)], axis=1, keepdims=True)
    near = U @ (centres / 10.0).T
    closeness = near[np.arange(len(truth)), truth]
    core = np.zeros(len(truth), dtype=bool)
    for c in range(k):
        rows = np.flatnonzero(truth == c)
        core[rows[closeness[rows] >= np.quantile(closeness[rows], 0.75)]] = True
    out = []
    for method in ("cluster-center", "cluster-center-downweight"):
        t0 = time.perf_counter()
        nbr = dist = None
        if method.endswith("downweight"):
            nbr, dist = nearest_lists(X, 5, "cosine")
        rep = representativeness_scores(X, ids, method=method, neighbors=nbr, distances=dist)
        sec = time.perf_counter() - t0
        s = rep.scores
        members, outliers = s[: len(truth)], s[len(truth) :]
        out.append(
            {
                "method": method,
                "items": len(X),
                "dim": dim,
                "clusters_fitted": rep.n_clusters,
                "auroc_core_vs_ring": _auroc(members[core], outliers),
                "auroc_members_vs_ring": _auroc(members, outliers),
                "seconds": sec,
            }
        )
    return out


def run(quick: bool = False) -> dict:
    """Both benchmarks; ``quick``: 800 digits and 5,000 points (else all 1,797 digits and
    20,000 points)."""
    leaks = leaks_rows(800 if quick else 1797)
    rep = representativeness_rows(5000 if quick else 20000)
    ours = next(r for r in leaks if r["method"] == "ours")
    passed = ours["recall"] >= BAR_RECALL and ours["precision"] >= BAR_PRECISION
    return {
        "quick": quick,
        "leaky_splits": leaks,
        "representativeness": rep,
        "bar": {
            "rule": f"ours: pair recall >= {BAR_RECALL} at precision >= {BAR_PRECISION}",
            "recall": ours["recall"],
            "precision": ours["precision"],
            "passed": passed,
        },
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def print_result(res: dict) -> None:
    """The leaky-splits and representativeness tables, then the bar."""
    kinds = [f"recall_{k}" for k in (*KINDS, "natural")]
    print("Leaky splits (cross-split pairs)")
    print(
        table(
            res["leaky_splits"],
            [
                "method",
                "items",
                "embeddings",
                "pairs_true",
                "pairs_predicted",
                "precision",
                "recall",
                *kinds,
                "seconds",
            ],
        )
    )
    if res["representativeness"]:
        print("\nRepresentativeness (10 clusters + 2 % ring of outliers)")
        print(
            table(
                res["representativeness"],
                [
                    "method",
                    "items",
                    "dim",
                    "clusters_fitted",
                    "auroc_core_vs_ring",
                    "auroc_members_vs_ring",
                    "seconds",
                ],
            )
        )
    bar = res["bar"]
    print(
        f"\nbar: recall {bar['recall']:.3f}, precision {bar['precision']:.3f}: "
        f"{'PASS' if bar['passed'] else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (about 30 s)")
    ap.add_argument("--json", dest="json_out", help="write the results to this file")
    ap.add_argument("--model", action="store_true", help="embed with the default model")
    args = ap.parse_args(argv)
    if args.model:
        n = 800 if args.quick else 1797
        res = {"leaky_splits": leaks_rows(n, use_model=True), "representativeness": []}
        ours = res["leaky_splits"][0]
        res["bar"] = {
            "recall": ours["recall"],
            "precision": ours["precision"],
            "passed": ours["recall"] >= BAR_RECALL and ours["precision"] >= BAR_PRECISION,
        }
    else:
        res = run(args.quick)
    print_result(res)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
