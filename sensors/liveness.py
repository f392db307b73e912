"""A sensor that marks failed the in-process runs whose ``brain`` process died (``kill -9``,
out of memory), so the UI never shows a dead run as running even when no further ``brain``
command runs on that host."""

from __future__ import annotations

import dagster as dg

from dagster_brain.run_liveness import fail_dead_runs

# How often the daemon looks (seconds): a dead run shows as running at most this long.
LIVENESS_INTERVAL_S = 60


def build_liveness_sensor() -> dg.SensorDefinition:
    """``dead_brain_runs``: runs on by default; it requests no runs, it only ends dead ones."""

    @dg.sensor(
        name="dead_brain_runs",
        minimum_interval_seconds=LIVENESS_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks FAILURE the runs that brain / the notebook API executed in a process "
        "of this host that is gone (their pid and start time are in the run's tags)",
    )
    def _dead_brain_runs(context: dg.SensorEvaluationContext):
        lines = fail_dead_runs(context.instance)
        for line in lines:
            context.log.warning(line)
        return dg.SkipReason(f"{len(lines)} dead runs marked failed" if lines else "none dead")

    return _dead_brain_runs
