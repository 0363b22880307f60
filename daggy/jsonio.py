"""Compact JSON encoding for the hot paths: run events, stored records, API answers.

orjson is several times faster than the standard library's encoder, which matters when every
state change of a 100,000-task run is written.  It refuses a few values the standard
library accepts (lone surrogates, which a client's JSON may contain as ``"\\ud800"``; integers
beyond 64 bits); those are encoded by the standard library instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


#: orjson decodes integers beyond 64 bits as floats; a body that may hold one (any run of 19
#: digits, in a string or not) is decoded by the standard library, which keeps them exact.
_MAYBE_LONG_INTEGER = re.compile(rb"[0-9]{19}")


def loads_like_stdlib(raw: bytes, **stdlib_options: Any) -> Any:
    """``json.loads(raw, **stdlib_options)``, through orjson when it decodes ``raw`` to the
    same value: whatever orjson refuses (NaN, lone surrogates, a BOM, UTF-16, errors) goes to
    the standard library, so results and error messages are exactly the standard library's.
    """
    if not _MAYBE_LONG_INTEGER.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw, **stdlib_options)


def dumps_ascii_fallback(value: Any) -> bytes:
    """UTF-8 JSON; values orjson refuses come out as ASCII-only standard JSON.

    :raises TypeError, ValueError: ``value`` is not JSON at all.
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError subclasses TypeError
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def dumps_surrogatepass(value: Any) -> bytes:
    """UTF-8 JSON in which lone surrogates survive as ``surrogatepass`` bytes, so that
    ``json.loads`` of the bytes gives ``value`` back exactly."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
