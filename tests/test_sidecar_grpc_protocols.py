"""The gRPC protocol readers: every method of the gRPC table, request messages built with the
real generated classes (Triton's from tritonclient, TF Serving's and TorchServe's compiled from
tests/protos/), hand-encoded variants the generated classes never write (unpacked shapes, fields
out of order, invalid UTF-8), and whatever else arrives (truncated, garbage, fuzzed): nothing
raises, names and batch sizes stay bounded, and tensor payloads are skipped, not copied."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.grpc_protos import grpc_protos
from tritonclient.grpc import service_pb2

from inferwatch.sidecar.grpc_protocols import (
    GrpcRoute,
    RequestFields,
    classify_method,
    parse_request,
    stream_response_end,
)
from inferwatch.sidecar.protobuf_wire import (
    I32,
    I64,
    LEN,
    MAX_FIELDS,
    VARINT,
    WireError,
    iter_fields,
    iter_packed_varints,
    read_varint,
    to_int64,
)
from inferwatch.sidecar.protocols import MAX_BATCH, MAX_NAME_CHARS, ROUTE_OTHER, clean_name

UNKNOWN = RequestFields(None, None, None)

OIP_INFER = "/inference.GRPCInferenceService/ModelInfer"
OIP_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
TF = "/tensorflow.serving.PredictionService/"
TS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"

INFERENCE_METHODS = [
    OIP_INFER,
    OIP_STREAM,
    TF + "Predict",
    TF + "Classify",
    TF + "Regress",
    TF + "MultiInference",
    TS + "Predictions",
    TS + "StreamPredictions",
    TS + "StreamPredictions2",
]


@pytest.fixture(scope="module")
def protos() -> SimpleNamespace:
    return grpc_protos()


def parse(method: str, message: bytes) -> RequestFields:
    return parse_request(classify_method(method), message)


# --- a hand encoder, for what the generated classes never write ---------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | VARINT) + varint(value)


def len_field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | LEN) + varint(len(payload)) + payload


def oip_request(
    name: str = "resnet",
    version: str = "",
    shapes: tuple[list[int], ...] = ([8, 3, 224, 224],),
    raw: bytes = b"",
) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=name, model_version=version)
    for i, shape in enumerate(shapes):
        request.inputs.add(name=f"input_{i}", datatype="FP32", shape=shape)
    if raw:
        request.raw_input_contents.append(raw)
    return request.SerializeToString()


# --- the wire reader -----------------------------------------------------------------------


def test_iter_fields_reads_every_wire_type_and_slices_without_copying(protos) -> None:
    data = protos.classification_pb2.Class(label="cat", score=0.5).SerializeToString()
    data += service_pb2.InferParameter(double_param=1.5).SerializeToString()
    data += service_pb2.InferParameter(int64_param=-3).SerializeToString()
    fields = list(iter_fields(data))
    assert [(number, wire_type) for number, wire_type, _ in fields] == [
        (1, LEN),
        (2, I32),
        (4, I64),
        (2, VARINT),
    ]
    label = fields[0][2]
    assert isinstance(label, memoryview) and bytes(label) == b"cat" and label.obj is data
    assert fields[1][2] == 0x3F000000  # 0.5 as float32 bits
    assert fields[2][2] == 0x3FF8000000000000  # 1.5 as float64 bits
    assert to_int64(fields[3][2]) == -3


def test_varints_packed_and_int64_sign() -> None:
    assert read_varint(memoryview(varint(300)), 0, 2) == (300, 2)
    assert read_varint(memoryview(varint(-1)), 0, 10) == ((1 << 64) - 1, 10)
    assert to_int64((1 << 64) - 1) == -1 and to_int64(5) == 5
    payload = memoryview(b"".join(varint(v) for v in (1, 300, 1 << 40)))
    assert list(iter_packed_varints(payload)) == [1, 300, 1 << 40]


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # a tag with no value
        b"\x08\x80",  # a varint cut short
        b"\x08" + b"\xff" * 10 + b"\x01",  # a varint of 11 bytes
        b"\x0a\x05abc",  # a length past the end
        b"\x0a",  # a length missing
        b"\x09\x00\x00",  # a 64-bit value cut short
        b"\x0d\x00",  # a 32-bit value cut short
        b"\x00\x01",  # field number 0
        b"\x0b\x0c",  # a group (wire types 3 and 4)
        b"\x0e\x00",  # wire type 6
        b"\x0f\x00",  # wire type 7
    ],
)
def test_malformed_input_raises_one_value_error(data: bytes) -> None:
    with pytest.raises(WireError):
        list(iter_fields(data))
    assert issubclass(WireError, ValueError)


def test_too_many_fields_is_refused() -> None:
    data = b"\x08\x01" * 11
    assert len(list(iter_fields(data, max_fields=11))) == 11
    with pytest.raises(WireError):
        list(iter_fields(data, max_fields=10))


# --- methods -------------------------------------------------------------------------------


def service_methods(descriptor: object) -> list[tuple[str, str]]:
    return [
        (f"/{service.full_name}/{method.name}", method.name)
        for service in descriptor.services_by_name.values()  # type: ignore[attr-defined]
        for method in service.methods
    ]


def test_every_open_inference_protocol_method() -> None:
    methods = service_methods(service_pb2.DESCRIPTOR)
    assert len(methods) == 20  # every RPC of Triton's GRPCInferenceService
    for path, name in methods:
        route = classify_method(path)
        assert route.protocol == "oip" and route.route == path
        assert route.is_inference is (name in ("ModelInfer", "ModelStreamInfer"))
        assert route.per_message is (name == "ModelStreamInfer")
        assert (route.parse is None) is (not route.is_inference)


def test_every_tf_serving_and_torchserve_method(protos) -> None:
    tf = service_methods(protos.prediction_service_pb2.DESCRIPTOR)
    ts = service_methods(protos.torchserve_inference_pb2.DESCRIPTOR)
    assert len(tf) == 5 and len(ts) == 4
    for path, name in tf:
        route = classify_method(path)
        assert (route.protocol, route.route, route.per_message) == ("tfserving", path, False)
        assert route.is_inference is (name != "GetModelMetadata")
    for path, name in ts:
        route = classify_method(path)
        assert (route.protocol, route.route) == ("torchserve", path)
        assert route.is_inference is (name != "Ping")
        assert route.per_message is (name == "StreamPredictions2")


@pytest.mark.parametrize(
    ("method", "protocol", "route"),
    [
        ("/grpc.health.v1.Health/Check", "other", "/grpc.health.v1.Health/Check"),
        ("/grpc.health.v1.Health/Watch", "other", "/grpc.health.v1.Health/Watch"),
        ("/grpc.health.v1.Health/List", "other", "/grpc.health.v1.Health/*"),
        (
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "other",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ),
        ("/grpc.reflection.v2.Future/Info", "other", "/grpc.reflection.*"),
        (
            "/tensorflow.serving.ModelService/GetModelStatus",
            "tfserving",
            "/tensorflow.serving.ModelService/GetModelStatus",
        ),
        (
            "/tensorflow.serving.ModelService/Newer",
            "tfserving",
            "/tensorflow.serving.ModelService/*",
        ),
        (
            "/org.pytorch.serve.grpc.management.ManagementAPIsService/RegisterModel",
            "torchserve",
            "/org.pytorch.serve.grpc.management.ManagementAPIsService/RegisterModel",
        ),
        (
            "/org.pytorch.serve.grpc.management.Other/Thing",
            "torchserve",
            "/org.pytorch.serve.grpc.management.*",
        ),
        (
            "/inference.GRPCInferenceService/SomeFutureRpc",
            "oip",
            "/inference.GRPCInferenceService/*",
        ),
        ("/inference.GRPCInferenceService/modelinfer", "oip", "/inference.GRPCInferenceService/*"),
        ("/my.company.Scorer/Score", "other", ROUTE_OTHER),
        ("/tensorflow.serving.PredictionServiceX/Predict", "other", ROUTE_OTHER),
        ("inference.GRPCInferenceService/ModelInfer", "other", ROUTE_OTHER),
        ("", "other", ROUTE_OTHER),
        ("/", "other", ROUTE_OTHER),
        ("//", "other", ROUTE_OTHER),
        ("/no-slash", "other", ROUTE_OTHER),
    ],
)
def test_other_methods_are_not_inferences(method: str, protocol: str, route: str) -> None:
    found = classify_method(method)
    assert found == GrpcRoute(protocol, False, False, None, route, unary=found.unary)
    # Only known methods are known to be unary; the others go by the streaming path.
    streaming = method.endswith(("/Watch", "/ServerReflectionInfo"))
    assert found.unary == (method == route and not streaming)
    assert parse(method, oip_request()) == UNKNOWN


@pytest.mark.parametrize(
    ("method", "unary"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", True),
        ("/inference.GRPCInferenceService/ModelStreamInfer", False),
        ("/inference.GRPCInferenceService/ServerReady", True),
        ("/tensorflow.serving.PredictionService/Predict", True),
        ("/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions", True),
        ("/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions", False),
        ("/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2", False),
        ("/grpc.health.v1.Health/Watch", False),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", False),
        ("/my.company.Scorer/Score", False),
    ],
)
def test_unary_methods_are_known_ones_with_one_message_each_way(method: str, unary: bool) -> None:
    assert classify_method(method).unary is unary


def test_classification_is_cached_and_routes_stay_bounded() -> None:
    assert classify_method(OIP_INFER) is classify_method(OIP_INFER)
    assert classify_method("/a.B/C") is classify_method("/a.B/C")
    routes = {classify_method(f"/svc{i}.S/M{i}").route for i in range(2000)}
    routes |= {classify_method(f"/grpc.health.v1.Health/X{i}").route for i in range(100)}
    assert routes == {ROUTE_OTHER, "/grpc.health.v1.Health/*"}
    assert classify_method(None).route == ROUTE_OTHER  # type: ignore[arg-type]


def test_route_parsers_never_raise_either() -> None:
    route = classify_method(OIP_INFER)
    assert route.parse is not None and route.parse(b"\xff" * 8) == UNKNOWN


# --- Open Inference Protocol ---------------------------------------------------------------


def test_model_infer() -> None:
    message = oip_request("resnet", "3", ([8, 3, 224, 224], [1, 10]))
    assert parse(OIP_INFER, message) == ("resnet", "3", 8)
    assert parse(OIP_STREAM, message) == ("resnet", "3", 8)
    assert parse(OIP_INFER, oip_request("bert", "", ([1, 128],))) == ("bert", None, 1)


def test_model_infer_shapes_packed_and_unpacked() -> None:
    unpacked_input = (
        len_field(1, b"x") + len_field(2, b"INT64") + b"".join(varint_field(3, d) for d in (4, 7))
    )
    message = len_field(1, b"m") + len_field(5, unpacked_input)
    decoded = service_pb2.ModelInferRequest.FromString(message)  # valid, as protobuf reads it
    assert list(decoded.inputs[0].shape) == [4, 7]
    assert parse(OIP_INFER, message) == ("m", None, 4)
    packed = oip_request("m", "", ([4, 7],))
    assert varint(3 << 3 | LEN) in packed  # what the generated classes write
    assert parse(OIP_INFER, packed) == ("m", None, 4)


@pytest.mark.parametrize(
    ("shapes", "batch"),
    [
        ((), None),  # no inputs
        (([],), None),  # an input without a shape (a scalar, or not filled in)
        (([0, 3],), 0),
        (([-1, 3],), None),  # unknown
        (([-(1 << 63)],), None),
        (([MAX_BATCH],), MAX_BATCH),
        (([MAX_BATCH + 1],), None),
        (([(1 << 63) - 1, 2],), None),
        (([5], [9]), 5),  # the first input counts
    ],
)
def test_model_infer_batch_sizes(shapes: tuple[list[int], ...], batch: int | None) -> None:
    assert parse(OIP_INFER, oip_request("m", "1", shapes)) == ("m", "1", batch)


def test_model_infer_fields_in_any_order() -> None:
    # concatenated messages merge: inputs first, then the name and version
    tail = service_pb2.ModelInferRequest(model_name="late", model_version="2").SerializeToString()
    message = oip_request("", "", ([6, 2],)) + tail
    assert service_pb2.ModelInferRequest.FromString(message).model_name == "late"
    assert parse(OIP_INFER, message) == ("late", "2", 6)


def test_names_are_cleaned_like_the_http_parsers_do() -> None:
    long = "m" * 1000
    assert parse(OIP_INFER, oip_request(long, "v" * 500)) == (
        "m" * MAX_NAME_CHARS,
        "v" * MAX_NAME_CHARS,
        8,
    )
    assert parse(OIP_INFER, oip_request("résumé-模型", "β")) == ("résumé-模型", "β", 8)
    assert parse(OIP_INFER, oip_request("", "")) == (None, None, 8)
    invalid_utf8 = len_field(1, b"bad\xff\xfename") + len_field(2, b"\xc3")
    assert parse(OIP_INFER, invalid_utf8) == ("bad\ufffd\ufffdname", "\ufffd", None)
    # a name of many multi-byte characters is still cut at characters, not bytes
    wide = "模" * 300
    assert parse(OIP_INFER, oip_request(wide)).model_name == "模" * MAX_NAME_CHARS


def test_truncated_model_infer() -> None:
    message = oip_request("resnet", "3", ([8, 3, 224, 224],), raw=bytes(4096))
    header_end = len(message) - 4096 - 3  # raw_input_contents: a tag, 2 bytes of length, data
    for cut in range(len(message)):
        fields = parse(OIP_INFER, message[:cut])
        assert isinstance(fields, RequestFields)
        assert fields.model_name in (None, "resnet")
        assert fields.batch_size in (None, 8)
    # cut inside the name or inside the first input: the whole message is unreadable
    assert parse(OIP_INFER, message[:4]) == UNKNOWN
    assert parse(OIP_INFER, message[: header_end - 2]) == UNKNOWN
    # the payload after the fields it needs is not read: a cut there does not matter
    assert parse(OIP_INFER, message[:-10]) == ("resnet", "3", 8)


@pytest.mark.parametrize(
    "data",
    [b"\xff" * 64, b"\x00" * 16, b"\x0a\xff\xff\xff\xff\x0f", b"GET / HTTP/1.1\r\n\r\n", b"\x80"],
)
def test_garbage_is_unknown(data: bytes) -> None:
    for method in INFERENCE_METHODS:
        assert parse(method, data) == UNKNOWN, method


def test_empty_message() -> None:
    assert parse(OIP_INFER, b"") == UNKNOWN
    assert parse(TF + "Predict", b"") == UNKNOWN
    assert parse(TS + "Predictions", b"") == (None, None, 1)


def best_seconds(fn, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_a_100_mb_payload_is_skipped_not_copied(protos) -> None:
    payload = bytes(100 * 1024 * 1024)
    message = oip_request("big", "1", ([64, 3, 224, 224],), raw=payload)
    # copying 100 MB alone takes milliseconds; reading the fields takes microseconds
    assert best_seconds(lambda: parse(OIP_INFER, message)) < 0.002
    assert parse(OIP_INFER, message) == ("big", "1", 64)
    # no version: every top-level field is looked at, the payload still skipped
    message = oip_request("big", "", ([64, 3, 224, 224],), raw=payload)
    assert best_seconds(lambda: parse(OIP_INFER, message)) < 0.002
    del message

    tensor = protos.tensor_pb2.TensorProto(dtype=protos.types_pb2.DT_FLOAT, tensor_content=payload)
    tensor.tensor_shape.dim.add(size=32)
    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = "big"
    request.inputs["x"].CopyFrom(tensor)
    del tensor
    message = request.SerializeToString()
    del request
    assert best_seconds(lambda: parse(TF + "Predict", message)) < 0.002
    assert parse(TF + "Predict", message) == ("big", None, 32)
    del message

    request = protos.torchserve_inference_pb2.PredictionsRequest(
        model_name="big", input={"data": payload}
    )
    message = request.SerializeToString()
    del request
    assert best_seconds(lambda: parse(TS + "Predictions", message)) < 0.002
    assert parse(TS + "Predictions", message) == ("big", None, 1)


# --- TF Serving ----------------------------------------------------------------------------


def model_spec(protos, message, name: str, version: int | None = None, label: str = ""):  # type: ignore[no-untyped-def]
    message.model_spec.name = name
    if version is not None:
        message.model_spec.version.value = version
    if label:
        message.model_spec.version_label = label
    message.model_spec.signature_name = "serving_default"
    return message


def predict(protos, dims: list[int] | None = None, **spec: object) -> bytes:  # type: ignore[no-untyped-def]
    request = model_spec(protos, protos.predict_pb2.PredictRequest(), **spec)
    if dims is not None:
        tensor = request.inputs["images"]
        tensor.dtype = protos.types_pb2.DT_FLOAT
        for size in dims:
            tensor.tensor_shape.dim.add(size=size)
        tensor.float_val.extend([0.5] * 4)
    request.output_filter.append("scores")
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("spec", "version"),
    [
        ({"version": 3}, "3"),
        ({"version": 0}, "0"),  # an Int64Value of 0 is sent empty, but sent
        ({"version": -2}, "-2"),
        ({"version": (1 << 63) - 1}, str((1 << 63) - 1)),
        ({"label": "canary"}, "canary"),
        ({}, None),
    ],
)
def test_predict_versions(protos, spec: dict[str, object], version: str | None) -> None:
    assert parse(TF + "Predict", predict(protos, [16, 4], name="half_plus_two", **spec)) == (
        "half_plus_two",
        version,
        16,
    )


@pytest.mark.parametrize(
    ("dims", "batch"),
    [([16, 4], 16), ([0, 4], 0), ([-1, 4], None), ([1 << 40], None), ([], None), (None, None)],
)
def test_predict_batch(protos, dims: list[int] | None, batch: int | None) -> None:
    assert parse(TF + "Predict", predict(protos, dims, name="m")) == ("m", None, batch)


def test_predict_tensor_without_shape_and_named_dims(protos) -> None:
    request = protos.predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].string_val.append(b"hello")  # a scalar: no tensor_shape at all
    assert parse(TF + "Predict", request.SerializeToString()) == ("m", None, None)
    request.inputs["x"].tensor_shape.dim.add(size=7, name="batch")
    assert parse(TF + "Predict", request.SerializeToString()) == ("m", None, 7)


def examples(protos, count: int) -> list[object]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(count):
        example = protos.example_pb2.Example()
        example.features.feature["x"].float_list.value.extend([float(i), 2.0])
        example.features.feature["tag"].bytes_list.value.append(b"t")
        out.append(example)
    return out


@pytest.mark.parametrize("method", ["Classify", "Regress"])
def test_classify_and_regress_count_examples(protos, method: str) -> None:
    module = protos.classification_pb2 if method == "Classify" else protos.regression_pb2
    request_class = getattr(
        module, "ClassificationRequest" if method == "Classify" else "RegressionRequest"
    )
    request = model_spec(protos, request_class(), "census", version=7)
    request.input.example_list.examples.extend(examples(protos, 5))
    assert parse(TF + method, request.SerializeToString()) == ("census", "7", 5)

    request = model_spec(protos, request_class(), "census", label="stable")
    request.input.example_list_with_context.examples.extend(examples(protos, 3))
    request.input.example_list_with_context.context.CopyFrom(examples(protos, 1)[0])
    assert parse(TF + method, request.SerializeToString()) == ("census", "stable", 3)

    request = model_spec(protos, request_class(), "census")
    assert parse(TF + method, request.SerializeToString()) == ("census", None, None)
    request.input.example_list.SetInParent()  # an empty list
    assert parse(TF + method, request.SerializeToString()) == ("census", None, 0)


def test_example_counting_is_bounded(protos) -> None:
    request = protos.classification_pb2.ClassificationRequest()
    request.model_spec.name = "many"
    request.input.example_list.examples.extend(
        protos.example_pb2.Example() for _ in range(MAX_FIELDS)
    )
    assert parse(TF + "Classify", request.SerializeToString()) == ("many", None, MAX_FIELDS)
    request.input.example_list.examples.add()
    assert parse(TF + "Classify", request.SerializeToString()) == UNKNOWN


def test_multi_inference(protos) -> None:
    request = protos.inference_pb2.MultiInferenceRequest()
    first = request.tasks.add(method_name="tensorflow/serving/classify")
    first.model_spec.name = "heads"
    first.model_spec.version.value = 2
    second = request.tasks.add(method_name="tensorflow/serving/regress")
    second.model_spec.name = "other"
    request.input.example_list.examples.extend(examples(protos, 4))
    assert parse(TF + "MultiInference", request.SerializeToString()) == ("heads", "2", 4)
    assert parse(TF + "MultiInference", b"") == UNKNOWN


def test_get_model_metadata_is_not_an_inference(protos) -> None:
    request = protos.get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["x"])
    request.model_spec.name = "m"
    route = classify_method(TF + "GetModelMetadata")
    assert not route.is_inference and route.parse is None
    assert parse_request(route, request.SerializeToString()) == UNKNOWN


# --- TorchServe ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["Predictions", "StreamPredictions", "StreamPredictions2"])
def test_torchserve(protos, method: str) -> None:
    request = protos.torchserve_inference_pb2.PredictionsRequest(
        model_name="mnist", model_version="1.0", input={"data": b"\x89PNG" * 100}, sequenceId="s"
    )
    assert parse(TS + method, request.SerializeToString()) == ("mnist", "1.0", 1)
    request = protos.torchserve_inference_pb2.PredictionsRequest(
        model_name="mnist", input={"data": b"x"}
    )
    assert parse(TS + method, request.SerializeToString()) == ("mnist", None, 1)
    assert parse(TS + method, request.SerializeToString()[:-1]) == UNKNOWN


# --- Triton's streamed responses -----------------------------------------------------------


def stream_response(
    final: bool | None = None, error: str = "", string_final: bool = False
) -> bytes:
    response = service_pb2.ModelStreamInferResponse(error_message=error)
    if final is not None or string_final:
        infer = response.infer_response
        infer.model_name = "llm"
        infer.id = "42"
        infer.parameters["sequence_id"].int64_param = 9
        if string_final:
            infer.parameters["triton_final_response"].string_param = "false"
        else:
            infer.parameters["triton_final_response"].bool_param = bool(final)
        output = infer.outputs.add(name="text_output", datatype="BYTES", shape=[1])
        assert output is not None
        infer.raw_output_contents.append(b"\x05\x00\x00\x00hello")
    return response.SerializeToString()


def test_stream_response_end() -> None:
    assert stream_response_end(stream_response()) == (True, False)
    assert stream_response_end(stream_response(final=False)) == (False, False)
    assert stream_response_end(stream_response(final=True)) == (True, False)
    assert stream_response_end(stream_response(error="model not ready")) == (True, True)
    assert stream_response_end(stream_response(final=False, error="x")) == (False, True)
    assert stream_response_end(stream_response(string_final=True)) == (True, False)
    plain = service_pb2.ModelStreamInferResponse()
    plain.infer_response.model_name = "m"
    plain.infer_response.parameters["other"].bool_param = False
    assert stream_response_end(plain.SerializeToString()) == (True, False)


@pytest.mark.parametrize("version", ["", "v1", "2"])
def test_a_plain_infer_response_on_the_stream_is_one_final_answer(version: str) -> None:
    """MLServer answers ModelStreamInfer with ModelInferResponse, whose field 1 is the model
    name (Triton's error_message) and field 2 the version (Triton's infer_response)."""
    response = service_pb2.ModelInferResponse(model_name="iris", model_version=version, id="7")
    output = response.outputs.add(name="predict", datatype="INT64", shape=[2])
    output.contents.int64_contents.extend([0, 1])
    assert stream_response_end(response.SerializeToString()) == (True, False)
    bare = service_pb2.ModelInferResponse(model_name="iris", model_version=version)
    bare.outputs.add(name="predict", datatype="INT64", shape=[0])
    assert stream_response_end(bare.SerializeToString()) == (True, False)


@pytest.mark.parametrize("data", [b"", b"\xff" * 9, b"\x12\x05\x22"])
def test_malformed_stream_responses(data: bytes) -> None:
    assert stream_response_end(data) == (True, False)


def test_truncated_stream_responses_never_raise() -> None:
    message = stream_response(final=False, error="boom")
    for cut in range(len(message)):
        final, error = stream_response_end(message[:cut])
        assert isinstance(final, bool) and isinstance(error, bool)


# --- fuzzing -------------------------------------------------------------------------------


def assert_bounded(fields: RequestFields) -> None:
    assert isinstance(fields, RequestFields)
    for text in (fields.model_name, fields.model_version):
        assert text is None or (isinstance(text, str) and 0 < len(text) <= MAX_NAME_CHARS)
        if text is not None:
            text.encode("utf-8")  # safe as a label value
    assert fields.batch_size is None or 0 <= fields.batch_size <= MAX_BATCH


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(INFERENCE_METHODS), data=st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(method: str, data: bytes) -> None:
    assert_bounded(parse(method, data))
    final, error = stream_response_end(data)
    assert isinstance(final, bool) and isinstance(error, bool)
    try:
        for _ in iter_fields(data):
            pass
    except WireError:
        pass


def real_messages() -> list[tuple[str, bytes]]:
    protos = grpc_protos()
    classify = protos.classification_pb2.ClassificationRequest()
    classify.model_spec.name = "c"
    classify.model_spec.version_label = "l"
    classify.input.example_list.examples.extend(examples(protos, 2))
    return [
        (OIP_INFER, oip_request("resnet", "3", ([8, 3], [2]), raw=bytes(64))),
        (OIP_STREAM, stream_response(final=False)),
        (TF + "Predict", predict(protos, [4, 2], name="p", version=5)),
        (TF + "Classify", classify.SerializeToString()),
        (
            TS + "Predictions",
            protos.torchserve_inference_pb2.PredictionsRequest(
                model_name="t", model_version="1", input={"a": b"xyz"}
            ).SerializeToString(),
        ),
    ]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    method, message = draw(st.sampled_from(real_messages()))
    data = bytearray(message)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        if action == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[where:]
        else:
            data[where] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x2A]))
    return method, bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=mutated())
def test_mutated_real_messages_never_raise(case: tuple[str, bytes]) -> None:
    method, data = case
    for each in INFERENCE_METHODS:
        assert_bounded(parse(each, data))
    final, error = stream_response_end(data)
    assert isinstance(final, bool) and isinstance(error, bool)
    del method


texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)
int64s = st.integers(-(1 << 63), (1 << 63) - 1)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=texts, version=texts, shapes=st.lists(st.lists(int64s, max_size=4), max_size=3))
def test_any_valid_model_infer_request_reads_as_protobuf_does(
    name: str, version: str, shapes: list[list[int]]
) -> None:
    message = oip_request(name, version, tuple(shapes), raw=b"\x01" * 10)
    decoded = service_pb2.ModelInferRequest.FromString(message)
    shape = list(decoded.inputs[0].shape) if decoded.inputs else []
    batch = shape[0] if shape and 0 <= shape[0] <= MAX_BATCH else None
    expected = (clean_name(decoded.model_name), clean_name(decoded.model_version), batch)
    assert parse(OIP_INFER, message) == expected
