"""Checking candidate duplicate pairs on the images themselves (numpy + Pillow + imagehash).

Embeddings cannot tell shifted or noisy copies of small images from natural look-alikes: on
32 px digits a 1-2 px shift moves a copy as far as a different digit of the same class, and
Gaussian noise moves it farther than any natural neighbour. So candidate pairs (each item's
top-``m`` neighbours in the embedding **and** in a shift-invariant image descriptor, plus
hash matches) are verified on small grey thumbnails:

1. ``hash:bytes`` / ``hash:pixels``: identical file bytes / decoded pixels (sha256).
2. ``shift-ncc``: the best normalised cross-correlation (NCC) over shifts up to ``max_shift``
   of the width (exhaustive on 32 px, refined +-1 px on 64 px, Gaussian sigma 1 px) is at least
   ``ncc_min`` **and** the normalised residual ``z = (1 - NCC) / (1 - self)`` is at most
   ``z_max``, where ``self`` is the NCC of the smoother image with itself moved by one pixel.
   ``z`` measures the difference in units of "one 64 px pixel of misalignment": a copy
   (shifted, noisy, re-encoded) stays well below 1, a look-alike (another digit, a similar crop
   of a smooth background) does not, whatever the image's own texture.
3. ``phash``: perceptual hashes (``imagehash.phash``, 64 bits) within ``phash_max`` bits and
   NCC >= ``phash_ncc_min``: catches noisy copies of very smooth images, whose ``z`` explodes
   (their tiny one-pixel self-difference makes any noise look large).
4. ``embedding`` (opt-in): embedding distance <= ``embedding_thresh`` (e.g.
   :attr:`~dagster_brain.algorithms.duplicates.ThresholdChoice.strict_thresh`), for edits the
   pixel checks do not model (colour changes, rescaled crops); it also admits natural
   look-alikes in dense regions, so the pipeline leaves it off by default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from dagster_brain.algorithms.duplicates import (
    DuplicatesResult,
    _components,
    _Neighbours,
    _prepare,
    build_result,
    choose_threshold,
    exact_duplicate_groups,
    pair_distances,
)
from dagster_brain.algorithms.knn import exact_knn
from dagster_brain.algorithms.knn_graph import KnnGraph
from dagster_brain.decode import decode

THUMB = 64  # thumbnail side; the coarse search runs at half of it
PATHS = ("hash:bytes", "hash:pixels", "shift-ncc", "phash", "embedding")


# -- thumbnails ----------------------------------------------------------------------------


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(round(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def blur(T: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Separable Gaussian blur of (n, h, w) images, edges replicated."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    P = np.pad(T, ((0, 0), (r, r), (r, r)), mode="edge")
    h, w = T.shape[1:]
    rows = sum(k[j] * P[:, j : j + h, :] for j in range(len(k)))
    return sum(k[j] * rows[:, :, j : j + w] for j in range(len(k))).astype(np.float32)


def _thumb_one(path: str, size: int) -> tuple[np.ndarray, int]:
    """Grey ``size`` x ``size`` thumbnail (float32, unblurred) and 64-bit phash of one file,
    decoded by :func:`dagster_brain.decode.decode` (JPEGs at reduced DCT scale)."""
    import imagehash

    grey = decode(path, mode="L", draft_size=2 * size).image
    method = Image.Resampling.BOX if min(grey.size) >= size else Image.Resampling.BILINEAR
    small = grey.resize((size, size), method)
    bits = imagehash.phash(small).hash.reshape(-1)
    code = int(np.packbits(bits).view(">u8")[0])
    return np.asarray(small, dtype=np.float32), code


def _thumb_chunk(args: tuple[list[str], int]) -> list[tuple[np.ndarray, int] | str]:
    paths, size = args
    out: list[tuple[np.ndarray, int] | str] = []
    for p in paths:
        try:
            out.append(_thumb_one(p, size))
        except Exception as err:  # reported with the sample id by the caller
            out.append(f"{type(err).__name__}: {err}")
    return out


@dataclass(frozen=True)
class Thumbnails:
    """Blurred grey thumbnails, their phashes and 1-px self-similarity, aligned with ``ids``."""

    ids: list[str]
    images: np.ndarray  # (n, THUMB, THUMB) float32, Gaussian sigma 1 px
    phash: np.ndarray  # (n,) uint64
    self_sim: np.ndarray  # (n,) NCC with itself moved by one pixel (mean of 4 directions)

    def index(self) -> dict[str, int]:
        return {i: r for r, i in enumerate(self.ids)}

    def take(self, ids: Sequence[str]) -> Thumbnails:
        """The rows of ``ids`` (all must be present), in that order."""
        row = self.index()
        missing = [i for i in ids if i not in row]
        if missing:
            raise ValueError(f"no thumbnail for sample {missing[0]!r}")
        r = np.array([row[i] for i in ids], dtype=np.int64)
        return Thumbnails(list(ids), self.images[r], self.phash[r], self.self_sim[r])


def load_thumbnails(
    ids: Sequence[str],
    filepaths: Mapping[str, str] | Sequence[str],
    *,
    size: int = THUMB,
    num_workers: int = 0,
) -> Thumbnails:
    """Decode each image once into a small grey thumbnail (JPEGs at reduced DCT scale).

    ``filepaths`` maps id -> path (or is aligned with ``ids``). ``num_workers > 0`` decodes in
    that many processes. A missing or undecodable file raises ``ValueError`` naming the sample.
    """
    ids = [str(i) for i in ids]
    if isinstance(filepaths, Mapping):
        missing = [i for i in ids if i not in filepaths]
        if missing:
            raise ValueError(f"no file path for sample {missing[0]!r}")
        paths = [str(filepaths[i]) for i in ids]
    else:
        paths = [str(p) for p in filepaths]
        if len(paths) != len(ids):
            raise ValueError(f"{len(paths)} file paths for {len(ids)} ids")
    if num_workers > 0 and len(paths) > 64:
        step = max(16, len(paths) // (4 * num_workers))
        chunks = [(paths[i : i + step], size) for i in range(0, len(paths), step)]
        with ProcessPoolExecutor(num_workers) as pool:
            got = [x for part in pool.map(_thumb_chunk, chunks) for x in part]
    else:
        got = _thumb_chunk((paths, size))
    for i, g in enumerate(got):
        if isinstance(g, str):
            raise ValueError(f"cannot read image of sample {ids[i]!r} ({paths[i]}): {g}")
    images = blur(np.stack([g[0] for g in got])) if got else np.zeros((0, size, size), np.float32)
    phash = np.array([g[1] for g in got], dtype=np.uint64)
    return Thumbnails(ids, images, phash, self_similarity(images))


class _Windows:
    """Images standardised to mean 0 / std 1, with integral images of values and squares."""

    def __init__(self, T: np.ndarray):
        T = T.astype(np.float32)
        mu = T.mean((1, 2), keepdims=True)
        sd = T.std((1, 2), keepdims=True)
        self.T = (T - mu) / np.where(sd > 1e-6, sd, 1.0)  # NCC is invariant to this
        T64 = self.T.astype(np.float64)
        self.s1 = np.pad(T64.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
        self.s2 = np.pad((T64 * T64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))

    def sums(self, idx: np.ndarray, y0: int, y1: int, x0: int, x1: int):
        def box(S: np.ndarray) -> np.ndarray:
            return S[idx, y1, x1] - S[idx, y0, x1] - S[idx, y1, x0] + S[idx, y0, x0]

        return box(self.s1), box(self.s2)


def _ncc_shift(
    W: _Windows, A: np.ndarray, B: np.ndarray, ia: np.ndarray, ib: np.ndarray, dy: int, dx: int
) -> np.ndarray:
    """NCC of ``A`` moved by (dy, dx) against ``B`` on their overlap, per pair.

    ``A``/``B`` are ``W.T[ia]``/``W.T[ib]``; window sums come from ``W``'s integral images, so
    each shift costs one strided product.
    """
    n = W.T.shape[1]
    ya, xa, yb, xb = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
    h, w = n - abs(dy), n - abs(dx)
    sab = np.einsum("pij,pij->p", A[:, ya : ya + h, xa : xa + w], B[:, yb : yb + h, xb : xb + w])
    sa, saa = W.sums(ia, ya, ya + h, xa, xa + w)
    sb, sbb = W.sums(ib, yb, yb + h, xb, xb + w)
    k = h * w
    cov = sab - sa * sb / k
    den = np.sqrt(np.maximum(saa - sa * sa / k, 0.0) * np.maximum(sbb - sb * sb / k, 0.0))
    return np.where(den > 1e-6 * k, cov / np.maximum(den, 1e-12), 0.0)


def _ncc_at(A: np.ndarray, B: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """NCC of A moved by (dy, dx) against B, on the overlap, for each pair (rows of A, B)."""
    W = _Windows(np.concatenate([A, B]))
    ia, ib = np.arange(len(A)), len(A) + np.arange(len(B))
    return _ncc_shift(W, W.T[ia], W.T[ib], ia, ib, dy, dx)


def self_similarity(T: np.ndarray) -> np.ndarray:
    """Mean NCC of each image with itself moved by one pixel (right, down, two diagonals)."""
    if len(T) == 0:
        return np.zeros(0)
    W = _Windows(T)
    i = np.arange(len(T))
    shifts = ((0, 1), (1, 0), (1, 1), (1, -1))
    return np.mean([_ncc_shift(W, W.T, W.T, i, i, dy, dx) for dy, dx in shifts], 0)


def _best_shift(T: np.ndarray, pa: np.ndarray, pb: np.ndarray, max_shift: float, chunk: int):
    """Best NCC and shift for pairs (pa, pb) of images ``T`` (see :func:`shift_ncc`)."""
    n_pairs, n = len(pa), T.shape[1]
    best = np.full(n_pairs, -1.0)
    shift = np.zeros((n_pairs, 2), dtype=np.int64)
    r = max(1, int(np.ceil(max_shift * n / 2)))  # coarse radius, half-resolution pixels
    r_fine = max(1, int(np.floor(max_shift * n)))
    for lo in range(0, n_pairs, chunk):
        uniq, inv = np.unique(
            np.concatenate([pa[lo : lo + chunk], pb[lo : lo + chunk]]), return_inverse=True
        )
        ia, ib = inv[: len(inv) // 2], inv[len(inv) // 2 :]
        local = T[uniq]
        half = _Windows(local.reshape(len(uniq), n // 2, 2, n // 2, 2).mean((2, 4)))
        A, B = half.T[ia], half.T[ib]
        coarse = np.full(len(ia), -2.0)
        arg = np.zeros((len(ia), 2), dtype=np.int64)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                c = _ncc_shift(half, A, B, ia, ib, dy, dx)
                up = c > coarse
                coarse[up], arg[up] = c[up], (dy, dx)
        full = _Windows(local)
        A, B = full.T[ia], full.T[ib]
        fine = np.full(len(ia), -2.0)
        farg = np.zeros((len(ia), 2), dtype=np.int64)
        for ddy in (-1, 0, 1):
            for ddx in (-1, 0, 1):
                sy = np.clip(2 * arg[:, 0] + ddy, -r_fine, r_fine)
                sx = np.clip(2 * arg[:, 1] + ddx, -r_fine, r_fine)
                for key in set(zip(sy.tolist(), sx.tolist(), strict=True)):
                    sel = np.flatnonzero((sy == key[0]) & (sx == key[1]))
                    c = _ncc_shift(full, A[sel], B[sel], ia[sel], ib[sel], *key)
                    up = c > fine[sel]
                    fine[sel[up]], farg[sel[up]] = c[up], key
        best[lo : lo + chunk], shift[lo : lo + chunk] = fine, farg
    return best, shift


def shift_ncc(
    A: np.ndarray, B: np.ndarray, max_shift: float = 0.08, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Best NCC over shifts up to ``max_shift`` x width, per pair; returns (ncc, (dy, dx) px).

    Exhaustive search on 2x-downsampled images, then +-1 px around twice that shift at full
    resolution. The shift is in full-resolution pixels: ``B[y, x] ~ A[y + dy, x + dx]``.
    """
    i = np.arange(len(A))
    return _best_shift(np.concatenate([A, B]), i, len(A) + i, max_shift, chunk)


# -- candidate pairs -----------------------------------------------------------------------


def image_descriptors(images: np.ndarray, keep: int = 4) -> np.ndarray:
    """Shift-invariant descriptors: square-root amplitude spectrum of the 2x-downsampled
    thumbnail, lowest ``(2 keep + 1)^2`` frequencies, zero-mean per row (a translation changes
    only the phase; the square root keeps the strongest frequencies from dominating)."""
    n, s = images.shape[0], images.shape[1] // 2
    h = images.reshape(n, s, 2, s, 2).mean((2, 4))
    h = h - h.mean((1, 2), keepdims=True)
    mag = np.fft.fftshift(np.abs(np.fft.fft2(h)), axes=(1, 2))
    c = s // 2
    D = np.sqrt(mag[:, c - keep : c + keep + 1, c - keep : c + keep + 1]).reshape(n, -1)
    return (D - D.mean(1, keepdims=True)).astype(np.float32)


def _topm(V: np.ndarray, m: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) index pairs: each row and its top-``m`` neighbours."""
    n = len(V)
    k = min(m, n - 1)
    if k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, i = exact_knn(V, k, metric=metric)
    return np.repeat(np.arange(n), k), i.reshape(-1)


def _pairs_frame(
    ids: list[str],
    X: np.ndarray | None,
    parts: list[tuple[np.ndarray, np.ndarray, str]],
    metric: str,
) -> pd.DataFrame:
    """Unordered, de-duplicated pairs (``id_a`` earlier in input order) from index pairs, with
    the embedding distance and every source that proposed them ("embedding+image", ...)."""
    n = len(ids)
    a = np.concatenate([p[0] for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64)
    b = np.concatenate([p[1] for p in parts] + [np.zeros(0, np.int64)]).astype(np.int64)
    src = np.concatenate([np.full(len(p[0]), p[2], dtype=object) for p in parts] + [[]])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    m = lo != hi
    frame = pd.DataFrame({"code": lo[m] * np.int64(n) + hi[m], "source": src[m]})
    frame = frame.groupby("code", sort=True)["source"].agg(lambda s: "+".join(sorted(set(s))))
    code = frame.index.to_numpy(np.int64)
    a, b = code // n, code % n
    dist = pair_distances(X, a, b, metric) if X is not None else np.full(len(a), np.nan)
    return pd.DataFrame(
        {
            "id_a": [ids[i] for i in a],
            "id_b": [ids[i] for i in b],
            "distance": dist,
            "source": frame.to_numpy(dtype=object),
        }
    )


def candidate_pairs(
    ids: Sequence[str],
    *,
    vectors: np.ndarray | None = None,
    descriptors: np.ndarray | None = None,
    m: int = 5,
    metric: str = "cosine",
) -> pd.DataFrame:
    """Each item's top-``m`` neighbours by embedding and by image descriptor, as unordered pairs.

    Columns ``id_a``, ``id_b`` (``id_a`` earlier in input order), ``distance`` (embedding, NaN
    without vectors), ``source`` ("embedding", "image" or "embedding+image").
    """
    ids = [str(i) for i in ids]
    if vectors is None and descriptors is None:
        raise ValueError("give vectors and/or descriptors to draw candidates from")
    X = None
    parts = []
    if vectors is not None:
        X, _ = _prepare(vectors, ids, metric)
        parts.append((*_topm(X, m, metric), "embedding"))
    if descriptors is not None:
        D = np.asarray(descriptors, np.float32)
        if D.shape[0] != len(ids):
            raise ValueError(f"{D.shape[0]} descriptors for {len(ids)} ids")
        parts.append((*_topm(D, m, "cosine"), "image"))
    return _pairs_frame(ids, X, parts, metric)


# -- verification --------------------------------------------------------------------------


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _popcount64(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def verify_pairs(
    pairs: pd.DataFrame,
    filepaths: Mapping[str, str],
    *,
    content_hashes: Mapping[str, str] | None = None,
    pixel_hashes: Mapping[str, str] | None = None,
    embedding_thresh: float | None = None,
    max_shift: float = 0.08,
    ncc_min: float = 0.9,
    z_max: float = 0.5,
    phash_max: int = 2,
    phash_ncc_min: float = 0.98,
    thumbnails: Thumbnails | None = None,
    num_workers: int = 0,
) -> pd.DataFrame:
    """Check candidate pairs (columns ``id_a``, ``id_b``, optional ``distance``) on the images.

    Returns the pairs with ``ncc`` (best shifted NCC), ``z`` (normalised residual, see the
    module docstring), ``shift_x``/``shift_y`` (b(y, x) ~ a(y + shift_y H, x + shift_x W)),
    ``phash_dist`` (bits), ``score`` (1.0 for hash matches, else ``ncc``), ``verified`` and
    ``path``: the first of ``hash:bytes``, ``hash:pixels``, ``shift-ncc``, ``phash``,
    ``embedding`` that confirms the pair, ``""`` if none. ``content_hashes`` defaults to the
    sha256 of each file's bytes; ``thumbnails`` may come from :func:`load_thumbnails`.
    """
    missing = {"id_a", "id_b"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs frame lacks columns {sorted(missing)}")
    out = pairs.copy().reset_index(drop=True)
    ida, idb = out["id_a"].astype(str).tolist(), out["id_b"].astype(str).tolist()
    need = list(dict.fromkeys(ida + idb))
    if thumbnails is None or not set(need) <= set(thumbnails.ids):
        thumbnails = load_thumbnails(need, filepaths, num_workers=num_workers)
    row = thumbnails.index()
    pa = np.array([row[i] for i in ida], dtype=np.int64)
    pb = np.array([row[i] for i in idb], dtype=np.int64)
    T = thumbnails.images
    ncc, shift = _best_shift(T, pa, pb, max_shift, 4096)
    rough = np.maximum(np.minimum(1 - thumbnails.self_sim[pa], 1 - thumbnails.self_sim[pb]), 1e-6)
    z = (1 - ncc) / rough
    phd = _popcount64(thumbnails.phash[pa] ^ thumbnails.phash[pb]) if len(out) else np.zeros(0)

    if content_hashes is None:
        content_hashes = {i: _sha256_file(str(filepaths[i])) for i in need}
    byte_eq = np.array(
        [content_hashes.get(x) == content_hashes.get(y) for x, y in zip(ida, idb, strict=True)],
        dtype=bool,
    )
    byte_eq &= np.array([bool(content_hashes.get(x)) for x in ida], dtype=bool)
    pix_eq = np.zeros(len(out), dtype=bool)
    if pixel_hashes is not None:
        pix_eq = np.array(
            [
                bool(pixel_hashes.get(x)) and pixel_hashes.get(x) == pixel_hashes.get(y)
                for x, y in zip(ida, idb, strict=True)
            ],
            dtype=bool,
        )
    by_ncc = (ncc >= ncc_min) & (z <= z_max)
    by_phash = (phd <= phash_max) & (ncc >= phash_ncc_min)
    dist = out["distance"].to_numpy(float) if "distance" in out else np.full(len(out), np.nan)
    by_emb = np.zeros(len(out), bool) if embedding_thresh is None else dist <= embedding_thresh
    path = np.select([byte_eq, pix_eq, by_ncc, by_phash, by_emb], list(PATHS), default="")
    out["ncc"] = ncc.astype(float)
    out["z"] = z.astype(float)
    out["shift_x"] = shift[:, 1] / T.shape[2] if len(out) else np.zeros(0)
    out["shift_y"] = shift[:, 0] / T.shape[1] if len(out) else np.zeros(0)
    out["phash_dist"] = phd.astype(int)
    out["score"] = np.where(byte_eq | pix_eq, 1.0, ncc)
    out["verified"] = path != ""
    out["path"] = path
    return out


# -- the full pipeline ---------------------------------------------------------------------


def find_verified_duplicates(
    vectors: np.ndarray,
    ids: Sequence[str],
    filepaths: Mapping[str, str] | Sequence[str],
    *,
    content_hashes: Sequence[str | None] | None = None,
    pixel_hashes: Sequence[str | None] | None = None,
    metric: str = "cosine",
    m: int = 5,
    embedding_thresh: float | None = None,
    confirm_by_embedding: bool = False,
    thumbnails: Thumbnails | None = None,
    num_workers: int = 0,
    graph: KnnGraph | None = None,
    **verify_kwargs,
) -> DuplicatesResult:
    """Duplicates confirmed on the images: candidates, then :func:`verify_pairs`.

    Candidates: each item's top-``m`` neighbours by embedding and by image descriptor, hash
    groups, and embedding pairs within ``embedding_thresh`` (default: the data-chosen
    ``strict_thresh`` of :func:`choose_threshold`, below which < 0.5 natural pairs are
    expected). The pixels decide; ``confirm_by_embedding=True`` also accepts pairs within
    ``embedding_thresh`` that the pixel checks reject (edits they do not model, such as colour
    changes), at the cost of natural look-alikes in dense regions. Confirmed pairs join items
    into groups (connected components); the first item of each group in input order is kept,
    the others are its duplicates. The result's ``thresh`` is ``embedding_thresh``;
    ``checked`` holds every candidate with its scores.
    ``thumbnails`` (from :func:`load_thumbnails`, a superset of ``ids``) skips decoding.
    ``graph``: a stored kNN graph of these rows (same order and metric) read instead of
    computing the neighbours again; one narrower than ``max(16, m)`` is not used.
    """
    X, ids = _prepare(vectors, ids, metric)
    n = len(ids)
    paths = filepaths if isinstance(filepaths, Mapping) else dict(zip(ids, filepaths, strict=True))
    k0 = max(16, m)  # neighbours of the first pass: top-m and the radius graph
    usable = graph if graph is not None and graph.width >= k0 else None
    if embedding_thresh is None:
        embedding_thresh = (
            choose_threshold(X, ids, metric, graph=usable).strict_thresh if n >= 5 else 0.0
        )
    if thumbnails is not None and set(ids) <= set(thumbnails.ids):
        thumbs = thumbnails.take(ids)
    else:
        thumbs = load_thumbnails(ids, paths, num_workers=num_workers)
    nb = _Neighbours(X, metric, k0=k0, graph=usable)
    k = min(m, n - 1)
    parts = [(*_topm(image_descriptors(thumbs.images), m, "cosine"), "image")]
    if k >= 1:
        parts.append((np.repeat(np.arange(n), k), nb.i[:, :k].reshape(-1), "embedding"))
        graph = nb.radius_graph(embedding_thresh)
        parts.append((graph.a, graph.b, "radius"))
    if content_hashes is not None:
        row = {i: r for r, i in enumerate(ids)}
        groups = exact_duplicate_groups(ids, content_hashes, pixel_hashes)
        first = groups.groupby("group")["sample_id"].transform("first")
        parts.append(
            (
                first.map(row).to_numpy(np.int64),
                groups["sample_id"].map(row).to_numpy(np.int64),
                "hash",
            )
        )
    cands = _pairs_frame(ids, X, parts, metric)
    hashes = {}
    if content_hashes is not None:
        hashes["content_hashes"] = {i: h for i, h in zip(ids, content_hashes, strict=True) if h}
    else:
        hashes["content_hashes"] = {i: _sha256_file(str(paths[i])) for i in ids}
    if pixel_hashes is not None:
        hashes["pixel_hashes"] = {i: h for i, h in zip(ids, pixel_hashes, strict=True) if h}
    checked = verify_pairs(
        cands,
        paths,
        embedding_thresh=embedding_thresh if confirm_by_embedding else None,
        thumbnails=thumbs,
        **hashes,
        **verify_kwargs,
    )
    row = {i: r for r, i in enumerate(ids)}
    ok = checked[checked["verified"]]
    a = np.array([row[i] for i in ok["id_a"]], dtype=np.int64)
    b = np.array([row[i] for i in ok["id_b"]], dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    nearest = np.arange(n)
    if a.size:
        label = _components(n, a, b)
        first = {}
        for i in range(n):
            first.setdefault(int(label[i]), i)
        nearest = np.array([first[int(label[i])] for i in range(n)])
        keep = nearest == np.arange(n)
    dup = np.flatnonzero(~keep)
    nearest_d = np.zeros(n)
    nearest_d[dup] = pair_distances(X, dup, nearest[dup], metric)
    # each duplicate's path: its direct edge to the kept item, else its first confirmed edge
    edge_path: dict[tuple[int, int], str] = {}
    for x, y, p in zip(a.tolist(), b.tolist(), ok["path"], strict=True):
        edge_path[(x, y)] = edge_path[(y, x)] = p
    own: dict[int, str] = {}
    for x, y, p in zip(a.tolist(), b.tolist(), ok["path"], strict=True):
        own.setdefault(x, p)
        own.setdefault(y, p)
    path_of = np.full(n, "", dtype=object)
    for j in dup:
        path_of[j] = edge_path.get((int(j), int(nearest[j])), own.get(int(j), ""))
    result = build_result(
        ids,
        keep,
        nearest,
        nearest_d,
        (a, b),
        embedding_thresh,
        metric,
        path_of,
        edge_d=ok["distance"].to_numpy(dtype=np.float64),
    )
    result.checked = checked
    return result
