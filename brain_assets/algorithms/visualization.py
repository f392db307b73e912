"""Visualization: reduce embeddings to 2-D/3-D points, score them, and draw them.

``reduce`` mirrors the reference's ``compute_visualization`` reducers (``umap``, ``tsne``,
``pca``, ``manual``). Large inputs are fitted on a seeded random sample of ``max_fit`` rows and
every row is then placed: UMAP and PCA ``transform`` the rest; t-SNE has no transform, so each
remaining row goes to the mean of its ``place_k`` nearest fitted rows' points (nearest in the
input space). Fitted rows keep their fitted coordinates.

``Reduction.model`` is the fitted reducer (UMAP, PCA, or a :class:`TsneMap`): ``place`` puts
rows that arrive later into the same map, the way rows beyond ``max_fit`` were placed.

``scatter_png`` draws a static plot (matplotlib Agg, no pyplot state); ``scatter_html`` writes a
self-contained page (inline canvas + JS, no network) with hover and lasso selection.
"""

from __future__ import annotations

import html
import io
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np

from dagster_brain.algorithms.knn import check_vectors
from dagster_brain.progress import progress

Method = Literal["umap", "tsne", "pca", "manual"]
METHODS = ("umap", "tsne", "pca", "manual")
MAX_CLASSES = 20  # more label values than this: one grey colour, no legend entries
GREY = "#9a9a9a"
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean"}
TSNE_PERPLEXITY = 30.0
TSNE_PCA_DIMS = 50  # t-SNE on PCA-50 of the input, as the reference does
TSNE_PLACE_K = 5


@dataclass(frozen=True)
class Reduction:
    """Low-dimensional points aligned with ``ids``, and how they were made."""

    points: np.ndarray  # (n, num_dims) float32
    ids: list[str]
    method: str
    timings: dict[str, float]  # fit_s, transform_s, total_s (seconds)
    fit_size: int  # rows the reducer was fitted on (n when no subsampling)
    params: dict[str, Any] = field(default_factory=dict)
    # what ``place`` needs to map more rows (None for manual points)
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def num_dims(self) -> int:
        return int(self.points.shape[1])


@dataclass(frozen=True)
class TsneMap:
    """A fitted t-SNE map, which has no transform of its own: the fitted rows (after the
    optional PCA) with their points; a new row goes to the mean point of its ``place_k``
    nearest fitted rows."""

    pca: Any  # fitted sklearn PCA applied before t-SNE, or None
    fitted: np.ndarray  # (fit_n, d') the fitted rows in the space neighbours are found in
    points: np.ndarray  # (fit_n, num_dims) float32 their t-SNE points
    place_k: int = TSNE_PLACE_K

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Points of the rows of ``X``: mean point of their nearest fitted rows."""
        from sklearn.neighbors import NearestNeighbors

        Z = self.pca.transform(X) if self.pca is not None else X
        k = min(self.place_k, self.fitted.shape[0])
        _, nbr = NearestNeighbors(n_neighbors=k).fit(self.fitted).kneighbors(Z)
        return self.points[nbr].mean(axis=1)


def place(model: Any, vectors: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """Points of rows that were not fitted, from a fitted reducer (``Reduction.model``):
    (n, num_dims) float32 aligned with ``ids``; errors name the sample."""
    ids = [str(i) for i in ids]
    if model is None:
        raise ValueError("visualization: no fitted reducer to place rows with")
    X = check_vectors(vectors, ids)
    if X.shape[0] == 0:
        dims = int(getattr(model, "n_components", 0) or model.points.shape[1])
        return np.zeros((0, dims), dtype=np.float32)
    out = np.ascontiguousarray(model.transform(X), dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise ValueError(f"visualization: placing gave a non-finite point for {ids[bad[0]]!r}")
    return out


def min_samples(method: str, **kwargs: Any) -> int:
    """Fewest rows ``method`` is fitted on: UMAP n_neighbors + 1; t-SNE 3·perplexity + 1."""
    if method == "umap":
        return int(kwargs.get("n_neighbors", UMAP_DEFAULTS["n_neighbors"])) + 1
    if method == "tsne":
        # Barnes-Hut t-SNE takes each point's 3·perplexity nearest neighbours: need more rows.
        return int(np.floor(3 * float(kwargs.get("perplexity", TSNE_PERPLEXITY)))) + 1
    return int(kwargs.get("num_dims", 2))  # pca: n_components <= n_samples


def reduce(
    vectors: np.ndarray | None,
    ids: Sequence[str],
    method: Method = "umap",
    num_dims: int = 2,
    seed: int = 51,
    points: np.ndarray | Mapping[str, Sequence[float]] | None = None,
    max_fit: int = 20_000,
    **kwargs: Any,
) -> Reduction:
    """Reduce ``vectors`` (n, d) to (n, ``num_dims``) points aligned with ``ids``.

    ``kwargs`` go to the reducer (``umap.UMAP``, ``sklearn.manifold.TSNE``,
    ``sklearn.decomposition.PCA``); t-SNE also takes ``pca_dims`` (default 50, ``None`` = off)
    and ``place_k`` (neighbours used to place rows beyond ``max_fit``, default 5).
    ``method="manual"`` takes ``points`` (an (n, num_dims) array aligned with ``ids``, or a
    dict id -> point; extra dict keys are ignored) and only validates them.
    """
    start = time.perf_counter()
    ids = [str(i) for i in ids]
    if method not in METHODS:
        raise ValueError(f"visualization: unknown method {method!r}; expected one of {METHODS}")
    if num_dims not in (2, 3):
        raise ValueError(f"visualization: num_dims must be 2 or 3, got {num_dims}")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"visualization: duplicate sample id {dup!r}")
    if method == "manual":
        if vectors is not None and len(vectors) != len(ids):
            raise ValueError(f"visualization: {len(vectors)} vectors for {len(ids)} ids")
        out = manual_points(points, ids, num_dims)
        total = time.perf_counter() - start
        timings = {"fit_s": 0.0, "transform_s": 0.0, "total_s": total}
        return Reduction(out, ids, method, timings, 0, {})
    if points is not None:
        raise ValueError(
            f"visualization: points are only used with method='manual', not {method!r}"
        )
    if vectors is None:
        raise ValueError(f"visualization: method {method!r} needs embeddings")
    X = check_vectors(vectors, ids)
    n = X.shape[0]
    if max_fit < 1:
        raise ValueError(f"visualization: max_fit must be positive, got {max_fit}")
    need = min_samples(method, num_dims=num_dims, **kwargs)
    fit_n = min(n, max_fit)
    if n < need:
        raise ValueError(
            f"visualization: {method} needs at least {need} samples, got {n}" + _min_hint(method)
        )
    if fit_n < need:
        raise ValueError(
            f"visualization: max_fit={max_fit} is below the {need} samples {method} needs"
        )
    if method == "pca" and X.shape[1] < num_dims:
        raise ValueError(
            f"visualization: pca to {num_dims} dims needs >= {num_dims} features, got {X.shape[1]}"
        )
    if fit_n < n:
        rng = np.random.default_rng(seed)
        fit_idx = np.sort(rng.choice(n, size=fit_n, replace=False))
    else:
        fit_idx = np.arange(n)
    reducer = {"umap": _umap, "tsne": _tsne, "pca": _pca}[method]
    # UMAP and t-SNE have no per-iteration hook we can use quietly (UMAP's verbose mode prints
    # to stdout): progress says when the fit and the placing of the other rows are done.
    desc = f"{method} to {num_dims}-d of {n:,} x {X.shape[1]} vectors (fit on {fit_n:,})"
    with progress(desc, n, "rows") as bar:
        out, timings, params, model = reducer(X, fit_idx, num_dims, seed, dict(kwargs), bar)
    out = np.ascontiguousarray(out, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise ValueError(f"visualization: {method} gave a non-finite point for {ids[bad[0]]!r}")
    timings["total_s"] = time.perf_counter() - start
    return Reduction(out, ids, method, timings, int(fit_n), params, model)


def _min_hint(method: str) -> str:
    if method == "umap":
        return " (n_neighbors + 1; lower n_neighbors for tiny sets)"
    if method == "tsne":
        return " (more than 3 x perplexity; lower perplexity for tiny sets)"
    return " (num_dims)"


def manual_points(
    points: np.ndarray | Mapping[str, Sequence[float]] | None, ids: list[str], num_dims: int
) -> np.ndarray:
    """User points as (n, num_dims) float32 aligned with ``ids``; errors name the sample."""
    if points is None:
        raise ValueError("visualization: method='manual' needs points (array or dict id -> point)")
    if isinstance(points, Mapping):
        missing = [i for i in ids if i not in points]
        if missing:
            raise ValueError(
                f"visualization: no manual point for sample {missing[0]!r} ({len(missing)} missing)"
            )
        rows = []
        for i in ids:
            p = np.asarray(points[i], dtype=np.float64).ravel()
            if p.shape != (num_dims,):
                raise ValueError(
                    f"visualization: manual point for sample {i!r} has "
                    f"{p.size} values, expected {num_dims}"
                )
            rows.append(p)
        arr = np.vstack(rows) if rows else np.zeros((0, num_dims))
    else:
        arr = np.asarray(points, dtype=np.float64)
        if arr.shape != (len(ids), num_dims):
            raise ValueError(
                f"visualization: manual points have shape {arr.shape}, expected "
                f"({len(ids)}, {num_dims})"
            )
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise ValueError(f"visualization: non-finite manual point for sample {ids[bad[0]]!r}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _umap(X, fit_idx, num_dims, seed, kwargs, bar):
    import umap  # optional and slow to import (numba)

    params = {**UMAP_DEFAULTS, **kwargs}
    # A random_state makes UMAP deterministic and single-threaded anyway; say so explicitly.
    model = umap.UMAP(n_components=num_dims, random_state=seed, n_jobs=1, **params)
    t0 = time.perf_counter()
    out = np.empty((X.shape[0], num_dims), dtype=np.float32)
    out[fit_idx] = model.fit_transform(X[fit_idx])
    bar.update(fit_idx.size)
    t1 = time.perf_counter()
    rest = _rest(X.shape[0], fit_idx)
    if rest.size:
        out[rest] = model.transform(X[rest])
        bar.update(rest.size)
    t2 = time.perf_counter()
    return out, {"fit_s": t1 - t0, "transform_s": t2 - t1}, params, model


def _pca(X, fit_idx, num_dims, seed, kwargs, bar):
    from sklearn.decomposition import PCA

    model = PCA(n_components=num_dims, random_state=seed, **kwargs)
    t0 = time.perf_counter()
    model.fit(X[fit_idx])
    bar.update(fit_idx.size)
    t1 = time.perf_counter()
    out = model.transform(X)
    bar.update(X.shape[0] - fit_idx.size)
    t2 = time.perf_counter()
    params = {**kwargs, "explained_variance_ratio": model.explained_variance_ratio_.tolist()}
    return out, {"fit_s": t1 - t0, "transform_s": t2 - t1}, params, model


def _tsne(X, fit_idx, num_dims, seed, kwargs, bar):
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    pca_dims = kwargs.pop("pca_dims", TSNE_PCA_DIMS)
    place_k = int(kwargs.pop("place_k", TSNE_PLACE_K))
    params = {"perplexity": TSNE_PERPLEXITY, "init": "pca", "learning_rate": "auto", **kwargs}
    t0 = time.perf_counter()
    pca = None
    Z = X
    if pca_dims and X.shape[1] > pca_dims:
        pca = PCA(n_components=pca_dims, random_state=seed).fit(X[fit_idx])
        Z = pca.transform(X)
    model = TSNE(n_components=num_dims, random_state=seed, **params)
    out = np.empty((X.shape[0], num_dims), dtype=np.float32)
    out[fit_idx] = model.fit_transform(Z[fit_idx])
    bar.update(fit_idx.size)
    t1 = time.perf_counter()
    fitted = TsneMap(pca, np.ascontiguousarray(Z[fit_idx]), out[fit_idx].copy(), place_k)
    rest = _rest(X.shape[0], fit_idx)
    if rest.size:  # t-SNE has no transform: mean of the nearest fitted rows' points
        out[rest] = fitted.transform(X[rest])
        bar.update(rest.size)
    t2 = time.perf_counter()
    params.update(pca_dims=pca_dims, place_k=place_k)
    return out, {"fit_s": t1 - t0, "transform_s": t2 - t1}, params, fitted


def _rest(n: int, fit_idx: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[fit_idx] = False
    return np.flatnonzero(mask)


def trustworthiness_at_k(
    vectors: np.ndarray, points: np.ndarray, k: int = 10, *, max_n: int = 5_000, seed: int = 51
) -> float:
    """Trustworthiness in [0, 1] of ``points`` w.r.t. ``vectors`` at ``k`` neighbours
    (sklearn's definition: ``sklearn.manifold.trustworthiness`` with Euclidean distances).

    Only the original-space ranks of each point's ``k`` nearest neighbours in ``points`` are
    needed, so they are counted on blocks of rows instead of sorting every row of the n x n
    distance matrix. Above ``max_n`` rows it is computed on a seeded random sample of
    ``max_n`` rows.
    """
    from sklearn.neighbors import NearestNeighbors

    X = check_vectors(vectors)
    P = check_vectors(points, what="points")
    if X.shape[0] != P.shape[0]:
        raise ValueError(f"trustworthiness: {X.shape[0]} vectors but {P.shape[0]} points")
    if X.shape[0] > max_n:
        idx = np.random.default_rng(seed).choice(X.shape[0], size=max_n, replace=False)
        X, P = X[idx], P[idx]
    n = X.shape[0]
    if not 1 <= k < n / 2:
        raise ValueError(f"trustworthiness: k={k} must be in [1, n/2) for n={n}")
    near = NearestNeighbors(n_neighbors=k).fit(P).kneighbors(return_distance=False)
    sq = np.einsum("ij,ij->i", X, X)
    penalty = 0
    block = max(1, 4_000_000 // (n * k))  # rows per block: bounds the (rows, k, n) test
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        D = sq[rows, None] + sq[None, :] - 2.0 * (X[rows] @ X.T)  # squared distances
        D[np.arange(rows.size), rows] = np.inf  # a point is not its own neighbour
        Dj = np.take_along_axis(D, near[rows], axis=1)  # (rows, k) distances to P-neighbours
        # a neighbour within the row's k nearest in X costs nothing; rank only the others
        kth = np.partition(D, k - 1, axis=1)[:, k - 1]
        r, c = np.nonzero(Dj > kth[:, None])
        if r.size:
            rank = np.count_nonzero(D[r] < Dj[r, c][:, None], axis=1) + 1  # 1-based, others
            penalty += int(np.maximum(rank - k, 0).sum())
    return float(1.0 - penalty * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))))


# ---------------------------------------------------------------- drawing


def _palette(num: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab10" if num <= 10 else "tab20"]
    return [to_hex(cmap(i)) for i in range(num)]


def label_colours(labels: Sequence[Any] | None, n: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(class names, per-point class code, per-class colour); > 20 classes are all grey."""
    if labels is None:
        return [""], np.zeros(n, dtype=np.int64), ["#1f77b4"]
    labels = ["None" if v is None else str(v) for v in labels]
    if len(labels) != n:
        raise ValueError(f"visualization: {len(labels)} labels for {n} points")
    classes = sorted(set(labels))
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.array([lookup[v] for v in labels], dtype=np.int64)
    colours = _palette(len(classes)) if len(classes) <= MAX_CLASSES else [GREY] * len(classes)
    return classes, codes, colours


def _plane(points: np.ndarray) -> tuple[np.ndarray, str]:
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] not in (2, 3):
        raise ValueError(f"visualization: expected (n, 2) or (n, 3) points, got {P.shape}")
    return P[:, :2], ("3-D points: showing the first two dims" if P.shape[1] == 3 else "")


def scatter_png(
    points: np.ndarray, labels: Sequence[Any] | None = None, title: str | None = None
) -> bytes:
    """An 800 x 800 px PNG scatter, coloured by ``labels`` (categorical, <= 20 classes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    P, note = _plane(points)
    n = P.shape[0]
    classes, codes, colours = label_colours(labels, n)
    fig = Figure(figsize=(8, 8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    size = float(np.clip(6000 / max(n, 1), 4, 18))  # points^2: small but visible at 800 px
    if labels is not None and len(classes) <= MAX_CLASSES:
        for c, name in enumerate(classes):
            m = codes == c
            ax.scatter(
                P[m, 0],
                P[m, 1],
                s=size,
                c=colours[c],
                label=f"{name} ({m.sum()})",
                linewidths=0,
                alpha=0.8,
            )
        ax.legend(loc="best", fontsize=8, markerscale=max(1.0, 24 / size) ** 0.5, frameon=True)
    else:
        ax.scatter(
            P[:, 0],
            P[:, 1],
            s=size,
            c=colours[0] if labels is None else GREY,
            linewidths=0,
            alpha=0.8,
        )
        if labels is not None:
            note = "; ".join(x for x in (note, f"{len(classes)} classes: not coloured") if x)
    heading = "\n".join(x for x in (title or "", note) if x)
    if heading:
        ax.set_title(heading, fontsize=11)
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _image_src(path: str | None) -> str:
    """A URL the page can load without network: file paths and data: URIs only."""
    if not path:
        return ""
    if path.startswith(("data:image/", "file://")):
        return path
    if "://" in path:  # remote URLs would reach the network: show the text only
        return ""
    p = Path(path)
    return p.as_uri() if p.is_absolute() else quote(p.as_posix())


def _json_for_script(obj: Any) -> str:
    # JSON is valid JS; escaping <, > and & keeps "</script>" in an id from ending the script.
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def scatter_html(
    points: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[Any] | None = None,
    thumbnails: Sequence[str | None] | Mapping[str, str] | None = None,
    title: str | None = None,
) -> str:
    """A self-contained interactive page: hover tooltips, lasso selection, id export.

    No network: one inline canvas script. 3-D points are drawn by their first two dims.
    Thumbnails (aligned list or dict id -> path) show as text, and as an image when they are
    file paths (absolute paths become ``file://`` URLs; relative ones resolve next to the page).
    """
    P, note = _plane(points)
    ids = [str(i) for i in ids]
    n = P.shape[0]
    if len(ids) != n:
        raise ValueError(f"visualization: {n} points for {len(ids)} ids")
    classes, codes, colours = label_colours(labels, n)
    if isinstance(thumbnails, Mapping):
        thumbs = [thumbnails.get(i) for i in ids]
    elif thumbnails is not None:
        thumbs = list(thumbnails)
        if len(thumbs) != n:
            raise ValueError(f"visualization: {len(thumbs)} thumbnails for {n} points")
    else:
        thumbs = [None] * n
    counts = np.bincount(codes, minlength=len(classes)).tolist()
    coloured = labels is not None and len(classes) <= MAX_CLASSES
    if labels is not None and not coloured:
        note = "; ".join(x for x in (note, f"{len(classes)} classes: not coloured") if x)
    data = {
        "ids": ids,
        "x": [float(f"{v:.6g}") for v in P[:, 0]],
        "y": [float(f"{v:.6g}") for v in P[:, 1]],
        "codes": codes.tolist(),
        "classes": classes,
        "colors": colours if coloured or labels is None else [GREY] * len(classes),
        "counts": counts,
        "hasLabels": labels is not None,
        "coloured": coloured,
        "thumbs": [t or "" for t in thumbs],
        "srcs": [_image_src(t) for t in thumbs],
    }
    page_title = html.escape(title or f"Embeddings: {n} points")
    fill = {"TITLE": page_title, "NOTE": html.escape(note), "DATA": _json_for_script(data)}
    return re.sub(r"__(TITLE|NOTE|DATA)__", lambda m: fill[m.group(1)], _PAGE)  # one pass


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:13px system-ui,sans-serif;margin:12px;color:#222}
h3{margin:0 0 4px}.note{color:#666;margin:0 0 8px}
#wrap{display:flex;gap:14px;align-items:flex-start}
#plot{border:1px solid #ccc;cursor:crosshair;touch-action:none}
#side{width:300px}#side button{margin:2px 2px 6px 0}
#sel{width:100%;height:240px;font:11px monospace;box-sizing:border-box}
#legend div{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#legend i{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:50%}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;padding:4px 6px;
display:none;max-width:260px;font-size:12px;box-shadow:0 1px 4px rgba(0,0,0,.25);
word-break:break-all}
#tip img{max-width:240px;max-height:180px;display:block;margin-top:4px}
</style></head><body>
<h3>__TITLE__</h3><p class="note">__NOTE__</p>
<div id="wrap"><canvas id="plot" width="760" height="760"></canvas>
<div id="side">
<div>Drag a lasso around points to select them; Shift+drag adds to the selection.</div>
<p id="count">0 selected</p>
<button id="export-txt">Export ids (.txt)</button>
<button id="export-json">Export ids (.json)</button>
<button id="clear">Clear selection</button>
<textarea id="sel" readonly placeholder="selected ids"></textarea>
<div id="legend"></div>
</div></div>
<div id="tip"></div>
<script>
const DATA = __DATA__;
(function () {
  "use strict";
  const D = DATA, n = D.ids.length, W = 760, H = 760, PAD = 16;
  const cv = document.getElementById("plot"), ctx = cv.getContext("2d");
  const dpr = window.devicePixelRatio || 1;
  cv.width = W * dpr; cv.height = H * dpr; cv.style.width = W + "px"; cv.style.height = H + "px";
  ctx.scale(dpr, dpr);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    x0 = Math.min(x0, D.x[i]); x1 = Math.max(x1, D.x[i]);
    y0 = Math.min(y0, D.y[i]); y1 = Math.max(y1, D.y[i]);
  }
  const sc = (Math.min(W, H) - 2 * PAD) / (Math.max(x1 - x0, y1 - y0) || 1);  // equal aspect
  const sx = new Float32Array(n), sy = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    sx[i] = W / 2 + (D.x[i] - (x0 + x1) / 2) * sc;
    sy[i] = H / 2 - (D.y[i] - (y0 + y1) / 2) * sc;
  }
  const R = n > 3000 ? 1.8 : n > 800 ? 2.5 : 3.5;
  const sel = new Uint8Array(n);
  let nsel = 0, lasso = null, additive = false;

  function draw() {
    ctx.clearRect(0, 0, W, H);
    for (let pass = 0; pass < 2; pass++) {  // selected points on top
      for (let i = 0; i < n; i++) {
        if ((sel[i] === 1) !== (pass === 1)) continue;
        ctx.globalAlpha = nsel && !sel[i] ? 0.2 : 0.85;
        ctx.fillStyle = D.colors[D.codes[i]];
        ctx.beginPath(); ctx.arc(sx[i], sy[i], sel[i] ? R + 1 : R, 0, 2 * Math.PI); ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    if (lasso && lasso.length > 1) {
      ctx.strokeStyle = "#d62728"; ctx.lineWidth = 1.5; ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(lasso[0][0], lasso[0][1]);
      for (const [x, y] of lasso) ctx.lineTo(x, y);
      ctx.closePath(); ctx.stroke(); ctx.setLineDash([]);
    }
  }

  function inside(px, py, poly) {  // even-odd ray casting
    let c = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const xi = poly[i][0], yi = poly[i][1], xj = poly[j][0], yj = poly[j][1];
      if ((yi > py) !== (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi) c = !c;
    }
    return c;
  }

  function lassoSelect(poly) {
    let bx0 = Infinity, bx1 = -Infinity, by0 = Infinity, by1 = -Infinity;
    for (const [x, y] of poly) {
      bx0 = Math.min(bx0, x); bx1 = Math.max(bx1, x);
      by0 = Math.min(by0, y); by1 = Math.max(by1, y);
    }
    if (!additive) sel.fill(0);
    for (let i = 0; i < n; i++) {
      if (sx[i] < bx0 || sx[i] > bx1 || sy[i] < by0 || sy[i] > by1) continue;
      if (inside(sx[i], sy[i], poly)) sel[i] = 1;
    }
    refresh();
  }

  function selectedIds() {
    const out = [];
    for (let i = 0; i < n; i++) if (sel[i]) out.push(D.ids[i]);
    return out;
  }

  function refresh() {
    const ids = selectedIds();
    nsel = ids.length;
    document.getElementById("count").textContent = nsel + " of " + n + " selected";
    document.getElementById("sel").value = ids.join("\\n");
    draw();
  }

  function download(name, text, type) {  // export ids via a Blob, no server involved
    const blob = new Blob([text], {type: type});
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  function pos(ev) {
    const r = cv.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top];
  }

  const tip = document.getElementById("tip");
  function nearest(x, y) {
    let best = -1, bd = 64;  // within 8 px
    for (let i = 0; i < n; i++) {
      const d = (sx[i] - x) * (sx[i] - x) + (sy[i] - y) * (sy[i] - y);
      if (d < bd) { bd = d; best = i; }
    }
    return best;
  }
  function line(text, bold) {
    const el = document.createElement("div");
    el.textContent = text; if (bold) el.style.fontWeight = "bold";
    return el;
  }
  function hover(ev, x, y) {
    const i = nearest(x, y);
    if (i < 0) { tip.style.display = "none"; return; }
    tip.replaceChildren(line(D.ids[i], true));
    if (D.hasLabels) tip.appendChild(line("label: " + D.classes[D.codes[i]]));
    if (D.thumbs[i]) tip.appendChild(line(D.thumbs[i]));
    if (D.srcs[i]) {
      const img = document.createElement("img"); img.src = D.srcs[i]; img.alt = "";
      tip.appendChild(img);
    }
    tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 14) + "px";
    tip.style.display = "block";
  }

  cv.addEventListener("pointerdown", (ev) => {
    cv.setPointerCapture(ev.pointerId);
    lasso = [pos(ev)]; additive = ev.shiftKey; tip.style.display = "none";
  });
  cv.addEventListener("pointermove", (ev) => {
    const [x, y] = pos(ev);
    if (!lasso) { hover(ev, x, y); return; }
    const last = lasso[lasso.length - 1];
    if (Math.abs(x - last[0]) + Math.abs(y - last[1]) > 2) { lasso.push([x, y]); draw(); }
  });
  cv.addEventListener("pointerup", () => {
    if (lasso && lasso.length > 2) lassoSelect(lasso);
    lasso = null; draw();
  });
  cv.addEventListener("pointerleave", () => { tip.style.display = "none"; });
  document.getElementById("clear").onclick = () => { sel.fill(0); refresh(); };
  document.getElementById("export-txt").onclick = () =>
    download("selected_ids.txt", selectedIds().join("\\n") + "\\n", "text/plain");
  document.getElementById("export-json").onclick = () =>
    download("selected_ids.json", JSON.stringify(selectedIds(), null, 1), "application/json");

  const legend = document.getElementById("legend");
  if (D.hasLabels && D.coloured) {
    D.classes.forEach((c, k) => {
      const row = document.createElement("div"), dot = document.createElement("i");
      dot.style.background = D.colors[k];
      row.appendChild(dot); row.appendChild(document.createTextNode(c + " (" + D.counts[k] + ")"));
      legend.appendChild(row);
    });
  }
  refresh();
})();
</script></body></html>
"""
