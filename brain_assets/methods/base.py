"""What a brain method is: one descriptor that the asset factory, checks, CLI and API read.

No Dagster here: the descriptor names its inputs, launch-time fields and score columns as
plain data; the Dagster wiring (factory.py, checks.py) turns them into assets and checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import pandas as pd

from dagster_brain.runs import RunOutcome
from dagster_brain.specs import BrainRunSpec
from dagster_brain.store import Store

S = TypeVar("S", bound=BrainRunSpec)


@dataclass(frozen=True)
class Input:
    """One input of a brain run: the dataset's samples, an embeddings key or another run."""

    kind: Literal["samples", "embeddings", "brain"]
    key: str | None = None


@dataclass(frozen=True)
class RunField:
    """A spec field that may be overridden at launch (unset: the YAML's value)."""

    name: str
    type: type = str
    description: str = ""
    # a closed set of values (an enum in the launchpad); None: the spec field's Literal values
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None


@dataclass(frozen=True)
class ScoreColumn:
    """The column a run ranks its items by, and its documented range (checked)."""

    column: str
    low: float | None = None
    high: float | None = None
    ascending: bool = False  # rank lowest first (e.g. the pick order of a unique subset)

    @property
    def has_range(self) -> bool:
        """Whether the check verifies every score lies in [low, high]."""
        return self.low is not None and self.high is not None


def no_fixed_rows(store: Store, spec: Any) -> int | None:
    """A run whose row count depends on what it finds (e.g. duplicates): not count-checked."""
    return None


def samples_input(spec: Any) -> list[Input]:
    """The dataset's samples (labels and predictions)."""
    return [Input("samples")]


def embeddings_input(spec: Any) -> list[Input]:
    """The spec's ``embeddings`` key."""
    return [Input("embeddings", spec.embeddings)]


def similarity_input(spec: Any) -> list[Input]:
    """The similarity run named by the spec's ``similarity``."""
    return [Input("brain", spec.similarity)]


def embedding_count(store: Store, dataset: str, key: str) -> int | None:
    """How many vectors an embeddings key holds (``None``: no such key)."""
    sets = store.embedding_sets(dataset)
    row = sets[sets["embeddings_key"] == key]
    return None if row.empty else int(row["count"].iloc[0])


def one_row_per_embedding(store: Store, spec: Any) -> int | None:
    """One result row per vector of the spec's embeddings key."""
    return embedding_count(store, spec.dataset, spec.embeddings)


@dataclass(frozen=True)
class ExtraCheck:
    """A further asset check of a method's committed results, beside ``results_valid``.

    ``evaluate(store, spec) -> (passed, metadata)``; ``blocking(spec)``: whether a failure
    blocks downstream assets (else it is a warning).
    """

    name: str
    description: str
    evaluate: Callable[[Store, Any], tuple[bool, dict[str, Any]]]
    blocking: Callable[[Any], bool] = lambda spec: False


@dataclass(frozen=True, kw_only=True)
class BrainMethod(Generic[S]):
    """Everything about one brain method: the kind it answers, its spec, runner, inputs,
    launch-time fields, expected row count, score column and Dagster-facing extras.

    ``run(spec, store, *, run_id, log, ids, artifacts, **extra) -> RunOutcome``.
    """

    kind: str
    spec: type[S]
    run: Callable[..., RunOutcome]
    inputs: Callable[[S], list[Input]]
    expected_rows: Callable[[Store, S], int | None]  # the check's row count (None: any)
    score: ScoreColumn | None  # what ``brain top`` ranks by; ``None``: no scores
    run_fields: tuple[RunField, ...] = ()
    summary: str = ""  # one line for the CLI and the API
    unique_ids: bool = True  # one row per sample/patch (duplicates list an item per pair)
    asset_kinds: Callable[[S], set[str]] = field(default=lambda spec: {"numpy", "duckdb"})
    # Dagster metadata of a materialisation (None: row count, plus score stats if scored)
    asset_metadata: Callable[[RunOutcome], dict[str, Any]] | None = None
    # further checks of committed results: problems found (may add to the check's metadata)
    check: Callable[[Store, S, pd.DataFrame, dict[str, Any]], list[str]] | None = None
    validate: Callable[[S], None] | None = None  # load-time refusal of a spec (e.g. backend)
    batched: bool = False  # on inbox datasets, updated batch by batch (partitioned)
    # Dagster resources a run needs, and the runner's extra arguments built from them
    resources: Callable[[S], set[str]] = field(default=lambda spec: set())
    run_kwargs: Callable[[S, Any], dict[str, Any]] = field(default=lambda spec, res: {})
    # asset checks of a spec beside ``results_valid`` (e.g. leaky splits: test leaks into train)
    extra_checks: Callable[[S], tuple[ExtraCheck, ...]] = field(default=lambda spec: ())

    @property
    def version(self) -> str:
        """The method version (bumped when its output changes), carried by the spec class."""
        return self.spec.version

    def field_choices(self, run_field: RunField) -> tuple[str, ...]:
        """The values a launch-time field may take (empty: any value of its type)."""
        if run_field.choices is not None:
            return run_field.choices
        return _literal_values(self.spec.model_fields[run_field.name].annotation)

    def problems(self) -> list[str]:
        """What is missing or inconsistent in this descriptor (empty: complete)."""
        out = []
        kind_field = self.spec.model_fields.get("kind")
        kinds = get_args(kind_field.annotation) if kind_field is not None else ()
        if kinds != (self.kind,):
            out.append(f"spec {self.spec.__name__} has kind {kinds}, not ({self.kind!r},)")
        if not isinstance(getattr(self.spec, "version", None), str):
            out.append(f"spec {self.spec.__name__} has no version")
        for name in ("run", "inputs", "expected_rows"):
            if not callable(getattr(self, name)):
                out.append(f"{name} is not callable")
        unknown = [f.name for f in self.run_fields if f.name not in self.spec.model_fields]
        if unknown:
            out.append(f"run_fields {unknown} are not fields of {self.spec.__name__}")
        if not self.summary:
            out.append("no summary (the CLI's and API's one-line help)")
        return [f"brain method {self.kind!r}: {p}" for p in out]


def _literal_values(annotation: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` of strings (or of one ``| None``), else () (e.g. for
    ``float | Literal["auto"]``, which is no closed set)."""
    if get_origin(annotation) in (Union, type(int | None)):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _literal_values(args[0]) if len(args) == 1 else ()
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        return values if all(isinstance(v, str) for v in values) else ()
    return ()
