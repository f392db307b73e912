"""dagster-brain: FiftyOne Brain capabilities as Dagster software-defined assets.

The notebook API lives here (``import dagster_brain as fob``). Names load on first use, so
``import dagster_brain`` stays cheap; ``dir(fob)`` and tab completion list them all.
"""

__version__ = "0.1.0"

_API = {
    "Dataset": "dagster_brain.api",
    "DatasetView": "dagster_brain.api",
    "load_dataset": "dagster_brain.api",
    "list_datasets": "dagster_brain.api",
    "open_store": "dagster_brain.api",
    "compute_uniqueness": "dagster_brain.api",
    "compute_similarity": "dagster_brain.api",
    "sort_by_similarity": "dagster_brain.api",
    "compute_near_duplicates": "dagster_brain.api",
    "compute_exact_duplicates": "dagster_brain.api",
    "compute_mistakenness": "dagster_brain.api",
    "compute_hardness": "dagster_brain.api",
    "compute_visualization": "dagster_brain.api",
    "compute_brain": "dagster_brain.api",
    "get_embeddings": "dagster_brain.api",
    "visualize_duplicates": "dagster_brain.api",
    "visualize_unique": "dagster_brain.api",
    "visualize_points": "dagster_brain.api",
    "compute_representativeness": "dagster_brain.api",
    "compute_leaky_splits": "dagster_brain.api",
    "load_leaky_splits": "dagster_brain.api",
    "LeakySplitsIndex": "dagster_brain.api",
    "compute_outliers": "dagster_brain.api",
    "compute_label_summary": "dagster_brain.api",
    "compute_image_issues": "dagster_brain.api",
    "write_health_report": "dagster_brain.api",
    "BrainConfig": "dagster_brain.config",
    "Store": "dagster_brain.store",
}

__all__ = [*_API, "brain_config"]


def __getattr__(name: str) -> object:
    if name == "brain_config":
        from dagster_brain.config import get_brain_config

        return get_brain_config()
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'dagster_brain' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (``__all__``) and the module's dunder names, without importing them."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
