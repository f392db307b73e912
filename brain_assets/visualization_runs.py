"""``compute_visualization`` as a brain run: points table, PNG scatter, static HTML, and the
link to its page in the embeddings viewer (``dagster_brain.viewer``).

A run keeps its fitted reducer (``<data_dir>/models/<dataset>/<brain_key>-<fit>.joblib``, one
file per full fit, listed in the run's artifacts) and the row hash of each point's vector
(table ``point_hashes``). A refresh with the same map settings and source keeps the points of
unchanged rows, places new or changed rows with that reducer and drops removed ones, until the
rows placed since the last full fit exceed ``refit_share`` of the points.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.config import BrainSettings
from dagster_brain.runs import RunOutcome, frame_version, new_record, package_versions
from dagster_brain.specs import VisualizationSpec
from dagster_brain.store import Store, row_hashes, utcnow
from dagster_brain.store.runs import ADHOC_RUN_PREFIX

_LOG = logging.getLogger("dagster_brain")
TRUST_ROWS = 1_000  # points (a seeded sample above this) trustworthiness@10 is measured on
HASH_TABLE = "point_hashes"  # item_id, row_hash of the vector each point was made from
MODEL_ROLE = "reducer"  # the artifact entry of the stored reducer file
MODEL_FORMAT = 1  # bumped when the stored reducer's layout changes
PACKAGES = ("umap-learn", "scikit-learn")  # their versions shape points and stored reducers
# spec fields that move no point: changing them keeps the stored map (brain_key: a renamed
# run refreshes in place)
MAP_NEUTRAL = frozenset({"brain_key", "refit", "refit_share", "refresh_cron", "label_field"})


def plot_paths(store: Store, dataset: str, brain_key: str) -> tuple[Path, Path]:
    """Where a visualization run's PNG and HTML go."""
    folder = store.data_dir / "plots" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{brain_key}.png", folder / f"{brain_key}.html"


def viewer_url(dataset: str, brain_key: str, settings: BrainSettings | None = None) -> str:
    """The run's page in the embeddings viewer (host and port: ``viewer_host``/``viewer_port``
    of the brain config, ``BRAIN_VIEWER_PORT``; read when the run commits)."""
    settings = settings or BrainSettings.from_env()
    return settings.viewer_url(dataset, brain_key)


def _vectors(spec: VisualizationSpec, store: Store, ids: list[str] | None):
    """(item ids, sample ids, label ids or None, vectors, upstream) from a key or an index."""
    if spec.similarity is not None:
        from dagster_brain.similarity.runs import read_index

        iv = read_index(store, spec.dataset, spec.similarity, ids)
        sample_ids = [iv.sample_of[i] for i in iv.ids]
        return iv.ids, sample_ids, (iv.ids if iv.patches else None), iv.vectors, iv.upstream
    from dagster_brain.embeddings import check_model

    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    upstream = {
        "embeddings": {"key": emb.key, "model": emb.model, "data_version": emb.data_version}
    }
    return emb.ids, emb.sample_ids, emb.label_ids, emb.vectors, upstream


def _colour_labels(spec, store, sample_ids, label_ids) -> list[str] | None:
    if spec.label_field is None:
        return None
    labels = store.labels(spec.dataset, spec.label_field)
    if label_ids is not None:
        by_label = labels.set_index("label_id")["label"]
        return [str(by_label.get(i, "")) for i in label_ids]
    by_sample = labels.drop_duplicates("sample_id").set_index("sample_id")["label"]
    return [str(by_sample.get(s, "")) for s in sample_ids]


def _manual_points(spec: VisualizationSpec, store: Store) -> dict[str, list[float]]:
    from dagster_brain.embeddings import read_table

    path = Path(spec.points_path).expanduser()
    path = path if path.is_absolute() else store.data_dir / path
    table = read_table(path)
    if "id" not in table:
        raise ValueError(f"{path.name}: manual points need an 'id' column")
    if "point" in table:
        return {str(i): list(p) for i, p in zip(table["id"], table["point"], strict=True)}
    cols = [c for c in ("x", "y", "z") if c in table][: spec.num_dims]
    return {str(i): list(r) for i, r in zip(table["id"], table[cols].to_numpy(), strict=True)}


# -- the stored reducer and what changed since the previous run --------------------------------


@dataclass(frozen=True)
class Refresh:
    """How a refresh builds on the previous run: the rows it keeps and those it places."""

    model: Any  # the stored reducer (``Reduction.model``)
    artifact: dict[str, Any]  # the stored reducer's artifact entry, kept by the new run
    kept: np.ndarray  # positions (in this run's rows) of rows whose vector is unchanged
    kept_points: np.ndarray  # their points in the previous run, (len(kept), num_dims)
    placed: np.ndarray  # positions of new or changed rows
    removed: int  # rows of the previous run that are gone
    fit: dict[str, Any]  # the last full fit's lineage (``_fit_lineage``)


def model_path(store: Store, dataset: str, brain_key: str, token: str) -> Path:
    """Where a full fit's reducer goes: one file per fit, so a refit or a new run under a
    renamed run's old key never overwrites a file another run lists."""
    folder = store.data_dir / "models" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{brain_key}-{token}.joblib"


def save_model(model: Any, path: Path, spec: VisualizationSpec) -> Path:
    """Write the reducer to a temporary file beside ``path`` (renamed once the run commits)."""
    import joblib

    tmp = path.with_name(f"{path.name}.tmp")
    payload = {"format": MODEL_FORMAT, "method": spec.method, "num_dims": spec.num_dims}
    joblib.dump({**payload, "model": model}, tmp)
    return tmp


def load_model(path: Path, spec: VisualizationSpec) -> Any:
    """The reducer stored at ``path``; raises if it is missing, unreadable or of another map.
    (The file is unpickled: it is one this store wrote under its own data dir.)"""
    import joblib

    payload = joblib.load(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path.name} is not a stored reducer of format {MODEL_FORMAT}")
    if (payload.get("method"), payload.get("num_dims")) != (spec.method, spec.num_dims):
        raise ValueError(f"{path.name} holds a {payload.get('method')} reducer of another map")
    return payload["model"]


def row_changes(
    old_ids: list[str], old_hashes: np.ndarray, ids: list[str], hashes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(positions in ``ids`` of rows with an unchanged hash, their positions in ``old_ids``,
    positions of new or changed rows, how many old rows are gone)."""
    old_pos = pd.Index(old_ids).get_indexer(ids)
    old_h = np.asarray(old_hashes, dtype=np.uint64)
    now = np.asarray(hashes, dtype=np.uint64)
    same = old_pos >= 0
    same[same] = old_h[old_pos[same]] == now[same]
    kept = np.flatnonzero(same)
    removed = len(old_ids) - int(pd.Index(old_ids).isin(ids).sum())
    return kept, old_pos[kept], np.flatnonzero(~same), removed


def _map_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The spec fields of a run's config that shape its points."""
    fields = VisualizationSpec.model_fields
    return {k: v for k, v in config.items() if k in fields and k not in MAP_NEUTRAL}


def _source(upstream: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies the vectors a run read (not their data version)."""
    if "embeddings" in upstream:
        e = upstream["embeddings"]
        return ("embeddings", e.get("key"), e.get("model"))
    s = upstream.get("similarity") or {}
    return ("similarity", s.get("brain_key"), s.get("backend"), s.get("collection"))


def _stored_artifact(record) -> dict[str, Any] | None:
    return next((a for a in record.artifacts if a.get("role") == MODEL_ROLE), None)


def _unchanged_map(spec: VisualizationSpec, prev, upstream: dict[str, Any]) -> str | None:
    """Why the previous run's map cannot be refreshed (settings, source, packages), or None."""
    if prev.kind != "visualization":
        return f"the key holds a {prev.kind} run"
    was, now = _map_settings(prev.config), _map_settings(spec.model_dump(mode="json"))
    changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
    if changed:
        return f"map settings changed ({', '.join(changed)})"
    if _source(prev.upstream) != _source(upstream):
        return "the vectors come from another embeddings key, model or index"
    versions = package_versions(*PACKAGES)
    moved = [p for p in PACKAGES if prev.versions.get(p) != versions[p]]
    if moved:
        return f"{moved[0]} changed ({prev.versions.get(moved[0])} -> {versions[moved[0]]})"
    if _stored_artifact(prev) is None or not prev.upstream.get("fit"):
        return "the previous run kept no reducer"
    if HASH_TABLE not in prev.table_names():
        return "the previous run kept no row hashes"
    return None


def plan_refresh(
    spec: VisualizationSpec,
    store: Store,
    item_ids: list[str],
    hashes: np.ndarray,
    upstream: dict[str, Any],
    log: Any = _LOG,
) -> Refresh | str:
    """How this run can build on the previous one, or why it fits the whole map afresh."""
    if spec.method == "manual":
        return "manual points"
    if spec.refit:
        return "refit requested"
    prev = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    if prev is None:
        return "no previous run"
    why = _unchanged_map(spec, prev, upstream)
    if why:
        return why
    old = store.load_extra(spec.dataset, spec.brain_key, HASH_TABLE)
    old_ids = old["item_id"].astype(str).tolist()
    kept, old_pos, placed, removed = row_changes(old_ids, old["row_hash"], item_ids, hashes)
    fit = dict(prev.upstream["fit"])
    share = (int(fit.get("placed", 0)) + placed.size) / max(len(item_ids), 1)
    if share > spec.refit_share or kept.size == 0:
        return (
            f"{share:.1%} of the points would be placed since the last full fit "
            f"(refit_share {spec.refit_share:g})"
        )
    artifact = _stored_artifact(prev)
    try:
        model = load_model(Path(artifact["path"]), spec)
    except Exception as err:  # missing, truncated, unpicklable: the map is fitted again
        log.warning("%s: stored reducer unusable: %s", spec.brain_key, err)
        return f"the stored reducer {Path(artifact['path']).name} could not be read ({err})"
    points = _previous_points(store, spec, old_ids, old_pos)
    if points is None:
        return "the previous points do not match its row hashes"
    return Refresh(model, artifact, kept, points, placed, removed, fit)


def _previous_points(
    store: Store, spec: VisualizationSpec, old_ids: list[str], old_pos: np.ndarray
) -> np.ndarray | None:
    """The previous run's points of the rows ``old_ids[old_pos]``, exactly as stored."""
    prev = store.load_results(spec.dataset, spec.brain_key)
    id_col = "label_id" if "label_id" in prev else "sample_id"
    axes = list("xyz"[: spec.num_dims])
    if id_col not in prev or not set(axes) <= set(prev.columns):
        return None
    rows = pd.Index(prev[id_col].astype(str)).get_indexer([old_ids[i] for i in old_pos])
    if (rows < 0).any():
        return None
    # stored as float64 from float32: casting back gives the very same values
    return prev[axes].to_numpy()[rows].astype(np.float32)


def refresh_points(refresh: Refresh, X: np.ndarray, item_ids: list[str], method: str):
    """The refreshed map: kept rows' points as they were, the others placed."""
    from dagster_brain.algorithms.visualization import Reduction, place

    t0 = time.perf_counter()
    points = np.empty((len(item_ids), refresh.kept_points.shape[1]), dtype=np.float32)
    points[refresh.kept] = refresh.kept_points
    if refresh.placed.size:
        new_ids = [item_ids[i] for i in refresh.placed]
        points[refresh.placed] = place(refresh.model, X[refresh.placed], new_ids)
    spent = time.perf_counter() - t0
    timings = {"fit_s": 0.0, "transform_s": spent, "total_s": spent}
    fit_size = int(refresh.fit.get("fit_size", 0))
    return Reduction(points, item_ids, method, timings, fit_size, {}, refresh.model)


def _fit_lineage(run_id: str, fit_size: int, points: int, reason: str) -> dict[str, Any]:
    """What a full fit records: when it was, and no rows placed since yet."""
    return {
        "fitted_at": run_id,
        "fitted_time": utcnow().isoformat(timespec="seconds"),
        "fit_size": fit_size,
        "points": points,
        "placed": 0,
        "reason": reason,
    }


def _update_lineage(refresh: Refresh, points: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``update`` a refresh records, the fit lineage it carries on)."""
    fit = {**refresh.fit, "placed": int(refresh.fit.get("placed", 0)) + int(refresh.placed.size)}
    update = {
        "added": int(refresh.placed.size),  # new or changed rows, as the kNN refreshes count
        "removed": refresh.removed,
        "transformed": int(refresh.placed.size),
        "fitted_at": fit.get("fitted_at"),
        "since_fit": round(fit["placed"] / max(points, 1), 6),
    }
    return update, fit


# -- the run -----------------------------------------------------------------------------------


def _reduce(spec: VisualizationSpec, store: Store, X: np.ndarray, item_ids: list[str]):
    """A full fit of the map (or the manual points)."""
    from dagster_brain.algorithms.visualization import reduce

    points = _manual_points(spec, store) if spec.method == "manual" else None
    try:
        return reduce(
            X,
            item_ids,
            method=spec.method,
            num_dims=spec.num_dims,
            seed=spec.seed,
            points=points,
            max_fit=spec.max_fit,
        )
    except ValueError as err:
        raise ValueError(f"brain key {spec.brain_key!r}: {err}") from err


def _points_frame(spec, sample_ids, label_ids, points, labels) -> pd.DataFrame:
    frame = pd.DataFrame({"sample_id": sample_ids})
    if label_ids is not None:
        frame["label_id"] = label_ids
    for d, axis in enumerate("xyz"[: spec.num_dims]):
        frame[axis] = points[:, d].astype(float)
    if labels is not None:
        frame["label"] = labels
    return frame


def _write_plots(spec, store, points, item_ids, sample_ids, labels) -> dict[str, Any]:
    """The PNG and HTML of all points, written to temporary files beside their paths."""
    from dagster_brain.algorithms.visualization import scatter_html, scatter_png

    png_path, html_path = plot_paths(store, spec.dataset, spec.brain_key)
    title = f"{spec.dataset}/{spec.brain_key} ({spec.method}, {len(item_ids)} points)"
    png = scatter_png(points, labels=labels, title=title)
    filepaths = store.samples(spec.dataset, sorted(set(sample_ids))).set_index("sample_id")[
        "filepath"
    ]
    html = scatter_html(
        points,
        item_ids,
        labels=labels,
        thumbnails=[filepaths.get(s) for s in sample_ids],
        title=title,
    )
    tmp_png, tmp_html = png_path.with_suffix(".png.tmp"), html_path.with_suffix(".html.tmp")
    tmp_png.write_bytes(png)
    tmp_html.write_text(html)
    return {"png": png, "png_path": png_path, "html_path": html_path, "tmp": [tmp_png, tmp_html]}


def _trust(spec: VisualizationSpec, X: np.ndarray, points: np.ndarray) -> float | None:
    """trustworthiness@10 on a seeded sample of TRUST_ROWS points: a quality figure, not
    worth O(n²); it needs more than 20 points (k < n / 2), fewer: not reported."""
    from dagster_brain.algorithms.visualization import trustworthiness_at_k

    if spec.method == "manual" or len(points) <= 20:
        return None
    return trustworthiness_at_k(X, points, k=10, max_n=TRUST_ROWS)


def _stored_model_files(
    spec: VisualizationSpec, store: Store, red, refresh: Refresh | str
) -> tuple[list[dict[str, Any]], list[tuple[Path, Path]]]:
    """(the reducer's artifact entry, [(temporary file, final path)] to rename on commit)."""
    if isinstance(refresh, Refresh):
        return [refresh.artifact], []
    if red.model is None:
        return [], []
    path = model_path(store, spec.dataset, spec.brain_key, uuid.uuid4().hex[:12])
    tmp = save_model(red.model, path, spec)
    return [{"type": "path", "path": str(path), "role": MODEL_ROLE}], [(tmp, path)]


def run_visualization(
    spec: VisualizationSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """Reduce vectors to 2-D/3-D points; store them with a PNG and an HTML plot. The summary
    carries ``viewer_url``, the run's interactive page in the embeddings viewer.

    A refresh of the whole key keeps the previous map when it can (``plan_refresh``): the
    points of unchanged rows stay as they were and only new or changed rows are placed; its
    lineage says so under ``update``. Otherwise the map is fitted afresh, and the log says why.
    """
    t0 = time.perf_counter()
    item_ids, sample_ids, label_ids, X, upstream = _vectors(spec, store, ids)
    t_read = time.perf_counter() - t0
    run_id = run_id or f"{ADHOC_RUN_PREFIX}{uuid.uuid4().hex[:12]}"
    t1 = time.perf_counter()
    hashes = row_hashes(item_ids, X) if spec.method != "manual" else None
    refresh: Refresh | str = (
        "a run on a subset of the samples"
        if ids is not None
        else plan_refresh(spec, store, item_ids, hashes, upstream, log)
    )
    t_plan = time.perf_counter() - t1
    if isinstance(refresh, Refresh):
        red = refresh_points(refresh, X, item_ids, spec.method)
        update, fit = _update_lineage(refresh, len(item_ids))
        upstream = {**upstream, "update": update, "fit": fit}
        log.info("%s: map refreshed: %s", spec.brain_key, update)
    else:
        log.info("%s: full fit of the map: %s", spec.brain_key, refresh)
        red = _reduce(spec, store, X, item_ids)
        fit = _fit_lineage(run_id, red.fit_size, len(item_ids), refresh)
        upstream = {**upstream, "update": None, "fit": fit if red.model is not None else None}
    labels = _colour_labels(spec, store, sample_ids, label_ids)
    frame = _points_frame(spec, sample_ids, label_ids, red.points, labels)
    t2 = time.perf_counter()
    plots = _write_plots(spec, store, red.points, item_ids, sample_ids, labels)
    model_art, moves = _stored_model_files(spec, store, red, refresh)
    t_plot = time.perf_counter() - t2
    t3 = time.perf_counter()
    trust = _trust(spec, X, red.points)
    timings = {
        "read_s": t_read,
        "plan_s": t_plan,
        **red.timings,
        "plots_s": t_plot,
        "trustworthiness_s": time.perf_counter() - t3,
    }
    log.info(
        "%s: %s of %d points (fit on %d): %s",
        spec.brain_key,
        spec.method,
        len(item_ids),
        red.fit_size,
        {k: round(v, 2) for k, v in timings.items()},
    )
    record = new_record(
        spec,
        store,
        method=spec.method,
        sample_ids=sample_ids,
        label_ids=label_ids,
        run_id=run_id,
        upstream=upstream,
        packages=PACKAGES,
        config={
            **spec.model_dump(mode="json"),
            "timings": timings,
            "fit_size": red.fit_size,
            "trustworthiness_at_10": trust,
            "trustworthiness_rows": min(len(item_ids), TRUST_ROWS) if trust is not None else 0,
        },
        artifacts=[
            *(artifacts or []),
            {"type": "path", "path": str(plots["png_path"])},
            {"type": "path", "path": str(plots["html_path"])},
            *model_art,
        ],
    )
    previous = store.get_run(spec.dataset, spec.brain_key, missing_ok=True)
    extra = None
    if hashes is not None:
        extra = {HASH_TABLE: pd.DataFrame({"item_id": item_ids, "row_hash": hashes})}
    temporary = [*plots["tmp"], *(tmp for tmp, _ in moves)]
    try:
        store.commit_run(record, frame, extra=extra)
    except BaseException:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
        raise
    _finish_files(plots, moves, previous, model_art)
    return RunOutcome(
        record,
        frame,
        frame_version(frame),
        {
            "png": plots["png"],
            "png_path": plots["png_path"],
            "html_path": plots["html_path"],
            "viewer_url": viewer_url(spec.dataset, spec.brain_key),
            "timings": timings,
            "trustworthiness_at_10": trust,
            "fit_size": red.fit_size,
            "incremental": isinstance(refresh, Refresh),
            "update": upstream["update"],
            "refit_reason": None if isinstance(refresh, Refresh) else refresh,
        },
    )


def _finish_files(plots, moves, previous, model_art) -> None:
    """After the commit: the new files take their places; a reducer the replaced run listed
    and this one does not is removed."""
    tmp_png, tmp_html = plots["tmp"]
    tmp_png.replace(plots["png_path"])
    tmp_html.replace(plots["html_path"])
    for tmp, path in moves:
        tmp.replace(path)
    old = _stored_artifact(previous) if previous is not None else None
    keep = {a["path"] for a in model_art}
    if old is not None and old["path"] not in keep:
        Path(old["path"]).unlink(missing_ok=True)
