"""Similarity indexes: one index API over five vector backends (no Dagster imports)."""
