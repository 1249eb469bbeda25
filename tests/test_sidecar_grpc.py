"""The gRPC proxy against a real grpcio upstream: forwarding of every RPC kind, per-model
metrics with the same exchange as HTTP, the status -> reason table, admission, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from support.grpc_upstream import (
    ECHO,
    OIP,
    TRAILERS,
    GrpcUpstream,
    infer_request,
    running_grpc_upstream,
    stream_response,
)
from support.polling import poll
from support.ports import LOOPBACK, free_port
from support.sidecar import metric, running_sidecar
from support.tracing import finished, hex_ids, in_memory_tracing
from support.upstreams import running_upstream
from tritonclient.grpc import service_pb2

from inferwatch import schema
from inferwatch.sidecar.config import Address
from inferwatch.sidecar.grpc_traced import TracedGrpcProxy
from inferwatch.sidecar.process import Sidecar

MODEL_INFER = OIP + "ModelInfer"
STREAM_INFER = OIP + "ModelStreamInfer"
RESNET = {"model_name": "resnet", "model_version": ""}
LARGE = (
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)


@asynccontextmanager
async def grpc_sidecar(
    upstream_target: str | None = None, **overrides: Any
) -> AsyncIterator[tuple[Sidecar, aio.Channel, GrpcUpstream | None]]:
    """A sidecar proxying gRPC to a fresh upstream (or to ``upstream_target``), and a client
    channel to its gRPC port."""
    async with running_upstream() as http_up, running_grpc_upstream(LARGE) as grpc_up:
        target = upstream_target or grpc_up.target
        async with running_sidecar(
            http_up.url, grpc_listen=Address(LOOPBACK, 0), grpc_upstream=target, **overrides
        ) as sidecar:
            channel = aio.insecure_channel(f"{LOOPBACK}:{sidecar.grpc_port}", options=LARGE)
            try:
                yield sidecar, channel, grpc_up if upstream_target is None else None
            finally:
                await channel.close()


def inferences(sidecar: Sidecar, status: str, **labels: str) -> float:
    return metric(sidecar, schema.INFERENCE_TOTAL.name, status=status, **{**RESNET, **labels})


def failures(sidecar: Sidecar, reason: str, **labels: str) -> float:
    return metric(sidecar, schema.INFERENCE_FAILURES.name, reason=reason, **{**RESNET, **labels})


def in_flight(sidecar: Sidecar) -> tuple[float, float]:
    labels = {"model_name": "resnet"}
    return (
        metric(sidecar, schema.ACTIVE_REQUESTS.name, **labels),
        metric(sidecar, schema.QUEUE_LENGTH.name, **labels),
    )


# --- forwarding ---------------------------------------------------------------------------------


async def test_unary_call_is_forwarded_with_metadata_trailers_and_deadline() -> None:
    async with grpc_sidecar() as (_, channel, up):
        assert up is not None
        call = channel.unary_unary(ECHO + "Unary")(
            b"hello", metadata=(("x-in", "a"), ("x-in-bin", b"\x01\x02")), timeout=30
        )
        assert await call == b"olleh"
        assert dict(await call.initial_metadata())["x-up"] == "1"
        assert tuple(await call.trailing_metadata()) == TRAILERS
        assert await call.code() == grpc.StatusCode.OK
        seen = up.metadata[-1]
        assert (seen["x-in"], seen["x-in-bin"]) == ("a", b"\x01\x02")
        assert up.requests == [b"hello"]


async def test_streaming_kinds_are_forwarded_message_by_message() -> None:
    async with grpc_sidecar() as (_, channel, up):
        assert up is not None
        parts = [m async for m in channel.unary_stream(ECHO + "ServerStream")(b"4")]
        assert parts == [b"part-0", b"part-1", b"part-2", b"part-3"]

        async def three() -> AsyncIterator[bytes]:
            for message in (b"a", b"bb", b"ccc"):
                yield message

        assert await channel.stream_unary(ECHO + "ClientStream")(three()) == b"a|bb|ccc"
        echoed = [m async for m in channel.stream_stream(ECHO + "Bidi")(three())]
        assert echoed == [b"A", b"BB", b"CCC"]


async def test_upstream_status_details_and_trailers_pass_unchanged() -> None:
    async with grpc_sidecar() as (_, channel, _up):
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(ECHO + "Unary")(
                b"x", metadata=(("x-status", "FAILED_PRECONDITION"),)
            )
        err = caught.value
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details() == "upstream says FAILED_PRECONDITION"
        assert dict(err.trailing_metadata())["x-why"] == "failed_precondition"


async def test_an_unknown_method_is_forwarded_and_the_upstreams_answer_returned() -> None:
    async with grpc_sidecar() as (sidecar, channel, _up):
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary("/no.Such/Method")(b"x")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        total = schema.INFERENCE_TOTAL.name
        assert sidecar.registry.get_sample_value(total, {"source": "sidecar"}) is None


async def test_large_messages_pass_both_ways() -> None:
    big = bytes(range(256)) * (65 * 1024 * 1024 // 256)  # 65 MiB: a large tensor
    async with grpc_sidecar() as (_, channel, _up):
        assert await channel.unary_unary(ECHO + "Unary")(big, timeout=60) == big[::-1]


async def test_a_message_over_the_limit_is_refused_with_resource_exhausted() -> None:
    async with grpc_sidecar(grpc_max_message_bytes=1024) as (_, channel, up):
        assert up is not None
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(ECHO + "Unary")(b"x" * 4096)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert up.requests == []


# --- inferences ---------------------------------------------------------------------------------


async def test_model_infer_is_counted_with_model_version_and_batch() -> None:
    async with grpc_sidecar() as (sidecar, channel, _up):
        answer = await channel.unary_unary(MODEL_INFER)(infer_request("resnet", "2", batch=8))
        assert service_pb2.ModelInferResponse.FromString(answer).model_name == "resnet"
        assert inferences(sidecar, "success", model_version="2") == 1
        batch = metric(sidecar, schema.BATCH_SIZE.sum, model_name="resnet")
        assert batch == 8
        duration = metric(
            sidecar, schema.INFERENCE_DURATION.count, **{**RESNET, "model_version": "2"}
        )
        assert duration == 1
        assert in_flight(sidecar) == (0, 0)


async def test_default_version_labels_an_unversioned_model_infer() -> None:
    async with grpc_sidecar(default_version="2") as (sidecar, channel, _up):
        await channel.unary_unary(MODEL_INFER)(infer_request("resnet", "", batch=1))
        await channel.unary_unary(MODEL_INFER)(infer_request("resnet", "3", batch=1))
        assert inferences(sidecar, "success", model_version="2") == 1
        assert inferences(sidecar, "success", model_version="3") == 1
        assert inferences(sidecar, "success") == 0  # model_version=""


async def test_health_and_metadata_rpcs_are_forwarded_not_counted() -> None:
    async with grpc_sidecar() as (sidecar, channel, _up):
        answer = await channel.unary_unary(OIP + "ServerReady")(b"")
        assert service_pb2.ServerReadyResponse.FromString(answer).ready
        total = schema.INFERENCE_TOTAL.name
        assert sidecar.registry.get_sample_value(total, {"source": "sidecar"}) is None


async def test_a_message_that_does_not_parse_is_forwarded_and_counted_as_the_default() -> None:
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        with pytest.raises(aio.AioRpcError):
            await channel.unary_unary(MODEL_INFER)(b"\xff\xff\xff garbage")
        assert up.requests == [b"\xff\xff\xff garbage"]  # it reached the upstream as sent
        labels = {"model_name": "unknown", "model_version": ""}
        assert (
            sum(
                metric(sidecar, schema.INFERENCE_TOTAL.name, status=status, **labels)
                for status in ("success", "error")
            )
            == 1
        )


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("NOT_FOUND", schema.REASON_CLIENT_ERROR),
        ("INVALID_ARGUMENT", schema.REASON_CLIENT_ERROR),
        ("INTERNAL", schema.REASON_SERVER_ERROR),
        ("UNIMPLEMENTED", schema.REASON_SERVER_ERROR),
        ("UNAVAILABLE", schema.REASON_UPSTREAM_UNAVAILABLE),
        ("DEADLINE_EXCEEDED", schema.REASON_TIMEOUT),
        ("CANCELLED", schema.REASON_CANCELLED),
    ],
)
async def test_upstream_statuses_count_by_the_table(status: str, reason: str) -> None:
    async with grpc_sidecar() as (sidecar, channel, _up):
        with pytest.raises(aio.AioRpcError) as caught:
            metadata = (("x-status", status),)
            await channel.unary_unary(MODEL_INFER)(infer_request(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode[status]
        assert failures(sidecar, reason) == 1
        assert inferences(sidecar, "error") == 1
        assert inferences(sidecar, "success") == 0
        assert in_flight(sidecar) == (0, 0)


async def test_an_upstream_that_is_down_is_upstream_unavailable() -> None:
    async with grpc_sidecar(upstream_target=f"{LOOPBACK}:{free_port()}") as (sidecar, channel, _):
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(MODEL_INFER)(infer_request(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failures(sidecar, schema.REASON_UPSTREAM_UNAVAILABLE) == 1


async def test_the_callers_deadline_goes_upstream_and_counts_as_timeout() -> None:
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(MODEL_INFER)(
                infer_request(), metadata=(("x-sleep", "5"),), timeout=0.5
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "grpc-timeout" not in up.metadata[-1]  # a deadline, not metadata
        await poll(lambda: failures(sidecar, schema.REASON_TIMEOUT) == 1, "the timeout counted")
        await poll(lambda: in_flight(sidecar) == (0, 0), "the gauges back at 0")


async def test_a_caller_that_cancels_is_counted_cancelled() -> None:
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        call = channel.unary_unary(MODEL_INFER)(infer_request(), metadata=(("x-sleep", "5"),))
        await poll(lambda: up.started.is_set(), "the call to reach the upstream")
        call.cancel()
        await poll(lambda: failures(sidecar, schema.REASON_CANCELLED) == 1, "the cancel counted")
        await poll(lambda: in_flight(sidecar) == (0, 0), "the gauges back at 0")


async def test_each_stream_infer_request_is_an_inference_with_its_first_response() -> None:
    async with grpc_sidecar() as (sidecar, channel, _up):

        async def requests() -> AsyncIterator[bytes]:
            for batch in (1, 2, 4):
                yield infer_request("resnet", batch=batch)

        answers = [m async for m in channel.stream_stream(STREAM_INFER)(requests())]
        expected = [stream_response(infer_request("resnet", batch=b), None) for b in (1, 2, 4)]
        assert answers == expected
        assert inferences(sidecar, "success") == 3
        assert metric(sidecar, schema.BATCH_SIZE.sum, model_name="resnet") == 7
        ttfb = metric(sidecar, schema.TIME_TO_FIRST_BYTE.count, **RESNET)
        assert ttfb == 3
        assert in_flight(sidecar) == (0, 0)


async def test_a_decoupled_model_answers_one_request_with_several_responses() -> None:
    async with grpc_sidecar() as (sidecar, channel, _up):

        async def requests() -> AsyncIterator[bytes]:
            for _ in range(2):
                yield infer_request("resnet")

        call = channel.stream_stream(STREAM_INFER)(requests(), metadata=(("x-decoupled", "3"),))
        answers = [m async for m in call]
        assert len(answers) == 6
        assert inferences(sidecar, "success") == 2
        assert metric(sidecar, schema.TIME_TO_FIRST_BYTE.count, **RESNET) == 2


# --- admission and health -----------------------------------------------------------------------


async def test_admission_overflow_is_unavailable_with_a_retry_pushback_and_counted_rejected() -> (
    None
):
    async with grpc_sidecar(max_concurrency=1, max_queue=0, retry_after=2) as (
        sidecar,
        channel,
        up,
    ):
        assert up is not None
        held = channel.unary_unary(MODEL_INFER)(infer_request(), metadata=(("x-sleep", "1"),))
        await poll(lambda: up.started.is_set(), "the first call to hold the slot")
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(MODEL_INFER)(infer_request())
        err = caught.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert err.details() == "overloaded: admission queue is full"
        assert dict(err.trailing_metadata())["grpc-retry-pushback-ms"] == "2000"
        await held
        assert failures(sidecar, schema.REASON_REJECTED) == 1
        assert inferences(sidecar, "success") == 1
        assert in_flight(sidecar) == (0, 0)


async def test_a_deadline_that_passes_in_the_admission_queue_counts_as_timeout() -> None:
    async with grpc_sidecar(max_concurrency=1, max_queue=4, queue_timeout=30) as (
        sidecar,
        channel,
        up,
    ):
        assert up is not None
        held = channel.unary_unary(MODEL_INFER)(infer_request(), metadata=(("x-sleep", "2"),))
        await poll(lambda: up.started.is_set(), "the first call to hold the slot")
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(MODEL_INFER)(infer_request(), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await poll(lambda: failures(sidecar, schema.REASON_TIMEOUT) == 1, "the timeout counted")
        await held
        assert failures(sidecar, schema.REASON_CANCELLED) == 0
        assert inferences(sidecar, "success") == 1
        await poll(lambda: in_flight(sidecar) == (0, 0), "the gauges back at 0")


async def health_status(channel: aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    return int(response.status)


async def test_the_sidecar_answers_grpc_health_from_its_readiness() -> None:
    async with grpc_sidecar(drain_quiet_period=30.0) as (sidecar, channel, up):
        assert up is not None
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        assert up.metadata == []  # answered by the sidecar, not forwarded
        assert sidecar.drainer is not None
        sidecar.drainer.begin()

        async def not_serving() -> bool:
            return await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING

        await poll(not_serving, "health to say NOT_SERVING while draining")
        # The quiet period still serves new calls.
        assert await channel.unary_unary(ECHO + "Unary")(b"ab") == b"ba"


async def test_a_long_stream_in_flight_finishes_during_the_drain() -> None:
    async with grpc_sidecar(drain_quiet_period=0.0) as (sidecar, channel, _up):
        assert sidecar.drainer is not None
        release = asyncio.Event()

        async def requests() -> AsyncIterator[bytes]:
            yield infer_request("resnet")
            await release.wait()
            yield infer_request("resnet")

        call = channel.stream_stream(STREAM_INFER)(requests())
        first = await call.read()
        assert first != grpc.aio.EOF
        drained = asyncio.ensure_future(sidecar.drain())
        await poll(lambda: sidecar.drainer is not None and sidecar.drainer.draining, "draining")
        assert not drained.done()
        # Past the quiet period the gRPC port sent GOAWAY: a new connection is refused.
        async with aio.insecure_channel(f"{LOOPBACK}:{sidecar.grpc_port}") as fresh:
            with pytest.raises(aio.AioRpcError) as caught:
                await fresh.unary_unary(ECHO + "Unary")(b"x", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        release.set()
        assert await call.read() != grpc.aio.EOF
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        await asyncio.wait_for(drained, 10)
        assert inferences(sidecar, "success") == 2


# --- tracing ------------------------------------------------------------------------------------

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


async def test_a_traced_call_gets_a_server_span_that_continues_the_callers_trace() -> None:
    with in_memory_tracing() as exporter:
        async with grpc_sidecar() as (sidecar, channel, up):
            assert up is not None
            assert type(sidecar.grpc_proxy) is TracedGrpcProxy
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            with pytest.raises(aio.AioRpcError):
                await channel.unary_unary(MODEL_INFER)(
                    infer_request(),
                    metadata=(("traceparent", traceparent), ("x-status", "INTERNAL")),
                )
        (span,) = finished(exporter)
    trace_id, span_id = hex_ids(span)
    assert trace_id == CLIENT_TRACE
    assert format(span.parent.span_id, "016x") == CLIENT_SPAN
    assert span.name == MODEL_INFER
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert span.attributes["rpc.method"] == "ModelInfer"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert span.attributes["error.type"] == schema.REASON_SERVER_ERROR
    assert span.status.status_code == trace.StatusCode.ERROR
    # The upstream got this span as its parent, not the caller's.
    assert up.metadata[-1]["traceparent"] == f"00-{CLIENT_TRACE}-{span_id}-01"


async def test_an_unsampled_call_gets_no_span_and_a_traceparent_of_its_own() -> None:
    with in_memory_tracing(sampler="parentbased_always_on") as exporter:
        async with grpc_sidecar() as (_, channel, up):
            assert up is not None
            traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
            await channel.unary_unary(MODEL_INFER)(
                infer_request(), metadata=(("traceparent", traceparent),)
            )
        assert finished(exporter) == []
    sent = up.metadata[-1]["traceparent"]
    assert sent.startswith(f"00-{CLIENT_TRACE}-") and sent.endswith("-00")
    assert sent[36:52] != CLIENT_SPAN
