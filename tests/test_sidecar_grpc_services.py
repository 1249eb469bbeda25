"""TF Serving's PredictionService and TorchServe's InferenceAPIsService through the gRPC proxy.

The upstream is a real grpcio server with servicers subclassing the generated ``*Servicer``
classes (compiled from the public .proto files by :mod:`support.grpc_protos`); clients call
through the sidecar with the generated stubs. Each answer is compared, byte for byte, with the
same raw call made straight to the upstream: messages, initial metadata, status and trailers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, wrappers_pb2
from google.protobuf.message import Message
from grpc import aio
from support.grpc_protos import grpc_protos
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar
from support.upstreams import running_upstream

from inferwatch import schema
from inferwatch.sidecar.config import Address
from inferwatch.sidecar.process import Sidecar

P = grpc_protos()
TF = "/tensorflow.serving.PredictionService/"
TS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/"
TRAILERS = (("x-trail", "t"), ("x-trail-bin", b"\x00\xff\x01"))
INITIAL = (("x-up", "1"),)


@dataclass
class Seen:
    """The requests the upstream's servicers received, by method."""

    requests: list[tuple[str, Message]] = field(default_factory=list)


async def _steer(context: aio.ServicerContext) -> None:
    """Initial metadata and trailers on every answer; ``x-status`` ends the call with it."""
    await context.send_initial_metadata(INITIAL)
    context.set_trailing_metadata(TRAILERS)
    status = dict(context.invocation_metadata() or ()).get("x-status")
    if status:
        await context.abort(grpc.StatusCode[status], f"upstream says {status}")


class TfServing(P.prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def _record(self, method: str, request: Message, context: aio.ServicerContext) -> None:
        self.seen.requests.append((method, request))
        await _steer(context)

    async def Predict(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._record("Predict", request, context)
        response = P.predict_pb2.PredictResponse(model_spec=request.model_spec)
        out = response.outputs["scores"]
        out.dtype = P.types_pb2.DT_FLOAT
        out.tensor_shape.dim.add(size=2)
        out.float_val.extend([0.25, 0.75])
        return response

    async def Classify(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._record("Classify", request, context)
        response = P.classification_pb2.ClassificationResponse(model_spec=request.model_spec)
        response.result.classifications.add().classes.add(label="cat", score=0.9)
        return response

    async def Regress(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._record("Regress", request, context)
        response = P.regression_pb2.RegressionResponse(model_spec=request.model_spec)
        response.result.regressions.add(value=1.5)
        return response

    async def MultiInference(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._record("MultiInference", request, context)
        response = P.inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            result = response.results.add(model_spec=task.model_spec)
            result.regression_result.regressions.add(value=2.5)
        return response

    async def GetModelMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        await self._record("GetModelMetadata", request, context)
        return P.get_model_metadata_pb2.GetModelMetadataResponse(model_spec=request.model_spec)


class TorchServe(P.torchserve_inference_pb2_grpc.InferenceAPIsServiceServicer):  # type: ignore[misc]
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def Ping(self, request: Any, context: aio.ServicerContext) -> Any:
        self.seen.requests.append(("Ping", request))
        await _steer(context)
        return P.torchserve_inference_pb2.TorchServeHealthResponse(health="Healthy")

    async def Predictions(self, request: Any, context: aio.ServicerContext) -> Any:
        self.seen.requests.append(("Predictions", request))
        await _steer(context)
        return P.torchserve_inference_pb2.PredictionResponse(
            prediction=b"pred:" + request.input["data"]
        )

    async def StreamPredictions(self, request: Any, context: aio.ServicerContext) -> Any:
        self.seen.requests.append(("StreamPredictions", request))
        await _steer(context)
        for index in range(3):
            yield P.torchserve_inference_pb2.PredictionResponse(prediction=b"token-%d" % index)

    async def StreamPredictions2(self, requests: Any, context: aio.ServicerContext) -> Any:
        await context.send_initial_metadata(INITIAL)
        async for request in requests:
            self.seen.requests.append(("StreamPredictions2", request))
            yield P.torchserve_inference_pb2.PredictionResponse(
                prediction=b"pred:" + request.input["data"], sequenceId=request.sequenceId
            )
        context.set_trailing_metadata(TRAILERS)


@asynccontextmanager
async def services() -> AsyncIterator[tuple[Sidecar, aio.Channel, aio.Channel, Seen]]:
    """Both services on one real grpcio server, a sidecar in front of it, and channels to the
    sidecar and straight to the upstream."""
    seen = Seen()
    server = aio.server()
    P.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(TfServing(seen), server)
    P.torchserve_inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(
        TorchServe(seen), server
    )
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    try:
        async with (
            running_upstream() as http_up,
            running_sidecar(
                http_up.url,
                grpc_listen=Address(LOOPBACK, 0),
                grpc_upstream=f"{LOOPBACK}:{port}",
            ) as sidecar,
        ):
            through = aio.insecure_channel(f"{LOOPBACK}:{sidecar.grpc_port}")
            direct = aio.insecure_channel(f"{LOOPBACK}:{port}")
            try:
                yield sidecar, through, direct, seen
            finally:
                await through.close()
                await direct.close()
    finally:
        await server.stop(0)


# --- messages ------------------------------------------------------------------------------


def spec(name: str, version: int | None = None, label: str | None = None) -> Any:
    model_spec = P.model_pb2.ModelSpec(name=name, signature_name="serving_default")
    if version is not None:
        model_spec.version.CopyFrom(wrappers_pb2.Int64Value(value=version))
    if label is not None:
        model_spec.version_label = label
    return model_spec


def predict(name: str = "half_plus_two", batch: int = 5, **version: Any) -> Any:
    request = P.predict_pb2.PredictRequest(model_spec=spec(name, **version))
    tensor = request.inputs["x"]  # one entry: a map serializes the same every time
    tensor.dtype = P.types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=batch)
    tensor.tensor_shape.dim.add(size=3)
    tensor.float_val.extend([0.5] * batch * 3)
    return request


def examples(count: int) -> Any:
    model_input = P.input_pb2.Input()
    for index in range(count):
        example = model_input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(float(index))
    return model_input


def classify(name: str, count: int, **version: Any) -> Any:
    return P.classification_pb2.ClassificationRequest(
        model_spec=spec(name, **version), input=examples(count)
    )


def regress(name: str, count: int, **version: Any) -> Any:
    return P.regression_pb2.RegressionRequest(
        model_spec=spec(name, **version), input=examples(count)
    )


def multi_inference(name: str, count: int, **version: Any) -> Any:
    request = P.inference_pb2.MultiInferenceRequest(input=examples(count))
    request.tasks.add(model_spec=spec(name, **version), method_name="tensorflow/serving/regress")
    request.tasks.add(model_spec=spec("other_head"), method_name="tensorflow/serving/classify")
    return request


def predictions(name: str = "bert", version: str = "", data: bytes = b"hello") -> Any:
    request = P.torchserve_inference_pb2.PredictionsRequest(model_name=name, model_version=version)
    request.input["data"] = data
    return request


# --- helpers -------------------------------------------------------------------------------


def inferences(sidecar: Sidecar, status: str, model: str, version: str) -> float:
    labels = {"model_name": model, "model_version": version}
    return metric(sidecar, schema.INFERENCE_TOTAL.name, status=status, **labels)


def batch(sidecar: Sidecar, model: str) -> tuple[float, float]:
    return (
        metric(sidecar, schema.BATCH_SIZE.count, model_name=model),
        metric(sidecar, schema.BATCH_SIZE.sum, model_name=model),
    )


def nothing_counted(sidecar: Sidecar) -> bool:
    return (
        sidecar.registry.get_sample_value(schema.INFERENCE_TOTAL.name, {"source": "sidecar"})
        is None
    )


def total_inferences(sidecar: Sidecar) -> float:
    total = 0.0
    for family in sidecar.registry.collect():
        for sample in family.samples:
            if sample.name == schema.INFERENCE_TOTAL.name and sample.labels.get("source") == (
                "sidecar"
            ):
                total += sample.value
    return total


@dataclass
class Answer:
    """Everything a caller sees of one unary or server-streaming call, as raw bytes."""

    messages: list[bytes]
    initial: tuple[tuple[str, Any], ...]
    code: grpc.StatusCode
    details: str | None
    trailers: tuple[tuple[str, Any], ...]


def _metadata(metadata: Any) -> tuple[tuple[str, Any], ...]:
    return tuple((key, value) for key, value in (metadata or ()))


async def raw_answer(
    channel: aio.Channel, method: str, request: bytes, *, stream: bool, **kwargs: Any
) -> Answer:
    call: Any
    if stream:
        call = channel.unary_stream(method)(request, **kwargs)
        messages = []
        try:
            async for message in call:
                messages.append(message)
        except aio.AioRpcError:
            pass
    else:
        call = channel.unary_unary(method)(request, **kwargs)
        try:
            messages = [await call]
        except aio.AioRpcError:
            messages = []
    return Answer(
        messages,
        _metadata(await call.initial_metadata()),
        await call.code(),
        await call.details(),
        _metadata(await call.trailing_metadata()),
    )


async def same_both_ways(
    through: aio.Channel, direct: aio.Channel, method: str, request: Message, **kwargs: Any
) -> Answer:
    """The raw answer through the sidecar, asserted identical to the upstream's own."""
    raw = request.SerializeToString()
    stream = method.endswith("/StreamPredictions")
    proxied = await raw_answer(through, method, raw, stream=stream, **kwargs)
    straight = await raw_answer(direct, method, raw, stream=stream, **kwargs)
    assert proxied == straight
    return proxied


# --- TF Serving ----------------------------------------------------------------------------

TfCase = tuple[str, Callable[..., Any], str, dict[str, Any], str, int]

TF_CASES: list[TfCase] = [
    (
        "Predict",
        lambda **v: predict("half_plus_two", 5, **v),
        "half_plus_two",
        {"version": 3},
        "3",
        5,
    ),
    (
        "Predict",
        lambda **v: predict("half_plus_two", 2, **v),
        "half_plus_two",
        {"label": "canary"},
        "canary",
        2,
    ),
    ("Predict", lambda **v: predict("half_plus_two", 7, **v), "half_plus_two", {}, "", 7),
    ("Classify", lambda **v: classify("iris", 4, **v), "iris", {"version": 1}, "1", 4),
    (
        "Regress",
        lambda **v: regress("housing", 3, **v),
        "housing",
        {"label": "stable"},
        "stable",
        3,
    ),
    (
        "MultiInference",
        lambda **v: multi_inference("ranker", 6, **v),
        "ranker",
        {"version": 12},
        "12",
        6,
    ),
]


@pytest.mark.parametrize(
    ("method", "build", "model", "version_args", "version", "batch_size"),
    TF_CASES,
    ids=[f"{c[0]}-{c[4] or 'noversion'}" for c in TF_CASES],
)
async def test_tf_serving_inference_rpcs_pass_unchanged_and_count_model_version_and_batch(
    method: str,
    build: Callable[..., Any],
    model: str,
    version_args: dict[str, Any],
    version: str,
    batch_size: int,
) -> None:
    request = build(**version_args)
    async with services() as (sidecar, through, direct, seen):
        stub = P.prediction_service_pb2_grpc.PredictionServiceStub(through)
        call = getattr(stub, method)(request, metadata=(("x-client", "c1"),))
        response = await call
        assert await call.code() == grpc.StatusCode.OK
        assert _metadata(await call.trailing_metadata()) == TRAILERS
        assert dict(_metadata(await call.initial_metadata()))["x-up"] == "1"
        assert seen.requests == [(method, request)]
        assert seen.requests[0][1].SerializeToString() == request.SerializeToString()
        if method != "MultiInference":
            assert response.model_spec == request.model_spec
        answer = await same_both_ways(through, direct, TF + method, request)
        assert answer.messages == [response.SerializeToString()]

        # The stub's call and the raw one through the sidecar; the direct one is not counted.
        assert inferences(sidecar, "success", model, version) == 2
        assert total_inferences(sidecar) == 2
        assert batch(sidecar, model) == (2, 2 * batch_size)
        assert metric(sidecar, schema.ACTIVE_REQUESTS.name, model_name=model) == 0


async def test_tf_serving_failures_count_with_the_model_labels() -> None:
    async with services() as (sidecar, through, direct, _seen):
        stub = P.prediction_service_pb2_grpc.PredictionServiceStub(through)
        request = predict("half_plus_two", 3, version=9)
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.Predict(request, metadata=(("x-status", "NOT_FOUND"),))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "upstream says NOT_FOUND"
        assert _metadata(caught.value.trailing_metadata()) == TRAILERS
        answer = await same_both_ways(
            through, direct, TF + "Predict", request, metadata=(("x-status", "INTERNAL"),)
        )
        assert answer.code == grpc.StatusCode.INTERNAL
        assert answer.messages == []
        labels = {"model_name": "half_plus_two", "model_version": "9"}
        failures = schema.INFERENCE_FAILURES.name
        assert metric(sidecar, failures, reason=schema.REASON_CLIENT_ERROR, **labels) == 1
        assert metric(sidecar, failures, reason=schema.REASON_SERVER_ERROR, **labels) == 1
        assert inferences(sidecar, "error", "half_plus_two", "9") == 2
        assert inferences(sidecar, "success", "half_plus_two", "9") == 0


async def test_get_model_metadata_passes_unchanged_and_is_not_counted() -> None:
    async with services() as (sidecar, through, direct, seen):
        stub = P.prediction_service_pb2_grpc.PredictionServiceStub(through)
        request = P.get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec("half_plus_two", version=3), metadata_field=["signature_def"]
        )
        response = await stub.GetModelMetadata(request)
        assert response.model_spec == request.model_spec
        assert seen.requests == [("GetModelMetadata", request)]
        await same_both_ways(through, direct, TF + "GetModelMetadata", request)
        assert nothing_counted(sidecar)


# --- TorchServe ----------------------------------------------------------------------------


async def test_torchserve_predictions_pass_unchanged_and_count_model_and_version() -> None:
    async with services() as (sidecar, through, direct, seen):
        stub = P.torchserve_inference_pb2_grpc.InferenceAPIsServiceStub(through)
        request = predictions("bert", "2.0", b"\x00\x01 tokens")
        call = stub.Predictions(request)
        response = await call
        assert response.prediction == b"pred:\x00\x01 tokens"
        assert _metadata(await call.trailing_metadata()) == TRAILERS
        assert seen.requests == [("Predictions", request)]
        answer = await same_both_ways(through, direct, TS + "Predictions", request)
        assert answer.messages == [response.SerializeToString()]
        assert inferences(sidecar, "success", "bert", "2.0") == 2
        assert batch(sidecar, "bert") == (2, 2)  # one request is one inference
        # No version: the default model version, "".
        await stub.Predictions(predictions("bert"))
        assert inferences(sidecar, "success", "bert", "") == 1


async def test_torchserve_stream_predictions_relay_every_part_and_count_once() -> None:
    async with services() as (sidecar, through, direct, seen):
        stub = P.torchserve_inference_pb2_grpc.InferenceAPIsServiceStub(through)
        request = predictions("llama", "1")
        call = stub.StreamPredictions(request)
        parts = [part.prediction async for part in call]
        assert parts == [b"token-0", b"token-1", b"token-2"]
        assert seen.requests == [("StreamPredictions", request)]
        assert _metadata(await call.trailing_metadata()) == TRAILERS
        answer = await same_both_ways(through, direct, TS + "StreamPredictions", request)
        assert len(answer.messages) == 3
        assert inferences(sidecar, "success", "llama", "1") == 2
        labels = {"model_name": "llama", "model_version": "1"}
        assert metric(sidecar, schema.TIME_TO_FIRST_BYTE.count, **labels) == 2
        assert total_inferences(sidecar) == 2


async def test_torchserve_stream_predictions2_counts_each_request_message() -> None:
    async with services() as (sidecar, through, _direct, seen):
        stub = P.torchserve_inference_pb2_grpc.InferenceAPIsServiceStub(through)
        sent = [
            P.torchserve_inference_pb2.PredictionsRequest(
                model_name="seq2seq", model_version="3", input={"data": b"m%d" % i}, sequenceId="s1"
            )
            for i in range(4)
        ]

        async def requests() -> AsyncIterator[Any]:
            for request in sent:
                yield request

        call = stub.StreamPredictions2(requests())
        answers = [response async for response in call]
        assert [a.prediction for a in answers] == [b"pred:m%d" % i for i in range(4)]
        assert all(a.sequenceId == "s1" for a in answers)
        assert dict(_metadata(await call.initial_metadata()))["x-up"] == "1"
        assert _metadata(await call.trailing_metadata()) == TRAILERS
        assert seen.requests == [("StreamPredictions2", r) for r in sent]
        assert inferences(sidecar, "success", "seq2seq", "3") == 4
        assert batch(sidecar, "seq2seq") == (4, 4)


async def test_torchserve_ping_passes_unchanged_and_is_not_counted() -> None:
    async with services() as (sidecar, through, direct, _seen):
        stub = P.torchserve_inference_pb2_grpc.InferenceAPIsServiceStub(through)
        assert (await stub.Ping(empty_pb2.Empty())).health == "Healthy"
        await same_both_ways(through, direct, TS + "Ping", empty_pb2.Empty())
        assert nothing_counted(sidecar)
