"""The notebook API's surface: ``dir(fob)`` lists it, importing the package stays cheap, and
every public name is documented with its parameters (``Args:``) and result (``Returns:``)."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import dagster_brain as fob

# Re-exported from modules this test does not own; only a docstring is required until their
# constructors' docstrings gain Args sections.
EXTERNAL = {"Store", "BrainConfig"}


def _sections(doc: str) -> dict[str, str]:
    """Google-style sections of a docstring: ``{"Args": body, "Returns": body, ...}``."""
    out: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        header = re.fullmatch(r"(Args|Arguments|Returns|Raises|Yields|Example|Examples):", line)
        if header:
            current = header.group(1)
            out[current] = ""
        elif current is not None:
            if line and not line.startswith(" "):
                current = None  # back to free text
            else:
                out[current] += line + "\n"
    return out


def _documented_args(doc: str) -> set[str]:
    body = _sections(doc).get("Args", "")
    return set(re.findall(r"^ {4}(\*{0,2}\w+)(?: \([^)]*\))?:", body, flags=re.M))


def _params(fn) -> list[str]:
    names = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", "cls"):
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        names.append(prefix + p.name)
    return names


def _problems(name: str, fn, doc: str | None, need_returns: bool) -> list[str]:
    if not doc:
        return [f"{name}: no docstring"]
    problems = []
    params = _params(fn)
    missing = [p for p in params if p not in _documented_args(doc)]
    if params and "Args" not in _sections(doc):
        problems.append(f"{name}: no Args section")
    elif missing:
        problems.append(f"{name}: Args does not list {missing}")
    if need_returns and "Returns" not in _sections(doc):
        problems.append(f"{name}: no Returns section")
    return problems


def test_dir_lists_the_public_api_without_importing_it():
    listed = dir(fob)
    assert set(fob.__all__) <= set(listed)
    assert "compute_uniqueness" in listed and "visualize_duplicates" in listed
    assert not [n for n in listed if not n.startswith("_") and n not in fob.__all__]
    code = (
        "import sys, dagster_brain as fob; dir(fob); "
        "print(sorted(m for m in ('dagster', 'torch', 'pandas', 'dagster_brain.api') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # names load on first use


def test_every_public_name_resolves_and_is_documented():
    problems = []
    for name in fob.__all__:
        obj = getattr(fob, name)  # resolves (lazy import works)
        if name == "brain_config":
            assert isinstance(obj, fob.BrainConfig)
            continue
        if name in EXTERNAL:
            if not inspect.getdoc(obj):
                problems.append(f"{name}: no docstring")
            continue
        if inspect.isclass(obj):
            problems += _problems(name, obj, inspect.getdoc(obj), need_returns=False)
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                problems += _problems(
                    f"{name}.{attr}", member, inspect.getdoc(member), need_returns=True
                )
        else:
            assert callable(obj), name
            problems += _problems(name, obj, inspect.getdoc(obj), need_returns=True)
    assert not problems, "\n".join(problems)


def test_the_checker_catches_an_undocumented_parameter():
    def documented(a, b=1, **kw):
        """Do it.

        Args:
            a: first.
            b (int): second.
            **kw: the rest.

        Returns:
            Nothing.
        """

    def half(a, b):
        """Do it.

        Args:
            a: first.

        Returns:
            Nothing.
        """

    assert _problems("documented", documented, inspect.getdoc(documented), True) == []
    assert _problems("half", half, inspect.getdoc(half), True) == ["half: Args does not list ['b']"]
    assert _problems("none", half, "Do it.", True) == [
        "none: no Args section",
        "none: no Returns section",
    ]


def test_a_run_outcome_shows_in_one_line_and_as_escaped_html():
    import pandas as pd

    from dagster_brain.runs import RunOutcome
    from dagster_brain.store.records import BrainRunRecord

    record = BrainRunRecord("toy", "u", "uniqueness", None, {}, ["a", "b"], run_id="r1")
    results = pd.DataFrame({"sample_id": ["<b>a</b>", "b"], "uniqueness": [1.0, 0.5]})
    outcome = RunOutcome(record, results, "v1")
    assert repr(outcome) == (
        "RunOutcome(dataset='toy', brain_key='u', kind='uniqueness', rows=2, run_id='r1')"
    )
    page = outcome._repr_html_()
    assert "&lt;b&gt;a&lt;/b&gt;" in page and "<b>a</b>" not in page
