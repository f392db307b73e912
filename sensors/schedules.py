"""Schedules: a nightly refresh of every brain result."""

from __future__ import annotations

import dagster as dg

DEFAULT_REFRESH_CRON = "0 3 * * *"


def build_schedules(
    target: dg.AssetSelection | None = None,
) -> list[dg.ScheduleDefinition]:
    """The nightly refresh of ``target`` (default: every asset); its cron is the brain
    config's ``refresh_cron`` (``BRAIN_REFRESH_CRON``, the JSON file, or the default), UTC."""
    from dagster._utils.schedules import is_valid_cron_string

    from dagster_brain.config import BrainConfigError, get_brain_config

    cron = get_brain_config().refresh_cron or DEFAULT_REFRESH_CRON
    if not is_valid_cron_string(cron):
        raise BrainConfigError(f"brain config refresh_cron {cron!r} is not a cron expression")
    return [
        dg.ScheduleDefinition(
            name="nightly_brain_refresh",
            target=target if target is not None else dg.AssetSelection.all(),
            cron_schedule=cron,
            execution_timezone="UTC",
            description="Re-ingest, re-embed and recompute every brain key",
            default_status=dg.DefaultScheduleStatus.STOPPED,
        )
    ]
