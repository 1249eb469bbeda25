"""The protocol parsers: every row of the protocol table, the bodies real clients send, and
whatever else arrives (fuzzed): classification never raises and names stay bounded."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferwatch.sidecar.protocols import (
    MAX_BATCH,
    MAX_NAME_CHARS,
    MAX_PARSE_BYTES,
    MAX_SSE_EVENT_BYTES,
    Classifier,
    RequestInfo,
    SSEStreamScanner,
    SSEUsageScanner,
    answer_from_json,
    usage_from_json,
)

classifier = Classifier(
    routes=[
        ("/classify", "iris"),
        (r"/models/(?P<model>[^/]+)/(?P<version>v\d+)/predict", "fastapi"),
        ("/invocations", "churn"),
    ],
    default_model="default-model",
)
plain = Classifier()  # no overrides, default model "unknown"

JSON = {"Content-Type": "application/json"}


def info(method: str, path: str, c: Classifier = plain) -> tuple[object, ...]:
    i = c.classify(method, path)
    return (i.protocol, i.route, i.is_inference, i.model_name, i.model_version, i.batch_size,
            i.wants_body, i.stream)  # fmt: skip


def body_info(
    path: str,
    body: bytes | dict[str, object] | list[object],
    headers: dict[str, str] | None = None,
    c: Classifier = plain,
    complete: bool | None = None,
) -> RequestInfo:
    raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    request = c.classify("POST", path)
    assert request.wants_body, path
    c.parse_body(request, JSON if headers is None else headers, raw, complete)
    return request


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        # Open Inference Protocol (KServe V2, Triton, MLServer)
        ("POST", "/v2/models/resnet50/infer",
         ("v2", "/v2/models/{model}/infer", True, "resnet50", None, None, True, False)),
        ("POST", "/v2/models/resnet50/versions/3/infer",
         ("v2", "/v2/models/{model}/versions/{version}/infer", True, "resnet50", "3", None, True,
          False)),
        ("POST", "/v2/models/resnet50/infer?trace=1",
         ("v2", "/v2/models/{model}/infer", True, "resnet50", None, None, True, False)),
        ("POST", "/v2/models/llama/generate_stream",
         ("v2", "/v2/models/{model}/generate_stream", True, "llama", None, 1, False, True)),
        ("GET", "/v2/models/resnet50/infer",
         ("v2", "/v2/models/{model}/*", False, "resnet50", None, None, False, False)),
        ("GET", "/v2/models/resnet50",
         ("v2", "/v2/models/{model}", False, "resnet50", None, None, False, False)),
        ("GET", "/v2/models/resnet50/ready",
         ("v2", "/v2/models/{model}/ready", False, "resnet50", None, None, False, False)),
        ("GET", "/v2/models/resnet50/versions/2/ready",
         ("v2", "/v2/models/{model}/versions/{version}/ready", False, "resnet50", "2", None, False,
          False)),
        ("GET", "/v2/health/live", ("v2", "/v2/health/{kind}", False, None, None, None, False,
                                    False)),
        ("GET", "/v2/health/ready", ("v2", "/v2/health/{kind}", False, None, None, None, False,
                                     False)),
        ("GET", "/v2", ("v2", "/v2", False, None, None, None, False, False)),
        ("POST", "/v2/repository/index", ("v2", "/v2/*", False, None, None, None, False, False)),
        # KServe V1 / TF Serving
        ("POST", "/v1/models/half_plus_two:predict",
         ("v1", "/v1/models/{model}:predict", True, "half_plus_two", None, None, True, False)),
        ("POST", "/v1/models/census/versions/00000123:classify",
         ("v1", "/v1/models/{model}/versions/{version}:classify", True, "census", "00000123",
          None, True, False)),
        ("POST", "/v1/models/census/labels/stable:regress",
         ("v1", "/v1/models/{model}/labels/{label}:regress", True, "census", "stable", None, True,
          False)),
        ("POST", "/v1/models/sklearn-iris:explain",
         ("v1", "/v1/models/{model}:explain", True, "sklearn-iris", None, None, True, False)),
        ("GET", "/v1/models/half_plus_two",
         ("v1", "/v1/models/{model}", False, "half_plus_two", None, None, False, False)),
        ("GET", "/v1/models/half_plus_two/versions/1/metadata",
         ("v1", "/v1/models/{model}/*", False, "half_plus_two", "1", None, False, False)),
        ("POST", "/v1/models/m:frobnicate",
         ("v1", "/v1/models/{model}", False, "m:frobnicate", None, None, False, False)),
        # OpenAI-compatible
        ("POST", "/v1/chat/completions",
         ("openai", "/v1/chat/completions", True, "unknown", None, 1, True, False)),
        ("POST", "/v1/completions",
         ("openai", "/v1/completions", True, "unknown", None, None, True, False)),
        ("POST", "/v1/embeddings",
         ("openai", "/v1/embeddings", True, "unknown", None, None, True, False)),
        ("POST", "/openai/v1/chat/completions",
         ("openai", "/openai/v1/chat/completions", True, "unknown", None, 1, True, False)),
        ("GET", "/v1/models", ("openai", "/v1/models", False, None, None, None, False, False)),
        ("GET", "/v1/chat/completions", ("generic", "/*", False, "unknown", None, None, False,
                                         False)),
        # TorchServe: server-side batching, one item per request
        ("POST", "/predictions/mnist",
         ("torchserve", "/predictions/{model}", True, "mnist", None, 1, False, False)),
        ("PUT", "/predictions/mnist/2.0",
         ("torchserve", "/predictions/{model}/{version}", True, "mnist", "2.0", 1, False, False)),
        ("POST", "/explanations/mnist",
         ("torchserve", "/explanations/{model}", True, "mnist", None, 1, False, False)),
        ("GET", "/predictions/mnist",
         ("torchserve", "/predictions/{model}", False, "mnist", None, None, False, False)),
        # MLflow (and SageMaker's) scoring server
        ("POST", "/invocations",
         ("mlflow", "/invocations", True, "unknown", None, None, True, False)),
        ("GET", "/invocations", ("mlflow", "/invocations", False, "unknown", None, None, False,
                                 False)),
        # Seldon Core v1
        ("POST", "/api/v1.0/predictions",
         ("seldon", "/api/v1.0/predictions", True, "unknown", None, None, True, False)),
        ("POST", "/api/v1.0/feedback",
         ("seldon", "/api/v1.0/feedback", False, None, None, None, False, False)),
        ("POST", "/api/v1.0/x8f3k2",
         ("seldon", "/api/v1.0/*", False, None, None, None, False, False)),
        ("POST", "/seldon/prod/income-classifier/api/v1.0/predictions",
         ("seldon", "/seldon/{namespace}/{deployment}/api/v1.0/predictions", True,
          "income-classifier", None, None, True, False)),
        # probes and metrics: proxied, never counted
        ("GET", "/health", ("generic", "/health", False, None, None, None, False, False)),
        ("GET", "/ping", ("generic", "/ping", False, None, None, None, False, False)),
        ("GET", "/metrics", ("generic", "/metrics", False, None, None, None, False, False)),
        ("GET", "/readyz", ("generic", "/readyz", False, None, None, None, False, False)),
        ("POST", "/ping", ("generic", "/ping", False, None, None, None, False, False)),
        # anything else: POSTs are inferences of the default model
        ("POST", "/score", ("generic", "/*", True, "unknown", None, None, False, False)),
        ("GET", "/", ("generic", "/*", False, "unknown", None, None, False, False)),
        ("POST", "", ("generic", "/*", True, "unknown", None, None, False, False)),
    ],
)  # fmt: skip
def test_classify(method: str, path: str, expected: tuple[object, ...]) -> None:
    assert info(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/classify", ("generic", "/classify", True, "iris", None, None, False, False)),
        ("OPTIONS", "/classify", ("generic", "/classify", False, "iris", None, None, False,
                                  False)),
        ("POST", "/classify/extra", ("generic", "/*", True, "default-model", None, None, False,
                                     False)),
        ("POST", "/models/fraud/v7/predict",
         ("generic", r"/models/(?P<model>[^/]+)/(?P<version>v\d+)/predict", True, "fraud", "v7",
          None, False, False)),
        ("POST", "/invocations", ("mlflow", "/invocations", True, "churn", None, None, True,
                                  False)),
        ("POST", "/api/v1.0/predictions", ("seldon", "/api/v1.0/predictions", True,
                                           "default-model", None, None, True, False)),
        # paths that name their model ignore the overrides
        ("POST", "/v2/models/resnet/infer", ("v2", "/v2/models/{model}/infer", True, "resnet",
                                             None, None, True, False)),
        ("POST", "/v1/chat/completions", ("openai", "/v1/chat/completions", True, "default-model",
                                          None, 1, True, False)),
    ],
)  # fmt: skip
def test_route_overrides_and_default_model(
    method: str, path: str, expected: tuple[object, ...]
) -> None:
    assert info(method, path, classifier) == expected


def test_percent_encoded_names_are_decoded() -> None:
    assert plain.classify("POST", "/v2/models/team%2Fresnet%2050/infer").model_name == (
        "team/resnet 50"
    )
    assert plain.classify("POST", "/predictions/caf%C3%A9/v%201").model_name == "café"
    assert plain.classify("POST", "/predictions/caf%C3%A9/v%201").model_version == "v 1"
    assert plain.classify("POST", "/v1/models/a%3Ab:predict").model_name == "a:b"
    # not UTF-8: replaced, never raised, always encodable
    name = plain.classify("POST", "/v2/models/%FF%FE/infer").model_name
    assert name == "\ufffd\ufffd"


def test_names_are_capped() -> None:
    request = plain.classify("POST", "/v2/models/" + "m" * 10_000 + "/versions/" + "9" * 500
                             + "/infer")  # fmt: skip
    assert request.model_name == "m" * MAX_NAME_CHARS
    assert request.model_version == "9" * MAX_NAME_CHARS
    encoded = plain.classify("POST", "/v2/models/" + "%41" * 5_000 + "/infer")
    assert encoded.model_name == "A" * MAX_NAME_CHARS


def test_an_empty_model_segment_is_the_default_model() -> None:
    assert info("POST", "/v2/models//infer", classifier)[3] == "default-model"


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([("/models/(", "m")], "route #1 has a bad path regex '/models/('"),
        ([("/ok", "a"), ("[z-a]", "b")], "route #2 has a bad path regex '[z-a]'"),
        ([("/ok", "")], "route #1"),
        ([("/ok",)], "route #1 must be (path regex, model name)"),
    ],
)
def test_bad_routes_are_refused_with_the_route_named(
    routes: list[tuple[str, ...]], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        Classifier(routes)  # type: ignore[arg-type]


def test_an_empty_default_model_is_refused() -> None:
    with pytest.raises(ValueError, match="default_model"):
        Classifier(default_model="")


# --- Open Inference Protocol bodies ----------------------------------------------------------

V2 = "/v2/models/resnet50/infer"


def v2_body(shape: object) -> dict[str, object]:
    return {
        "id": "42",
        "parameters": {"priority": 1},
        "inputs": [
            {"name": "input__0", "shape": shape, "datatype": "FP32", "data": [0.5] * 12},
            {"name": "mask", "shape": [1], "datatype": "BOOL", "data": [True]},
        ],
        "outputs": [{"name": "output__0"}],
    }


@pytest.mark.parametrize(
    ("shape", "batch"),
    [
        ([4, 3], 4),
        ([8, 3, 224, 224], 8),
        ([0, 3], 0),
        ([1], 1),
        ([MAX_BATCH], MAX_BATCH),
        ([MAX_BATCH + 1, 3], None),  # huge: garbage, not a measurement
        ([10**30], None),
        ([-1, 3], None),  # negative dims
        (["4", 3], None),  # wrong types
        ([4.0, 3], None),
        ([True, 3], None),
        ([], None),
        ({"0": 4}, None),
        (None, None),
    ],
)
def test_v2_batch_is_the_first_inputs_leading_dimension(shape: object, batch: int | None) -> None:
    assert body_info(V2, v2_body(shape)).batch_size == batch


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b'{"inputs": [{"shape": [4]',
        b"not json at all",
        b"\x89PNG\r\n\x1a\n\x00\x00",
        b"[4, 3]",
        b'{"inputs": {}}',
        b'{"inputs": []}',
        b'{"inputs": [7]}',
        b'{"inputs": [{"shape": {"a": [1]}}]}',
        b'{"inputs": [{"shape": [[4]]}]}',
        b"[" * 60_000,  # nesting deeper than any parser recurses
    ],
)
def test_v2_garbage_gives_no_batch(body: bytes) -> None:
    request = body_info(V2, body)
    assert (request.batch_size, request.model_name) == (None, "resnet50")


def test_v2_body_cut_short_gives_no_batch() -> None:
    body = json.dumps(v2_body([4, 3])).encode()
    prefix = body[:40]
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    assert body_info(V2, prefix, headers).batch_size is None
    # a valid JSON prefix of a longer body is not trusted either
    assert body_info(V2, b'{"inputs": [{"shape": [4]}]}', headers).batch_size is None
    # no Content-Length (chunked): a prefix as long as the peek limit may be cut short
    long = json.dumps({**v2_body([4, 3]), "pad": "x" * MAX_PARSE_BYTES}).encode()
    assert body_info(V2, long[:MAX_PARSE_BYTES], {}).batch_size is None
    assert body_info(V2, long, {}, complete=True).batch_size == 4


def triton_binary(batch: int, tensor_bytes: int) -> tuple[bytes, bytes]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [batch, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor_bytes},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header, header + bytes(range(256)) * (tensor_bytes // 256)


def test_triton_binary_extension_reads_only_the_json_header() -> None:
    header, body = triton_binary(16, 16 * 16 * 4 * 256)  # 256 KiB of tensor data
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Length": str(len(body)),
    }
    peeked = body[:MAX_PARSE_BYTES]
    assert body_info(V2, peeked, headers).batch_size == 16
    # header length beyond what was peeked: no batch
    long_header = {**headers, "Inference-Header-Content-Length": str(MAX_PARSE_BYTES + 1)}
    assert body_info(V2, peeked, long_header).batch_size is None
    for bad in ("-1", "abc", "", "1e3"):
        bad_headers = {**headers, "Inference-Header-Content-Length": bad}
        assert body_info(V2, peeked, bad_headers).batch_size is None
    # a header length that cuts the JSON: no batch
    short = {**headers, "Inference-Header-Content-Length": str(len(header) - 1)}
    assert body_info(V2, peeked, short).batch_size is None
    # header names are case-insensitive on the wire; a plain dict may carry them lower-cased
    lower = {k.lower(): v for k, v in headers.items()}
    assert body_info(V2, peeked, lower).batch_size == 16


def test_sagemaker_triton_binary_content_type() -> None:
    header, body = triton_binary(3, 1024)
    content_type = f"application/vnd.sagemaker-triton.binary+json;json-header-size={len(header)}"
    assert body_info(V2, body, {"Content-Type": content_type}).batch_size == 3


# --- KServe V1 / TF Serving bodies -----------------------------------------------------------

V1 = "/v1/models/half_plus_two:predict"


@pytest.mark.parametrize(
    ("body", "batch"),
    [
        ({"instances": [1.0, 2.0, 5.0]}, 3),
        ({"signature_name": "serving_default", "instances": [[1, 2], [3, 4]]}, 2),
        ({"instances": [{"b64": "aGVsbG8="}]}, 1),
        ({"instances": []}, 0),
        ({"inputs": {"tag": ["foo", "bar"], "signal": [[1, 2, 3], [4, 5, 6]]}}, 2),
        ({"inputs": [[1, 2], [3, 4], [5, 6]]}, 3),
        ({"inputs": {"x": 1.5}}, 1),
        ({"inputs": 7}, 1),
        ({"inputs": {}}, None),
        ({"examples": [{"x": 1}, {"x": 2}, {"x": 3}, {"x": 4}]}, 4),
        ({"instances": "nope"}, None),
        ({"inputs": None}, None),
        ({"something": [1, 2]}, None),
        ([1, 2, 3], None),
    ],
)
def test_v1_batch(body: dict[str, object], batch: int | None) -> None:
    assert body_info(V1, body).batch_size == batch


def test_v1_reads_json_sent_with_curls_default_form_type() -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert body_info(V1, {"instances": [1, 2]}, form).batch_size == 2
    assert body_info(V1, {"instances": [1, 2]}, {"Content-Type": "image/png"}).batch_size is None


# --- MLflow bodies -----------------------------------------------------------------------------

MLFLOW = "/invocations"


@pytest.mark.parametrize(
    ("body", "batch"),
    [
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3, 4], [5, 6]]}}, 3),
        ({"dataframe_split": {"index": [0], "columns": ["a"], "data": [[1]]}}, 1),
        ({"dataframe_records": [{"a": 1}, {"a": 2}]}, 2),
        ({"instances": [[1, 2], [3, 4], [5, 6], [7, 8]]}, 4),
        ({"inputs": {"ids": [[1, 2], [3, 4]], "mask": [[1, 1], [1, 0]]}}, 2),
        ({"inputs": [[0.1, 0.2]], "params": {"temperature": 0.2}}, 1),
        ([{"a": 1}, {"a": 2}, {"a": 3}], 3),  # MLflow 1.x pandas records
        ({"columns": ["a"], "data": [[1], [2]]}, 2),  # MLflow 1.x pandas split
        ({"dataframe_split": {"columns": ["a"]}}, None),
        ({"dataframe_split": [[1]]}, None),
        ({"dataframe_records": {"a": 1}}, None),
        ({}, None),
    ],
)
def test_mlflow_json_batch(body: dict[str, object], batch: int | None) -> None:
    assert body_info(MLFLOW, body).batch_size == batch


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        (b"a,b\n1,2\n3,4\n", 2),
        (b"a,b\r\n1,2\r\n3,4\r\n5,6", 3),  # CRLF, no final newline
        (b"a,b\n1,2\n\n\n3,4\n\n", 2),  # blank lines are skipped, as pandas does
        (b'text,label\n"first line\nsecond line",1\n"plain",0\n', 2),  # quoted newline
        (b"a,b\n", 0),  # header only
        (b"", None),
        (b"\n\n", None),
    ],
)
def test_mlflow_csv_rows_after_the_header(body: bytes, rows: int | None) -> None:
    csv_headers = {"Content-Type": "text/csv; charset=utf-8"}
    assert body_info(MLFLOW, body, csv_headers).batch_size == rows


def test_mlflow_csv_cut_short_gives_no_rows() -> None:
    body = b"a,b\n" + b"1,2\n" * 100
    headers = {"Content-Type": "text/csv", "Content-Length": str(len(body))}
    assert body_info(MLFLOW, body[:50], headers).batch_size is None
    assert body_info(MLFLOW, body, headers).batch_size == 100


# --- OpenAI-compatible bodies ----------------------------------------------------------------

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def test_openai_chat_model_and_stream() -> None:
    body = {
        "model": LLAMA,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 3,
    }
    request = body_info("/v1/chat/completions", body)
    assert (request.model_name, request.stream, request.batch_size) == (LLAMA, True, 1)
    request = body_info("/v1/chat/completions", {**body, "stream": False})
    assert (request.model_name, request.stream, request.batch_size) == (LLAMA, False, 1)
    request = body_info("/v1/chat/completions", {**body, "stream": "yes"})
    assert request.stream is False


@pytest.mark.parametrize(
    ("prompt", "batch"),
    [
        ("Once upon a time", 1),
        (["a", "b", "c"], 3),
        ([1734, 2345, 99], 1),  # one prompt, as token ids
        ([[1, 2], [3, 4, 5]], 2),  # two prompts as token ids
        ([], 0),
        (None, None),
        (42, None),
    ],
)
def test_openai_completions_and_embeddings_batch(prompt: object, batch: int | None) -> None:
    assert body_info("/v1/completions", {"model": LLAMA, "prompt": prompt}).batch_size == batch
    embeddings = body_info("/v1/embeddings", {"model": "bge-m3", "input": prompt})
    assert (embeddings.model_name, embeddings.batch_size) == ("bge-m3", batch)


def test_openai_model_names_are_bounded_and_encodable() -> None:
    assert body_info("/v1/completions", {"model": "x" * 5000}).model_name == "x" * MAX_NAME_CHARS
    for bad in (None, 42, ["m"], {"m": 1}, ""):
        assert body_info("/v1/completions", {"model": bad}).model_name == "unknown"
    # a lone surrogate would make the exposition unencodable
    name = body_info("/v1/completions", b'{"model": "a\\ud800b"}').model_name
    assert name is not None
    assert name.encode("utf-8") == b"a?b"


def test_openai_long_body_still_names_its_model() -> None:
    body = json.dumps(
        {
            "model": LLAMA,
            "stream": True,
            "prompt": ["p", "q"],
            "max_tokens": 5,
            "suffix": "x" * (4 * MAX_PARSE_BYTES),
        }
    ).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    request = body_info("/v1/completions", body[:MAX_PARSE_BYTES], headers)
    # members complete before the cut are exact; the rest is unknown
    assert (request.model_name, request.stream, request.batch_size) == (LLAMA, True, 2)
    late = json.dumps({"messages": [{"content": "x" * 2 * MAX_PARSE_BYTES}], "model": LLAMA})
    request = body_info("/v1/chat/completions", late.encode()[:MAX_PARSE_BYTES], headers)
    assert (request.model_name, request.batch_size) == ("unknown", 1)


# --- Seldon v1 bodies ---------------------------------------------------------------------------

SELDON = "/api/v1.0/predictions"


@pytest.mark.parametrize(
    ("body", "batch"),
    [
        ({"data": {"names": ["a", "b"], "tensor": {"shape": [4, 2], "values": [0] * 8}}}, 4),
        ({"data": {"names": ["a"], "ndarray": [[1], [2], [3]]}}, 3),
        ({"data": {"tftensor": {"dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "5"}]}}}},
         5),
        ({"binData": "aGVsbG8="}, 1),
        ({"strData": "hello"}, 1),
        ({"jsonData": {"a": 1}}, 1),
        ({"meta": {"puid": "x"}, "data": {"names": []}}, 1),
        ({"data": {"tensor": {"shape": [-3]}}}, None),
        ({"data": {"tensor": "garbage"}}, None),
        ({"data": {"ndarray": 5}}, None),
        ([1, 2], None),
    ],
)  # fmt: skip
def test_seldon_batch(body: dict[str, object], batch: int | None) -> None:
    assert body_info(SELDON, body).batch_size == batch


def test_bodies_of_paths_that_need_none_are_ignored() -> None:
    for path in ("/predictions/mnist", "/score"):
        request = plain.classify("POST", path)
        before = (request.batch_size, request.model_name)
        plain.parse_body(request, JSON, b'{"instances": [1, 2, 3], "model": "x"}')
        assert (request.batch_size, request.model_name) == before


# --- fuzzing: never raise, always bounded -------------------------------------------------------

SEGMENTS = st.sampled_from(
    ["", "v1", "v2", "models", "infer", "versions", "labels", "m", "m:predict", "3:classify",
     "chat", "completions", "embeddings", "predictions", "invocations", "api", "v1.0", "seldon",
     "openai", "health", "%FF", "%", "%2F", "x" * 300, "\x00", "é", "?", "a?b=c", ":"]
)  # fmt: skip
PATHS = st.one_of(
    st.text(max_size=300),
    st.lists(SEGMENTS, max_size=10).map(lambda parts: "/" + "/".join(parts)),
)
METHODS = st.one_of(st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS"]), st.text(max_size=8))


# Every word a route template may contain: routes are span and metric attributes, so they
# must never carry text from the request.
ROUTE_WORDS = set(
    [
        "v2",
        "models",
        "{model}",
        "versions",
        "{version}",
        "labels",
        "{label}",
        "infer",
        "generate",
        "generate_stream",
        "ready",
        "config",
        "stats",
        "health",
        "{kind}",
        "*",
        "v1",
        "chat",
        "completions",
        "embeddings",
        "responses",
        "predictions",
        "explanations",
        "invocations",
        "api",
        "v1.0",
        "v0.1",
        "feedback",
        "metadata",
        "seldon",
        "{namespace}",
        "{deployment}",
        "openai",
        "predict",
        "classify",
        "regress",
        "explain",
        "healthz",
        "live",
        "livez",
        "liveness",
        "readyz",
        "readiness",
        "ping",
        "metrics",
        "version",
        "docs",
        "redoc",
        "openapi.json",
        "favicon.ico",
    ]
)
OVERRIDES = {pattern for _, _, pattern in classifier._routes}


def bounded(request: RequestInfo) -> None:
    for name in (request.model_name, request.model_version):
        assert name is None or (0 < len(name) <= MAX_NAME_CHARS and name.encode("utf-8"))
    if request.route not in OVERRIDES:
        words = request.route.replace(":", "/").split("/")
        assert words[0] == "" and set(words[1:]) <= ROUTE_WORDS, request.route
    assert request.batch_size is None or 0 <= request.batch_size <= MAX_BATCH


@settings(max_examples=400, deadline=None)
@given(METHODS, PATHS)
def test_fuzz_classify_never_raises(method: str, path: str) -> None:
    for c in (plain, classifier):
        request = c.classify(method, path)
        bounded(request)
        if request.is_inference:
            assert request.model_name is not None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "inputs",
                    "shape",
                    "instances",
                    "data",
                    "tensor",
                    "ndarray",
                    "model",
                    "prompt",
                    "input",
                    "stream",
                    "dataframe_split",
                    "dataframe_records",
                    "examples",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
BODIES = st.one_of(
    st.binary(max_size=500),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()[:-3]),
)
HEADERS = st.dictionaries(
    st.sampled_from(["Content-Type", "Content-Length", "Inference-Header-Content-Length",
                     "content-type", "X-Other"]),
    st.one_of(st.text(max_size=30), st.sampled_from(["text/csv", "application/json", "0", "12",
                                                     "-4", "99999999999999999999"])),
)  # fmt: skip
PROTOCOL_PATHS = st.sampled_from(
    [V2, V1, MLFLOW, SELDON, "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
     "/predictions/m", "/other"]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(PROTOCOL_PATHS, HEADERS, BODIES, st.sampled_from([None, True, False]))
def test_fuzz_parse_body_never_raises(
    path: str, headers: dict[str, str], body: bytes, complete: bool | None
) -> None:
    request = plain.classify("POST", path)
    plain.parse_body(request, headers, body, complete)
    bounded(request)
    assert request.model_name is not None


# --- OpenAI usage -----------------------------------------------------------------------------


def test_usage_from_a_json_response() -> None:
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": LLAMA,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": '"usage": 1'}}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 103, "total_tokens": 128},
    }
    assert usage_from_json(json.dumps(chat).encode()) == (25, 103)
    embeddings = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert usage_from_json(json.dumps(embeddings).encode()) == (8, 0)
    responses = {"object": "response", "usage": {"input_tokens": 11, "output_tokens": 7}}
    assert usage_from_json(json.dumps(responses).encode()) == (11, 7)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"usage": null}',
        b'{"usage": {"prompt_tokens": "25", "completion_tokens": 3}}',
        b'{"usage": {"prompt_tokens": -1, "completion_tokens": 3}}',
        b'{"usage": {"completion_tokens": 3}}',
        b'{"usage": {"prompt_tokens": 2, "completion_tokens": 3}',  # cut short
        b'{"choices": []}',
        b"\xff\xfe garbage",
    ],
)
def test_usage_from_json_garbage_is_none(body: bytes) -> None:
    assert usage_from_json(body) is None


def sse(events: list[dict[str, object] | str], newline: bytes = b"\n") -> bytes:
    out = b""
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        out += b"data: " + data.encode() + newline + newline
    return out


def chunk(content: str, usage: dict[str, int] | None = None) -> dict[str, object]:
    choices = [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": LLAMA,
        "choices": [] if usage else choices,
        "usage": usage,
    }


STREAM = sse(
    [chunk("Hel"), chunk("lo"), chunk(""), chunk("", {"prompt_tokens": 9, "completion_tokens": 3,
                                                      "total_tokens": 12}), "[DONE]"]
)  # fmt: skip


def scan(chunks: list[bytes]) -> SSEUsageScanner:
    scanner = SSEUsageScanner()
    for part in chunks:
        scanner.feed(part)
    return scanner


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_usage_found_whatever_the_split(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    for cut in range(len(stream) + 1):
        scanner = scan([stream[:cut], stream[cut:]])
        assert (scanner.usage, scanner.done) == ((9, 3), True), cut
    assert scan([stream[i : i + 1] for i in range(len(stream))]).usage == (9, 3)


def test_sse_three_way_splits_of_the_usage_event() -> None:
    start = STREAM.index(b'"choices": []') - 40
    for a in range(start, start + 120, 3):
        for b in range(a, min(a + 200, len(STREAM)), 7):
            assert scan([STREAM[:a], STREAM[a:b], STREAM[b:]]).usage == (9, 3)


def test_sse_without_usage_has_none() -> None:
    scanner = scan([sse([chunk("a"), chunk("b"), "[DONE]"])])
    assert (scanner.usage, scanner.done) == (None, True)


def test_sse_cumulative_usage_the_last_report_wins() -> None:
    events = [
        {**chunk("a"), "usage": {"prompt_tokens": 9, "completion_tokens": n}} for n in (1, 2, 3)
    ]
    assert scan([sse(events)]).usage == (9, 3)


def test_sse_multi_line_data_and_comments() -> None:
    payload = json.dumps(chunk("", {"prompt_tokens": 4, "completion_tokens": 5}), indent=1)
    event = b": keep-alive\nevent: message\nid: 7\n"
    event += b"".join(b"data:" + line.encode() + b"\n" for line in payload.splitlines()) + b"\n"
    assert scan([event]).usage == (4, 5)


def test_sse_responses_api_completed_event() -> None:
    completed = {
        "type": "response.completed",
        "response": {"id": "resp_1", "usage": {"input_tokens": 30, "output_tokens": 12}},
    }
    stream = b'event: response.output_text.delta\ndata: {"delta": "hi"}\n\n'
    stream += b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    assert scan([stream]).usage == (30, 12)


def test_sse_memory_is_bounded_and_a_huge_event_is_skipped() -> None:
    scanner = SSEUsageScanner()
    scanner.feed(b"data: ")
    for _ in range(50):  # 6.4 MB without a line end
        scanner.feed(b"x" * 128 * 1024)
        assert len(scanner._line) <= MAX_SSE_EVENT_BYTES
    scanner.feed(b"\n\n")
    for _ in range(10):  # one event of many data lines
        scanner.feed(b"data: " + b"y" * 64 * 1024 + b"\n")
        assert scanner._data_size <= MAX_SSE_EVENT_BYTES
    scanner.feed(b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n')
    assert scanner.usage is None  # still part of the oversized event
    scanner.feed(sse([chunk("", {"prompt_tokens": 2, "completion_tokens": 6})]))
    assert scanner.usage == (2, 6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_fuzz_sse_scanner_never_raises(chunks: list[bytes]) -> None:
    scanner = scan([*chunks, STREAM])
    assert scanner.usage == (9, 3)


# --- LLM streams: output events, finish reasons ------------------------------------------------


def delta(**members: object) -> dict[str, object]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": members}]}


def finish(reason: str, usage: dict[str, int] | None = None, index: int = 0) -> dict[str, object]:
    choice = {"index": index, "delta": {}, "finish_reason": reason}
    return {"object": "chat.completion.chunk", "choices": [choice], "usage": usage}


def text(value: str, reason: str | None = None) -> dict[str, object]:
    return {"object": "text_completion", "choices": [{"index": 0, "text": value,
                                                      "finish_reason": reason}]}  # fmt: skip


def responses_event(kind: str, **members: object) -> bytes:
    doc = json.dumps({"type": kind, **members})
    return f"event: {kind}\ndata: {doc}\n\n".encode()


@pytest.mark.parametrize(
    ("event", "output"),
    [
        (delta(role="assistant"), False),
        (delta(role="assistant", content=""), False),
        (delta(content=None), False),
        (delta(), False),
        ({"choices": []}, False),
        (delta(content="Hi"), True),
        (delta(content=[{"type": "text", "text": "Hi"}]), True),
        (delta(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "f"}}]), True),
        (delta(tool_calls=[]), False),
        (delta(reasoning_content="hmm"), True),
        (delta(reasoning="hmm"), True),
        (delta(refusal="no"), True),
        (finish("stop"), False),
        (text(""), False),
        (text("Hi"), True),
        ({"model_name": "llama", "text_output": "Hi"}, True),  # Triton generate_stream
        ({"model_name": "llama", "text_output": ""}, False),
        ({"error": {"message": "boom"}}, False),
    ],
)
def test_which_events_carry_output(event: dict[str, object], output: bool) -> None:
    scanner = SSEStreamScanner()
    assert scanner.feed(sse([event]), 1.5) is output
    assert scanner.outputs == int(output)
    assert scanner.last_output_at == (1.5 if output else 0.0)


@pytest.mark.parametrize(
    ("event", "output"),
    [
        (responses_event("response.created", response={"status": "in_progress"}), False),
        (responses_event("response.output_item.added", item={"type": "message"}), False),
        (responses_event("response.output_text.delta", delta="Hi"), True),
        (responses_event("response.output_text.delta", delta=""), False),
        (responses_event("response.function_call_arguments.delta", delta='{"a"'), True),
        (responses_event("response.reasoning_text.delta", delta="hmm"), True),
        (responses_event("response.reasoning_summary_text.delta", delta="hmm"), True),
        (responses_event("response.output_text.done", text="Hi"), False),
        (b'event: response.output_text.delta\ndata: {"delta": "hi"}\n\n', True),  # type unsaid
    ],
)
def test_which_responses_api_events_carry_output(event: bytes, output: bool) -> None:
    scanner = SSEStreamScanner()
    assert scanner.feed(event, 2.0) is output


def test_the_first_output_is_reported_once_with_its_chunk_time() -> None:
    scanner = SSEStreamScanner()
    assert not scanner.feed(sse([delta(role="assistant", content="")]), 1.0)
    assert not scanner.feed(b'data: {"choices": [{"index": 0, "delta": {"cont', 2.0)
    assert scanner.feed(b'ent": "Hel"}}]}\n\n', 3.0)  # completed by this chunk: its time
    assert not scanner.feed(sse([delta(content="lo")]), 4.0)
    assert not scanner.feed(sse([finish("stop"), "[DONE]"]), 5.0)
    assert (scanner.outputs, scanner.last_output_at, scanner.done) == (2, 4.0, True)
    assert scanner.finish_reasons == ["stop"]
    assert scanner.usage is None


@pytest.mark.parametrize(
    ("reason", "counted"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("eos_token", "stop"),
        ("abort", "other"),
        ("whatever", "other"),
    ],
)
def test_finish_reasons(reason: str, counted: str) -> None:
    assert scan([sse([delta(content="a"), finish(reason), "[DONE]"])]).finish_reasons == [counted]
    assert scan([sse([text("a", reason)])]).finish_reasons == [counted]


def test_each_choice_finishes_once_and_choices_are_bounded() -> None:
    events = [finish("stop", index=0), finish("length", index=1), finish("length", index=1)]
    assert scan([sse(events)]).finish_reasons == ["stop", "length"]
    many = [finish("stop", index=i) for i in range(1000)]
    assert len(scan([sse(many)]).finish_reasons) == 64


def test_usage_riding_on_the_finish_chunk() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    scanner = scan([sse([delta(content="a"), delta(content="b"), finish("length", usage)])])
    assert (scanner.usage, scanner.outputs, scanner.finish_reasons) == ((4, 2), 2, ["length"])
    assert not scanner.done


def completed(status: str, **response: object) -> bytes:
    return responses_event(
        f"response.{status}",
        response={"status": status, "usage": {"input_tokens": 3, "output_tokens": 9}, **response},
    )


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        (completed("completed", output=[{"type": "message"}]), "stop"),
        (completed("completed", output=[{"type": "message"}, {"type": "function_call"}]),
         "tool_calls"),
        (completed("incomplete", incomplete_details={"reason": "max_output_tokens"}), "length"),
        (completed("incomplete", incomplete_details={"reason": "content_filter"}),
         "content_filter"),
        (completed("incomplete"), "other"),
        (completed("failed", error={"code": "server_error"}), "other"),
    ],
)  # fmt: skip
def test_responses_api_end_events(end: bytes, reason: str) -> None:
    stream = responses_event("response.created", response={"status": "in_progress"})
    stream += responses_event("response.output_text.delta", delta="Hi") + end
    scanner = scan([stream])
    assert (scanner.finish_reasons, scanner.usage, scanner.outputs) == ([reason], (3, 9), 1)


def test_outputs_counted_whatever_the_split() -> None:
    stream = sse([delta(role="assistant"), *(delta(content=c) for c in "abcde"), finish("stop")])
    for cut in range(0, len(stream) + 1, 5):
        scanner = scan([stream[:cut], stream[cut:]])
        assert (scanner.outputs, scanner.finish_reasons) == (5, ["stop"]), cut


def test_an_oversized_event_is_skipped_not_counted() -> None:
    huge = delta(content="x" * (MAX_SSE_EVENT_BYTES + 10))
    scanner = scan([sse([huge, delta(content="y")])])
    assert scanner.outputs == 1


def test_the_old_name_is_the_same_scanner() -> None:
    assert SSEUsageScanner is SSEStreamScanner


def test_answer_from_json() -> None:
    chat = {
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"content": "a"}, "finish_reason": "stop"},
            {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7},
    }
    assert answer_from_json(json.dumps(chat).encode()) == ((5, 7), ["stop", "length"])
    completion = {"object": "text_completion", "choices": [{"text": "a", "finish_reason": "x"}]}
    assert answer_from_json(json.dumps(completion).encode()) == (None, ["other"])
    response = {
        "object": "response",
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "usage": {"input_tokens": 2, "output_tokens": 16},
    }
    assert answer_from_json(json.dumps(response).encode()) == ((2, 16), ["length"])
    tool = {"object": "response", "status": "completed", "output": [{"type": "function_call"}]}
    assert answer_from_json(json.dumps(tool).encode()) == (None, ["tool_calls"])
    embeddings = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert answer_from_json(json.dumps(embeddings).encode()) == ((8, 0), [])
    for garbage in (b"", b"[1]", b'{"status": 3}', b'{"choices": "x"}', b"\xff"):
        assert answer_from_json(garbage) == (None, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_fuzz_stream_scanner_counts_after_garbage(chunks: list[bytes]) -> None:
    scanner = scan([*chunks, b"\n\n", sse([delta(content="a"), finish("stop")])])
    assert scanner.outputs >= 1
    assert "stop" in scanner.finish_reasons
