"""A throwaway brain method for the registry tests: one module, a constant score per sample.

Everything a method needs sits here (spec, runner, descriptor); registering ``METHOD`` is the
one line that gives it an asset, a check, a CLI command and an API call.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from dagster_brain.methods import BrainMethod, RunField, ScoreColumn
from dagster_brain.methods.base import samples_input
from dagster_brain.runs import RunContext, RunOutcome, commit_outcome
from dagster_brain.specs import BrainRunSpec
from dagster_brain.store import Store

# Set by a test to hold a run inside its lock until released (a slow writer).
PAUSE: dict[str, threading.Event] = {}


class ConstantSpec(BrainRunSpec):
    """Score every sample with the same value."""

    kind: Literal["constant"]
    value: float = Field(default=0.5, ge=0.0, le=1.0)


def run_constant(
    spec: ConstantSpec,
    store: Store,
    *,
    run_id: str | None = None,
    ids: list[str] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    **ctx: Any,
) -> RunOutcome:
    """``value`` for every sample of the dataset (or of ``ids``)."""
    if "entered" in PAUSE:
        PAUSE["entered"].set()
        PAUSE["release"].wait(30)
    samples = ids if ids is not None else store.sample_ids(spec.dataset)
    results = pd.DataFrame({"sample_id": list(samples), "constant": spec.value})
    context = RunContext(run_id=run_id, ids=ids, artifacts=tuple(artifacts or ()))
    return commit_outcome(
        spec,
        store,
        context,
        results,
        method="constant",
        upstream={},
        summary={"items": len(results)},
    )


METHOD = BrainMethod(
    kind="constant",
    spec=ConstantSpec,
    run=run_constant,
    inputs=samples_input,
    expected_rows=lambda store, spec: len(store.sample_ids(spec.dataset)),
    score=ScoreColumn("constant", 0.0, 1.0),
    summary="The same score for every sample (a test method).",
    run_fields=(RunField("value", float, "the score", ge=0, le=1),),
)
