"""No value is pasted into SQL text: the project's source is scanned with ``ast``.

A SQL string is an f-string, ``.format`` template or ``%`` template whose text holds SELECT,
INSERT, UPDATE, DELETE or WHERE, or any f-string that puts a value between SQL quotes
(``'{x}'``). What it interpolates must be an identifier made safe by a quoting helper
(:data:`IDENTIFIER_HELPERS`), a constant, or a local name bound only to those (a loop over
constant names included). Anything else is reported as ``file:line``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("brain_assets", "resources", "sensors")
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WHERE)\b")
# Functions that return quoted identifiers (dagster_brain.names.quote and the store's helpers
# in dagster_brain/store/tables.py, which are built on it).
IDENTIFIER_HELPERS = frozenset(
    {
        "quote",
        "qualified",
        "column_list",
        "results_table_name",
        "extra_table_name",
        "view_table_name",
    }
)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module)


def _bindings(scope: ast.AST, name: str) -> list[ast.expr | None]:
    """The expressions ``name`` is bound to in ``scope`` (``None``: bound to something that
    cannot be judged, such as a parameter or a ``with`` target)."""
    found: list[ast.expr | None] = []
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        args = scope.args
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        found += [None for a in every if a is not None and a.arg == name]
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            targets = [t for t in node.targets if isinstance(t, ast.Name) and t.id == name]
            found += [node.value for _ in targets]
            if any(isinstance(t, ast.Tuple) and _binds(t, name) for t in node.targets):
                found.append(None)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                found.append(node.value)
        elif isinstance(node, ast.For | ast.comprehension):
            if isinstance(node.target, ast.Name) and node.target.id == name:
                it = node.iter
                found += list(it.elts) if isinstance(it, ast.Tuple | ast.List | ast.Set) else [None]
            elif _binds(node.target, name):
                found.append(None)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            if _binds(node.optional_vars, name):
                found.append(None)
    return found


def _binds(target: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(target))


class _Checker:
    """Judges interpolated expressions inside one module."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.scope_of: dict[ast.AST, ast.AST] = {}
        self._index(tree, tree)

    def _index(self, node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            self.scope_of[child] = scope
            self._index(child, child if isinstance(child, _SCOPES) else scope)

    def safe(self, expr: ast.expr | None, at: ast.AST, seen: frozenset[str] = frozenset()) -> bool:
        """Whether ``expr`` (found at ``at``) can only be a constant or a quoted identifier."""
        if expr is None:
            return False
        if isinstance(expr, ast.Constant):
            return True
        if isinstance(expr, ast.FormattedValue):
            return self.safe(expr.value, at, seen)
        if isinstance(expr, ast.JoinedStr | ast.Tuple | ast.List):
            parts = expr.values if isinstance(expr, ast.JoinedStr) else expr.elts
            return all(self.safe(p, at, seen) for p in parts)
        if isinstance(expr, ast.IfExp):
            return self.safe(expr.body, at, seen) and self.safe(expr.orelse, at, seen)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self.safe(expr.left, at, seen) and self.safe(expr.right, at, seen)
        if isinstance(expr, ast.Call):
            func = expr.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            return name in IDENTIFIER_HELPERS
        if isinstance(expr, ast.Name):
            if expr.id in seen:
                return True  # judged by the other bindings of the name
            return all(self.safe(b, at, seen | {expr.id}) for b in self.binding_values(expr, at))
        return False

    def binding_values(self, name: ast.Name, at: ast.AST) -> list[ast.expr | None]:
        """What the name can hold at ``at``: its bindings in the nearest scope that has any."""
        scope: ast.AST | None = self.scope_of.get(at, self.tree)
        while scope is not None:
            found = _bindings(scope, name.id) if not isinstance(scope, ast.Module) else []
            if isinstance(scope, ast.Module):
                found = [
                    b
                    for stmt in scope.body
                    if not isinstance(stmt, ast.FunctionDef | ast.ClassDef)
                    for b in _bindings(stmt, name.id)
                ]
            if found:
                return found
            scope = self.scope_of.get(scope) if scope is not self.tree else None
        return [None]

    def constant_text(self, expr: ast.expr, at: ast.AST) -> str | None:
        """The text of a string constant, or of a name bound only to string constants."""
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name):
            values = self.binding_values(expr, at)
            texts = [
                v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            ]
            return " ".join(texts) if texts and len(texts) == len(values) else None
        return None


def _quoted_value(node: ast.JoinedStr) -> bool:
    """Whether an f-string puts an interpolation between single quotes (``'{x}'``)."""
    parts = node.values
    for i, part in enumerate(parts):
        if not isinstance(part, ast.FormattedValue):
            continue
        before = parts[i - 1] if i else None
        after = parts[i + 1] if i + 1 < len(parts) else None
        if (
            isinstance(before, ast.Constant)
            and str(before.value).endswith("'")
            and isinstance(after, ast.Constant)
            and str(after.value).startswith("'")
        ):
            return True
    return False


def unsafe_sql(source: str, filename: str = "<string>") -> list[str]:
    """``file:line`` of each SQL string in ``source`` that interpolates a value."""
    tree = ast.parse(source, filename)
    checker = _Checker(tree)
    found = []
    for node in ast.walk(tree):
        values: list[ast.expr] = []
        if isinstance(node, ast.JoinedStr):
            text = "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
            if SQL_WORDS.search(text) or _quoted_value(node):
                values = [v for v in node.values if isinstance(v, ast.FormattedValue)]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
        ):
            text = checker.constant_text(node.func.value, node) or ""
            if SQL_WORDS.search(text):
                values = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            text = checker.constant_text(node.left, node) or ""
            if SQL_WORDS.search(text):
                values = [node.right]
        if any(not checker.safe(v, node) for v in values):
            found.append(f"{filename}:{node.lineno}")
    return sorted(set(found), key=lambda s: (s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1])))


def test_project_sql_passes_values_as_parameters():
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += unsafe_sql(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "SQL with values pasted in (pass them as parameters):\n" + "\n".join(found)


PLANTED = """\
def bad(conn, key, dataset, select_sql):
    conn.execute(f"SELECT * FROM t WHERE k = '{key}'")
    conn.execute("DELETE FROM t WHERE k = '{}'".format(key))
    conn.execute("UPDATE t SET v = 1 WHERE k = '%s'" % key)
    template = "SELECT a FROM t WHERE b = {b}"
    conn.execute(template.format(b=key))
    sql = select_sql.replace("?", f"'{dataset}'")
    table = key + "_x"
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    conn.execute(f"SELECT * FROM {quote(key)} WHERE n = {len(key)}")
"""

PLANTED_SAFE = """\
def good(conn, dataset, brain_key, ids):
    table = results_table_name(dataset, brain_key)
    conn.execute(f"SELECT * FROM {table} WHERE dataset = ?", [dataset])
    conn.execute(f"DELETE FROM {quote(dataset + '__x')} WHERE dataset = ?", [dataset])
    for name in ("samples", "labels"):
        conn.execute(f"DELETE FROM {name} WHERE dataset = ?", [dataset])
    join = "JOIN want USING (sample_id)" if ids else ""
    conn.execute(f"SELECT {column_list(['a', 'b'])} FROM t {join} WHERE d = ?", [dataset])
    conn.execute("SELECT * FROM t WHERE {col} = ?".format(col=quote("a")), [dataset])
"""


def test_the_scan_finds_planted_values_and_passes_safe_identifiers():
    assert unsafe_sql(PLANTED, "bad.py") == [f"bad.py:{n}" for n in (2, 3, 4, 6, 7, 9, 10)]
    assert unsafe_sql(PLANTED_SAFE, "good.py") == []
