"""Write ROOT/.env: the project-local Dagster instance and data directory, as absolute paths.

Dagster's CLI (``dagster dev``, ``dagster asset materialize``, ``dagster definitions
validate``) and ``brain`` read this file when run from ROOT, so no variable has to be exported
first. Each line is ``NAME=${NAME:-/abs/path}``, so a variable set in the environment (a test's,
or ``scripts/env.sh``'s) still wins. Usage: ``python scripts/write_env.py [ROOT]`` (default:
the repository root).

DAGSTER_HOME is always ROOT (where dagster.yaml is). BRAIN_DAGSTER_STORAGE_DIR and
BRAIN_DATA_DIR keep the absolute paths already in .env (a user's choice); otherwise they are
ROOT/.dagster_home and ROOT/data. Other lines of .env are kept as they are. Standard library
only: scripts/setup.sh runs it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HEADER = (
    "# Written by scripts/setup.sh (scripts/write_env.py): read by dagster and brain when run\n"
    "# from this folder. ${NAME:-path}: a variable already set in the environment wins.\n"
    "# Paths must be absolute; re-run scripts/setup.sh after moving the repository.\n"
)
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def _unquote(name: str, value: str) -> str:
    """The path a .env line gives (``"..."`` and ``${NAME:-...}`` taken off)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    prefix = "${" + name + ":-"
    if value.startswith(prefix) and value.endswith("}"):
        value = value[len(prefix) : -1]
    return value


def _line(name: str, value: str) -> str:
    """``NAME=${NAME:-value}``: the value unless the environment sets NAME."""
    text = "${" + name + ":-" + value + "}"
    if re.fullmatch(r"[A-Za-z0-9_./:@+-]+", value):
        return f"{name}={text}"
    return f'{name}="' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wanted(root: Path, current: dict[str, str]) -> dict[str, str]:
    """The three variables for ``root``, keeping absolute directories already chosen."""
    out = {"DAGSTER_HOME": str(root)}
    for name, default in (
        ("BRAIN_DAGSTER_STORAGE_DIR", root / ".dagster_home"),
        ("BRAIN_DATA_DIR", root / "data"),
    ):
        kept = current.get(name, "")
        out[name] = kept if kept and Path(kept).is_absolute() else str(default)
    return out


def write_env(root: str | Path) -> dict[str, str]:
    """Create or update ``root/.env``; create the storage directory. Returns the values."""
    root = Path(root).expanduser().resolve()
    if not (root / "dagster.yaml").is_file():
        raise SystemExit(f"write_env: {root} has no dagster.yaml")
    path = root / ".env"
    lines = path.read_text().splitlines() if path.exists() else []
    current = {}
    for line in lines:
        m = _LINE.match(line)
        if m:
            current[m.group(1)] = _unquote(m.group(1), m.group(2))
    values = wanted(root, current)
    kept = [
        line
        for line in lines
        if not ((m := _LINE.match(line)) and m.group(1) in values)
        and line not in HEADER.splitlines()
    ]
    body = "".join(f"{_line(k, v)}\n" for k, v in values.items())
    rest = "".join(f"{line}\n" for line in kept)
    text = HEADER + body + rest
    if not path.exists() or path.read_text() != text:  # atomic: a reader never sees half
        tmp = path.with_name(f".env.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    Path(values["BRAIN_DAGSTER_STORAGE_DIR"]).mkdir(parents=True, exist_ok=True)
    return values


def main(argv: list[str]) -> None:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    values = write_env(root)
    print(f"[setup] {root.resolve() / '.env'}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


if __name__ == "__main__":
    main(sys.argv)
