"""Compute an embeddings key from its spec: a model, a precomputed array or column, or a key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dagster_brain.specs import EmbeddingsSpec
from dagster_brain.store import EmbeddingSet, Store

_LOG = logging.getLogger("dagster_brain")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV, Parquet or JSONL file as a frame (by extension)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    if suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path.name}: unsupported table format {suffix!r} (csv, parquet, jsonl)")


def _decode(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def load_precomputed(spec: EmbeddingsSpec, store: Store) -> tuple[list[str], np.ndarray]:
    """(sample ids, vectors) from ``spec.path``: .npz (ids + embeddings), .npy, or a table."""
    from dagster_brain.embedding.pipeline import validate_precomputed  # imports torch

    path = Path(spec.path).expanduser()
    if not path.is_absolute():
        path = store.data_dir / path
    if not path.exists():
        raise FileNotFoundError(f"embeddings {spec.key!r}: file {path} does not exist")
    where = f"embeddings {spec.key!r} ({path.name})"
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "ids" not in z or "embeddings" not in z:
                raise ValueError(f"{where}: expected arrays 'ids' and 'embeddings'")
            ids, vectors = [str(i) for i in z["ids"]], z["embeddings"]
    elif path.suffix == ".npy":
        vectors = np.load(path, allow_pickle=False)
        ids = store.sample_ids(spec.dataset)  # rows follow the dataset's sorted sample ids
    else:
        table = read_table(path)
        column = spec.column or "embedding"
        for col in (spec.id_column, column):
            if col not in table:
                raise ValueError(f"{where}: no column {col!r} (columns: {list(table.columns)})")
        ids = table[spec.id_column].astype(str).tolist()
        vectors = table[column].map(_decode)
    try:
        return ids, validate_precomputed(vectors, ids)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


@dataclass(frozen=True)
class Embedded:
    """Vectors computed for an embeddings key, before they are written."""

    sample_ids: list[str]
    vectors: np.ndarray
    label_ids: list[str] | None = None
    model: str | None = None
    model_hash: str | None = None
    source: str = "model"
    patches_field: str | None = None

    def write(self, store: Store, spec: EmbeddingsSpec, run_id: str | None, **kw) -> EmbeddingSet:
        """Replace the key with these vectors (``update=True``: only their samples' rows)."""
        update = kw.pop("update", False)
        write = store.update_embeddings if update else store.write_embeddings
        return write(
            spec.dataset,
            spec.key,
            self.sample_ids,
            self.vectors,
            label_ids=self.label_ids,
            model=self.model,
            model_hash=self.model_hash,
            source=self.source,
            patches_field=self.patches_field,
            run_id=run_id,
            **kw,
        )


def _configured(spec: EmbeddingsSpec, embedder: Any) -> Any:
    """The embedder with the spec's model, batch size and workers."""
    settings: dict[str, Any] = {"batch_size": spec.batch_size}
    if spec.num_workers is not None:
        settings["num_workers"] = spec.num_workers
    if spec.model:
        settings["model"] = spec.model
    return embedder.model_copy(update=settings)


def embed(
    spec: EmbeddingsSpec,
    store: Store,
    *,
    embedder: Any,
    log: Any = _LOG,
    ids: list[str] | None = None,
) -> Embedded:
    """Vectors of the key's samples (or only ``ids``) from its model, array, column or key.

    ``embedder`` is an :class:`~dagster_brain.resources.embedder.EmbedderResource`; the spec's
    model, batch size and workers override its settings.
    """
    store.require_dataset(spec.dataset)
    if spec.source == "key":
        src = store.read_embeddings(spec.dataset, spec.from_key, ids=ids)
        return Embedded(
            src.sample_ids,
            src.vectors,
            label_ids=src.label_ids,
            model=src.model,
            model_hash=src.model_hash,
            source=f"key:{spec.from_key}",
            patches_field=src.patches_field,
        )
    if spec.source in ("array", "column"):
        sample_ids, vectors = load_precomputed(spec, store)
        if ids is not None:
            keep = np.isin(sample_ids, ids)
            sample_ids, vectors = (
                [s for s, k in zip(sample_ids, keep, strict=True) if k],
                vectors[keep],
            )
        log.info(
            "embeddings %r: %d precomputed vectors of dim %d from %s",
            spec.key,
            len(sample_ids),
            vectors.shape[1],
            spec.path,
        )
        return Embedded(
            sample_ids, vectors, model=spec.model, source=f"{spec.source}:{Path(spec.path).name}"
        )
    embedder = _configured(spec, embedder)
    model = embedder.load()
    samples = store.samples(spec.dataset, ids)
    if samples.empty:
        raise ValueError(f"embeddings {spec.key!r}: dataset {spec.dataset!r} has no samples")
    if spec.patches_field:
        kind, _ = store.label_field(spec.dataset, spec.patches_field)
        if kind != "detections":
            raise ValueError(
                f"embeddings {spec.key!r}: patches_field {spec.patches_field!r} holds {kind}, "
                "not detections"
            )
        labels = store.labels(spec.dataset, spec.patches_field)
        labels = labels[labels["sample_id"].isin(set(samples["sample_id"]))]
        log.info(
            "embeddings %r: %d patches of %r with %s",
            spec.key,
            len(labels),
            spec.patches_field,
            model.name,
        )
        out = embedder.embed_patches(
            dict(zip(samples["sample_id"], samples["filepath"], strict=True)),
            labels[["sample_id", "label_id", "box"]].reset_index(drop=True),
            alpha=spec.alpha,
            force_square=spec.force_square,
            log=log,
            skip_failures=spec.skip_failures,
        )
        sample_ids, label_ids = out.sample_ids, out.ids
    else:
        log.info(
            "embeddings %r: %d images with %s on %s",
            spec.key,
            len(samples),
            model.name,
            model.device,
        )
        out = embedder.embed_files(
            samples["filepath"].tolist(),
            samples["sample_id"].tolist(),
            log=log,
            skip_failures=spec.skip_failures,
        )
        sample_ids, label_ids = out.ids, None
    if out.failures:
        log.warning(
            "embeddings %r: skipped %d unreadable items: %s",
            spec.key,
            len(out.failures),
            dict(list(out.failures.items())[:10]),
        )
    return Embedded(
        list(sample_ids),
        out.vectors,
        label_ids=list(label_ids) if label_ids is not None else None,
        model=model.name,
        model_hash=model.weights_hash,
        source="model",
        patches_field=spec.patches_field,
    )


def compute_embeddings(
    spec: EmbeddingsSpec,
    store: Store,
    *,
    embedder: Any,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
) -> EmbeddingSet:
    """Fill an embeddings key (replacing it atomically) and return it."""
    return embed(spec, store, embedder=embedder, log=log, ids=ids).write(store, spec, run_id)


def update_embeddings(
    spec: EmbeddingsSpec,
    store: Store,
    sample_ids: list[str],
    *,
    embedder: Any,
    drop_samples: list[str] = (),
    run_id: str | None = None,
    log: Any = _LOG,
) -> EmbeddingSet:
    """Embed only these samples into the key (replacing their rows), drop ``drop_samples``'
    rows, and keep every other vector: how a new or changed batch reaches an existing key.
    Returns the rows written (``count_all``: the whole key's size).
    """
    if sample_ids:
        done = embed(spec, store, embedder=embedder, log=log, ids=sample_ids)
        # every requested sample's old rows go, also where its new image failed to embed
        drop = sorted(set(drop_samples) | set(sample_ids))
        return done.write(store, spec, run_id, update=True, drop_samples=drop)
    return store.update_embeddings(  # nothing to embed: drop rows (or create an empty key)
        spec.dataset,
        spec.key,
        [],
        np.zeros((0, 0), np.float32),
        run_id=run_id,
        drop_samples=list(drop_samples),
    )


# -- reuse: a key whose inputs did not change is not embedded again ---------------------------

INPUTS_DIR = "embeddings_inputs"
"""Under the store's data directory: per embeddings key, the inputs its vectors came from."""

# Above this share of changed samples the whole key is recomputed instead of updated in place.
REUSE_MAX_CHANGED = 0.5


@dataclass(frozen=True)
class Refreshed:
    """An embeddings key brought up to date, and how much of it was computed again."""

    emb: EmbeddingSet
    embedded: int  # samples run through the model
    reused: int  # vectors kept from the previous computation
    removed: int  # samples whose vectors were dropped
    summary: str  # one line for the log and the asset metadata


def inputs_path(store: Store, spec: EmbeddingsSpec) -> Path:
    """Where the inputs of an embeddings key's vectors are recorded."""
    return store.data_dir / INPUTS_DIR / spec.dataset / f"{spec.key}.json"


def _config_digest(spec: EmbeddingsSpec, model: Any, store: Store) -> str:
    """What besides the images decides the vectors: model and weights, patches and their boxes."""
    from dagster_brain.runs import EMBEDDINGS_VERSION

    parts: dict[str, Any] = {
        "version": EMBEDDINGS_VERSION,
        "model": model.name,
        "weights": model.weights_hash,
        "skip_failures": spec.skip_failures,
        "patches_field": spec.patches_field,
    }
    if spec.patches_field:
        labels = store.labels(spec.dataset, spec.patches_field)
        boxes = [
            f"{s}\t{label}\t{np.asarray(b, dtype=np.float64).tolist() if b is not None else None}"
            for s, label, b in zip(
                labels["sample_id"], labels["label_id"], labels["box"], strict=True
            )
        ]
        parts.update(
            alpha=spec.alpha,
            force_square=spec.force_square,
            boxes=hashlib.sha256("\n".join(boxes).encode()).hexdigest(),
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _read_inputs(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_inputs(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # readers see the old record or the new one, never half of one


def _current_version(store: Store, spec: EmbeddingsSpec) -> str | None:
    sets = store.embedding_sets(spec.dataset)
    row = sets[sets["embeddings_key"] == spec.key]
    return None if row.empty else str(row["data_version"].iloc[0])


def refresh_embeddings(
    spec: EmbeddingsSpec,
    store: Store,
    *,
    embedder: Any,
    run_id: str | None = None,
    log: Any = _LOG,
) -> Refreshed:
    """Bring an embeddings key up to date with its dataset, running the model only where needed.

    A model-computed key whose model, weights, settings and samples' content hashes are those
    its vectors were computed from is kept as it is (nothing embedded). When at most half of
    the samples were added, changed (their content hash) or removed, only those are embedded
    again and the other vectors are kept; otherwise (and for patches with any change) the
    whole key is recomputed. Other sources are always read again.
    """
    store.require_dataset(spec.dataset)
    if spec.source != "model":
        emb = compute_embeddings(spec, store, embedder=embedder, run_id=run_id, log=log)
        n = emb.count_all or len(emb.ids)
        return Refreshed(emb, n, 0, 0, f"{n:,} embeddings read from {spec.source}")
    model = _configured(spec, embedder).load()
    samples = store.samples(spec.dataset)
    hashes = {
        str(s): h if isinstance(h, str) and h else None
        for s, h in zip(samples["sample_id"], samples["content_hash"], strict=True)
    }
    config = _config_digest(spec, model, store)
    path = inputs_path(store, spec)
    prev = _read_inputs(path)
    current = _current_version(store, spec)
    emb: EmbeddingSet | None = None
    if prev and current and prev.get("config") == config and prev.get("version") == current:
        old: dict[str, str | None] = prev.get("hashes", {})
        changed = [s for s, h in hashes.items() if h is None or old.get(s, "") != h]
        removed = sorted(set(old) - set(hashes))
        kept = len(hashes) - len(changed)
        if not changed and not removed:
            emb = store.read_embeddings(spec.dataset, spec.key)
            summary = (
                f"unchanged: {len(emb.ids):,} embeddings reused "
                f"(data version {store.data_version(spec.dataset)})"
            )
            log.info("embeddings %r: %s", spec.key, summary)
            return Refreshed(emb, 0, len(emb.ids), 0, summary)
        if not spec.patches_field and len(changed) + len(removed) <= REUSE_MAX_CHANGED * max(
            len(hashes), 1
        ):
            log.info(
                "embeddings %r: %d samples new or changed, %d removed: embedding only those, "
                "reusing %d vectors",
                spec.key,
                len(changed),
                len(removed),
                kept,
            )
            update_embeddings(
                spec,
                store,
                changed,
                embedder=embedder,
                drop_samples=removed,
                run_id=run_id,
                log=log,
            )
            emb = store.read_embeddings(spec.dataset, spec.key)
            summary = (
                f"{len(changed):,} embedded, {kept:,} reused, {len(removed):,} removed "
                f"(data version {store.data_version(spec.dataset)})"
            )
            done = Refreshed(emb, len(changed), kept, len(removed), summary)
    if emb is None:
        emb = compute_embeddings(spec, store, embedder=embedder, run_id=run_id, log=log)
        summary = f"{len(hashes):,} embedded (data version {store.data_version(spec.dataset)})"
        done = Refreshed(emb, len(hashes), 0, 0, summary)
    _write_inputs(path, {"config": config, "version": emb.data_version, "hashes": hashes})
    log.info("embeddings %r: %s", spec.key, done.summary)
    return done


def check_model(brain_key: str, emb: EmbeddingSet, model: str | None) -> None:
    """Refuse an embeddings key computed by another model than the run asks for."""
    if model is None:
        return
    from dagster_brain.embedding.models import canonical_name

    if emb.model is None or canonical_name(emb.model) != canonical_name(model):
        raise ValueError(
            f"brain key {brain_key!r} asks for embeddings of model {model!r}, but embeddings "
            f"key {emb.key!r} was computed by {emb.model!r}"
        )
