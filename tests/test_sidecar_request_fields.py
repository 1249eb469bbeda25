"""The typed body decoders never change a batch size: whatever they read, they read as
``json.loads`` does, and what they cannot read so goes to ``json`` (the fallback)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferwatch.sidecar import protocols, request_fields


def reference(body: bytes) -> int | None:
    """The batch size as the classifier read it before the typed decoders: all of the JSON."""
    return protocols._v2_batch(protocols._load_json(body))


def test_a_plain_body_is_read_by_the_typed_decoder() -> None:
    body = b'{"inputs":[{"name":"x","shape":[8,3],"datatype":"FP32","data":[1,2,3]}]}'
    request = protocols._typed_json(request_fields.V2_DECODER, body)
    assert request is not None
    assert request.inputs is not None and request.inputs[0].shape == [8, 3]
    assert protocols._v2_body_batch(body) == 8


@pytest.mark.parametrize(
    ("body", "fast", "batch"),
    [
        # json reads these and the typed decoder does not: they fall back, same answer
        (b'{"inputs":[{"shape":[4]}],"data":[NaN, Infinity]}', False, 4),
        (b'{"inputs":[{"shape":[1e400]}]}', False, None),
        (b'{"inputs":[{"shape":[4]}],"x":"\\ud800"}', False, 4),
        (b'{"inputs":[{"shape":[4]}],"x":"caf\xc3\xa9"}', False, 4),  # UTF-8, not ASCII
        # json refuses these (invalid UTF-8 in a field the typed decoder would skip)
        (b'{"inputs":[{"shape":[4]}],"x":"\xff\xfe"}', False, None),
        # shapes of other types: the typed decoder refuses, json's reading decides
        (b'{"inputs":{"shape":[4]}}', False, None),
        (b'{"inputs":[7, {"shape":[4]}]}', False, None),
        (b'{"inputs":[{"shape":[4]}, 7]}', False, 4),
        (b"[" * 60_000, False, None),
        (b'\xef\xbb\xbf{"inputs":[{"shape":[4]}]}', False, None),
        (b'{"inputs":[{"shape":[4]}]} trailing', False, None),
        # read by the typed decoder, as json reads them
        (b'{"inputs":[{"shape":[4]}],"inputs":[{"shape":[9]}]}', True, 9),  # the last wins
        (b'{"inputs":[{"shape":[4],"shape":[7]}]}', True, 7),
        (b'{"inputs":[{"shape":[99999999999999999999999]}]}', True, None),
        (b'{"inputs":[{"shape":[4.0]}]}', True, None),
        (b'{"inputs":[{"shape":[true]}]}', True, None),
        (b'{"inputs":[{"shape":[-0]}]}', True, 0),
        (b'{"inputs":null}', True, None),
        (b'{"inputs":[]}', True, None),
        (b'{"outputs":[{"shape":[4]}]}', True, None),
        (b' \n{"inputs":[{"shape":[3,2],"data":[[1,2],[3,4],[5,6]]}]}\r\n', True, 3),
    ],
)
def test_edge_cases_give_what_json_gives(body: bytes, fast: bool, batch: int | None) -> None:
    assert (protocols._typed_json(request_fields.V2_DECODER, body) is not None) is fast
    assert protocols._v2_body_batch(body) == reference(body) == batch


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
shapes = st.one_of(json_values, st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4))
inputs = st.lists(
    st.one_of(
        json_values, st.fixed_dictionaries({"shape": shapes}, optional={"data": json_values})
    ),
    max_size=3,
)
documents = st.one_of(
    json_values, st.fixed_dictionaries({"inputs": inputs}, optional={"extra": json_values})
)


@settings(max_examples=400, deadline=None)
@given(documents, st.booleans())
def test_any_document_gives_what_json_gives(document: object, ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert protocols._v2_body_batch(body) == reference(body)
