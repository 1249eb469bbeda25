"""Prototype (not adopted): the gRPC proxy's transport on h2 over asyncio protocols.

Measured against the grpcio proxy by benchmarks/bench_grpc_h2_gate.py (docs/sidecar.md, "What
was tried"); chosen by INFERWATCH_GRPC_H2=1 in this commit only. Unary relaying only was
checked; error paths, admission, deadlines, drain and the health service are missing.

Server side: one h2 server connection per accepted socket. Upstream side: a few h2 client
connections to the upstream's gRPC port. Each stream is relayed frame by frame (messages are
never re-encoded); inference RPCs open an exchange from their first request message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections import deque
from time import perf_counter
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from inferwatch import schema
from inferwatch.sidecar.errors import reason_for_grpc_status
from inferwatch.sidecar.exchange import NO_EXCHANGE, Exchange, Exchanges
from inferwatch.sidecar.grpc_protocols import classify_method, parse_request

log = logging.getLogger(__name__)


class _Null:
    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    trace = debug


if os.environ.get("H2_STUBS"):
    import hpack.hpack
    import hyperframe.frame

    hpack.hpack.log = _Null()  # type: ignore[assignment]
    hyperframe.frame.Frame.__repr__ = lambda self: ""  # type: ignore[method-assign]

WINDOW = 16 * 1024 * 1024
_STATUS_NAMES = {
    b"0": "OK",
    b"1": "CANCELLED",
    b"2": "UNKNOWN",
    b"3": "INVALID_ARGUMENT",
    b"4": "DEADLINE_EXCEEDED",
    b"5": "NOT_FOUND",
    b"6": "ALREADY_EXISTS",
    b"7": "PERMISSION_DENIED",
    b"8": "RESOURCE_EXHAUSTED",
    b"9": "FAILED_PRECONDITION",
    b"10": "ABORTED",
    b"11": "OUT_OF_RANGE",
    b"12": "UNIMPLEMENTED",
    b"13": "INTERNAL",
    b"14": "UNAVAILABLE",
    b"15": "DATA_LOSS",
    b"16": "UNAUTHENTICATED",
}


def _config(client_side: bool) -> H2Configuration:
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=not os.environ.get("H2_NOVALIDATE"),
        normalize_inbound_headers=False,
    )


_DIRTY: list[_H2Protocol] = []


def flush_all() -> None:
    while _DIRTY:
        _DIRTY.pop().write_now()


class _H2Protocol(asyncio.Protocol):
    """Common: an h2 connection over a transport, with per-stream pending output."""

    def __init__(self, client_side: bool) -> None:
        self.h2 = H2Connection(_config(client_side))
        self.transport: asyncio.Transport | None = None
        self.relays: dict[int, Relay] = {}
        self._pending: dict[int, deque[tuple[bytes, bool]]] = {}
        self.dirty = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        h2 = self.h2
        h2.local_settings.initial_window_size = WINDOW
        h2.local_settings.max_concurrent_streams = 100_000
        h2.initiate_connection()
        h2.increment_flow_control_window(WINDOW - 65535)
        self.flush()

    def flush(self) -> None:
        """Mark for writing at the end of the current batch of events."""
        if not self.dirty:
            self.dirty = True
            _DIRTY.append(self)

    def write_now(self) -> None:
        self.dirty = False
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def send_data(self, stream_id: int, data: bytes, end: bool) -> bool:
        """Send what the windows allow; True when all of it went."""
        pending = self._pending.get(stream_id)
        if pending is not None:
            pending.append((data, end))
            return False
        return self._send_now(stream_id, data, end)

    def _send_now(self, stream_id: int, data: bytes, end: bool) -> bool:
        h2 = self.h2
        view = memoryview(data)
        while True:
            window = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
            if len(view) <= window:
                h2.send_data(stream_id, view.tobytes() if len(view) != len(data) else data, end)
                return True
            if window > 0:
                h2.send_data(stream_id, view[:window].tobytes())
                view = view[window:]
                continue
            self._pending.setdefault(stream_id, deque()).appendleft((view.tobytes(), end))
            return False

    def _window_updated(self) -> None:
        for stream_id in list(self._pending):
            queue = self._pending.pop(stream_id)
            while queue:
                data, end = queue.popleft()
                try:
                    sent = self._send_now(stream_id, data, end)
                except H2Error:
                    queue.clear()
                    break
                if not sent:
                    self._pending[stream_id].extend(queue)
                    break
            relay = self.relays.get(stream_id)
            if relay is not None and stream_id not in self._pending:
                relay.drained(self)

    def forget(self, stream_id: int) -> None:
        self.relays.pop(stream_id, None)
        self._pending.pop(stream_id, None)


class ServerConnection(_H2Protocol):
    def __init__(self, server: H2GrpcServer) -> None:
        super().__init__(False)
        self.server = server

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        relays = self.relays
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                relay = relays.get(event.stream_id)
                if relay is not None:
                    relay.request_data(
                        event.data, event.flow_controlled_length, event.stream_ended is not None
                    )
                else:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is RequestReceived:
                relay = Relay(self, event.stream_id, event.headers)
                relays[event.stream_id] = relay
                self.server.start(relay)
            elif kind is StreamEnded:
                relay = relays.get(event.stream_id)
                if relay is not None and not relay._ended:
                    relay.request_end()
            elif kind is WindowUpdated:
                self._window_updated()
            elif kind is StreamReset:
                relay = relays.pop(event.stream_id, None)
                if relay is not None:
                    relay.client_reset()
            elif kind is ConnectionTerminated:
                pass
        self.flush()
        flush_all()

    def connection_lost(self, exc: Exception | None) -> None:
        for relay in list(self.relays.values()):
            relay.client_reset()
        self.relays.clear()


class UpstreamConnection(_H2Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__(True)
        self.pool = pool
        self.closed = False

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        relays = self.relays
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                relay = relays.get(event.stream_id)
                if relay is not None:
                    relay.response_data(event.data, event.flow_controlled_length)
                else:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is ResponseReceived:
                relay = relays.get(event.stream_id)
                if relay is not None:
                    relay.response_headers(event.headers, event.stream_ended is not None)
            elif kind is TrailersReceived:
                relay = relays.pop(event.stream_id, None)
                if relay is not None:
                    relay.response_trailers(event.headers)
            elif kind is StreamEnded:
                relay = relays.pop(event.stream_id, None)
                if relay is not None:
                    relay.response_end()
            elif kind is WindowUpdated:
                self._window_updated()
            elif kind is StreamReset:
                relay = relays.pop(event.stream_id, None)
                if relay is not None:
                    relay.upstream_reset(event.error_code)
            elif kind is ConnectionTerminated:
                self.closed = True
        self.flush()
        flush_all()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        for relay in list(self.relays.values()):
            relay.upstream_reset(ErrorCodes.INTERNAL_ERROR)
        self.relays.clear()

    def open_stream(self, relay: Relay, headers: list[tuple[bytes, bytes]]) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers)
        self.relays[stream_id] = relay
        return stream_id


class UpstreamPool:
    def __init__(self, host: str, port: int, size: int = 2) -> None:
        self.host, self.port, self.size = host, port, size
        self.connections: list[UpstreamConnection] = []
        self._connecting: asyncio.Task[None] | None = None
        self._waiting: deque[Relay] = deque()
        self._next = 0

    def get(self, relay: Relay) -> None:
        """Hand relay a connection now, or once one is up."""
        conns = self.connections
        if len(conns) >= self.size:
            self._next = (self._next + 1) % len(conns)
            relay.upstream_ready(conns[self._next])
            return
        self._waiting.append(relay)
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while len(self.connections) < self.size:
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
                self.connections.append(conn)
        except OSError:
            waiting, self._waiting = self._waiting, deque()
            for relay in waiting:
                relay.upstream_failed()
            flush_all()
            return
        finally:
            self._connecting = None
        waiting, self._waiting = self._waiting, deque()
        for relay in waiting:
            self.get(relay)
        flush_all()

    def lost(self, conn: UpstreamConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)


class Relay:
    """One RPC: the caller's stream on a server connection, its copy on an upstream one."""

    __slots__ = (
        "_asked",
        "_buffer",
        "_buffered_len",
        "_ended",
        "_server",
        "_status_sent",
        "client",
        "exchange",
        "headers",
        "method",
        "route",
        "start",
        "stream_id",
        "up",
        "up_id",
    )

    def __init__(self, client: ServerConnection, stream_id: int, headers: Any) -> None:
        self.start = perf_counter()
        self.client = client
        self.stream_id = stream_id
        self.headers = headers
        self.method = ""
        for name, value in headers:
            if name == b":path":
                self.method = value.decode("latin-1")
                break
        self.route = classify_method(self.method)
        self.exchange: Exchange = NO_EXCHANGE
        self.up: UpstreamConnection | None = None
        self.up_id = 0
        self._buffer: list[tuple[bytes, int]] = []
        self._buffered_len = 0
        self._ended = False
        self._asked = False
        self._status_sent = False

    # caller -> upstream
    def request_data(self, data: bytes, flow: int, end: bool) -> None:
        up = self.up
        if end:
            self._ended = True
        if up is None:
            self._buffer.append((data, flow))
            self._buffered_len += len(data)
            classified = self.route.is_inference and self._try_classify()
            if classified or end:
                self._ask()
            return
        up.send_data(self.up_id, data, end)
        self.client.h2.acknowledge_received_data(flow, self.stream_id)
        up.flush()

    def _ask(self) -> None:
        if not self._asked:
            self._asked = True
            self.client.server.pool.get(self)

    def _try_classify(self) -> bool:
        if self._buffered_len < 5:
            return False
        joined = b"".join(d for d, _ in self._buffer)
        self._buffer = [(joined, sum(f for _, f in self._buffer))]
        (length,) = struct.unpack_from(">I", joined, 1)
        if len(joined) >= 5 + length:
            fields = parse_request(self.route, joined[5 : 5 + length])
            self.exchange = self.client.server.exchanges.open(
                fields.model_name, fields.model_version, fields.batch_size, self.start
            )
            return True
        return False

    def request_end(self) -> None:
        self._ended = True
        up = self.up
        if up is None and self.route.is_inference and self.exchange is NO_EXCHANGE:
            self._ask()
            return
        if up is not None and self.up_id:
            up.send_data(self.up_id, b"", True)
            up.flush()

    def upstream_ready(self, up: UpstreamConnection) -> None:
        self.up = up
        headers = [(n, v) for n, v in self.headers if n != b"user-agent"]
        self.up_id = up.open_stream(self, headers)
        self.exchange.forwarding()
        client = self.client
        for index, (data, flow) in enumerate(self._buffer):
            last = index == len(self._buffer) - 1
            up.send_data(self.up_id, data, self._ended and last)
            client.h2.acknowledge_received_data(flow, self.stream_id)
        if self._ended and not self._buffer:
            up.send_data(self.up_id, b"", True)
        self._buffer = []
        up.flush()
        client.flush()

    def upstream_failed(self) -> None:
        self.client.h2.send_headers(
            self.stream_id,
            [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"14"),
                (b"grpc-message", b"upstream unavailable"),
            ],
            end_stream=True,
        )
        self.client.flush()
        self.exchange.failed(schema.REASON_UPSTREAM_UNAVAILABLE)
        self.client.forget(self.stream_id)

    # upstream -> caller
    def response_headers(self, headers: Any, ended: bool) -> None:
        self.client.h2.send_headers(self.stream_id, headers, end_stream=ended)
        if ended:
            self._finish(headers)
        self.client.flush()

    def response_data(self, data: bytes, flow: int) -> None:
        self.client.send_data(self.stream_id, data, False)
        assert self.up is not None
        self.up.h2.acknowledge_received_data(flow, self.up_id)
        self.client.flush()

    def response_trailers(self, headers: Any) -> None:
        client = self.client
        if client.transport is None or client.transport.is_closing():
            return
        if self.stream_id in client._pending:
            client._pending[self.stream_id].append((b"", False))
        client.h2.send_headers(self.stream_id, headers, end_stream=True)
        client.flush()
        self._finish(headers)

    def response_end(self) -> None:
        pass

    def _finish(self, headers: Any) -> None:
        status = b"2"
        for name, value in headers:
            if name == b"grpc-status":
                status = value
        exchange = self.exchange
        exchange.forwarded()
        if status == b"0":
            exchange.succeeded()
        else:
            exchange.failed(
                reason_for_grpc_status(_STATUS_NAMES.get(status, "UNKNOWN"))
                or schema.REASON_SERVER_ERROR
            )
        self.client.forget(self.stream_id)

    def upstream_reset(self, code: Any) -> None:
        with contextlib.suppress(H2Error):
            self.client.h2.reset_stream(self.stream_id, ErrorCodes.CANCEL)
        self.client.flush()
        self.exchange.forwarded()
        self.exchange.failed(schema.REASON_UPSTREAM_UNAVAILABLE)
        self.client.forget(self.stream_id)

    def client_reset(self) -> None:
        up = self.up
        if up is not None and self.up_id:
            with contextlib.suppress(H2Error):
                up.h2.reset_stream(self.up_id, ErrorCodes.CANCEL)
            up.forget(self.up_id)
            up.flush()
            self.exchange.forwarded()
        self.exchange.failed(schema.REASON_CANCELLED)

    def drained(self, conn: _H2Protocol) -> None:
        pass


class H2GrpcServer:
    def __init__(self, upstream: str, exchanges: Exchanges) -> None:
        host, _, port = upstream.rpartition(":")
        self.pool = UpstreamPool(host.strip("[]"), int(port))
        self.exchanges = exchanges
        self.server: asyncio.AbstractServer | None = None

    def start(self, relay: Relay) -> None:
        if not relay.route.is_inference:
            relay._ask()  # else once its first message is in

    async def listen(self, host: str | None, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ServerConnection(self), host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            self.server.close()


__all__ = ["H2GrpcServer", "SettingCodes"]
