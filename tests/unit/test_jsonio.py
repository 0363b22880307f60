"""daggy.jsonio: the fast paths give exactly what the standard library would."""

from __future__ import annotations

import json

import pytest

from daggy.jsonio import dumps_ascii_fallback, dumps_surrogatepass, loads_like_stdlib

SAME_AS_STDLIB = [
    b'{"tasks": {"a": {"job": {"command": ["/bin/true"]}}}}',
    b"123456789012345678901234567890",          # beyond 64 bits: kept exact
    b"[18446744073709551615, -9223372036854775809]",
    b'"12345678901234567890 in a string"',
    b'"\\ud800"',                                 # a lone surrogate is legal JSON
    b"\xef\xbb\xbf{}",                           # BOM
    '{"a": "\u00e9"}'.encode("utf-16"),           # the standard library detects UTF-16
    b'{"a": 1, "a": 2}',                          # the last duplicate wins in both
    b"[1.5e308, -0.0, 0.1]",
    b"[1e400]",
]


@pytest.mark.parametrize("raw", SAME_AS_STDLIB)
def test_loads_gives_the_standard_librarys_value(raw: bytes) -> None:
    """Every document decodes to the value (and the type) json.loads gives."""
    got = loads_like_stdlib(raw)
    expected = json.loads(raw)
    assert repr(got) == repr(expected)


@pytest.mark.parametrize("raw", [b"{", b"[1,]", b"\xff", b"NaN", b"[" * 5000 + b"]" * 5000])
def test_loads_raises_the_standard_librarys_error(raw: bytes) -> None:
    """Invalid documents fail as json.loads fails, with its message."""
    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    with pytest.raises(Exception) as expected:
        json.loads(raw, parse_constant=reject_constant)
    with pytest.raises(type(expected.value)) as got:
        loads_like_stdlib(raw, parse_constant=reject_constant)
    assert str(got.value) == str(expected.value)


def test_dumps_fall_back_for_what_orjson_refuses() -> None:
    """Lone surrogates and huge integers are still encoded, and read back unchanged."""
    value = {"s": "\ud800", "n": 10 ** 30}
    assert json.loads(dumps_ascii_fallback(value)) == value
    assert json.loads(dumps_surrogatepass(value).decode("utf-8", "surrogatepass")) == value
