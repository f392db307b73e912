"""How runs execute: the executor the brain config names, and what a distributed one refuses.

``BRAIN_EXECUTOR`` (brain config field ``executor``) picks it:

- ``multiprocess`` (default): Dagster's default executor, one process per step on this host;
- ``in_process``: every step in the run's own process;
- ``celery``: steps are Celery tasks picked up by ``dagster-celery`` workers, possibly on other
  hosts (the ``distributed`` extra; docs/deployment.md). The broker, result backend and queue
  come from ``BRAIN_CELERY_BROKER`` (default ``redis://127.0.0.1:6379/0``),
  ``BRAIN_CELERY_BACKEND`` (default: the broker) and ``BRAIN_CELERY_QUEUE`` (default
  ``dagster``), the variables ``deploy/celery.yaml`` gives the workers.

Steps on other hosts cannot share an embedded vector store (Qdrant local mode, milvus-lite):
a distributed executor refuses such similarity brain keys when the definitions load, and
:func:`refuse_embedded_step` is the same check for a step that learns its executor at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from dagster_brain.config import BrainConfig, BrainConfigError, BrainSettings, get_brain_config
from dagster_brain.similarity.backends.registry import embedded_reason
from dagster_brain.specs import BrainKeysFile, BrainRunSpec, SimilaritySpec

EXECUTORS = ("multiprocess", "in_process", "celery")
# Executor definition names whose steps may run on other hosts or in other containers.
DISTRIBUTED_EXECUTORS = frozenset({"celery", "celery-k8s", "celery-docker", "k8s", "docker"})
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "dagster"


class EmbeddedBackendError(BrainConfigError):
    """A similarity brain key whose store one process on one host opens, under a distributed
    executor."""


def executor_name(config: BrainSettings | BrainConfig | None = None) -> str:
    """The brain config's executor, checked against the known ones."""
    value = (config or get_brain_config()).executor
    name = str(value).strip().lower()
    if name not in EXECUTORS:
        raise BrainConfigError(
            f"brain config executor {value!r} (BRAIN_EXECUTOR): expected one of {list(EXECUTORS)}"
        )
    return name


def celery_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The celery executor's config: broker, result backend and queue from ``BRAIN_CELERY_*``.

    A set variable is passed as ``{"env": NAME}`` so a password in a broker URL never lands
    in the run config the UI shows.
    """
    env = os.environ if env is None else env

    def source(var: str, default: str) -> Any:
        return {"env": var} if env.get(var) else default

    broker = env.get("BRAIN_CELERY_BROKER") or DEFAULT_BROKER
    return {
        "broker": source("BRAIN_CELERY_BROKER", DEFAULT_BROKER),
        "backend": source("BRAIN_CELERY_BACKEND", broker),
        "config_source": {"task_default_queue": env.get("BRAIN_CELERY_QUEUE") or DEFAULT_QUEUE},
    }


def build_executor(
    config: BrainSettings | BrainConfig | None = None, specs: BrainKeysFile | None = None
) -> dg.ExecutorDefinition | None:
    """The ``dg.Definitions`` executor (None: Dagster's default); refuses embedded stores first."""
    name = executor_name(config)
    if name == "multiprocess":
        return None
    if name == "in_process":
        return dg.in_process_executor
    if specs is not None:
        refuse_embedded_backends(specs, name, config)
    try:
        from dagster_celery import celery_executor
    except ImportError as err:
        raise BrainConfigError(
            "BRAIN_EXECUTOR=celery needs dagster-celery: pip install -e '.[distributed]'"
        ) from err
    return celery_executor.configured(celery_config(), name="celery")


def _problem(
    spec: SimilaritySpec,
    params: Mapping[str, Any] | None,
    config: BrainSettings | BrainConfig | None = None,
) -> str | None:
    """How the similarity run would resolve its backend: what the step itself does."""
    from dagster_brain.similarity.compute import backend_settings, entry_settings, resolve_backend

    backend = resolve_backend(spec, config)
    settings = backend_settings(backend, entry_settings(spec, dict(params or {})), config)
    reason = embedded_reason(backend, settings)
    if reason is None:
        return None
    return f"brain key {spec.brain_key!r} (dataset {spec.dataset!r}): backend {backend!r}, {reason}"


def _refusal(executor: str, problems: list[str]) -> EmbeddedBackendError:
    return EmbeddedBackendError(
        f"the {executor} executor runs steps in workers that may be on other hosts, and "
        "these similarity brain keys use an embedded store that cannot be shared:\n  "
        + "\n  ".join(problems)
        + "\nPoint them at a server (qdrant url, milvus http(s):// uri) or use lancedb, "
        "sklearn or pinecone; or set BRAIN_EXECUTOR=multiprocess."
    )


def refuse_embedded_backends(
    specs: BrainKeysFile, executor: str, config: BrainSettings | BrainConfig | None = None
) -> None:
    """Load-time check: a distributed executor refuses every embedded similarity brain key."""
    if executor not in DISTRIBUTED_EXECUTORS:
        return
    similarity = [s for s in specs.brain_runs if isinstance(s, SimilaritySpec)]
    problems = [p for spec in similarity if (p := _problem(spec, None, config))]
    if problems:
        raise _refusal(executor, problems)


def step_executor(context: dg.OpExecutionContext) -> str:
    """The name of the executor running a step (whatever set it: Definitions, job, run config)."""
    return context.job_def.executor_def.name


def refuse_embedded_step(
    executor: str, spec: BrainRunSpec, params: Mapping[str, Any] | None = None
) -> None:
    """Run-time check for one similarity step (``params``: its resource's settings)."""
    if executor not in DISTRIBUTED_EXECUTORS or not isinstance(spec, SimilaritySpec):
        return
    problem = _problem(spec, params)
    if problem:
        raise _refusal(executor, [problem])
