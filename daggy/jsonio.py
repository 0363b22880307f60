"""Compact JSON encoding for the hot paths: run events, stored records, API answers.

orjson is several times faster than the standard library's encoder, which matters when every
state change of a 100,000-task run is written.  It refuses a few values the standard
library accepts (lone surrogates, which a client's JSON may contain as ``"\\ud800"``; integers
beyond 64 bits); those are encoded by the standard library instead.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


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
