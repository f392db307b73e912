"""Validation of names that come from users (datasets, brain keys, fields, embeddings keys)."""

from __future__ import annotations

import re

# \A...\Z with fullmatch: "$" would also match before a final newline ("ok\n" passing)
_IDENT = re.compile(r"\A[a-z][a-z0-9_]{0,62}\Z")


class BrainNameError(ValueError):
    """A dataset, brain key, field or embeddings key that is not a valid identifier."""


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a lower-case identifier (safe as a table or column name)."""
    if not isinstance(value, str) or not _IDENT.fullmatch(value) or "__" in value:
        raise BrainNameError(
            f"{what} {value!r} is not a valid name: use lower-case letters, digits and single "
            "underscores, starting with a letter (at most 63 characters)"
        )
    return value


def quote(ident: str) -> str:
    """Quote an already-validated identifier for SQL."""
    return '"' + ident.replace('"', '""') + '"'
