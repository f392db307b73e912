"""``compute_visualization`` as a brain run: points table, PNG scatter, static HTML, and the
link to its page in the embeddings viewer (``dagster_brain.viewer``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from dagster_brain.config import BrainSettings
from dagster_brain.runs import RunOutcome, frame_version, new_record
from dagster_brain.specs import VisualizationSpec
from dagster_brain.store import Store

_LOG = logging.getLogger("dagster_brain")
TRUST_ROWS = 1_000  # points (a seeded sample above this) trustworthiness@10 is measured on


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
    carries ``viewer_url``, the run's interactive page in the embeddings viewer."""
    from dagster_brain.algorithms.visualization import (
        reduce,
        scatter_html,
        scatter_png,
        trustworthiness_at_k,
    )

    t0 = time.perf_counter()
    item_ids, sample_ids, label_ids, X, upstream = _vectors(spec, store, ids)
    t_read = time.perf_counter() - t0
    points = _manual_points(spec, store) if spec.method == "manual" else None
    try:
        red = reduce(
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
    labels = _colour_labels(spec, store, sample_ids, label_ids)
    frame = pd.DataFrame({"sample_id": sample_ids})
    if label_ids is not None:
        frame["label_id"] = label_ids
    for d, axis in enumerate("xyz"[: spec.num_dims]):
        frame[axis] = red.points[:, d].astype(float)
    if labels is not None:
        frame["label"] = labels
    t1 = time.perf_counter()
    png_path, html_path = plot_paths(store, spec.dataset, spec.brain_key)
    title = f"{spec.dataset}/{spec.brain_key} ({spec.method}, {len(item_ids)} points)"
    png = scatter_png(red.points, labels=labels, title=title)
    filepaths = store.samples(spec.dataset, sorted(set(sample_ids))).set_index("sample_id")[
        "filepath"
    ]
    html = scatter_html(
        red.points,
        item_ids,
        labels=labels,
        thumbnails=[filepaths.get(s) for s in sample_ids],
        title=title,
    )
    tmp_png, tmp_html = png_path.with_suffix(".png.tmp"), html_path.with_suffix(".html.tmp")
    tmp_png.write_bytes(png)
    tmp_html.write_text(html)
    t_plot = time.perf_counter() - t1
    # trustworthiness@10 needs more than 20 points (k < n / 2); fewer: not reported. It is
    # measured on a seeded sample of TRUST_ROWS points: a quality figure, not worth O(n²)
    t2 = time.perf_counter()
    trust = (
        trustworthiness_at_k(X, red.points, k=10, max_n=TRUST_ROWS)
        if spec.method != "manual" and len(item_ids) > 20
        else None
    )
    timings = {
        "read_s": t_read,
        **red.timings,
        "plots_s": t_plot,
        "trustworthiness_s": time.perf_counter() - t2,
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
        packages=("umap-learn", "scikit-learn"),
        config={
            **spec.model_dump(mode="json"),
            "timings": timings,
            "fit_size": red.fit_size,
            "trustworthiness_at_10": trust,
            "trustworthiness_rows": min(len(item_ids), TRUST_ROWS) if trust is not None else 0,
        },
        artifacts=[
            *(artifacts or []),
            {"type": "path", "path": str(png_path)},
            {"type": "path", "path": str(html_path)},
        ],
    )
    try:
        store.commit_run(record, frame)
    except BaseException:
        tmp_png.unlink(missing_ok=True)
        tmp_html.unlink(missing_ok=True)
        raise
    tmp_png.replace(png_path)
    tmp_html.replace(html_path)
    return RunOutcome(
        record,
        frame,
        frame_version(frame),
        {
            "png": png,
            "png_path": png_path,
            "html_path": html_path,
            "viewer_url": viewer_url(spec.dataset, spec.brain_key),
            "timings": timings,
            "trustworthiness_at_10": trust,
            "fit_size": red.fit_size,
        },
    )
