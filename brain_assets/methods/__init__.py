"""Brain methods: one module per method (its descriptor next to its runner), one registry.

``run_brain`` is the write path every face (assets, API, CLI) goes through.
"""

from dagster_brain.methods.base import BrainMethod, Input, RunField, ScoreColumn
from dagster_brain.methods.registry import (
    METHODS,
    delete_brain_run,
    get_method,
    register,
    run_brain,
)
from dagster_brain.methods.similarity import run_similarity
from dagster_brain.methods.uniqueness import run_uniqueness
from dagster_brain.runs import RunOutcome

__all__ = [
    "METHODS",
    "BrainMethod",
    "Input",
    "RunField",
    "RunOutcome",
    "ScoreColumn",
    "delete_brain_run",
    "get_method",
    "register",
    "run_brain",
    "run_similarity",
    "run_uniqueness",
]
