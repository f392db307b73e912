"""Schedules: a nightly refresh of every brain result."""

from __future__ import annotations

import os

import dagster as dg

DEFAULT_REFRESH_CRON = "0 3 * * *"


def build_schedules(
    target: dg.AssetSelection | None = None,
) -> list[dg.ScheduleDefinition]:
    """The nightly refresh of ``target`` (default: every asset); its cron comes from
    ``BRAIN_REFRESH_CRON`` (UTC)."""
    return [
        dg.ScheduleDefinition(
            name="nightly_brain_refresh",
            target=target if target is not None else dg.AssetSelection.all(),
            cron_schedule=os.environ.get("BRAIN_REFRESH_CRON", DEFAULT_REFRESH_CRON),
            execution_timezone="UTC",
            description="Re-ingest, re-embed and recompute every brain key",
            default_status=dg.DefaultScheduleStatus.STOPPED,
        )
    ]
