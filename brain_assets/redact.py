"""One redaction for everything the brain prints, logs or stores: credentials never leave.

:func:`redact` masks, in strings, dicts and lists (recursively):

- the userinfo of URLs, URIs and DSNs: ``http://admin:pw@host:6333/p`` ->
  ``http://****@host:6333/p``; also a bare ``user:pass@host:port``;
- query-string and ``name=value`` credentials (``api_key=``, ``token=``, ``password=``,
  ``secret=``, ``key=``..., any case): ``?api_key=abc&x=1`` -> ``?api_key=****&x=1``; the
  same for quoted ``'token': 'abc'`` pairs and ``Bearer abc...`` tokens;
- the values of secret-named fields (``api_key``, ``password``, ``token``, ``secret``...) in
  dicts.

Hosts, ports, paths and other parameters stay, so messages still say where. It never raises.
Passwords inside a URL must be percent-encoded (``/``, ``?`` and ``#`` end the userinfo).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

MASK = "****"

# parameter / field names that hold a secret (substring match, any case)
SECRET_WORDS = ("api_key", "apikey", "password", "token", "secret")

# query-string / keyword names whose value is a credential
_CRED_NAME = (
    r"[\w.-]*?(?:api[_-]?key|access[_-]?key|private[_-]?key|secret[_-]?key|password|passwd"
    r"|pwd|secret|token|credentials?|signature)[\w.-]*"
    r"|key|sig|auth|pass"
)
# scheme://userinfo@  (userinfo runs to the last '@' before the path, query or fragment)
_URL_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s'\"<>/?#]*)@")
# bare user:pass@host (no scheme)
_BARE_USERINFO = re.compile(
    r"(?<![\w./:@%*+~-])(?P<user>[\w.%+~-]+):(?P<pw>[^\s@/'\"<>]+)@(?=[\w\[])"
)
# name=value in query strings, DSNs and messages
_KEY_VALUE = re.compile(
    rf"(?i)(?<![\w.-])(?P<name>{_CRED_NAME})(?P<eq>\s*=\s*)(?P<value>[^\s&#'\"<>]+)"
)
# 'name': 'value' (dict reprs and JSON in messages)
_QUOTED_PAIR = re.compile(
    rf"(?i)(?P<q>['\"])(?P<name>{_CRED_NAME})(?P=q)(?P<sep>\s*:\s*)"
    r"(?P<vq>['\"])(?P<value>.*?)(?P=vq)"
)
_BEARER = re.compile(r"(?i)\b(?P<kind>bearer|basic)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")

_MAX_DEPTH = 50


def is_secret(name: str) -> bool:
    """Whether a parameter or field name holds a secret (``api_key``, ``db_password``...)."""
    try:
        return any(word in str(name).lower() for word in SECRET_WORDS)
    except Exception:
        return False


def redact_text(text: str) -> str:
    """``text`` with every credential masked (see the module docstring)."""
    try:
        out = _URL_USERINFO.sub(lambda m: f"{m['head']}{MASK}@" if m["user"] else m[0], text)
        out = _BARE_USERINFO.sub(f"{MASK}@", out)
        out = _QUOTED_PAIR.sub(
            lambda m: (
                f"{m['q']}{m['name']}{m['q']}{m['sep']}{m['vq']}{MASK}{m['vq']}"
                if m["value"] and m["value"] != MASK
                else m[0]
            ),
            out,
        )
        out = _KEY_VALUE.sub(lambda m: f"{m['name']}{m['eq']}{MASK}", out)
        return _BEARER.sub(lambda m: f"{m['kind']} {MASK}", out)
    except Exception:  # never raises: an unreadable text is masked whole
        return MASK


def redact(value: Any, secret: Callable[[Any], Any] | None = None, _depth: int = 0) -> Any:
    """A copy of ``value`` (a string, or dicts/lists/tuples of them) with credentials masked.

    Values of secret-named dict fields become ``secret(value)`` (default: ``"****"``); other
    types are returned as they are.
    """
    try:
        if isinstance(value, str):
            return redact_text(value)
        if _depth > _MAX_DEPTH:
            return MASK
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if isinstance(item, Mapping | list | tuple) or item is None:
                    out[key] = redact(item, secret, _depth + 1)
                elif isinstance(key, str) and is_secret(key) and not isinstance(item, bool):
                    out[key] = secret(item) if secret is not None else MASK
                else:
                    out[key] = redact(item, secret, _depth + 1)
            return out
        if isinstance(value, list | tuple):
            items = [redact(item, secret, _depth + 1) for item in value]
            if type(value) in (list, tuple):
                return type(value)(items)
            return type(value)(*items)  # a named tuple
        return value
    except Exception:  # never raises
        return MASK


def safe_cause(err: BaseException) -> BaseException | None:
    """``err`` if no message in its chain carries a credential, else None: ``raise X from
    safe_cause(err)`` keeps the SDK's error behind ``X`` only when printing it leaks nothing."""
    seen: list[BaseException] = []
    cur: BaseException | None = err
    try:
        while cur is not None and cur not in seen and len(seen) < _MAX_DEPTH:
            seen.append(cur)
            if has_credentials(str(cur)):
                return None
            cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    except Exception:  # an error whose text cannot be read: leave it out
        return None
    return err


def has_credentials(value: Any) -> bool:
    """Whether :func:`redact` would change ``value`` (it carries a credential)."""
    return redact(value) != value
