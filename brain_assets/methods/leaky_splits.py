"""Leaky splits: near-duplicates across a dataset's splits (train/test contamination)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from dagster_brain.algorithms.duplicates import FIRST_PASS_K
from dagster_brain.algorithms.leaky_splits import UNASSIGNED, LeakResult, find_leaks
from dagster_brain.embeddings import check_model
from dagster_brain.item_media import with_media
from dagster_brain.knn_graphs import find_graph
from dagster_brain.methods.base import (
    BrainMethod,
    ExtraCheck,
    Input,
    RunField,
    ScoreColumn,
    one_row_per_embedding,
)
from dagster_brain.runs import _LOG, RunContext, RunOutcome, commit_outcome, embeddings_lineage
from dagster_brain.specs import NAME, BrainRunSpec
from dagster_brain.store import Store, row_hashes

PAIRS_TABLE = "pairs"
# splits listed first in each pair (split_a), in this order; the others by name, then unassigned
SPLIT_ORDER = ("train", "training", "val", "valid", "validation", "dev", "test", "testing")


class LeakySplitsSpec(BrainRunSpec):
    """``compute_leaky_splits``: near-duplicates whose members are in different splits.

    ``splits``: a sample field or classification label field holding each sample's split
    name (default ``split``), a list of tags (each a split), or a mapping split name -> list
    of sample ids. Samples without a split form the split ``unassigned``. Pairs are confirmed
    on the images (``verify``: hashes, aligned pixels; ``thresh``, when a number, also
    accepts pairs within that embedding distance), else by embedding distance alone
    (``thresh: auto``: a data-chosen strict threshold). The ``no_test_leaks`` check fails when
    ``test_split`` leaks into ``train_split`` (default ``test``/``train`` when present);
    ``block: true`` makes that failure block downstream assets.
    """

    version: ClassVar[str] = "1"
    kind: Literal["leaky_splits"]
    embeddings: str = Field(pattern=NAME)
    model: str | None = None  # if set, the embeddings key must come from this model
    splits: str | list[str] | dict[str, list[str]] = "split"
    thresh: float | Literal["auto"] = "auto"
    verify: bool = True
    neighbours: int = Field(default=5, ge=1, le=50)  # cross-split candidates per item
    train_split: str | None = None
    test_split: str | None = None
    block: bool = False

    @model_validator(mode="after")
    def _splits(self) -> LeakySplitsSpec:
        key = self.brain_key
        if isinstance(self.thresh, float) and self.thresh < 0:
            raise ValueError(f"brain key {key!r}: thresh must be >= 0, got {self.thresh}")
        names: list[str] = []
        if isinstance(self.splits, str):
            if not self.splits.strip():
                raise ValueError(f"brain key {key!r}: splits names no field")
        else:
            names = list(self.splits)
            if len(names) < 2:
                raise ValueError(
                    f"brain key {key!r}: splits lists {len(names)} split(s) {names}; give at "
                    "least 2"
                )
            repeated = sorted({s for s in names if names.count(s) > 1})
            if repeated:
                raise ValueError(f"brain key {key!r}: splits repeat {repeated}")
            if any(not str(s).strip() for s in names):
                raise ValueError(f"brain key {key!r}: splits has an empty split name")
        if UNASSIGNED in names:
            raise ValueError(
                f"brain key {key!r}: split name {UNASSIGNED!r} is reserved for samples "
                "without a split"
            )
        if isinstance(self.splits, dict):
            empty = [s for s, ids in self.splits.items() if not ids]
            if empty:
                raise ValueError(f"brain key {key!r}: split {empty[0]!r} lists no sample ids")
        if self.train_split is not None and self.train_split == self.test_split:
            raise ValueError(
                f"brain key {key!r}: train_split and test_split are both {self.test_split!r}"
            )
        return self

    def check_splits(self) -> tuple[str, str]:
        """The (train, test) splits the ``no_test_leaks`` check compares."""
        return self.train_split or "train", self.test_split or "test"

    def graph_use(self) -> tuple[str, str, int] | None:
        """Cross-split candidates come from cosine neighbour lists."""
        return self.embeddings, "cosine", max(FIRST_PASS_K, self.neighbours)


def split_of_samples(spec: LeakySplitsSpec, store: Store, sample_ids: list[str]) -> pd.Series:
    """Each sample's split name (``unassigned`` when it has none), indexed by sample id.

    Refused (naming the field, tag, split or sample): a field the dataset lacks, a tag on no
    sample, a sample with the tags of two splits or listed in two, an id not in the dataset.
    """
    where = f"brain key {spec.brain_key!r} on {spec.dataset!r}"
    ids = pd.Index(sample_ids)
    splits = spec.splits
    if isinstance(splits, str):
        samples = store.samples(spec.dataset, sample_ids).set_index("sample_id")
        fields = store.label_fields(spec.dataset)
        classes = fields[fields["kind"] == "classification"]["field"].tolist()
        if splits in samples.columns and splits not in ("filepath", "tags"):
            values = samples[splits].reindex(ids)
        elif splits in classes:
            labels = store.labels(spec.dataset, splits).drop_duplicates("sample_id")
            values = labels.set_index("sample_id")["label"].reindex(ids)
        else:
            cols = [c for c in samples.columns if c not in ("filepath", "tags")]
            raise ValueError(
                f"{where}: split field {splits!r} is neither a sample field ({', '.join(cols)}) "
                f"nor a classification label field ({', '.join(classes) or 'none'})"
            )
        out = values.astype(object).where(values.notna() & (values.astype(str) != ""), None)
        return out.map(lambda v: UNASSIGNED if v is None else str(v))
    if isinstance(splits, list):
        tags = store.samples(spec.dataset, sample_ids).set_index("sample_id")["tags"]
        out = pd.Series(UNASSIGNED, index=ids, dtype=object)
        seen: set[str] = set()
        for sid, have in tags.reindex(ids).items():
            mine = [t for t in splits if have is not None and t in list(have)]
            if len(mine) > 1:
                raise ValueError(f"{where}: sample {sid!r} has the tags of splits {mine}")
            if mine:
                out[sid] = mine[0]
                seen.add(mine[0])
        absent = [t for t in splits if t not in seen]
        if absent:
            raise ValueError(f"{where}: split {absent[0]!r} (a tag) is on no sample")
        return out
    known = set(store.sample_ids(spec.dataset))
    out = pd.Series(UNASSIGNED, index=ids, dtype=object)
    listed: dict[str, str] = {}
    for name, members in splits.items():
        for sid in members:
            if sid not in known:
                raise ValueError(
                    f"{where}: split {name!r} lists sample {sid!r}, not in the dataset"
                )
            if sid in listed:
                raise ValueError(
                    f"{where}: sample {sid!r} is listed in splits {listed[sid]!r} and {name!r}"
                )
            listed[sid] = name
    hit = ids.isin(list(listed))
    out[hit] = [listed[s] for s in ids[hit]]
    return out


def order_splits(names: set[str]) -> list[str]:
    """Split names in pair order: the usual train/val/test names first, then by name,
    ``unassigned`` last."""
    rank = {s: r for r, s in enumerate(SPLIT_ORDER)}
    named = sorted(names - {UNASSIGNED}, key=lambda s: (rank.get(s.lower(), len(rank)), s))
    return named + ([UNASSIGNED] if UNASSIGNED in names else [])


def run_leaky_splits(
    spec: LeakySplitsSpec,
    store: Store,
    *,
    run_id: str | None = None,
    log: Any = _LOG,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> RunOutcome:
    """One row per item of ``spec.embeddings`` (``assigned_split``, ``leak``, nearest cross-split
    partner, distance, ``path``) and the run's ``pairs`` table of confirmed cross-split
    pairs. Neighbours come from a stored exact ``knn_graph`` run of these vectors if any."""
    where = f"brain key {spec.brain_key!r} on {spec.dataset!r}"
    emb = store.read_embeddings(spec.dataset, spec.embeddings, ids=ids)
    check_model(spec.brain_key, emb, spec.model)
    if len(emb.ids) < 2:
        raise ValueError(
            f"{where}: leaky splits needs at least 2 embedded items in embeddings key "
            f"{spec.embeddings!r}, found {len(emb.ids)}"
        )
    sample_ids = sorted(set(emb.sample_ids))
    by_sample = split_of_samples(spec, store, sample_ids)
    present = set(by_sample)
    given = {"train_split": spec.train_split, "test_split": spec.test_split}
    for fld, name in given.items():
        if name is not None and name not in present:
            raise ValueError(
                f"{where}: {fld} {name!r} is not a split of the samples (splits: "
                f"{', '.join(order_splits(present))})"
            )
    if len(present) < 2:
        raise ValueError(
            f"{where}: splits {spec.splits!r} put every sample in split "
            f"{order_splits(present)[0]!r}; at least 2 splits are needed"
        )
    unassigned = by_sample.index[by_sample == UNASSIGNED].tolist()
    if unassigned:
        log.warning(
            "%s: %d samples have no split (split %r), e.g. %s",
            spec.brain_key,
            len(unassigned),
            UNASSIGNED,
            unassigned[:5],
        )
    item_splits = by_sample.reindex(emb.sample_ids).to_numpy(dtype=object)
    hashes = row_hashes(emb.ids, emb.vectors)
    shared = find_graph(
        store, spec.dataset, emb.ids, hashes, "cosine", max(FIRST_PASS_K, spec.neighbours)
    )
    upstream: dict[str, Any] = {"embeddings": embeddings_lineage(emb)}
    if shared is not None:
        log.info("%s: neighbours read from the kNN graph %r", spec.brain_key, shared[0])
        upstream["knn_graph"] = shared[0]
    patches = emb.label_ids is not None
    images: dict[str, Any] = {}
    if spec.verify and not patches:
        samples = store.samples(spec.dataset, sample_ids).set_index("sample_id")
        images = {
            "filepaths": {s: samples.at[s, "filepath"] for s in emb.ids},
            "content_hashes": [samples.at[s, "content_hash"] for s in emb.ids],
            "pixel_hashes": [samples.at[s, "pixel_hash"] for s in emb.ids],
        }
    thresh = None if spec.thresh == "auto" else float(spec.thresh)
    try:
        result = find_leaks(
            emb.vectors,
            emb.ids,
            item_splits,
            metric="cosine",
            thresh=thresh,
            m=spec.neighbours,
            graph=None if shared is None else shared[1],
            split_order=order_splits(present),
            **images,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    results, pairs = _frames(result, emb.sample_ids, emb.label_ids)
    counts = {s: int((item_splits == s).sum()) for s in order_splits(present)}
    train, test = spec.check_splits()
    log.info(
        "%s: %d leaking items, %d cross-split pairs (splits %s; %s)",
        spec.brain_key,
        int(results["leak"].sum()),
        len(pairs),
        counts,
        "confirmed on the images" if images else f"embedding distance <= {result.thresh}",
    )
    return commit_outcome(
        spec,
        store,
        RunContext(run_id, log, ids, tuple(artifacts or ())),
        results,
        method="verified" if images else "embedding",
        upstream=upstream,
        packages=("scikit-learn", "imagehash"),
        sample_ids=list(emb.sample_ids),
        label_ids=emb.label_ids,
        extra={PAIRS_TABLE: pairs},
        summary={
            "items": len(results),
            "leaks": int(results["leak"].sum()),
            "pairs": len(pairs),
            "splits": counts,
            "unassigned": len(unassigned),
            "thresh": result.thresh,
            "test_into_train": len(_between(pairs, train, test)),
            "shared_graph": shared is not None,
        },
    )


def _frames(
    result: LeakResult, sample_ids: list[str], label_ids: list[str] | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-item results (sample ids, label ids for patches) and the pairs table."""
    items, pairs = result.items, result.pairs
    sample_of = dict(zip(items["id"], sample_ids, strict=True))
    results = pd.DataFrame({"sample_id": sample_ids})
    if label_ids is not None:
        results["label_id"] = label_ids
    results["assigned_split"] = items["split"].astype(str).to_numpy()
    results["leak"] = items["leak"].to_numpy(bool)
    nearest = items["nearest_id"]
    results["nearest_id"] = nearest.map(sample_of).to_numpy(dtype=object)
    if label_ids is not None:
        results["nearest_label_id"] = nearest.to_numpy(dtype=object)
    results["nearest_split"] = items["nearest_split"].to_numpy(dtype=object)
    results["distance"] = items["distance"].to_numpy(np.float64)
    results["verification"] = items["path"].astype(str).to_numpy()
    table = pd.DataFrame(
        {
            "sample_id_a": pairs["id_a"].map(sample_of).astype(object),
            "split_a": pairs["split_a"].astype(str),
            "sample_id_b": pairs["id_b"].map(sample_of).astype(object),
            "split_b": pairs["split_b"].astype(str),
        }
    )
    if label_ids is not None:
        table["label_id_a"] = pairs["id_a"].astype(object)
        table["label_id_b"] = pairs["id_b"].astype(object)
    table["distance"] = pairs["distance"].astype(np.float64)
    table["verification"] = pairs["path"].astype(str)
    for col in ("ncc", "phash_dist"):
        if col in pairs:
            table[col] = pairs[col].astype(np.float64)
    return results, table.reset_index(drop=True)


def _between(pairs: pd.DataFrame, train: str, test: str) -> pd.DataFrame:
    """The pairs joining split ``train`` and split ``test``."""
    a, b = pairs["split_a"], pairs["split_b"]
    return pairs[((a == train) & (b == test)) | ((a == test) & (b == train))]


def no_test_leaks_check(store: Store, spec: LeakySplitsSpec) -> tuple[bool, dict[str, Any]]:
    """(passed, metadata): no committed pair joins the test split to the train split."""
    train, test = spec.check_splits()
    pairs = store.load_extra(spec.dataset, spec.brain_key, PAIRS_TABLE)
    results = store.load_results(spec.dataset, spec.brain_key)
    present = set(results["assigned_split"]) if len(results) else set()
    meta: dict[str, Any] = {"train_split": train, "test_split": test}
    if not {train, test} <= present:
        meta["skipped"] = f"splits {sorted({train, test} - present)} not present"
        return True, meta
    bad = _between(pairs, train, test)
    tested = results[results["assigned_split"] == test]
    leaking = tested[tested["leak"] & (tested["nearest_split"] == train)]
    meta["leak_pairs"] = len(bad)
    meta["test_items_leaking"] = int(
        len(set(bad["sample_id_a"]).union(bad["sample_id_b"]) & set(tested["sample_id"]))
    )
    meta["example_pairs"] = [
        f"{a} ({sa}) ~ {b} ({sb}): {v}, d={d:.4g}"
        for a, sa, b, sb, v, d in bad[
            ["sample_id_a", "split_a", "sample_id_b", "split_b", "verification", "distance"]
        ]
        .head(5)
        .itertuples(index=False)
    ]
    meta["nearest_in_train"] = int(len(leaking))
    return bad.empty, meta


def _inputs(spec: LeakySplitsSpec) -> list[Input]:
    """The samples (split fields, tags, files) and the spec's embeddings key."""
    return [Input("samples"), Input("embeddings", spec.embeddings)]


def _checks(spec: LeakySplitsSpec) -> tuple[ExtraCheck, ...]:
    train, test = spec.check_splits()
    return (
        ExtraCheck(
            name="no_test_leaks",
            description=f"no near-duplicate joins split {test!r} to split {train!r}",
            evaluate=no_test_leaks_check,
            blocking=lambda s: bool(s.block),
        ),
    )


def _metadata(outcome: RunOutcome) -> dict[str, Any]:
    from dagster_brain.metadata import (
        THUMBNAILS_KEY,
        THUMBNAILS_PER_ROW,
        group_thumbnails,
        rows_table,
    )

    s = outcome.summary
    meta: dict[str, Any] = {
        "dagster/row_count": len(outcome.results),
        "leaks": s["leaks"],
        "pairs": s["pairs"],
        "unassigned": s["unassigned"],
        "test_into_train": s["test_into_train"],
        "thresh": float("nan") if s["thresh"] is None else float(s["thresh"]),
    }
    leaks = outcome.results[outcome.results["leak"]].sort_values("distance")
    if len(leaks):
        cols = [
            c
            for c in ("sample_id", "assigned_split", "nearest_id", "nearest_split", "distance")
            if c in leaks
        ]
        meta["leaks_preview"] = rows_table(leaks.head(20), cols)
    if len(leaks) and "media" in s and "label_id" not in leaks:
        pairs = _pair_rows(leaks.head(THUMBNAILS_PER_ROW))
        meta[THUMBNAILS_KEY] = group_thumbnails(pairs, s["media"]).value
    return meta


def _pair_rows(leaks: pd.DataFrame) -> pd.DataFrame:
    """The closest leaks as two-item groups (the sample, then its partner in another split)
    for the thumbnail grid; the role caption is each item's split."""
    rows = []
    for g, r in enumerate(leaks.itertuples(index=False)):
        for sample, split in ((r.sample_id, r.assigned_split), (r.nearest_id, r.nearest_split)):
            rows.append({"group": g, "sample_id": sample, "role": split, "distance": r.distance})
    return pd.DataFrame(rows)


METHOD = BrainMethod(
    kind="leaky_splits",
    spec=LeakySplitsSpec,
    run=with_media(run_leaky_splits),
    inputs=_inputs,
    expected_rows=one_row_per_embedding,
    score=ScoreColumn("distance", ascending=True),
    summary="Near-duplicates across splits (test samples that leak into train).",
    run_fields=(
        RunField("thresh", float, "an embedding distance that also confirms a pair", ge=0),
        RunField("verify", bool, "confirm pairs on the images"),
    ),
    asset_metadata=_metadata,
    extra_checks=_checks,
)
