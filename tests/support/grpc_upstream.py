"""A real grpcio server standing in for a model server's gRPC port.

Methods of a test service (``/test.Echo/*``) cover the four RPC kinds on raw bytes; the Open
Inference Protocol methods answer with real messages (tritonclient's generated classes). The
request's metadata steers failures: ``x-status: NOT_FOUND`` ends a call with that status,
``x-sleep: 2`` delays the answer, ``x-decoupled: 2`` answers each ModelStreamInfer request
with two responses (the last marked ``triton_final_response``), ``x-stream-error: why`` answers
each with that ``error_message``. An inference's outputs echo its inputs (same name, datatype,
shape and raw contents); ``ModelMetadata`` names the model with version "1".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from tritonclient.grpc import service_pb2

from support.ports import LOOPBACK

ECHO = "/test.Echo/"
OIP = "/inference.GRPCInferenceService/"
TRAILERS = (("x-trail", "t"), ("x-trail-bin", b"\x00\xff"))


@dataclass
class GrpcUpstream:
    """What the upstream saw, for assertions."""

    port: int = 0
    metadata: list[dict[str, Any]] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    calls: set[str] = field(default_factory=set)  # the x-call metadata of every call seen

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"


async def _steer(context: aio.ServicerContext) -> None:
    """Sleep and fail as the request's metadata says."""
    metadata = dict(context.invocation_metadata() or ())
    if "x-sleep" in metadata:
        await asyncio.sleep(float(metadata["x-sleep"]))
    status = metadata.get("x-status")
    if status:
        context.set_trailing_metadata((("x-why", status.lower()),))
        await context.abort(grpc.StatusCode[status], f"upstream says {status}")


def _echo(parsed: Any, response: Any) -> None:
    """The request's input tensors as the response's outputs."""
    for tensor in parsed.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(parsed.raw_input_contents)


def infer_response(request: bytes) -> bytes:
    parsed = service_pb2.ModelInferRequest.FromString(request)
    response = service_pb2.ModelInferResponse(
        model_name=parsed.model_name, model_version=parsed.model_version, id=parsed.id
    )
    _echo(parsed, response)
    return response.SerializeToString()


def stream_response(request: bytes, final: bool | None, error: str = "") -> bytes:
    parsed = service_pb2.ModelInferRequest.FromString(request)
    response = service_pb2.ModelInferResponse(model_name=parsed.model_name, id=parsed.id)
    _echo(parsed, response)
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return service_pb2.ModelStreamInferResponse(
        error_message=error, infer_response=response
    ).SerializeToString()


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self, state: GrpcUpstream) -> None:
        self.state = state

    def _seen(self, context: aio.ServicerContext, message: bytes | None = None) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.state.metadata.append(metadata)
        if "x-call" in metadata:
            self.state.calls.add(metadata["x-call"])
        if message is not None:
            self.state.requests.append(message)
        self.state.started.set()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        handlers: dict[str, Callable[[], grpc.RpcMethodHandler]] = {
            ECHO + "Unary": lambda: grpc.unary_unary_rpc_method_handler(self.unary),
            ECHO + "ServerStream": lambda: grpc.unary_stream_rpc_method_handler(self.server_stream),
            ECHO + "ClientStream": lambda: grpc.stream_unary_rpc_method_handler(self.client_stream),
            ECHO + "Bidi": lambda: grpc.stream_stream_rpc_method_handler(self.bidi),
            OIP + "ModelInfer": lambda: grpc.unary_unary_rpc_method_handler(self.model_infer),
            OIP + "ModelStreamInfer": lambda: grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer
            ),
            OIP + "ServerReady": lambda: grpc.unary_unary_rpc_method_handler(self.server_ready),
            OIP + "ModelMetadata": lambda: grpc.unary_unary_rpc_method_handler(self.model_metadata),
        }
        make = handlers.get(method)
        return make() if make is not None else None

    async def unary(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self._seen(context, request)
        await context.send_initial_metadata((("x-up", "1"),))
        await _steer(context)
        context.set_trailing_metadata(TRAILERS)
        return request[::-1]

    async def server_stream(
        self, request: bytes, context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self._seen(context, request)
        await _steer(context)
        for index in range(int(request or b"3")):
            yield b"part-%d" % index
        context.set_trailing_metadata(TRAILERS)

    async def client_stream(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext
    ) -> bytes:
        self._seen(context)
        parts = [message async for message in requests]
        self.state.requests.extend(parts)
        await _steer(context)
        return b"|".join(parts)

    async def bidi(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self._seen(context)
        async for message in requests:
            self.state.requests.append(message)
            yield message.upper()
        await _steer(context)

    async def model_infer(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self._seen(context, request)
        await _steer(context)
        return infer_response(request)

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self._seen(context)
        metadata = dict(context.invocation_metadata() or ())
        decoupled = int(metadata.get("x-decoupled", "0"))
        error = metadata.get("x-stream-error", "")
        async for request in requests:
            self.state.requests.append(request)
            if decoupled:
                for index in range(decoupled):
                    yield stream_response(request, final=index == decoupled - 1, error=error)
            else:
                yield stream_response(request, final=None, error=error)
        await _steer(context)

    async def server_ready(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self._seen(context, request)
        return service_pb2.ServerReadyResponse(ready=True).SerializeToString()

    async def model_metadata(self, request: bytes, context: aio.ServicerContext) -> bytes:
        self._seen(context, request)
        await _steer(context)
        name = service_pb2.ModelMetadataRequest.FromString(request).name
        response = service_pb2.ModelMetadataResponse(name=name, versions=["1"], platform="fake")
        return response.SerializeToString()


@asynccontextmanager
async def running_grpc_upstream(
    options: tuple[tuple[str, Any], ...] = (),
) -> AsyncIterator[GrpcUpstream]:
    state = GrpcUpstream()
    # grpc core cancels calls past 1,000 waiting for the application: a load test's burst.
    pending = (
        ("grpc.server.max_pending_requests", 100_000),
        ("grpc.server.max_pending_requests_hard_limit", 100_000),
    )
    server = aio.server(options=(*pending, *options))
    server.add_generic_rpc_handlers((_Handlers(state),))
    state.port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    try:
        yield state
    finally:
        await server.stop(0)


def infer_request(model: str = "resnet", version: str = "", batch: int = 4) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="r1")
    tensor = request.inputs.add(name="input", datatype="FP32")
    tensor.shape.extend([batch, 3])
    request.raw_input_contents.append(b"\x00" * 4 * 3 * batch)
    return request.SerializeToString()
