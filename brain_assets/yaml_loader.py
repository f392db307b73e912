"""YAML reading that refuses a key given twice in one mapping.

``yaml.safe_load`` keeps the last of two equal keys and drops the first without a word: two
``k:`` lines in one entry, or two ``datasets:`` sections in one file, lose half of what the
user wrote. :func:`load_yaml` (a file) and :func:`parse_yaml` (text) read like ``safe_load``
and raise :class:`DuplicateKeyError` instead, naming the key, both lines and the file. Merge
keys (``<<: *base``) may still be overridden by the mapping's own keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML document that gives the same key twice."""

    def __init__(self, name: str, key: Any, line: int, first_line: int, top_level: bool) -> None:
        self.name, self.key, self.line, self.first_line = name, key, line, first_line
        lines = f"on line {line}" if line == first_line else f"lines {first_line} and {line}"
        if top_level:
            what, fix = f"section {key!r} appears twice ({lines})", "merge them into one section"
        else:
            what, fix = f"key {key!r} appears twice in one mapping ({lines})", "keep one of them"
        super().__init__(
            f"{name}, line {line}: {what}; YAML would keep only the last one, so it is "
            f"refused: {fix}"
        )


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` on a repeated key."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._document_root = node
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            self._refuse_repeated_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_repeated_keys(self, node: yaml.MappingNode) -> None:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *base` may be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader refuses unhashable keys itself
            line = key_node.start_mark.line + 1
            if key in first:
                top = node is getattr(self, "_document_root", None)
                raise DuplicateKeyError(self.name, key, line, first[key], top)
            first[key] = line


def parse_yaml(text: str, name: str = "<string>") -> Any:
    """The first document of YAML ``text``, as ``yaml.safe_load`` reads it, refusing repeated
    keys; ``name`` is the file named in errors."""
    loader = StrictSafeLoader(text)
    loader.name = name  # the name every mark (and so every error) carries
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path, name: str | None = None) -> Any:
    """The first document of the YAML file ``path`` (see :func:`parse_yaml`); errors name
    ``name`` (default: the path as given). A missing file raises ``FileNotFoundError``."""
    return parse_yaml(Path(path).read_text(), name or str(path))
