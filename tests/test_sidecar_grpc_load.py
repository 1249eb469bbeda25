"""Exact accounting of the gRPC proxy under load: thousands of concurrent mixed RPCs over
several channels, and the sidecar's counters equal what the clients saw, call for call."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.grpc_upstream import ECHO, OIP, GrpcUpstream, infer_request, running_grpc_upstream
from support.polling import poll
from support.ports import LOOPBACK
from support.sidecar import metric, sidecar_process
from support.upstreams import running_upstream
from test_sidecar_grpc import LARGE, grpc_sidecar

from inferwatch import schema
from inferwatch.sidecar.process import Sidecar

CALLS = 2000
CHANNELS = 8
DEADLINE = 15.0  # seconds: the burst of CALLS reaches the model first, even on a busy machine
MODELS = ("resnet", "bert", "yolo")
KINDS = (
    ("success", 6),
    ("not_found", 2),
    ("internal", 2),
    ("deadline", 1),
    ("cancel", 1),
    ("stream", 3),  # a ModelStreamInfer stream of 1-3 requests, read to the end
    ("stream_cancel", 1),  # a ModelStreamInfer stream cancelled after its answers came
    ("server_stream", 1),  # not an inference: forwarded, never counted
)
REASONS = (
    schema.REASON_CLIENT_ERROR,
    schema.REASON_SERVER_ERROR,
    schema.REASON_TIMEOUT,
    schema.REASON_CANCELLED,
    schema.REASON_REJECTED,
    schema.REASON_UPSTREAM_UNAVAILABLE,
)
# What the client saw -> the reason the sidecar must have counted.
SEEN_REASON = {
    grpc.StatusCode.NOT_FOUND: schema.REASON_CLIENT_ERROR,
    grpc.StatusCode.INTERNAL: schema.REASON_SERVER_ERROR,
    grpc.StatusCode.DEADLINE_EXCEEDED: schema.REASON_TIMEOUT,
    grpc.StatusCode.CANCELLED: schema.REASON_CANCELLED,
}

Outcome = tuple[str, str, int]  # model, "success" or the failure reason, batch size


def _rejected(err: aio.AioRpcError) -> bool:
    pushback = dict(err.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
    return err.code() == grpc.StatusCode.UNAVAILABLE and pushback is not None


def _seen(err: aio.AioRpcError) -> str:
    if _rejected(err):
        return schema.REASON_REJECTED
    assert err.code() in SEEN_REASON, (err.code(), err.details())
    return SEEN_REASON[err.code()]


class Client:
    """Makes one planned call and reports the inferences its caller saw."""

    def __init__(self, up: GrpcUpstream) -> None:
        self.up = up
        self.server_streams = 0
        self.server_streams_rejected = 0

    async def unary(
        self, channel: aio.Channel, index: int, kind: str, model: str, batch: int
    ) -> list[Outcome]:
        request = infer_request(model, batch=batch)
        metadata: tuple[tuple[str, str], ...] = ()
        timeout: float | None = 60
        if kind == "not_found":
            metadata = (("x-status", "NOT_FOUND"),)
        elif kind == "internal":
            metadata = (("x-status", "INTERNAL"),)
        elif kind == "deadline":
            # Long enough for the sidecar to read the request under the burst (asserted below):
            # a call whose deadline passes before its first message is read names no model.
            metadata, timeout = (("x-sleep", "60"), ("x-call", str(index))), DEADLINE
        elif kind == "cancel":
            metadata = (("x-sleep", "30"), ("x-call", str(index)))
        else:
            metadata = (("x-sleep", "0.005"),)
        call = channel.unary_unary(OIP + "ModelInfer")(request, metadata=metadata, timeout=timeout)
        if kind == "cancel":
            answered = asyncio.ensure_future(call.code())
            reached = asyncio.ensure_future(
                poll(lambda: str(index) in self.up.calls, "the call upstream", timeout=60)
            )
            await asyncio.wait((answered, reached), return_when=asyncio.FIRST_COMPLETED)
            reached.cancel()
            if not answered.done():  # at the model: the caller gives up
                call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            return [(model, schema.REASON_CANCELLED, batch)]
        except aio.AioRpcError as err:
            return [(model, _seen(err), batch)]
        return [(model, "success", batch)]

    async def stream(
        self, channel: aio.Channel, kind: str, model: str, batches: list[int]
    ) -> list[Outcome]:
        done = asyncio.Event()

        async def requests() -> AsyncIterator[bytes]:
            for batch in batches:
                yield infer_request(model, batch=batch)
            if kind == "stream_cancel":
                await done.wait()  # never half-closes: the caller cancels

        call = channel.stream_stream(OIP + "ModelStreamInfer")(requests(), timeout=60)
        answered = 0
        try:
            while answered < len(batches):
                if await call.read() == aio.EOF:
                    break
                answered += 1
            if kind == "stream_cancel":
                call.cancel()
                done.set()
            else:
                assert await call.read() == aio.EOF
                assert await call.code() == grpc.StatusCode.OK
        except aio.AioRpcError as err:
            assert _rejected(err), (err.code(), err.details())
            assert answered == 0
            # Rejected at the door: only the first request was read, and counted rejected.
            return [(model, schema.REASON_REJECTED, batches[0])]
        assert answered == len(batches)
        return [(model, "success", batch) for batch in batches]

    async def server_stream(self, channel: aio.Channel) -> list[Outcome]:
        try:
            call = channel.unary_stream(ECHO + "ServerStream")(b"3", timeout=60)
            parts = [m async for m in call]
        except aio.AioRpcError as err:
            assert _rejected(err), (err.code(), err.details())  # admission covers every RPC
            self.server_streams_rejected += 1
            return []
        assert parts == [b"part-0", b"part-1", b"part-2"]
        self.server_streams += 1
        return []

    async def one(self, channel: aio.Channel, index: int, plan: tuple[Any, ...]) -> list[Outcome]:
        kind, model, batches = plan
        if kind == "server_stream":
            return await self.server_stream(channel)
        if kind in ("stream", "stream_cancel"):
            return await self.stream(channel, kind, model, batches)
        return await self.unary(channel, index, kind, model, batches[0])


def _plan(seed: int) -> list[tuple[str, str, list[int]]]:
    rng = random.Random(seed)
    kinds = [kind for kind, weight in KINDS for _ in range(weight)]
    plan = []
    for _ in range(CALLS):
        kind = rng.choice(kinds)
        size = rng.randint(1, 3) if kind.startswith("stream") else 1
        plan.append((kind, rng.choice(MODELS), [rng.randint(1, 9) for _ in range(size)]))
    return plan


def _counted(sidecar: Sidecar, model: str) -> float:
    labels = {"model_name": model, "model_version": ""}
    return sum(
        metric(sidecar, schema.INFERENCE_TOTAL.name, status=status, **labels)
        for status in ("success", "error")
    )


def _by_reason(sidecar: Sidecar, model: str) -> list[tuple[str, float]]:
    labels = {"model_name": model, "model_version": ""}
    success = metric(sidecar, schema.INFERENCE_TOTAL.name, status="success", **labels)
    failures = schema.INFERENCE_FAILURES.name
    return sorted(
        [(reason, metric(sidecar, failures, reason=reason, **labels)) for reason in REASONS]
        + [("success", success)]
    )


@pytest.mark.parametrize(
    "limits",
    [{}, {"max_concurrency": 8, "max_queue": 16, "queue_timeout": 60}],
    ids=["unlimited", "admission"],
)
async def test_counters_equal_what_clients_saw_over_thousands_of_mixed_rpcs(
    limits: dict[str, Any],
) -> None:
    plan = _plan(7)
    if limits:
        # A deadline that passes in the admission queue is counted cancelled by admit()
        # (shared with HTTP), while the caller sees DEADLINE_EXCEEDED: left out here.
        plan = [("success", m, b) if k == "deadline" else (k, m, b) for k, m, b in plan]
    async with grpc_sidecar(**limits) as (sidecar, first_channel, up):
        assert up is not None
        channels = [first_channel] + [
            aio.insecure_channel(f"{LOOPBACK}:{sidecar.grpc_port}", options=LARGE)
            for _ in range(CHANNELS - 1)
        ]
        client = Client(up)
        try:
            results = await asyncio.gather(
                *(client.one(channels[i % CHANNELS], i, p) for i, p in enumerate(plan))
            )
        finally:
            for channel in channels[1:]:
                await channel.close()
        outcomes = [outcome for result in results for outcome in result]
        seen = Counter((model, what) for model, what, _ in outcomes)

        # Cancellations and deadlines end on the sidecar's side after the caller saw them.
        for model in MODELS:
            expected = sum(1 for m, _, _ in outcomes if m == model)
            await poll(
                lambda m=model, e=expected: _counted(sidecar, m) == e,
                lambda m=model: (
                    f"{m} counted as seen: {_by_reason(sidecar, m)} != "
                    f"{sorted((what, n) for (mm, what), n in seen.items() if mm == m)}"
                ),
            )
            await poll(
                lambda m=model: (
                    (
                        metric(sidecar, schema.ACTIVE_REQUESTS.name, model_name=m),
                        metric(sidecar, schema.QUEUE_LENGTH.name, model_name=m),
                    )
                    == (0, 0)
                ),
                f"{model}'s gauges back at 0",
            )

        deadlines = [str(i) for i, (kind, _, _) in enumerate(plan) if kind == "deadline"]
        assert set(deadlines) <= up.calls, "a deadline passed before the call reached the model"
        assert client.server_streams + client.server_streams_rejected == sum(
            1 for kind, _, _ in plan if kind == "server_stream"
        )
        assert seen[("resnet", schema.REASON_CANCELLED)] > 0
        assert seen[("resnet", schema.REASON_TIMEOUT)] > 0 or limits
        if limits:
            assert sum(v for (_, what), v in seen.items() if what == schema.REASON_REJECTED) > 0
        for model in MODELS:
            labels = {"model_name": model, "model_version": ""}
            failures = 0
            for reason in REASONS:
                got = metric(sidecar, schema.INFERENCE_FAILURES.name, reason=reason, **labels)
                assert got == seen[(model, reason)], (model, reason, _by_reason(sidecar, model))
                failures += seen[(model, reason)]
            total = schema.INFERENCE_TOTAL.name
            assert metric(sidecar, total, status="success", **labels) == seen[(model, "success")]
            assert metric(sidecar, total, status="error", **labels) == failures
            mine = [b for m, _, b in outcomes if m == model]
            assert metric(sidecar, schema.INFERENCE_DURATION.count, **labels) == len(mine)
            assert metric(sidecar, schema.BATCH_SIZE.count, model_name=model) == len(mine)
            assert metric(sidecar, schema.BATCH_SIZE.sum, model_name=model) == sum(mine)
        # Every inference that got past admission reached the model, once.
        rejected = sum(v for (_, what), v in seen.items() if what == schema.REASON_REJECTED)
        inference_messages = len(up.requests) - client.server_streams
        assert inference_messages == len(outcomes) - rejected


async def test_sigterm_under_streaming_load_fails_no_rpc_and_exits_0() -> None:
    """A real ``inferwatch sidecar`` process gets SIGTERM with long ModelStreamInfer streams
    and unary calls in flight: every call finishes, the process exits 0, and the port is
    closed to new connections afterwards."""
    async with (
        running_upstream() as http_up,
        running_grpc_upstream(LARGE) as up,
        sidecar_process(
            http_up.url,
            *("--drain-quiet-period", "0.3", "--ready-interval", "0.1"),
            grpc_upstream=up.target,
        ) as sidecar,
    ):
        target = f"{LOOPBACK}:{sidecar.grpc_port}"
        channel = aio.insecure_channel(target)
        release = asyncio.Event()
        streamed: list[int] = []

        async def long_stream() -> None:
            async def requests() -> AsyncIterator[bytes]:
                yield infer_request("resnet", batch=1)
                await release.wait()  # still open when SIGTERM comes
                yield infer_request("resnet", batch=2)

            call = channel.stream_stream(OIP + "ModelStreamInfer")(requests(), timeout=60)
            answers = [message async for message in call]
            assert await call.code() == grpc.StatusCode.OK
            streamed.append(len(answers))

        async def unary() -> None:
            call = channel.unary_unary(OIP + "ModelInfer")(
                infer_request("bert"), metadata=(("x-sleep", "0.5"),), timeout=60
            )
            await call

        streams = [asyncio.create_task(long_stream()) for _ in range(20)]
        await poll(lambda: len(up.requests) >= 20, "every stream's first request upstream")
        unaries = [asyncio.create_task(unary()) for _ in range(20)]
        await poll(lambda: len(up.requests) >= 40, "the unary calls at the model")

        sidecar.process.send_signal(signal.SIGTERM)

        async def refused() -> bool:
            fresh = aio.insecure_channel(target)
            try:
                # The sidecar's own health service: a probe that does not restart the quiet period.
                check = health_pb2_grpc.HealthStub(fresh).Check
                await check(health_pb2.HealthCheckRequest(), timeout=2)
                return False
            except aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                await fresh.close()

        # Past the quiet period: GOAWAY, new connections refused; calls in flight go on.
        await poll(refused, "new connections to be refused", timeout=20)
        assert sidecar.process.returncode is None
        release.set()
        await asyncio.gather(*streams, *unaries)  # raises if any call failed
        assert streamed == [2] * 20
        assert await asyncio.wait_for(sidecar.process.wait(), 30) == 0
        await channel.close()
