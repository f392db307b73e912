"""Model names: the offline default and its aliases (no torch import)."""

DEFAULT_MODEL = "efficientnet-lite0"
ALIASES = {
    "default": DEFAULT_MODEL,
    "efficientnet-lite0": DEFAULT_MODEL,
    "efficientnet_lite0": DEFAULT_MODEL,
    "efficientnet-lite0-imagenet": DEFAULT_MODEL,
}


def canonical_name(name: str) -> str:
    """Map aliases of the default model to ``DEFAULT_MODEL``; other names pass through."""
    return ALIASES.get(name.strip().lower(), name.strip())
