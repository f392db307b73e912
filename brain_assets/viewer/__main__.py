"""``python -m dagster_brain.viewer [--port N] [--data-dir DIR]``: ``brain view`` without the
``brain`` command (``make ui`` starts it this way)."""

from dagster_brain.viewer.cli import view_cmd

if __name__ == "__main__":
    view_cmd(prog_name="python -m dagster_brain.viewer")
