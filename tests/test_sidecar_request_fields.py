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
        (b'{"inputs":[{"shape":[4]}],"x":"caf\xc3\xa9"}', True, 4),  # UTF-8, checked first
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


OPENAI = protocols.Classifier()


def openai_info(path: str, body: bytes) -> tuple[object, ...]:
    info = OPENAI.classify("POST", path)
    OPENAI.parse_body(info, {"Content-Type": "application/json"}, body, True)
    return info.model_name, info.stream, info.batch_size


def openai_reference(path: str, body: bytes) -> tuple[object, ...]:
    """What the classifier read from the same body through json alone."""
    info = OPENAI.classify("POST", path)
    doc = protocols._load_json(body)
    if isinstance(doc, dict):
        model = protocols.clean_name(doc.get("model"))
        if model is not None:
            info.model_name = model
        if doc.get("stream") is True:
            info.stream = True
        if path.endswith("/v1/completions"):
            info.batch_size = protocols._prompt_count(doc.get("prompt"))
        elif path.endswith("/v1/embeddings"):
            info.batch_size = protocols._prompt_count(doc.get("input"))
    return info.model_name, info.stream, info.batch_size


def test_an_openai_chat_body_is_read_without_its_messages() -> None:
    body = json.dumps(
        {"model": "llama", "stream": True, "messages": [{"role": "user", "content": "x" * 5000}]}
    ).encode()
    assert protocols._typed_json(request_fields.OPENAI_DECODER, body) is not None
    assert openai_info("/v1/chat/completions", body) == ("llama", True, 1)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/completions", b'{"model":"m","prompt":["a","b","c"]}', ("m", False, 3)),
        ("/v1/completions", b'{"model":"m","prompt":[1,2,3]}', ("m", False, 1)),
        ("/v1/embeddings", b'{"model":"m","input":"one"}', ("m", False, 1)),
        ("/v1/chat/completions", '{"model":"é","messages":[]}'.encode(), ("é", False, 1)),
        ("/v1/chat/completions", b'{"model":"m","stream":"yes"}', ("m", False, 1)),
        ("/v1/chat/completions", b'{"model":"a","model":"b"}', ("b", False, 1)),
        # json reads what the typed decoder does not, and the answer is json's
        ("/v1/chat/completions", b'{"model":"m","temperature":NaN}', ("m", False, 1)),
        ("/v1/chat/completions", b'{"model":"\\ud800x"}', ("?x", False, 1)),
        ("/v1/chat/completions", b'{"model":"m","x":"\xff"}', ("unknown", False, 1)),
        ("/v1/chat/completions", b'["model"]', ("unknown", False, 1)),
    ],
)
def test_openai_bodies_give_what_json_gives(
    path: str, body: bytes, expected: tuple[object, ...]
) -> None:
    assert openai_info(path, body) == openai_reference(path, body) == expected


openai_documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "model": json_values,
            "stream": json_values,
            "prompt": json_values,
            "input": json_values,
            "messages": json_values,
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    openai_documents,
    st.booleans(),
    st.sampled_from(["/v1/completions", "/v1/embeddings", "/v1/chat/completions"]),
)
def test_any_openai_document_gives_what_json_gives(
    document: object, ascii_only: bool, path: str
) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert openai_info(path, body) == openai_reference(path, body)
