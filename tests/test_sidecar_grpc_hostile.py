"""The gRPC port against hostile clients and hostile upstreams.

Clients that grpcio would never be are written frame by frame with the ``h2`` library (a raw
HTTP/2 client on an asyncio connection); upstreams that misbehave are a raw HTTP/2 server of
the same kind, steered per call by the ``x-misbehave`` request metadata the sidecar forwards.
Every case ends in a gRPC status or a closed stream or connection, is counted exactly once or
(when no inference was identified: no whole request message was read) not at all, leaves the
in-flight gauges at 0, and the sidecar then serves a normal ModelInfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from grpc import aio
from support.grpc_upstream import ECHO, infer_request, infer_response
from support.polling import poll
from support.ports import LOOPBACK
from test_sidecar_grpc import MODEL_INFER, STREAM_INFER, grpc_sidecar

from inferwatch import schema
from inferwatch.sidecar.errors import GRPC_STATUS_REASONS
from inferwatch.sidecar.process import Sidecar

OVERLOADED = "overloaded: "
PUSHBACK = "grpc-retry-pushback-ms"


def framed(message: bytes, compressed: int = 0) -> bytes:
    """One gRPC message on the wire: flag, big-endian length, bytes."""
    return struct.pack(">BI", compressed, len(message)) + message


# --- what the sidecar counted ----------------------------------------------------------------


def samples(sidecar: Sidecar, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in sidecar.registry.collect()
        for s in family.samples
        if s.name == name and s.labels.get("source") == schema.SOURCE_SIDECAR
    ]


def counted(sidecar: Sidecar, status: str | None = None) -> float:
    """Inferences counted, of every model (of one status)."""
    return sum(
        value
        for labels, value in samples(sidecar, schema.INFERENCE_TOTAL.name)
        if status is None or labels["status"] == status
    )


def failed(sidecar: Sidecar) -> dict[str, float]:
    """Failures counted, by reason (the non-zero ones)."""
    found: dict[str, float] = {}
    for labels, value in samples(sidecar, schema.INFERENCE_FAILURES.name):
        if value:
            found[labels["reason"]] = found.get(labels["reason"], 0) + value
    return found


def gauges(sidecar: Sidecar) -> float:
    """model_active_requests + model_inference_queue_length, every model."""
    return sum(
        value
        for name in (schema.ACTIVE_REQUESTS.name, schema.QUEUE_LENGTH.name)
        for _, value in samples(sidecar, name)
    )


async def settled(sidecar: Sidecar, total: int, reasons: dict[str, float] | None = None) -> None:
    """The sidecar counted ``total`` inferences (failing for ``reasons``), its gauges at 0."""
    await poll(lambda: counted(sidecar) >= total, f"{total} inferences counted")
    await poll(lambda: gauges(sidecar) == 0, "the in-flight gauges back at 0")
    assert counted(sidecar) == total
    assert failed(sidecar) == (reasons or {})


async def still_serves(sidecar: Sidecar, channel: aio.Channel) -> None:
    """A normal ModelInfer after the case: answered, and counted as one more success."""
    before = counted(sidecar, "success")
    answer = await channel.unary_unary(MODEL_INFER)(infer_request(), timeout=30)
    assert answer == infer_response(infer_request())
    assert counted(sidecar, "success") == before + 1
    assert gauges(sidecar) == 0


# --- a raw HTTP/2 client ---------------------------------------------------------------------


@dataclass
class Answer:
    """What came back on one stream."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None  # the RST_STREAM error code
    ended: bool = False

    @property
    def status(self) -> str | None:
        """grpc-status, from the trailers or a trailers-only answer."""
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))

    @property
    def message(self) -> str | None:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message"))


class RawClient:
    """One HTTP/2 connection to the gRPC port, requests written as the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.closed = False
        self.goaway = False
        self.flush()

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        client = cls(reader, writer)
        try:
            yield client
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def request(
        self,
        path: str,
        body: bytes = b"",
        *,
        end: bool = True,
        headers: dict[str, str | None] | None = None,
    ) -> int:
        """Open a stream: a gRPC request's headers (``headers`` changes some; None drops
        one), then ``body`` as it is, with END_STREAM unless ``end`` is False."""
        fields: dict[str, str | None] = {
            ":method": "POST",
            ":scheme": "http",
            ":path": path,
            ":authority": LOOPBACK,
            "content-type": "application/grpc",
            "te": "trailers",
            **(headers or {}),
        }
        sent = [(name, value) for name, value in fields.items() if value is not None]
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, sent, end_stream=end and not body)
        if body:
            self.conn.send_data(stream, body, end_stream=end)
        self.answers[stream] = Answer()
        self.flush()
        return stream

    def reset(self, stream: int) -> None:
        self.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    async def answer(self, stream: int) -> Answer:
        """Read until ``stream`` ends, is reset, or the connection closes."""

        async def read() -> Answer:
            answer = self.answers[stream]
            while not answer.ended and not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    break
                for event in self.conn.receive_data(data):
                    self._on(event)
                self.flush()
            return answer

        return await asyncio.wait_for(read(), 30)

    def _on(self, event: h2.events.Event) -> None:
        answer = self.answers.get(getattr(event, "stream_id", 0) or 0, Answer())
        if isinstance(event, h2.events.ResponseReceived):
            answer.headers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived):
            answer.data += event.data or b""
            length = event.flow_controlled_length or 0
            self.conn.acknowledge_received_data(length, event.stream_id or 0)
        elif isinstance(event, h2.events.TrailersReceived):
            answer.trailers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.StreamEnded):
            answer.ended = True
        elif isinstance(event, h2.events.StreamReset):
            answer.reset, answer.ended = int(event.error_code or 0), True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True


# --- not HTTP/2 at all -----------------------------------------------------------------------


def frames(data: bytes) -> list[int]:
    """The frame types in what a server wrote (each frame: 3-byte length, type, ...)."""
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length :]
    assert data == b"", "a partial frame"
    return types


@pytest.mark.parametrize(
    "sent",
    [
        b"POST /inference.GRPCInferenceService/ModelInfer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00",
        bytes(range(256)) * 16,
    ],
    ids=["http1", "garbage"],
)
async def test_bytes_that_are_not_http2_close_the_connection_uncounted(sent: bytes) -> None:
    """No HTTP/2 preface, no request: the connection is closed after the server's own preface
    (SETTINGS, WINDOW_UPDATE; no HTTP/1.1 answer), and nothing is counted."""
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        reader, writer = await asyncio.open_connection(LOOPBACK, sidecar.grpc_port)
        writer.write(sent)
        received = await asyncio.wait_for(reader.read(-1), 30)  # to EOF: closed
        writer.close()
        assert not received.startswith(b"HTTP/")
        assert frames(received)[0] == 0x4  # SETTINGS: HTTP/2 only
        assert up.requests == []
        await settled(sidecar, 0)
        await still_serves(sidecar, channel)


# --- HTTP/2 that is not quite gRPC -----------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", None], ids=["json", "absent"])
async def test_a_wrong_content_type_is_served_by_grpcio_and_counted_once(
    content_type: str | None,
) -> None:
    """grpc core does not check the content-type: an application/json (or absent) one is a
    normal call, forwarded and counted once."""
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        async with RawClient.connect(sidecar.grpc_port) as client:
            body = framed(infer_request())
            headers = {"content-type": content_type}
            answer = await client.answer(client.request(MODEL_INFER, body, headers=headers))
        assert answer.status == "0"
        assert answer.data == framed(infer_response(infer_request()))
        assert up.requests == [infer_request()]
        await settled(sidecar, 1)
        await still_serves(sidecar, channel)


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"te": None}, None), ({":method": "GET"}, None), ({"te": "gzip"}, grpc.StatusCode.INTERNAL)],
    ids=["no-te", "get", "te-gzip"],
)
async def test_a_request_grpcio_refuses_is_not_forwarded_or_counted(
    headers: dict[str, str | None], status: grpc.StatusCode | None
) -> None:
    """Without ``te: trailers``, or not a POST, grpc core resets the stream (RST_STREAM
    INTERNAL_ERROR); with ``te: gzip`` it answers INTERNAL ("Error parsing 'te' metadata").
    Either way before the proxy sees the call: nothing forwarded, nothing counted."""
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        async with RawClient.connect(sidecar.grpc_port) as client:
            body = framed(infer_request())
            answer = await client.answer(client.request(MODEL_INFER, body, headers=headers))
        if status is None:
            assert answer.reset == h2.errors.ErrorCodes.INTERNAL_ERROR
            assert answer.status is None
        else:
            assert answer.status == str(status.value[0])
            assert "te" in (answer.message or "")
        assert up.requests == []
        await settled(sidecar, 0)
        await still_serves(sidecar, channel)


# --- broken messages -------------------------------------------------------------------------


async def test_a_truncated_unary_message_waits_for_its_deadline_uncounted() -> None:
    """A length prefix announcing more bytes than sent, then END_STREAM: grpc core never
    hands the message over (a plain grpcio server does the same) and the call ends with its
    deadline, DEADLINE_EXCEEDED; without one, the client's RST_STREAM ends it. No message
    was read, so nothing is forwarded or counted, and the connection keeps serving."""
    async with grpc_sidecar() as (sidecar, _channel, up):
        assert up is not None
        truncated = framed(infer_request())[:20]
        async with RawClient.connect(sidecar.grpc_port) as client:
            timed = client.request(MODEL_INFER, truncated, headers={"grpc-timeout": "300m"})
            held = client.request(MODEL_INFER, truncated)
            answer = await client.answer(timed)
            assert answer.status == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
            # The same connection serves a whole call while the other one is held...
            normal = await client.answer(client.request(MODEL_INFER, framed(infer_request())))
            assert normal.status == "0"
            client.reset(held)  # ...and the client gives up on it.
        assert up.requests == [infer_request()]
        await settled(sidecar, 1)


async def test_a_truncated_stream_message_ends_the_stream_uncounted() -> None:
    """On ModelStreamInfer grpc core drops a truncated last message and sees the half-close:
    a stream without requests, answered OK by the upstream, no inference counted."""
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        async with RawClient.connect(sidecar.grpc_port) as client:
            truncated = framed(infer_request())[:20]
            answer = await client.answer(client.request(STREAM_INFER, truncated))
        assert answer.status == "0"
        assert answer.data == b""
        assert up.requests == []
        await settled(sidecar, 0)
        await still_serves(sidecar, channel)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (
            framed(infer_request(), compressed=1),
            {},
            grpc.StatusCode.INTERNAL,
            "Compression bit set but no encoding configured",
        ),
        (
            framed(infer_request(), compressed=1),
            {"grpc-encoding": "gzip"},
            grpc.StatusCode.INTERNAL,
            "Decompression failed",
        ),
        (
            b"\x00\xff\xff\xff\xff" + b"x" * 64,
            {},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Received message larger than max",
        ),
    ],
    ids=["compressed-without-encoding", "gzip-not-gzip", "announces-4GiB"],
)
async def test_a_message_grpcio_cannot_read_is_refused_uncounted(
    body: bytes, headers: dict[str, str | None], status: grpc.StatusCode, message: str
) -> None:
    """grpc core answers these itself (trailers-only) before the proxy gets a message."""
    async with grpc_sidecar(grpc_max_message_bytes=1 << 20) as (sidecar, channel, up):
        assert up is not None
        async with RawClient.connect(sidecar.grpc_port) as client:
            answer = await client.answer(client.request(MODEL_INFER, body, headers=headers))
        assert answer.status == str(status.value[0])
        assert message in (answer.message or "")
        assert up.requests == []
        await settled(sidecar, 0)
        await still_serves(sidecar, channel)


@pytest.mark.parametrize("method", [MODEL_INFER, STREAM_INFER])
async def test_an_oversized_message_is_resource_exhausted_and_never_forwarded(
    method: str,
) -> None:
    """Past grpc_max_message_bytes: RESOURCE_EXHAUSTED from grpc core, the upstream never
    sees it, and it is not counted (it was never read)."""
    async with grpc_sidecar(grpc_max_message_bytes=4096) as (sidecar, channel, up):
        assert up is not None
        big = infer_request(batch=1024)
        assert len(big) > 4096
        with pytest.raises(aio.AioRpcError) as caught:
            if method == MODEL_INFER:
                await channel.unary_unary(method)(big, timeout=30)
            else:
                call = channel.stream_stream(method)(iter([big]), timeout=30)
                async for _ in call:
                    pass
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert up.requests == []
        await settled(sidecar, 0)
        await still_serves(sidecar, channel)


# --- clients that never half-close -----------------------------------------------------------


async def test_a_unary_call_without_half_close_is_still_answered_and_counted_once() -> None:
    """A ModelInfer whose request never ends the stream: grpcio hands its one message over,
    the upstream answers, the client gets OK (and the stream's end), counted once."""
    async with grpc_sidecar() as (sidecar, channel, up):
        assert up is not None
        async with RawClient.connect(sidecar.grpc_port) as client:
            stream = client.request(MODEL_INFER, framed(infer_request()), end=False)
            answer = await client.answer(stream)
        assert answer.status == "0"
        assert answer.data == framed(infer_response(infer_request()))
        await settled(sidecar, 1)
        await still_serves(sidecar, channel)


async def open_stream(
    channel: aio.Channel, method: str, first: bytes, timeout: float | None
) -> tuple[Any, asyncio.Event]:
    """A stream-stream call that sends ``first`` and then never half-closes."""
    never = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield first
        await never.wait()

    return channel.stream_stream(method)(requests(), timeout=timeout), never


@pytest.mark.parametrize("end", ["deadline", "cancel"])
async def test_a_stream_left_open_ends_by_deadline_or_cancel_counted_once(end: str) -> None:
    """ModelStreamInfer: one request, never half-closed, at an upstream that holds it
    unanswered. The caller's deadline ends it (DEADLINE_EXCEEDED, counted timeout) or the
    caller cancels (counted cancelled): once, for the one request read."""
    async with raw_upstream_sidecar() as (sidecar, channel, up):
        metadata_first = infer_request()
        timeout = 2.0 if end == "deadline" else None
        call, _ = await open_stream(channel, STREAM_INFER, metadata_first, timeout)
        await poll(lambda: up.streams_seen >= 1, "the stream to reach the upstream")
        if end == "cancel":
            call.cancel()
            reason = schema.REASON_CANCELLED
        else:
            with pytest.raises(aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            reason = schema.REASON_TIMEOUT
        await settled(sidecar, 1, {reason: 1})
        await still_serves(sidecar, channel)


async def test_a_client_stream_left_open_ends_by_its_deadline_uncounted() -> None:
    """A client-streaming call of an unknown method (not an inference), never half-closed:
    forwarded, ended by the caller's deadline, nothing counted."""
    async with raw_upstream_sidecar() as (sidecar, channel, up):
        never = asyncio.Event()

        async def requests() -> AsyncIterator[bytes]:
            yield b"part"
            await never.wait()

        call = channel.stream_unary(ECHO + "ClientStream")(requests(), timeout=1.0)
        with pytest.raises(aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert up.streams_seen == 1
        await settled(sidecar, 0)
        await still_serves(sidecar, channel)


# --- thousands of streams on one connection --------------------------------------------------

STREAMS = 3000


@pytest.mark.parametrize(
    "admission",
    [{}, {"max_concurrency": 4, "max_queue": 16, "retry_after": 3}],
    ids=["no-admission", "admission"],
)
async def test_thousands_of_concurrent_calls_on_one_channel_are_each_answered_and_counted(
    admission: dict[str, int],
) -> None:
    """3,000 ModelInfer calls at once on one channel (one HTTP/2 connection): each ends OK
    or, under admission, UNAVAILABLE "overloaded: ..." with grpc-retry-pushback-ms; the
    sidecar's success and rejected counters equal what the client saw."""
    async with grpc_sidecar(**admission) as (sidecar, channel, up):
        assert up is not None
        infer = channel.unary_unary(MODEL_INFER)
        expected = infer_response(infer_request())

        async def one(metadata: tuple[tuple[str, str], ...] = ()) -> str:
            try:
                answer = await infer(infer_request(), metadata=metadata, timeout=120)
            except aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                assert (err.details() or "").startswith(OVERLOADED)
                assert dict(err.trailing_metadata() or ())[PUSHBACK] == "3000"
                return "rejected"
            assert answer == expected
            return "success"

        held: list[asyncio.Task[str]] = []
        if admission:
            # Every slot busy for a second before the burst: the queue fills whatever the
            # machine's speed, so some calls are turned away for certain.
            slots = admission["max_concurrency"]
            held = [asyncio.ensure_future(one((("x-sleep", "1"),))) for _ in range(slots)]
            await poll(lambda: len(up.requests) == slots, "the held calls at the upstream")
        seen = await asyncio.gather(*(one() for _ in range(STREAMS - len(held))), *held)
        successes, rejected = seen.count("success"), seen.count("rejected")
        assert successes + rejected == STREAMS
        if admission:
            assert rejected > 0
        else:
            assert rejected == 0
        assert len(up.requests) == successes
        reasons = {schema.REASON_REJECTED: float(rejected)} if rejected else {}
        await settled(sidecar, STREAMS, reasons)
        assert counted(sidecar, "success") == successes
        await still_serves(sidecar, channel)


# --- upstreams that misbehave ----------------------------------------------------------------


@dataclass
class RawUpstream:
    """An HTTP/2 server written with ``h2``: answers a call as its ``x-misbehave`` says."""

    port: int = 0
    streams_seen: int = 0
    requests: list[bytes] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_outbound_headers=False
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        calls: dict[int, tuple[str, bytearray]] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = dict(event.headers or ())  # type: ignore[arg-type]
                        self.streams_seen += 1
                        calls[event.stream_id or 0] = (
                            str(headers.get("x-misbehave", "")),
                            bytearray(),
                        )
                    elif isinstance(event, h2.events.DataReceived):
                        calls[event.stream_id or 0][1].extend(event.data or b"")
                        length = event.flow_controlled_length or 0
                        conn.acknowledge_received_data(length, event.stream_id or 0)
                    elif isinstance(event, h2.events.StreamEnded):
                        how, body = calls.pop(event.stream_id or 0)
                        self.requests.append(bytes(body))
                        if not self.answer(conn, writer, event.stream_id or 0, how, bytes(body)):
                            return
                writer.write(conn.data_to_send())
        finally:
            writer.close()

    def answer(
        self,
        conn: h2.connection.H2Connection,
        writer: asyncio.StreamWriter,
        stream: int,
        how: str,
        body: bytes,
    ) -> bool:
        """Answer one call; False when the connection is to close now."""
        grpc_headers = [(":status", "200"), ("content-type", "application/grpc")]
        if how == "rst":
            conn.reset_stream(stream, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif how == "refused":
            conn.reset_stream(stream, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif how == "no-status":
            conn.send_headers(stream, grpc_headers)
            conn.send_data(stream, framed(b""))
            conn.send_headers(stream, [("x-other", "1")], end_stream=True)
        elif how.startswith("http-"):
            conn.send_headers(stream, [(":status", how[5:]), ("content-type", "text/plain")])
            conn.send_data(stream, b"not grpc", end_stream=True)
        elif how == "bad-message":  # a length prefix announcing more than the DATA holds
            conn.send_headers(stream, grpc_headers)
            conn.send_data(stream, b"\x00\x00\x00\x00\x40abc")
            conn.send_headers(stream, [("grpc-status", "0")], end_stream=True)
        elif how == "close":  # headers and half a message, then the connection goes
            conn.send_headers(stream, grpc_headers)
            conn.send_data(stream, framed(b"x" * 64)[:20])
            writer.write(conn.data_to_send())
            return False
        elif how == "garbage":  # not HTTP/2 frames
            writer.write(conn.data_to_send())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return False
        else:  # a proper answer: the ModelInferResponse echoing the request
            message = body[5:]
            conn.send_headers(stream, grpc_headers)
            conn.send_data(stream, framed(infer_response(message)))
            conn.send_headers(stream, [("grpc-status", "0")], end_stream=True)
        return True


@asynccontextmanager
async def raw_upstream_sidecar(
    **overrides: Any,
) -> AsyncIterator[tuple[Sidecar, aio.Channel, RawUpstream]]:
    up = RawUpstream()
    server = await asyncio.start_server(up.serve, LOOPBACK, 0)
    up.port = server.sockets[0].getsockname()[1]
    try:
        async with grpc_sidecar(upstream_target=up.target, **overrides) as (sidecar, channel, _):
            yield sidecar, channel, up
    finally:
        server.close()


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("rst", grpc.StatusCode.INTERNAL),
        ("refused", grpc.StatusCode.UNAVAILABLE),
        ("no-status", grpc.StatusCode.UNKNOWN),
        ("http-503", grpc.StatusCode.UNAVAILABLE),
        ("http-404", grpc.StatusCode.UNIMPLEMENTED),
        ("http-500", grpc.StatusCode.UNKNOWN),
        ("bad-message", grpc.StatusCode.INTERNAL),  # grpcio's client reads OK, no message
        ("close", grpc.StatusCode.UNAVAILABLE),
        ("garbage", grpc.StatusCode.UNKNOWN),
    ],
)
async def test_an_upstream_that_misbehaves_gives_the_client_a_status_counted_once(
    how: str, status: grpc.StatusCode
) -> None:
    """What grpcio makes of each (the sidecar's upstream channel), passed to the client and
    counted once for the reason errors.GRPC_STATUS_REASONS gives that status."""
    async with raw_upstream_sidecar() as (sidecar, channel, up):
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(MODEL_INFER)(
                infer_request(), metadata=(("x-misbehave", how),), timeout=30
            )
        assert caught.value.code() == status, caught.value.details()
        assert up.requests == [framed(infer_request())]
        reason = GRPC_STATUS_REASONS[status.name]
        assert reason is not None
        await settled(sidecar, 1, {reason: 1})
        assert counted(sidecar, "error") == 1
        await still_serves(sidecar, channel)
