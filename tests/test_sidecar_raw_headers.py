"""RawHeaderLookup reads a field's first value from the raw fields as the multidict would."""

from __future__ import annotations

import pytest

from inferwatch.sidecar.http1 import RawHeaderLookup, header_map

RAW = [
    (b"Host", b"model:8080"),
    (b"content-TYPE", b"application/json; charset=utf-8"),
    (b"X-Twice", b"first"),
    (b"x-twice", b"second"),
    (b"X-Latin", b"caf\xe9"),
    (b"Expect", b"100-Continue"),
]


@pytest.mark.parametrize(
    "name",
    [
        *("Content-Type", "content-type", "CONTENT-TYPE", "X-Twice", "x-latin", "Expect"),
        *("Host", "Missing", "Content-Typ", "", "caf\u00e9", "\u20ac"),
    ],
)
def test_get_agrees_with_the_header_multidict(name: str) -> None:
    assert RawHeaderLookup(RAW).get(name) == header_map(RAW).get(name)


def test_no_fields() -> None:
    assert RawHeaderLookup([]).get("Content-Type") is None
