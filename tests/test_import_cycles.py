"""No import cycles between the project's modules (module-level and function-level imports).

Every module of brain_assets/, resources/ and sensors/ is parsed with ``ast``; each
``dagster_brain.*`` import becomes an edge to the module it loads (``from pkg import mod``
loads ``pkg.mod``). A cycle is a strongly connected set of two or more modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package-dir mapping of pyproject.toml
PACKAGES = {
    "dagster_brain": ROOT / "brain_assets",
    "dagster_brain.resources": ROOT / "resources",
    "dagster_brain.sensors": ROOT / "sensors",
}


def project_modules() -> dict[str, Path]:
    """Module name -> file, for every module of the three package roots."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _targets(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [
            f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
            for a in node.names
        ]
    else:
        return []
    return [n for n in names if n in modules]


def import_graph(module_level_only: bool) -> dict[str, set[str]]:
    """module -> the project modules it imports (at module level, or anywhere)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree) if not module_level_only else _module_level(tree)
        for node in nodes:
            graph[name].update(t for t in _targets(node, modules) if t != name)
    return graph


def _module_level(tree: ast.Module):
    """Import statements run when the module loads (top level, also inside if/try)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.ClassDef):
            todo.extend(n for n in node.body if not isinstance(n, ast.FunctionDef))
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_cycle_finder_on_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]


def test_graph_sees_module_and_function_level_imports():
    every = import_graph(module_level_only=False)
    top = import_graph(module_level_only=True)
    # runs.py is the bottom layer: it loads specs and store at import time
    assert {"dagster_brain.specs", "dagster_brain.store"} <= top["dagster_brain.runs"]
    # delete_brain_run imports similarity.compute inside the function only
    registry = "dagster_brain.methods.registry"
    assert "dagster_brain.similarity.compute" in every[registry] - top[registry]


def test_run_plumbing_sits_at_the_bottom():
    every = import_graph(module_level_only=False)
    allowed = ("dagster_brain.specs", "dagster_brain.store")
    assert all(m.startswith(allowed) for m in every["dagster_brain.runs"])


def test_no_module_level_import_cycles():
    found = cycles(import_graph(module_level_only=True))
    assert found == [], f"module-level import cycles: {found}"


# Function-level cycles still open (outside the method and run plumbing): config's lazy
# look-up of the backend registry (config -> backends.registry -> backends.* -> base ->
# config), and the embedding factory's lazy import of its concrete models. A cycle may
# shrink or go; a new one, or a module joining one, fails.
KNOWN_FUNCTION_LEVEL = [
    {
        "dagster_brain.config",
        "dagster_brain.similarity.backends.base",
        "dagster_brain.similarity.backends.exact",
        "dagster_brain.similarity.backends.lancedb_backend",
        "dagster_brain.similarity.backends.milvus_backend",
        "dagster_brain.similarity.backends.pinecone_backend",
        "dagster_brain.similarity.backends.qdrant_backend",
        "dagster_brain.similarity.backends.registry",
    },
    {
        "dagster_brain.embedding.efficientnet_lite",
        "dagster_brain.embedding.hf",
        "dagster_brain.embedding.models",
    },
]


def test_no_new_function_level_import_cycles():
    found = cycles(import_graph(module_level_only=False))
    new = [c for c in found if not any(set(c) <= known for known in KNOWN_FUNCTION_LEVEL)]
    assert new == [], f"import cycles (function-level imports included): {new}"


def test_methods_and_run_plumbing_in_no_cycle():
    found = cycles(import_graph(module_level_only=False))
    ours = (
        "dagster_brain.methods",
        "dagster_brain.runs",
        "dagster_brain.similarity.compute",
        "dagster_brain.similarity.runs",
    )
    assert [c for c in found if any(m.startswith(ours) for m in c)] == []
