"""The brain-keys YAML: datasets, embeddings keys and brain runs, as typed, frozen specs.

An invalid entry fails at load time with the entry's key and the bad field.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from dagster_brain.redact import has_credentials, is_secret
from dagster_brain.yaml_loader import DuplicateKeyError, load_yaml

NAME = r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$"  # lower-case identifier, single underscores


def _wants_number(annotation: Any) -> bool:
    """Whether a field holds numbers (``int``, ``float``, optional or in a list), not bools."""
    args = {annotation, *get_args(annotation)}
    for arg in list(args):
        args.update(get_args(arg))  # list[float] | None
    return bool(args & {int, float}) and bool not in args


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """``k: true`` is not the number 1 (pydantic's lax mode would read it so)."""
        for name, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(name)
            items = value if isinstance(value, list) else [value]
            if field and _wants_number(field.annotation) and any(type(v) is bool for v in items):
                raise ValueError(f"field {name!r}: expected a number, got {value!r}")
        return data

    # fields that say how a run is carried out, not what it computes: left out of the hash
    unhashed: ClassVar[frozenset[str]] = frozenset()

    def spec_hash(self) -> str:
        """Short hash of every field but ``unhashed`` (part of the asset's code version)."""
        blob = json.dumps(
            self.model_dump(mode="json", exclude=set(self.unhashed)), sort_keys=True
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


# -- datasets ------------------------------------------------------------------------------


class DemoSource(_Spec):
    """The offline demo data (made on first use under ``<data_dir>/demo``)."""

    type: Literal["demo"]
    name: Literal["digits", "shapes"]
    seed: int = 51


def _check_classes(classes: list[str] | None) -> None:
    """A declared class list: not empty, no blank or repeated names (order is the user's)."""
    if classes is None:
        return
    if not classes:
        raise ValueError("classes is an empty list: list the classes in order, or leave it out")
    if any(not c.strip() for c in classes):
        raise ValueError(f"classes has an empty name: {classes}")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(f"classes repeat {repeated}: {classes}")


def _class_names(value: Any) -> Any:
    """YAML integers in a class list (``classes: [0, 1, 2]``) as their names."""
    if isinstance(value, list):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


ClassList = Annotated[list[str] | None, BeforeValidator(_class_names)]
BBoxFormat = Literal["coco_pixels", "relative_xywh", "xyxy_pixels"]


class ImageFolderSource(_Spec):
    """A folder of images; class sub-folders become classification labels.

    ``classes`` declares the class order (default: the folder names in natural order).
    """

    type: Literal["image_folder"]
    path: str
    label_field: str | None = Field(default="ground_truth", pattern=NAME)
    classes: ClassList = None
    skip_bad: bool = False

    @model_validator(mode="after")
    def _classes(self) -> ImageFolderSource:
        _check_classes(self.classes)
        return self


class ManifestSource(_Spec):
    """A CSV / Parquet / JSONL manifest of images, labels, predictions and embeddings."""

    type: Literal["manifest"]
    path: str
    id_column: str = "id"
    filepath_column: str = "filepath"
    label_column: str | None = None
    prediction_column: str | None = None
    confidence_column: str | None = None
    logits_column: str | None = None
    embedding_columns: dict[str, str] = Field(default_factory=dict)
    classes: ClassList = None
    label_field: str = Field(default="ground_truth", pattern=NAME)
    prediction_field: str = Field(default="predictions", pattern=NAME)
    skip_bad: bool = False

    @model_validator(mode="after")
    def _classes(self) -> ManifestSource:
        _check_classes(self.classes)
        return self


class CocoSource(_Spec):
    """A COCO detection JSON (and optionally a COCO results JSON of predictions).

    The class order is the ``categories`` as listed; ``classes``, if given, must repeat it.
    ``bbox_format`` says how the boxes are written (``predictions_bbox_format``: the results
    file's, default the same).
    """

    type: Literal["coco"]
    annotations: str
    images_dir: str | None = None
    predictions: str | None = None
    label_field: str = Field(default="ground_truth", pattern=NAME)
    prediction_field: str = Field(default="predictions", pattern=NAME)
    classes: ClassList = None
    bbox_format: BBoxFormat = "coco_pixels"
    predictions_bbox_format: BBoxFormat | None = None
    skip_bad: bool = False

    @model_validator(mode="after")
    def _classes(self) -> CocoSource:
        _check_classes(self.classes)
        return self


class InboxSource(_Spec):
    """A folder that receives batches: each sub-folder of images (``layout: image_folder``) or
    each manifest file (``layout: manifest``) directly inside it is one batch.

    Tables in the ``predictions_dir`` sub-folder are batches of predictions on samples already
    there (``predictions-<stem>``). Every batch becomes a dynamic partition of the dataset's
    samples, embeddings and similarity indexes; a sensor registers new, changed and removed
    batches (see
    ``dagster_brain.sensors.inbox``). A batch is taken once nothing in it changed for
    ``settle_seconds`` or it holds a ``_SUCCESS`` file. Unreadable images are skipped and
    listed, never fatal, unless ``skip_bad`` is false.
    """

    type: Literal["inbox"]
    path: str
    layout: Literal["image_folder", "manifest"] = "image_folder"
    settle_seconds: float = Field(default=30.0, ge=0)
    label_field: str | None = Field(default="ground_truth", pattern=NAME)
    # manifest layout: the same columns as a manifest source
    id_column: str = "id"
    filepath_column: str = "filepath"
    label_column: str | None = None
    prediction_column: str | None = None
    confidence_column: str | None = None
    logits_column: str | None = None
    classes: ClassList = None
    prediction_field: str = Field(default="predictions", pattern=NAME)
    skip_bad: bool = True
    # predictions files for samples already ingested: each table in this sub-folder of the
    # inbox is a batch named ``predictions-<file stem>`` (joined by id or file path)
    predictions_dir: str = "predictions"
    predictions_join_on: Literal["id", "filepath"] = "id"
    predictions_label_column: str | None = "label"

    @model_validator(mode="after")
    def _classes(self) -> InboxSource:
        _check_classes(self.classes)
        return self


Source = Annotated[
    DemoSource | ImageFolderSource | ManifestSource | CocoSource | InboxSource,
    Field(discriminator="type"),
]


class DatasetSpec(_Spec):
    """A named dataset and where its samples come from."""

    name: str = Field(pattern=NAME, max_length=63)
    source: Source

    @property
    def incremental(self) -> bool:
        """Whether samples arrive in batches (one dynamic partition per batch)."""
        return self.source.type == "inbox"


# -- embeddings ----------------------------------------------------------------------------


class EmbeddingsSpec(_Spec):
    """An embeddings key of a dataset: from a model, a precomputed array/column, or a key."""

    key: str = Field(pattern=NAME, max_length=63)
    dataset: str = Field(pattern=NAME)
    source: Literal["model", "array", "column", "key"] = "model"
    model: str | None = None  # None: the brain config's default_model
    patches_field: str | None = Field(default=None, pattern=NAME)
    path: str | None = None  # array: .npy/.npz/.parquet; column: a table file
    id_column: str = "id"
    column: str | None = None  # column: the vector column
    from_key: str | None = Field(default=None, pattern=NAME)  # key: an existing key
    batch_size: int = Field(default=16, ge=1)
    num_workers: int | None = Field(default=None, ge=0)  # None: auto (all cores on a GPU)
    alpha: float = Field(default=0.0, ge=0.0)  # patches: grow boxes by this fraction
    force_square: bool = False
    skip_failures: bool = False

    @model_validator(mode="after")
    def _source_fields(self) -> EmbeddingsSpec:
        need = {"array": ("path",), "column": ("path", "column"), "key": ("from_key",)}
        for fld in need.get(self.source, ()):
            if getattr(self, fld) is None:
                raise ValueError(f"source {self.source!r} needs {fld!r}")
        return self


# -- brain runs ----------------------------------------------------------------------------


class BrainRunSpec(_Spec):
    """Fields every brain run has.

    ``refresh_cron`` (runs on inbox datasets): refresh on this cron (UTC) after new batches
    landed, instead of as soon as they land.
    """

    # Bumped when the method's algorithm changes its output; part of each asset's code version.
    version: ClassVar[str] = "1"

    brain_key: str = Field(pattern=NAME, max_length=60)
    dataset: str = Field(pattern=NAME)
    refresh_cron: str | None = None

    @model_validator(mode="after")
    def _cron(self) -> BrainRunSpec:
        if self.refresh_cron is not None:
            from dagster._utils.schedules import is_valid_cron_string

            if not is_valid_cron_string(self.refresh_cron):
                raise ValueError(f"refresh_cron {self.refresh_cron!r} is not a cron expression")
        return self

    def graph_use(self) -> tuple[str, str, int] | None:
        """(embeddings key, metric, k) of the shared kNN graph this run reads, or None: a
        method that reads neighbours overrides it, and a graph is then planned for the
        vectors two runs read (``methods.knn_graph.plan_graphs``)."""
        return None


class UniquenessSpec(BrainRunSpec):
    """``compute_uniqueness``: a [0, 1] score per sample (or patch) from its neighbours."""

    version: ClassVar[str] = "2"
    kind: Literal["uniqueness"]
    embeddings: str = Field(pattern=NAME)
    model: str | None = None  # if set, the embeddings key must come from this model
    k: int = Field(default=3, ge=1, le=100)
    weights: list[float] | None = None
    metric: Literal["cosine", "euclidean"] = "cosine"

    @model_validator(mode="after")
    def _weights(self) -> UniquenessSpec:
        if self.weights is not None and len(self.weights) != self.k:
            raise ValueError(f"weights has {len(self.weights)} values for k={self.k}")
        return self


class SimilaritySpec(BrainRunSpec):
    """``compute_similarity``: a nearest-neighbour index of an embeddings key on a backend."""

    kind: Literal["similarity"]
    embeddings: str = Field(pattern=NAME)
    backend: str | None = None  # None: the brain config's default_similarity_backend
    metric: Literal["cosine", "euclidean", "dotproduct"] = "cosine"
    model: str | None = None  # recorded for get_model()/prompts; default: the embeddings' model
    backend_params: dict[str, Any] = Field(default_factory=dict)  # over the brain config's

    @model_validator(mode="after")
    def _backend_supports_metric(self) -> SimilaritySpec:
        from dagster_brain.similarity.backends.registry import BACKEND_METRICS, check_settings

        env = f"BRAIN_SIMILARITY_{(self.backend or '<BACKEND>').upper()}_"
        secrets = [k for k in self.backend_params if is_secret(k)]
        if secrets:
            raise ValueError(
                f"brain key {self.brain_key!r}: backend_params {secrets} are secrets: set them "
                f"as environment variables ({env}<PARAM>), not in the YAML"
            )
        inline = [k for k, v in self.backend_params.items() if has_credentials(v)]
        if inline:
            raise ValueError(
                f"brain key {self.brain_key!r}: backend_params {inline} hold credentials "
                "(user:password@ or a key in the query string): set them in the environment "
                f"variable {env}{inline[0].upper()}, not in the YAML"
            )
        if self.backend is not None:
            if self.backend not in BACKEND_METRICS:
                raise ValueError(
                    f"unknown similarity backend {self.backend!r}; available: "
                    f"{sorted(BACKEND_METRICS)}"
                )
            if self.metric not in BACKEND_METRICS[self.backend]:
                raise ValueError(
                    f"backend {self.backend!r} does not support metric {self.metric!r} "
                    f"(supported: {', '.join(BACKEND_METRICS[self.backend])})"
                )
            check_settings(self.backend, {"metric": self.metric, **self.backend_params})
        return self


class DuplicatesSpec(BrainRunSpec):
    """Near-duplicates on a similarity index: a data-chosen threshold, ``thresh`` or ``fraction``.

    With ``thresh: auto`` (the default) the threshold is chosen from the data and, for image
    indexes with ``verify``, candidate pairs are confirmed on the images themselves.
    """

    kind: Literal["duplicates"]
    similarity: str = Field(pattern=NAME)  # brain key of a similarity run
    thresh: float | Literal["auto"] | None = "auto"
    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    verify: bool = True
    neighbours: int = Field(default=5, ge=1, le=50)  # candidates per item for verification
    # read the vectors page by page (explicit thresh only); None: milvus / lancedb above
    # similarity.streaming.STREAM_ABOVE items
    streaming: bool | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> DuplicatesSpec:
        explicit = isinstance(self.thresh, float)
        if (self.fraction is not None and explicit) or (
            self.thresh is None and self.fraction is None
        ):
            raise ValueError("give exactly one of thresh (a distance, or auto) and fraction")
        if explicit and self.thresh < 0:
            raise ValueError(f"thresh must be >= 0, got {self.thresh}")
        return self


class ExactDuplicatesSpec(BrainRunSpec):
    """Byte-identical and pixel-identical samples, from the content hashes (no embeddings)."""

    kind: Literal["exact_duplicates"]


class UniqueSpec(BrainRunSpec):
    """``find_unique``: ``count`` maximally spread items of a similarity index."""

    kind: Literal["unique"]
    similarity: str = Field(pattern=NAME)
    count: int = Field(ge=1)
    seed: int = 0
    # read the vectors page by page; None: milvus / lancedb above STREAM_ABOVE items
    streaming: bool | None = None


class MistakennessSpec(BrainRunSpec):
    """``compute_mistakenness``: how likely each annotation is wrong, from predictions.

    Classification: ``method`` confident_learning (default: one minus the out-of-sample
    probability of the annotated class, a noise posterior where flips go to particular
    classes; cleanlab's flag; samples missing a label or a prediction are skipped) or
    reference (the reference's rule exactly: ``(1 -/+ c) / 2`` for agree/disagree, ``c`` the
    confidence or ``exp(-entropy)`` with ``use_logits``; an annotation with no prediction 1.0).
    Detections: matching by IoU gives per-object ``mistakenness`` / ``mistakenness_loc``,
    ``possible_missing`` and ``possible_spurious``; ``method: reference`` is the reference's
    rule exactly, otherwise the project's default. Detection-only options (unset: the rule's
    own default): ``iou_thresh`` (alias ``iou``, the match IoU; 0.5), ``missing_conf`` (a
    cutoff, or ``auto``: chosen from the data; default ``auto``, reference 0.95),
    ``spurious_rule`` and ``loc_iou_thresh`` (default rule only), ``copy_missing``.
    """

    kind: Literal["mistakenness"]
    pred_field: str = Field(pattern=NAME)
    label_field: str = Field(default="ground_truth", pattern=NAME)
    method: Literal["confident_learning", "reference"] = "confident_learning"
    use_logits: bool = True
    iou_thresh: float | None = Field(
        default=None, gt=0.0, lt=1.0, validation_alias=AliasChoices("iou_thresh", "iou")
    )
    loc_iou_thresh: float | None = Field(default=None, gt=0.0, lt=1.0)
    missing_conf: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] | None = None
    spurious_rule: Literal["no_overlap", "unmatched"] | None = None
    copy_missing: bool = False

    def detection_options(self) -> list[str]:
        """The detection-only options this spec sets."""
        names = ("iou_thresh", "loc_iou_thresh", "missing_conf", "spurious_rule")
        return [n for n in names if getattr(self, n) is not None] + (
            ["copy_missing"] if self.copy_missing else []
        )

    @model_validator(mode="after")
    def _detection_options_apply(self) -> MistakennessSpec:
        key = self.brain_key
        set_opts = self.detection_options()
        if set_opts and self.method == "confident_learning" and "method" in self.model_fields_set:
            raise ValueError(
                f"brain key {key!r}: option {set_opts[0]!r} is for detection fields, but method "
                "confident_learning is for classification only"
            )
        if self.method == "reference":
            for opt in ("loc_iou_thresh", "spurious_rule"):
                if getattr(self, opt) is not None:
                    raise ValueError(
                        f"brain key {key!r}: option {opt!r} does not apply to method reference "
                        "(its rule has one match IoU and flags every unmatched GT box)"
                    )
            if self.missing_conf == "auto":
                raise ValueError(
                    f"brain key {key!r}: option 'missing_conf: auto' does not apply to method "
                    "reference (give a number; the reference uses 0.95)"
                )
        lo, hi = self.loc_iou_thresh, self.iou_thresh
        if lo is not None and lo > (0.5 if hi is None else hi):
            raise ValueError(
                f"brain key {key!r}: option 'loc_iou_thresh' ({lo}) must not exceed "
                f"iou_thresh ({0.5 if hi is None else hi})"
            )
        return self


class HardnessSpec(BrainRunSpec):
    """``compute_hardness``: the model's uncertainty per sample, from its logits."""

    kind: Literal["hardness"]
    label_field: str = Field(pattern=NAME)  # the predictions field (with logits)
    method: Literal["entropy", "margin"] = "entropy"


class VisualizationSpec(BrainRunSpec):
    """``compute_visualization``: 2-D/3-D points of an embeddings key (or a similarity index).

    A refresh with the same map settings keeps the points of unchanged rows and places new or
    changed rows with the stored reducer, until the rows placed since the last full fit exceed
    ``refit_share`` of the points; ``refit`` forces a full fit (e.g. from a weekly schedule).
    """

    kind: Literal["visualization"]
    embeddings: str | None = Field(default=None, pattern=NAME)
    model: str | None = None  # if set, the embeddings key must come from this model
    similarity: str | None = Field(default=None, pattern=NAME)
    method: Literal["umap", "tsne", "pca", "manual"] = "umap"
    num_dims: int = Field(default=2, ge=2, le=3)
    seed: int = 51
    max_fit: int = Field(default=20_000, ge=10)
    points_path: str | None = None  # manual: a table with id + point columns
    label_field: str | None = Field(default=None, pattern=NAME)  # colours the plots
    refit_share: float = Field(default=0.2, ge=0.0, le=1.0)
    """Refit the whole map once the rows placed into it since its last full fit exceed this
    share of its points. 0.2 is a round starting value: it was not tuned on any data."""
    refit: bool = False
    """Fit the whole map afresh on this run, whatever changed."""

    @model_validator(mode="after")
    def _one_source(self) -> VisualizationSpec:
        if (self.embeddings is None) == (self.similarity is None):
            raise ValueError("give exactly one of embeddings and similarity")
        if self.method == "manual" and not self.points_path:
            raise ValueError("method manual needs points_path")
        return self


def run_spec_types() -> dict[str, type[BrainRunSpec]]:
    """kind -> spec class, for every brain-run spec class defined so far (a brain method's
    module defines its spec). The built-in methods are loaded first, the way a plug-in is:
    by name, so that a YAML naming any built-in kind parses wherever it is read."""
    importlib.import_module("dagster_brain.methods.registry")
    out: dict[str, type[BrainRunSpec]] = {}
    todo = list(BrainRunSpec.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        kind = cls.model_fields.get("kind")
        if kind is not None:
            for value in get_args(kind.annotation):
                out[value] = cls
    return out


class BrainKeysFile(_Spec):
    """The whole brain-keys YAML file."""

    datasets: list[DatasetSpec] = Field(default_factory=list)
    embeddings: list[EmbeddingsSpec] = Field(default_factory=list)
    brain_runs: list[BrainRunSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> BrainKeysFile:
        problems = _reference_problems(self.datasets, self.embeddings, self.brain_runs)
        if problems:
            raise ValueError("; ".join(msg for _, msg in problems))
        return self


def _reference_problems(
    datasets: list[DatasetSpec], embeddings: list[EmbeddingsSpec], brain_runs: list[BrainRunSpec]
) -> list[tuple[str, str]]:
    """Entries that name a dataset, embeddings key or similarity index not declared (or
    declare one twice), as (YAML path, message) pairs."""
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    for i, d in enumerate(datasets):
        if d.name in names:
            problems.append((f"datasets[{i}].name", f"dataset {d.name!r} is declared twice"))
        names.add(d.name)
    emb: dict[tuple[str, str], EmbeddingsSpec] = {}
    for i, e in enumerate(embeddings):
        if e.dataset not in names:
            problems.append(
                (f"embeddings[{i}].dataset", f"embeddings {e.key!r}: unknown dataset {e.dataset!r}")
            )
        if (e.dataset, e.key) in emb:
            problems.append(
                (f"embeddings[{i}].key", f"embeddings {e.key!r}: declared twice for {e.dataset!r}")
            )
        emb[(e.dataset, e.key)] = e
    for i, e in enumerate(embeddings):
        if e.source == "key" and (e.dataset, e.from_key) not in emb:
            problems.append(
                (
                    f"embeddings[{i}].from_key",
                    f"embeddings {e.key!r}: from_key {e.from_key!r} is not declared",
                )
            )
    seen = set()
    inboxes = {d.name for d in datasets if d.incremental}
    for i, r in enumerate(brain_runs):
        at, run = f"brain_runs[{i}]", f"brain run {r.brain_key!r}"
        if r.dataset not in names:
            problems.append((f"{at}.dataset", f"{run}: unknown dataset {r.dataset!r}"))
        if r.refresh_cron is not None and (r.dataset not in inboxes or r.kind == "similarity"):
            problems.append(
                (
                    f"{at}.refresh_cron",
                    f"{run}: refresh_cron applies to whole-dataset runs on inbox datasets "
                    "(others refresh with the nightly schedule; similarity indexes are updated "
                    "batch by batch)",
                )
            )
        if (r.dataset, r.brain_key) in seen:
            problems.append((f"{at}.brain_key", f"{run}: declared twice on {r.dataset!r}"))
        seen.add((r.dataset, r.brain_key))
        sim = getattr(r, "similarity", None)
        if sim is not None:
            target = next(
                (
                    o
                    for o in brain_runs
                    if o.brain_key == sim and o.dataset == r.dataset and o.kind == "similarity"
                ),
                None,
            )
            if target is None:
                problems.append(
                    (
                        f"{at}.similarity",
                        f"{run}: similarity {sim!r} is not a similarity brain key declared for "
                        f"dataset {r.dataset!r}",
                    )
                )
            elif target.metric == "dotproduct":
                problems.append(
                    (
                        f"{at}.similarity",
                        f"{run}: {r.kind} needs a distance, but similarity {sim!r} uses metric "
                        "dotproduct (use cosine for normalised vectors)",
                    )
                )
        key = getattr(r, "embeddings", None)
        if key is not None and (r.dataset, key) not in emb:
            problems.append(
                (
                    f"{at}.embeddings",
                    f"{run}: embeddings {key!r} is not declared for dataset {r.dataset!r}",
                )
            )
    return problems


class SpecError(ValueError):
    """A brain-keys YAML that cannot be loaded; names every bad entry and field at once."""


SECTIONS: dict[str, type[_Spec]] = {
    "datasets": DatasetSpec,
    "embeddings": EmbeddingsSpec,
    "brain_runs": BrainRunSpec,
}


def _entry_name(section: str, entry: Any) -> str:
    if isinstance(entry, dict):
        for fld in ("brain_key", "key", "name"):
            if fld in entry:
                return f"{section} entry {entry[fld]!r}"
    return f"{section} entry"


def _did_you_mean(word: Any, choices: Any) -> str:
    """``; did you mean 'x'?`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through Annotated, unions, lists)."""
    origin = get_origin(annotation)
    if origin is Annotated or origin is list:
        return _models(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return [m for arg in get_args(annotation) for m in _models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _tag(model: type[BaseModel]) -> Any:
    """A source model's ``type`` value (the union's discriminator), if it has one."""
    field = model.model_fields.get("type")
    args = get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 else None


def _walk(model: type[BaseModel], loc: tuple) -> tuple[str, list[type[BaseModel]], Any]:
    """Pydantic's error location as a YAML path (``source.path``, ``weights[1]``; union tags
    dropped), the models holding its last field, and that field's annotation."""
    path, holders, annotation, here = "", [model], None, [model]
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        tagged = [m for m in here if _tag(m) == part and part not in m.model_fields]
        if len(here) > 1 and tagged:
            here = tagged  # pydantic names the union member it tried
            continue
        owner = next((m for m in here if part in m.model_fields), None)
        holders = here
        annotation = owner.model_fields[part].annotation if owner else None
        here = _models(annotation) if owner else []
        path += f".{part}" if path else str(part)
    return path, holders, annotation


def _error_text(model: type[BaseModel], err: dict) -> tuple[str, str]:
    """One pydantic error as (path inside the entry, message without pydantic's prefixes)."""
    path, holders, annotation = _walk(model, tuple(err["loc"]))
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "missing":
        msg = "required, missing"
    leaf = str(err["loc"][-1]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        fields = {f for m in holders for f in m.model_fields}
        return path, f"unknown field {leaf!r}{_did_you_mean(leaf, fields)}"
    if err["type"] == "union_tag_invalid":
        tags = err.get("ctx", {}).get("expected_tags", "")
        tag = err.get("ctx", {}).get("tag")
        choices = [t.strip(" '") for t in str(tags).split(",")]
        return path, f"field {path!r}: {msg}{_did_you_mean(tag, choices)}"
    if err["type"] == "literal_error":
        literals = [a for a in get_args(annotation) if isinstance(a, str)]
        return path, f"field {path!r}: {msg}{_did_you_mean(err.get('input'), literals)}"
    return path, f"field {path!r}: {msg}" if path else msg


def _entry_problems(
    model: type[BaseModel], entry: Any, where: str, index: str
) -> tuple[Any, list[tuple[str, str]]]:
    """The validated entry (or None) and its problems as (YAML path, message) pairs."""
    try:
        return model.model_validate(entry), []
    except ValidationError as err:
        problems = []
        for e in err.errors():
            path, msg = _error_text(model, e)
            problems.append((f"{index}.{path}" if path else index, f"{where}: {msg}"))
        return None, problems


def parse_specs(data: Any, origin: str = "brain keys") -> BrainKeysFile:
    """Validate parsed YAML. Every problem is reported at once, each with its YAML path
    (``brain_runs[3].kind``), the entry's key and, for a misspelt name, the closest valid one."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping with datasets / embeddings / brain_runs")
    problems: list[tuple[str, str]] = [
        (str(s), f"unknown section {s!r}{_did_you_mean(s, SECTIONS)}")
        for s in sorted(set(data) - set(SECTIONS), key=str)
    ]
    parsed: dict[str, list[Any]] = {}
    types = run_spec_types()
    for section, model in SECTIONS.items():
        entries = data.get(section) or []
        if not isinstance(entries, list):
            problems.append((section, f"expected a list of entries, got {type(entries).__name__}"))
            entries = []
        parsed[section] = []
        for i, entry in enumerate(entries):
            index, where = f"{section}[{i}]", _entry_name(section, entry)
            if section == "brain_runs":
                kind = entry.get("kind") if isinstance(entry, dict) else None
                if kind not in types:
                    hint = _did_you_mean(kind, types) or f" (kinds: {', '.join(sorted(types))})"
                    said = "missing" if kind is None else f"{kind!r} is not a brain-run kind"
                    problems.append((f"{index}.kind", f"{where}: field 'kind': {said}{hint}"))
                    continue
                model = types[kind]
            spec, found = _entry_problems(model, entry, where, index)
            problems += found
            if spec is not None:
                parsed[section].append(spec)
    if not problems:  # references between entries: only once every entry is valid
        problems = _reference_problems(**parsed)
    if problems:
        raise SpecError(_report(origin, problems))
    return BrainKeysFile(**parsed)


def _report(origin: str, problems: list[tuple[str, str]]) -> str:
    lines = [f"{path}: {msg}" for path, msg in problems]
    if len(lines) == 1:
        return f"{origin}: {lines[0]}"
    return f"{origin}: {len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines)


def load_specs(path: str | Path) -> BrainKeysFile:
    """Read and validate a brain-keys YAML file."""
    path = Path(path)
    try:
        data = load_yaml(path, name=path.name)  # a key given twice is refused
    except FileNotFoundError as err:
        raise SpecError(f"brain keys file {path} does not exist") from err
    except DuplicateKeyError as err:
        raise SpecError(str(err)) from err
    except yaml.YAMLError as err:
        raise SpecError(f"{path.name}: invalid YAML ({err})") from err
    return parse_specs(data, origin=path.name)


DEFAULT_SPECS_PATH = Path(__file__).with_name("brain_keys.yaml")
