"""What the gRPC proxy reads from each RPC: whether it is an inference, and its model, version
and batch size, taken from the raw request message.

:func:`classify_method` maps a method path ("/inference.GRPCInferenceService/ModelInfer") to a
:class:`GrpcRoute` once (cached). :func:`parse_request` reads the route's few fields from the
serialized message with :mod:`protobuf_wire`, stopping once they are found and skipping tensor
payloads without copying them; it never decodes the whole message and never needs the servers'
generated classes. Neither function raises: a message this module cannot read is still
forwarded, counted as unknown (``RequestFields(None, None, None)``).

Field numbers are those of the public ``.proto`` files: Triton's / KServe's ``grpc_service.proto``
(Open Inference Protocol), TF Serving's ``predict.proto``, ``classification.proto``,
``regression.proto``, ``inference.proto``, ``input.proto``, ``model.proto`` with TensorFlow's
``tensor.proto`` and ``tensor_shape.proto``, and TorchServe's ``inference.proto``. Where an
encoder repeats a singular field (protobuf would keep the last or merge), the first is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

from inferwatch.sidecar.protobuf_wire import (
    VARINT,
    Buffer,
    WireError,
    iter_fields,
    read_text,
    read_varint,
    to_int64,
)
from inferwatch.sidecar.protocols import MAX_BATCH, MAX_NAME_CHARS, ROUTE_OTHER, clean_name

PROTOCOL_OIP = "oip"
PROTOCOL_TFSERVING = "tfserving"
PROTOCOL_TORCHSERVE = "torchserve"
PROTOCOL_OTHER = "other"

OIP_SERVICE = "inference.GRPCInferenceService"
TF_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
TF_MODEL_SERVICE = "tensorflow.serving.ModelService"
TORCHSERVE_INFERENCE_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
TORCHSERVE_MANAGEMENT_SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"

TRITON_FINAL_RESPONSE = b"triton_final_response"


class RequestFields(NamedTuple):
    """What a request message says: each ``None`` where it does not say or cannot be read."""

    model_name: str | None
    model_version: str | None
    batch_size: int | None


UNKNOWN = RequestFields(None, None, None)

RequestParser = Callable[[bytes], RequestFields]


@dataclass(frozen=True, slots=True)
class GrpcRoute:
    """How the proxy treats one gRPC method."""

    protocol: str  # "oip", "tfserving", "torchserve" or "other"
    is_inference: bool  # counted as inferences
    per_message: bool  # each request message is one inference (a bidirectional stream)
    parse: RequestParser | None  # None when not an inference
    route: str  # "/pkg.Service/Method" for known methods; a bounded "/pkg.Service/*" else
    unary: bool = False  # known to take one message and answer one (False: unknown or streaming)


# --- field readers -------------------------------------------------------------------------


def _name(value: memoryview) -> str | None:
    """A model name or version from a string field, cleaned like the HTTP parsers' names."""
    return clean_name(read_text(value, MAX_NAME_CHARS))


def _dimension(value: int) -> int | None:
    """A batch size from an int64 dimension: negative (-1 = unknown) or absurd gives None."""
    size = to_int64(value)
    return size if 0 <= size <= MAX_BATCH else None


def _first_of_repeated_int64(message: Buffer, number: int) -> int | None:
    """The first value of a repeated int64 field ``number``, packed or not; None if empty."""
    for field, wire_type, value in iter_fields(message):
        if field != number:
            continue
        if isinstance(value, memoryview):  # packed
            if len(value):
                return read_varint(value, 0, len(value))[0]
        elif wire_type == VARINT:  # unpacked: one varint per value
            return value
    return None


def _count_field(message: Buffer, number: int) -> int:
    """How many times field ``number`` occurs: the length of a repeated message field."""
    return sum(1 for field, _, _ in iter_fields(message) if field == number)


def _first_field(message: Buffer, number: int) -> memoryview | None:
    """The first length-delimited occurrence of field ``number``."""
    for field, _, value in iter_fields(message):
        if field == number and isinstance(value, memoryview):
            return value
    return None


# --- Open Inference Protocol ---------------------------------------------------------------
# ModelInferRequest: model_name 1, model_version 2, inputs 5 (InferInputTensor: shape 3).


def _parse_oip(message: bytes) -> RequestFields:
    name = version = batch = None
    seen_name = seen_version = seen_input = False
    for number, _, value in iter_fields(message):
        if not isinstance(value, memoryview):
            continue
        if number == 1 and not seen_name:
            name, seen_name = _name(value), True
        elif number == 2 and not seen_version:
            version, seen_version = _name(value), True
        elif number == 5 and not seen_input:
            seen_input = True
            first = _first_of_repeated_int64(value, 3)
            batch = None if first is None else _dimension(first)
        if seen_name and seen_version and seen_input:
            break
    return RequestFields(name, version, batch)


# --- TF Serving ----------------------------------------------------------------------------
# ModelSpec: name 1, version 2 (google.protobuf.Int64Value: value 1), version_label 4.
# PredictRequest: model_spec 1, inputs 2 (map<string, TensorProto>: entry key 1, value 2).
# TensorProto: tensor_shape 2 (TensorShapeProto: dim 2, Dim: size 1).
# Classification/RegressionRequest: model_spec 1, input 2. MultiInferenceRequest: tasks 1
# (InferenceTask: model_spec 1), input 2. Input: example_list 1 | example_list_with_context 2,
# both with examples 1.


def _model_spec(spec: memoryview) -> tuple[str | None, str | None]:
    """(name, version) of a ModelSpec: the numeric version as decimal, else the label."""
    name = label = number = None
    seen_name = False
    for field, _, value in iter_fields(spec):
        if not isinstance(value, memoryview):
            continue
        if field == 1 and not seen_name:
            name, seen_name = _name(value), True
        elif field == 2 and number is None:
            raw = 0  # an Int64Value holding 0 is encoded empty
            for inner, wire_type, inner_value in iter_fields(value):
                if inner == 1 and wire_type == VARINT and isinstance(inner_value, int):
                    raw = inner_value
            number = str(to_int64(raw))
        elif field == 4 and label is None:
            label = _name(value)
    return name, number if number is not None else label


def _tensor_batch(tensor: memoryview) -> int | None:
    """The first dimension of a TensorProto's shape."""
    shape = _first_field(tensor, 2)
    if shape is None:
        return None
    dim = _first_field(shape, 2)
    if dim is None:
        return None
    size = 0  # a Dim of size 0 is encoded without its size
    for field, wire_type, value in iter_fields(dim):
        if field == 1 and wire_type == VARINT and isinstance(value, int):
            size = value
            break
    return _dimension(size)


def _examples(input_message: memoryview) -> int | None:
    """How many examples an Input carries, whichever list holds them.

    Counting is bounded like any read: past ``MAX_FIELDS`` examples the request is unknown.
    """
    for field, _, value in iter_fields(input_message):
        if field in (1, 2) and isinstance(value, memoryview):
            return _count_field(value, 1)
    return None


def _spec_and_input(message: bytes) -> tuple[memoryview | None, memoryview | None]:
    """The first length-delimited fields 1 and 2 of a TF Serving request (its model spec, or
    MultiInference's first task, and its inputs); the scan stops once both are found."""
    first: memoryview | None = None
    second: memoryview | None = None
    for number, _, value in iter_fields(message):
        if not isinstance(value, memoryview):
            continue
        if number == 1 and first is None:
            first = value
        elif number == 2 and second is None:
            second = value
        if first is not None and second is not None:
            break
    return first, second


def _spec_fields(spec: memoryview | None) -> tuple[str | None, str | None]:
    return (None, None) if spec is None else _model_spec(spec)


def _parse_tf_predict(message: bytes) -> RequestFields:
    spec, inputs = _spec_and_input(message)
    tensor = None if inputs is None else _first_field(inputs, 2)
    return RequestFields(*_spec_fields(spec), None if tensor is None else _tensor_batch(tensor))


def _parse_tf_examples(message: bytes) -> RequestFields:
    """Classify and Regress: model_spec 1, input 2."""
    spec, inputs = _spec_and_input(message)
    return RequestFields(*_spec_fields(spec), None if inputs is None else _examples(inputs))


def _parse_tf_multi_inference(message: bytes) -> RequestFields:
    """MultiInference: the model of the first task, the examples of the shared input."""
    task, inputs = _spec_and_input(message)
    spec = None if task is None else _first_field(task, 1)
    return RequestFields(*_spec_fields(spec), None if inputs is None else _examples(inputs))


# --- TorchServe ----------------------------------------------------------------------------
# PredictionsRequest: model_name 1, model_version 2, input 3 (map<string, bytes>).


def _parse_torchserve(message: bytes) -> RequestFields:
    """One request is one inference: TorchServe batches on the server side."""
    name = version = None
    seen_name = seen_version = False
    for number, _, value in iter_fields(message):
        if not isinstance(value, memoryview):
            continue
        if number == 1 and not seen_name:
            name, seen_name = _name(value), True
        elif number == 2 and not seen_version:
            version, seen_version = _name(value), True
        if seen_name and seen_version:
            break
    return RequestFields(name, version, 1)


def _never_raising(parse: Callable[[bytes], RequestFields]) -> RequestParser:
    """``parse`` with malformed input read as unknown, so a route's parser is safe to call."""

    def parse_or_unknown(message: bytes) -> RequestFields:
        try:
            return parse(message)
        except WireError:
            return UNKNOWN

    parse_or_unknown.__name__ = parse.__name__
    parse_or_unknown.__doc__ = parse.__doc__
    return parse_or_unknown


# --- routes --------------------------------------------------------------------------------


def _route(
    protocol: str, method: str, parse: Callable[[bytes], RequestFields], *, per_message: bool
) -> GrpcRoute:
    return GrpcRoute(protocol, True, per_message, _never_raising(parse), method)


def _not_inference(protocol: str, route: str) -> GrpcRoute:
    return GrpcRoute(protocol, False, False, None, route)


def _known_routes() -> dict[str, GrpcRoute]:
    routes: dict[str, GrpcRoute] = {}

    def add(route: GrpcRoute) -> None:
        routes[route.route] = route

    oip = f"/{OIP_SERVICE}/"
    add(_route(PROTOCOL_OIP, oip + "ModelInfer", _parse_oip, per_message=False))
    add(_route(PROTOCOL_OIP, oip + "ModelStreamInfer", _parse_oip, per_message=True))
    for method in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
        "TraceSetting",
        "LogSettings",
    ):
        add(_not_inference(PROTOCOL_OIP, oip + method))

    tf = f"/{TF_PREDICTION_SERVICE}/"
    add(_route(PROTOCOL_TFSERVING, tf + "Predict", _parse_tf_predict, per_message=False))
    add(_route(PROTOCOL_TFSERVING, tf + "Classify", _parse_tf_examples, per_message=False))
    add(_route(PROTOCOL_TFSERVING, tf + "Regress", _parse_tf_examples, per_message=False))
    add(
        _route(
            PROTOCOL_TFSERVING, tf + "MultiInference", _parse_tf_multi_inference, per_message=False
        )
    )
    add(_not_inference(PROTOCOL_TFSERVING, tf + "GetModelMetadata"))
    for method in ("GetModelStatus", "HandleReloadConfigRequest"):
        add(_not_inference(PROTOCOL_TFSERVING, f"/{TF_MODEL_SERVICE}/{method}"))

    ts = f"/{TORCHSERVE_INFERENCE_SERVICE}/"
    add(_route(PROTOCOL_TORCHSERVE, ts + "Predictions", _parse_torchserve, per_message=False))
    add(_route(PROTOCOL_TORCHSERVE, ts + "StreamPredictions", _parse_torchserve, per_message=False))
    add(_route(PROTOCOL_TORCHSERVE, ts + "StreamPredictions2", _parse_torchserve, per_message=True))
    add(_not_inference(PROTOCOL_TORCHSERVE, ts + "Ping"))
    for method in (
        "DescribeModel",
        "ListModels",
        "RegisterModel",
        "ScaleWorker",
        "SetDefault",
        "UnregisterModel",
    ):
        add(_not_inference(PROTOCOL_TORCHSERVE, f"/{TORCHSERVE_MANAGEMENT_SERVICE}/{method}"))

    for method in ("Check", "Watch"):
        add(_not_inference(PROTOCOL_OTHER, f"/grpc.health.v1.Health/{method}"))
    for version in ("v1", "v1alpha"):
        service = f"grpc.reflection.{version}.ServerReflection"
        add(_not_inference(PROTOCOL_OTHER, f"/{service}/ServerReflectionInfo"))
    return {
        method: route if method in _STREAMING_METHODS else replace(route, unary=True)
        for method, route in routes.items()
    }


# The known methods with a stream on either side; every other known method is unary.
_STREAMING_METHODS = frozenset(
    (
        f"/{OIP_SERVICE}/ModelStreamInfer",
        f"/{TORCHSERVE_INFERENCE_SERVICE}/StreamPredictions",
        f"/{TORCHSERVE_INFERENCE_SERVICE}/StreamPredictions2",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    )
)


_KNOWN_ROUTES = _known_routes()

# Services whose other (newer, unlisted) methods are known not to be inferences, and packages
# whose every service is not; each gets one bounded route.
_KNOWN_SERVICES = {
    OIP_SERVICE: PROTOCOL_OIP,
    TF_PREDICTION_SERVICE: PROTOCOL_TFSERVING,
    TF_MODEL_SERVICE: PROTOCOL_TFSERVING,
    TORCHSERVE_INFERENCE_SERVICE: PROTOCOL_TORCHSERVE,
    "grpc.health.v1.Health": PROTOCOL_OTHER,
}
_KNOWN_PACKAGES = {
    "org.pytorch.serve.grpc.management.": PROTOCOL_TORCHSERVE,
    "grpc.reflection.": PROTOCOL_OTHER,
}
_OTHER = _not_inference(PROTOCOL_OTHER, ROUTE_OTHER)


@lru_cache(maxsize=256)
def _classify_unlisted(method: str) -> GrpcRoute:
    service, slash, _ = method[1:].partition("/")
    if not method.startswith("/") or not slash:
        return _OTHER
    protocol = _KNOWN_SERVICES.get(service)
    if protocol is not None:
        return _not_inference(protocol, f"/{service}/*")
    for package, protocol in _KNOWN_PACKAGES.items():
        if service.startswith(package):
            return _not_inference(protocol, f"/{package}*")
    return _OTHER


def classify_method(method: str) -> GrpcRoute:
    """How to treat the RPC ``method`` ("/package.Service/Method", as grpc names it).

    Known methods keep their path as route; unknown methods of known services share one route
    per service, and any other method the constant ``"/*"``, so routes stay a bounded set.
    """
    if not isinstance(method, str):
        return _OTHER
    route = _KNOWN_ROUTES.get(method)
    return route if route is not None else _classify_unlisted(method)


def parse_request(route: GrpcRoute, message: bytes) -> RequestFields:
    """Model, version and batch size of one request message of ``route``; never raises."""
    if route.parse is None:
        return UNKNOWN
    try:
        return route.parse(message)
    except (WireError, TypeError):  # TypeError: not a bytes-like object
        return UNKNOWN


# --- Triton's streamed responses -----------------------------------------------------------
# ModelStreamInferResponse: error_message 1, infer_response 2 (ModelInferResponse: parameters 4,
# map<string, InferParameter>: entry key 1, value 2; InferParameter: bool_param 1).


def _final_flag(parameters_entry: memoryview) -> bool | None:
    """The bool of a ``triton_final_response`` map entry; None for any other entry."""
    key = parameter = None
    for field, _, value in iter_fields(parameters_entry):
        if field == 1 and isinstance(value, memoryview):
            key = value
        elif field == 2 and isinstance(value, memoryview):
            parameter = value
    if key is None or key != TRITON_FINAL_RESPONSE or parameter is None:
        return None
    flag = None
    for field, wire_type, value in iter_fields(parameter):
        if field == 1 and wire_type == VARINT and isinstance(value, int):
            flag = value != 0
    return flag


def _response_is_final(response: memoryview) -> bool:
    final = True
    for field, _, value in iter_fields(response):
        if field == 4 and isinstance(value, memoryview):
            flag = _final_flag(value)
            if flag is not None:
                final = flag  # a map keeps its last entry for a key
    return final


def stream_response_end(message: bytes) -> tuple[bool, bool]:
    """(final, error) of a ``ModelStreamInfer`` response.

    Triton answers with ``ModelStreamInferResponse`` (error_message 1, infer_response 2):
    ``error`` when it carries an error message; ``final`` False only when the server marks
    it ``triton_final_response: false`` (decoupled models send several responses per request,
    the last one final). MLServer answers the same method with a plain ``ModelInferResponse``
    (model_name 1, model_version 2, id 3, parameters 4, outputs 5, raw_output_contents 6):
    a field past 2 says which, and such a response is one final answer. A malformed message
    reads as (True, False).
    """
    final = True
    error = False
    try:
        for field, _, value in iter_fields(message):
            if field > 2:  # a plain ModelInferResponse: one whole answer
                return True, False
            if not isinstance(value, memoryview):
                continue
            if field == 1:
                error = len(value) > 0
            elif field == 2:
                final = _response_is_final(value)
    except (WireError, TypeError):
        return True, False
    return final, error
