"""Whatever bytes a client sends as an inference message, the gRPC proxy forwards them
byte-identical and counts each inference exactly once.

One sidecar (and one recording grpcio upstream) per test, reused across hypothesis'
examples: the async setup and every example run on one event loop the sync test drives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import grpc
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.grpc_upstream import infer_request
from support.polling import poll
from support.ports import LOOPBACK
from support.sidecar import running_sidecar
from support.upstreams import running_upstream
from test_sidecar_grpc_hostile import counted, gauges

from inferwatch import schema
from inferwatch.sidecar.config import Address
from inferwatch.sidecar.grpc_protocols import classify_method, parse_request
from inferwatch.sidecar.process import Sidecar

DEFAULT_MODEL = "fuzzed"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
TF_PREDICT = "/tensorflow.serving.PredictionService/Predict"
TS_PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
UNARY = (MODEL_INFER, TF_PREDICT, TS_PREDICTIONS)


class Recorder(grpc.GenericRpcHandler):
    """An upstream that records every request message as received and answers each with an
    empty message (a valid, empty response of every one of these services)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        if method in UNARY:

            async def unary(request: bytes, context: aio.ServicerContext) -> bytes:
                self.received.append((method, request))
                return b""

            return grpc.unary_unary_rpc_method_handler(unary)
        if method == STREAM_INFER:

            async def stream(
                requests: AsyncIterator[bytes], context: aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                async for request in requests:
                    self.received.append((method, request))
                    yield b""

            return grpc.stream_stream_rpc_method_handler(stream)
        return None


class Live:
    """The sidecar, its recording upstream and a client channel, on the test's own loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stack = AsyncExitStack()
        self.recorder = Recorder()
        self.sidecar: Sidecar
        self.channel: aio.Channel

    async def start(self) -> None:
        server = aio.server()
        server.add_generic_rpc_handlers((self.recorder,))
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        await server.start()
        self.stack.push_async_callback(server.stop, 0)
        http_up = await self.stack.enter_async_context(running_upstream())
        self.sidecar = await self.stack.enter_async_context(
            running_sidecar(
                http_up.url,
                grpc_listen=Address(LOOPBACK, 0),
                grpc_upstream=f"{LOOPBACK}:{port}",
                default_model=DEFAULT_MODEL,
            )
        )
        self.channel = aio.insecure_channel(f"{LOOPBACK}:{self.sidecar.grpc_port}")
        self.stack.push_async_callback(self.channel.close)

    def run(self, body: Callable[[], Any]) -> Any:
        return self.loop.run_until_complete(body())


@contextmanager
def live_sidecar() -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    live = Live(loop)
    try:
        loop.run_until_complete(live.start())
        yield live
    finally:
        loop.run_until_complete(live.stack.aclose())
        loop.close()


def default_count(sidecar: Sidecar) -> float:
    """Inferences counted under the default model, every version and status."""
    return sum(
        s.value
        for family in sidecar.registry.collect()
        for s in family.samples
        if s.name == schema.INFERENCE_TOTAL.name
        and s.labels.get("source") == schema.SOURCE_SIDECAR
        and s.labels.get("model_name") == DEFAULT_MODEL
    )


def named(method: str, message: bytes) -> bool:
    """Whether the proxy reads a model name (not the default) from ``message``."""
    name = parse_request(classify_method(method), message).model_name
    return bool(name) and name != DEFAULT_MODEL


def _mutated(data: tuple[bytes, int, int]) -> bytes:
    message, at, value = data
    if not message:
        return message
    at %= len(message)
    return message[:at] + bytes([value]) + message[at + 1 :]


# Plain noise, real ModelInferRequests cut short or with one byte changed, and protobuf-like
# bytes (a tag, a length, then whatever) that lead the parsers into nested fields.
messages = st.one_of(
    st.binary(max_size=512),
    st.tuples(st.text(max_size=12), st.integers(-2, 1 << 20), st.integers(0, 400)).map(
        lambda t: infer_request(t[0] or "m", batch=t[1] % 64)[: t[2]]
    ),
    st.tuples(
        st.just(infer_request("resnet", "2", batch=8)), st.integers(0, 200), st.integers(0, 255)
    ).map(_mutated),
    st.tuples(st.sampled_from(b"\n\x12\x1a\x2a\x08\x10"), st.integers(0, 127), st.binary()).map(
        lambda t: bytes([t[0], t[1]]) + t[2]
    ),
)
calls = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(UNARY), messages.map(lambda m: [m])),
        st.tuples(st.just(STREAM_INFER), st.lists(messages, min_size=1, max_size=4)),
    ),
    min_size=1,
    max_size=4,
)


async def send(channel: aio.Channel, method: str, sent: list[bytes]) -> None:
    """One call; its answers are the upstream's empty messages, status OK."""
    if method == STREAM_INFER:
        call = channel.stream_stream(method)(iter(sent), timeout=30)
        assert [answer async for answer in call] == [b""] * len(sent)
    else:
        (message,) = sent
        assert await channel.unary_unary(method)(message, timeout=30) == b""


def test_any_message_is_forwarded_byte_identical_and_counted_once() -> None:
    with live_sidecar() as live:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(calls=calls)
        def check(calls: list[tuple[str, list[bytes]]]) -> None:
            sidecar = live.sidecar

            async def body() -> None:
                before, before_default = counted(sidecar), default_count(sidecar)
                live.recorder.received.clear()
                for method, sent in calls:
                    await send(live.channel, method, sent)
                expected = [(method, message) for method, sent in calls for message in sent]
                assert live.recorder.received == expected  # as sent, in order
                await poll(lambda: counted(sidecar) >= before + len(expected), "counted")
                await poll(lambda: gauges(sidecar) == 0, "the gauges back at 0")
                assert counted(sidecar) == before + len(expected)
                assert counted(sidecar, "error") == 0
                unnamed = sum(1 for method, message in expected if not named(method, message))
                assert default_count(sidecar) - before_default == unnamed

            live.run(body)

        check()
