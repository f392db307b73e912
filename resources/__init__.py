"""Dagster resources: the store, embedding models and (later) similarity backends."""
