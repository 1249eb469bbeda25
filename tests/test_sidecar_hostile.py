"""The proxy port against hostile clients and hostile upstreams.

Every request goes through a raw ``asyncio.start_server`` upstream that records the exact
bytes it receives and reads them with a strict HTTP/1.1 parser of its own: a request boundary
it sees that the sidecar did not (request smuggling) shows up as an extra request there.
A read is parsed whole before any request in it is forwarded: a request whose bytes turn out
malformed later in the same read is never forwarded, and the valid requests before it are still
answered, in order, before the 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from support.polling import poll
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar

from inferwatch.sidecar import http1
from inferwatch.sidecar.process import Sidecar

LABELS = {"model_name": "m", "model_version": ""}
INFER = b"/v2/models/m/infer"


# --- a strict HTTP/1.1 reader, shared by the raw upstream and the raw client ---------------


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """A head's header fields; fails on anything but clean ``name: value`` CRLF lines."""
    lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        assert sep and name and name == name.strip() and b"\r" not in line and b"\n" not in line
        fields.append((name, value.strip(b" \t")))
    return fields


async def _read_body(reader: asyncio.StreamReader, fields: list[tuple[bytes, bytes]]) -> bytes:
    framing = {name.lower(): value for name, value in fields}
    if framing.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line[:-2].split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return bytes(body)
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
    return await reader.readexactly(int(framing.get(b"content-length", b"0")))


@dataclass
class Seen:
    """One request as the upstream parsed it."""

    head: bytes
    body: bytes
    connection: int

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in _fields(self.head) if n.lower() == name.lower()]


async def read_request(reader: asyncio.StreamReader, connection: int) -> Seen:
    head = await reader.readuntil(b"\r\n\r\n")
    method, target, version = head.split(b"\r\n", 1)[0].split(b" ")
    assert method.isalpha() and target[:1] == b"/" and version == b"HTTP/1.1"
    return Seen(head, await _read_body(reader, _fields(head)), connection)


@dataclass
class Answer:
    status: int
    head: bytes
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in _fields(self.head) if n.lower() == name.lower()]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = _fields(head)
    names = {n.lower() for n, _ in fields}
    if status < 200 or status in (204, 304):
        body = b""
    elif b"content-length" in names or b"transfer-encoding" in names:
        body = await _read_body(reader, fields)
    else:
        body = await reader.read(-1)  # close-delimited
    return Answer(status, head, body)


async def responses(data: bytes) -> list[Answer]:
    """Every whole response in what a client received, in order."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    found = []
    with contextlib.suppress(asyncio.IncompleteReadError):
        while not reader.at_eof():
            found.append(await read_response(reader))
    return found


# --- a raw upstream --------------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawUpstream", int], Awaitable[None]]


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def echo_targets(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RawUpstream, index: int
) -> None:
    """A well-behaved keep-alive upstream: each request answered with its target."""
    while True:
        seen = await read_request(reader, index)
        up.requests.append(seen)
        writer.write(ok(seen.target))
        await writer.drain()


class RawUpstream:
    """Records every byte per connection (``raw``), the requests its strict parser found
    (``requests``) and the connections the sidecar closed (``eofs``)."""

    def __init__(self, script: Script = echo_targets) -> None:
        self.script = script
        self.raw: list[bytearray] = []
        self.requests: list[Seen] = []
        self.eofs = 0
        self.url = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.AbstractServer | None = None

    @property
    def targets(self) -> list[bytes]:
        return [seen.target for seen in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index = len(self.raw)
        raw = bytearray()
        self.raw.append(raw)
        mirror = asyncio.StreamReader()

        async def pump() -> None:
            try:
                while data := await reader.read(65536):
                    raw.extend(data)
                    mirror.feed_data(data)
            except ConnectionError:
                pass
            finally:
                mirror.feed_eof()
                self.eofs += 1

        pumping = asyncio.create_task(pump())
        try:
            await self.script(mirror, writer, self, index)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # torn down with the test (asyncio logs a handler task that ends cancelled)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await pumping
            self._tasks.discard(task)

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.url = f"http://{LOOPBACK}:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@asynccontextmanager
async def proxy_to(
    script: Script = echo_targets, **overrides: Any
) -> AsyncIterator[tuple[RawUpstream, Sidecar]]:
    async with (
        RawUpstream(script) as up,
        running_sidecar(up.url, upstream_ready_path="", **overrides) as sc,
    ):
        yield up, sc


async def exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes; everything the sidecar sends until it closes the connection."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()


def infer(body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: m\r\n%sContent-Length: %d\r\n\r\n%s" % (
        INFER,
        extra,
        len(body),
        body,
    )


def failures(sc: Sidecar, reason: str) -> float:
    return metric(sc, "model_inference_failures_total", reason=reason, **LABELS)


def active(sc: Sidecar) -> float:
    return metric(sc, "model_active_requests", model_name="m")


async def assert_bad_request(data: bytes) -> None:
    (answer,) = await responses(data)
    assert answer.status == 400
    assert answer.header(b"Connection") == [b"close"]
    assert answer.json["reason"] == "bad_request"


async def assert_still_serving(sc: Sidecar, up: RawUpstream) -> None:
    """The sidecar survived: a fresh client is answered by the upstream."""
    before = len(up.requests)
    (answer,) = await responses(
        await exchange(
            sc.proxy_port, b"GET /alive HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
        )
    )
    assert (answer.status, answer.body) == (200, b"/alive")
    assert up.targets[before:] == [b"/alive"]


# --- request smuggling -----------------------------------------------------------------------

REFUSED = {
    "cl_and_te": b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "two_content_lengths": b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n"
    b"Content-Length: 30\r\n\r\nab",
    "two_equal_content_lengths": b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n"
    b"Content-Length: 2\r\n\r\nab",
    "content_length_list": b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 2, 2\r\n\r\nab",
    "chunked_then_identity": b"POST /x HTTP/1.1\r\nHost: m\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    "xchunked": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: xchunked\r\n\r\n"
    b"2\r\nab\r\n0\r\n\r\n",
    "te_twice": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    "te_not_chunked": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: gzip\r\n\r\nab",
    "te_identity_with_cl": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: identity\r\n"
    b"Content-Length: 2\r\n\r\nab",
    "space_before_colon": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding : chunked\r\n"
    b"Content-Length: 2\r\n\r\nab",
    "obs_fold": b"POST /x HTTP/1.1\r\nHost: m\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n"
    b"Content-Length: 2\r\n\r\nab",
    "bare_lf": b"POST /x HTTP/1.1\nHost: m\nContent-Length: 2\n\nab",
    "bare_lf_chunks": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\nab\n0\n\n",
    "bad_chunk_size": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nab\r\n0\r\n\r\n",
    "hex_prefixed_chunk_size": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n0x2\r\nab\r\n0\r\n\r\n",
    "negative_chunk_size": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n-2\r\nab\r\n0\r\n\r\n",
    "overflowing_chunk_size": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"\r\nFFFFFFFFFFFFFFFFF\r\nab\r\n0\r\n\r\n",
    "space_after_chunk_size": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n2 \r\nab\r\n0\r\n\r\n",
    "lf_in_chunk_extension": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n2;a\nb\r\nab\r\n0\r\n\r\n",
    "chunk_data_overrun": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n2\r\nabXX\r\n0\r\n\r\n",
    "content_length_in_trailer": b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n2\r\nab\r\n0\r\nContent-Length: 50\r\n\r\n",
    "negative_content_length": b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: -1\r\n\r\n",
    "plus_content_length": b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: +2\r\n\r\nab",
    "spaced_content_length": b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 1 0\r\n\r\n"
    b"0123456789",
    "huge_content_length": b"POST /x HTTP/1.1\r\nHost: m\r\n"
    b"Content-Length: 99999999999999999999999\r\n\r\n",
    # Header abuse
    "long_header_line": b"GET /x HTTP/1.1\r\nHost: m\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    "long_target": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: m\r\n\r\n",
    "too_many_headers": b"GET /x HTTP/1.1\r\nHost: m\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    + b"\r\n",
    "nul_in_value": b"GET /x HTTP/1.1\r\nHost: m\r\nX-A: a\x00b\r\n\r\n",
    "cr_in_value": b"GET /x HTTP/1.1\r\nHost: m\r\nX-A: a\rX-B: b\r\n\r\n",
    "non_ascii_header_name": b"GET /x HTTP/1.1\r\nHost: m\r\nX-\xe9: v\r\n\r\n",
    "empty_header_name": b"GET /x HTTP/1.1\r\nHost: m\r\n: v\r\n\r\n",
    "header_without_colon": b"GET /x HTTP/1.1\r\nHost: m\r\nBad Header\r\n\r\n",
    "two_hosts": b"GET /x HTTP/1.1\r\nHost: m\r\nHost: evil\r\n\r\n",
    "utf8_path": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: m\r\n\r\n",
    "invalid_utf8_path": b"GET /\xff HTTP/1.1\r\nHost: m\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: m\r\n\r\n",
    "tab_in_target": b"GET /a\tb HTTP/1.1\r\nHost: m\r\n\r\n",
    "lowercase_method": b"get /x HTTP/1.1\r\nHost: m\r\n\r\n",
    "unknown_method": b"FOO /x HTTP/1.1\r\nHost: m\r\n\r\n",
    "userinfo_target": b"GET @evil/x HTTP/1.1\r\nHost: m\r\n\r\n",
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
async def test_ambiguous_or_malformed_request_is_refused_and_never_forwarded(data: bytes) -> None:
    async with proxy_to() as (up, sc):
        await assert_bad_request(
            await exchange(sc.proxy_port, data + b"GET /after HTTP/1.1\r\n\r\n")
        )
        assert up.raw == []  # no connection to the upstream at all
        await assert_still_serving(sc, up)


HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: m\r\n\r\n"
ACCEPTED = {
    # (request, the body the upstream must get)
    "request_hidden_in_a_body": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: %d\r\n\r\n%s" % (len(HIDDEN), HIDDEN),
        HIDDEN,
    ),
    "request_hidden_in_a_get_body": (
        b"GET /x HTTP/1.1\r\nHost: m\r\nContent-Length: %d\r\n\r\n%s" % (len(HIDDEN), HIDDEN),
        HIDDEN,
    ),
    "request_hidden_in_chunks": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(HIDDEN), HIDDEN),
        HIDDEN,
    ),
    "chunk_extensions": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'2;name=value;q="a b"\r\nab\r\n1;x\r\nc\r\n0;end\r\n\r\n',
        b"abc",
    ),
    "trailers": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"ab",
    ),
    "uppercase_chunked": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: CHUNKED\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"ab",
    ),
    "tab_before_chunked": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding:\tchunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"ab",
    ),
    "leading_zeros_in_length": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nContent-Length: 0002\r\n\r\nab",
        b"ab",
    ),
    "transfer_encoding_named_in_connection": (
        b"POST /x HTTP/1.1\r\nHost: m\r\nConnection: Transfer-Encoding\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"ab",
    ),
}


@pytest.mark.parametrize(("data", "body"), ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_request_boundaries_are_the_same_on_both_sides(data: bytes, body: bytes) -> None:
    """Whatever framing the client used, the upstream sees exactly the sidecar's request
    boundaries: one request with the decoded body, then the follow-up request on the same
    client connection as a request of its own."""
    async with proxy_to() as (up, sc):
        answer = await exchange(
            sc.proxy_port, data + b"GET /next HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
        )
        assert [(r.status, r.body) for r in await responses(answer)] == [
            (200, b"/x"),
            (200, b"/next"),
        ]
        assert up.targets == [b"/x", b"/next"]
        assert up.requests[0].body == body
        # Framed by the sidecar alone: never both framings, never the client's chunk syntax.
        framing = up.requests[0].header(b"Content-Length") + up.requests[0].header(
            b"Transfer-Encoding"
        )
        assert len(framing) == 1


async def test_connection_header_naming_content_length_cannot_smuggle_a_request() -> None:
    """``Connection: Content-Length`` makes the sidecar strip the Content-Length it framed the
    body with; the upstream then reads the body as a second request, whose answer waits on
    the pooled connection for the next, unrelated client."""

    async def slow_smuggled(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RawUpstream, index: int
    ) -> None:
        # Answers in order, like any pipelining server; /smuggled takes a while (its answer
        # goes out when the next request has come in).
        deferred: list[Seen] = []
        while True:
            seen = await read_request(reader, index)
            up.requests.append(seen)
            if seen.target == b"/smuggled":
                deferred.append(seen)
                continue
            for earlier in (*deferred, seen):
                writer.write(ok(earlier.target))
            deferred.clear()

    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: m\r\n\r\n"
    async with proxy_to(slow_smuggled) as (up, sc):
        attacker = await responses(
            await exchange(
                sc.proxy_port,
                b"POST /x HTTP/1.1\r\nHost: m\r\nConnection: close, Content-Length\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled),
            )
        )
        victim = await responses(
            await exchange(
                sc.proxy_port, b"GET /victim HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
            )
        )
        assert [(r.status, r.body) for r in attacker] == [(200, b"/x")]
        assert [(r.status, r.body) for r in victim] == [(200, b"/victim")]
        assert up.targets == [b"/x", b"/victim"]
        assert up.requests[0].body == smuggled


async def test_connection_header_cannot_strip_the_host_header() -> None:
    async with proxy_to() as (up, sc):
        (answer,) = await responses(
            await exchange(
                sc.proxy_port, b"GET /x HTTP/1.1\r\nHost: model\r\nConnection: close, Host\r\n\r\n"
            )
        )
        assert answer.status == 200
        (seen,) = up.requests
        assert seen.header(b"Host") == [b"model"]


async def test_transfer_coding_the_sidecar_does_not_apply_is_not_silently_dropped() -> None:
    """RFC 9112 6.1: a transfer coding the server does not understand gets 501 (or the
    request is refused); forwarding the still-gzipped bytes as if they were the body hands
    the upstream a body that is not the client's."""
    async with proxy_to() as (up, sc):
        answer = await exchange(
            sc.proxy_port,
            b"POST /x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: gzip, chunked\r\n"
            b"Connection: close\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n",
        )
        (reply,) = await responses(answer)
        assert reply.status == 501
        assert json.loads(reply.body)["reason"] == "unsupported_transfer_coding"
        assert not up.raw  # nothing reached the upstream


# --- where requests go -----------------------------------------------------------------------


@asynccontextmanager
async def elsewhere() -> AsyncIterator[tuple[RawUpstream, str]]:
    """Another server on loopback, which no request may ever reach."""
    async with RawUpstream() as evil:
        yield evil, evil.url.removeprefix("http://")


@pytest.mark.parametrize(
    "line",
    [
        b"GET http://{evil}/ HTTP/1.1",
        b"GET HTTP://{evil}/v2/models/m/infer HTTP/1.1",
        b"POST http://{evil}/v2/models/m/infer HTTP/1.1",
        b"CONNECT {evil} HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
    ],
    ids=["absolute", "absolute_uppercase_scheme", "absolute_post", "connect", "asterisk"],
)
async def test_non_origin_form_targets_are_refused(line: bytes) -> None:
    async with elsewhere() as (evil, address), proxy_to() as (up, sc):
        request = line.replace(b"{evil}", address.encode()) + (
            b"\r\nHost: %s\r\nContent-Length: 2\r\n\r\n{}GET /after HTTP/1.1\r\nHost: m\r\n\r\n"
            % address.encode()
        )
        (answer,) = await responses(await exchange(sc.proxy_port, request))
        assert answer.status == 400
        assert answer.json["reason"] == "bad_request"
        assert answer.header(b"Connection") == [b"close"]
        assert up.raw == [] and evil.raw == []
        await assert_still_serving(sc, up)
        assert evil.raw == []


async def test_host_header_and_scheme_relative_path_never_change_where_requests_go() -> None:
    async with elsewhere() as (evil, address), proxy_to() as (up, sc):
        host = address.encode()
        answer = await exchange(
            sc.proxy_port,
            b"GET /x HTTP/1.1\r\nHost: %s\r\n\r\n"
            b"GET //%s/y HTTP/1.1\r\nHost: %s\r\nX-Forwarded-Host: %s\r\n"
            b"Connection: close\r\n\r\n" % (host, host, host, host),
        )
        assert [(r.status, r.body) for r in await responses(answer)] == [
            (200, b"/x"),
            (200, b"//" + host + b"/y"),  # a path, forwarded as one
        ]
        assert evil.raw == []
        assert [seen.header(b"Host") for seen in up.requests] == [[host], [host]]


async def test_non_ascii_header_value_is_forwarded_byte_for_byte() -> None:
    async with proxy_to() as (up, sc):
        answer = await exchange(
            sc.proxy_port,
            b"GET /x HTTP/1.1\r\nHost: m\r\nX-Name: caf\xc3\xa9 \xff\x80\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert [r.status for r in await responses(answer)] == [200]
        assert up.requests[0].header(b"X-Name") == [b"caf\xc3\xa9 \xff\x80"]


# --- pipelining ------------------------------------------------------------------------------


async def test_many_pipelined_requests_are_answered_in_order() -> None:
    async with proxy_to() as (up, sc):
        data = b"".join(b"GET /r%d HTTP/1.1\r\nHost: m\r\n\r\n" % i for i in range(150))
        answer = await exchange(
            sc.proxy_port, data + b"GET /last HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
        )
        expected = [b"/r%d" % i for i in range(150)] + [b"/last"]
        assert [r.body for r in await responses(answer)] == expected
        assert up.targets == expected


async def test_valid_request_before_a_malformed_one_is_still_answered() -> None:
    async with proxy_to() as (up, sc):
        answer = await exchange(
            sc.proxy_port,
            b"GET /good HTTP/1.1\r\nHost: m\r\n\r\nGET /bad HTTP/1.1\r\nBad Header\r\n\r\n",
        )
        assert [r.status for r in await responses(answer)] == [200, 400]
        assert up.targets == [b"/good"]


class Gate:
    """An upstream that answers each request only once the test opens the gate: a request
    stays in flight for as long as the test needs."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.open = asyncio.Event()

    async def handler(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: RawUpstream,
        index: int,
    ) -> None:
        while True:
            up.requests.append(await read_request(reader, index))
            self.arrived.set()
            await self.open.wait()
            writer.write(ok(b'{"outputs":[]}'))


@pytest.mark.parametrize(
    "in_flight",
    [
        pytest.param(False, id="same_read"),
        pytest.param(True, id="while_in_flight"),
    ],
)
async def test_request_with_connection_close_is_answered_whatever_follows(
    in_flight: bool,
) -> None:
    """RFC 9112 9.6: the server answers the request that carried ``close``, then closes and
    ignores anything after it."""
    gate = Gate()
    async with proxy_to(gate.handler) as (up, sc):
        reader, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        closing = infer(extra=b"Connection: close\r\n")
        extra = b"GET /ignored HTTP/1.1\r\nHost: m\r\n\r\n"
        try:
            if in_flight:
                writer.write(closing)
                await asyncio.wait_for(gate.arrived.wait(), 3)
                writer.write(extra)
                await writer.drain()
            else:
                writer.write(closing + extra)
            gate.open.set()
            received = await asyncio.wait_for(reader.read(-1), 3)
        finally:
            writer.close()
        assert [(r.status, r.body) for r in await responses(received)] == [(200, b'{"outputs":[]}')]
        assert up.targets == [INFER]
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 1


async def test_malformed_request_behind_one_in_flight_is_refused_after_its_answer() -> None:
    """RFC 9112 9.3.2: answers go out in request order, so the 400 for bytes that do not
    parse waits for the answer to the request before them, which is not cut."""
    gate = Gate()
    async with proxy_to(gate.handler) as (up, sc):
        reader, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        try:
            writer.write(infer())
            await asyncio.wait_for(gate.arrived.wait(), 3)
            writer.write(b"GET /bad HTTP/1.1\r\nBad Header\r\n\r\n")
            await writer.drain()
            gate.open.set()
            received = await asyncio.wait_for(reader.read(-1), 3)
        finally:
            writer.close()
        answers = await responses(received)
        assert [a.status for a in answers] == [200, 400]
        assert answers[0].body == b'{"outputs":[]}'
        assert json.loads(answers[1].body)["reason"] == "bad_request"
        assert up.targets == [INFER]
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 1


# --- slow and vanishing clients --------------------------------------------------------------


async def gated(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RawUpstream, index: int
) -> None:
    """Takes requests and never answers them."""
    while True:
        up.requests.append(await read_request(reader, index))


async def test_client_stalling_in_its_head_is_closed_by_the_idle_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_TIMEOUT", 0.2)
    async with proxy_to() as (up, sc):
        reader, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: m\r\nContent-Len")
        try:
            assert await asyncio.wait_for(reader.read(-1), 3) == b""
        finally:
            writer.close()
        assert up.raw == []


async def test_client_stalling_in_its_body_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head promising a body that never comes: the connection is busy, so the idle sweep
    skips it, and nothing else ever ends it (it also holds a drain open until its timeout).
    Expected: it is cut like a client stalling in its head (same idle timeout here)."""
    monkeypatch.setattr(http1, "KEEPALIVE_TIMEOUT", 0.2)
    async with proxy_to() as (up, sc):
        assert sc.drainer is not None
        reader, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: m\r\nContent-Length: 10\r\n\r\n{")
        try:
            received = await asyncio.wait_for(reader.read(-1), 1.5)
        except asyncio.TimeoutError:
            received = None  # still open
        finally:
            writer.close()
        assert received is not None, "the stalled upload was never cut off"
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert json.loads(received.partition(b"\r\n\r\n")[2])["reason"] == "request_timeout"
        await poll(lambda: sc.drainer is not None and sc.drainer.in_flight == 0, timeout=3.0)
        assert up.raw == []


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content_length"])
async def test_client_leaving_mid_upload_never_completes_the_upstream_request(
    chunked: bool,
) -> None:
    """A streamed upload cut by the client: the upstream must see its request end without
    the body's end (no terminating chunk, fewer bytes than the length), so it cannot take
    the half body for a whole one; the attempt counts as cancelled."""
    half = b"x" * 100_000
    if chunked:
        head = b"Transfer-Encoding: chunked\r\n\r\n"
        start = b"%x\r\n%s\r\n" % (len(half), half)
    else:
        head = b"Content-Length: 200000\r\n\r\n"
        start = half
    async with proxy_to(gated) as (up, sc):
        _, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: m\r\n" + head + start)
        await poll(lambda: len(up.raw) == 1 and len(up.raw[0]) > 64 * 1024, timeout=3.0)
        writer.close()
        await poll(lambda: up.eofs == 1 and active(sc) == 0, timeout=3.0)
        sent = bytes(up.raw[0])
        body = sent.partition(b"\r\n\r\n")[2]
        assert up.requests == []  # the strict reader never completed a request
        if chunked:
            assert b"Transfer-Encoding: chunked\r\n" in sent
            assert not body.endswith(b"0\r\n\r\n")
        else:
            assert b"Content-Length: 200000\r\n" in sent
            assert len(body) < 200_000
        assert failures(sc, "cancelled") == 1
        assert metric(sc, "model_inference_total", status="error", **LABELS) == 1


async def test_pipelined_requests_then_close_leave_nothing_behind() -> None:
    async with proxy_to(gated) as (up, sc):
        assert sc.drainer is not None
        _, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        writer.write(infer() * 3)
        await poll(lambda: len(up.requests) == 1, timeout=3.0)
        writer.close()
        await poll(lambda: up.eofs == 1 and active(sc) == 0, timeout=3.0)
        await poll(lambda: sc.drainer is not None and sc.drainer.in_flight == 0, timeout=3.0)
        assert up.targets == [INFER]  # the queued two were never sent
        assert failures(sc, "cancelled") == 1
        assert metric(sc, "model_inference_total", status="error", **LABELS) == 1
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 0


# --- hostile upstreams -----------------------------------------------------------------------


def first_connection(answer: bytes, then: str = "close") -> Script:
    """The first upstream connection reads one request and gets ``answer``, then is closed
    (``then="close"``) or left open until the sidecar closes it; later ones behave."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RawUpstream, index: int
    ) -> None:
        if index > 0:
            await echo_targets(reader, writer, up, index)
            return
        up.requests.append(await read_request(reader, index))
        writer.write(answer)
        await writer.drain()
        if then == "open":
            await reader.read(-1)

    return script


BROKEN_ANSWERS = {
    "not_http": b"HELLO WORLD\r\n\r\n",
    "nothing": b"",
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nab\r\n0\r\n\r\n",
    "te_and_cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    "two_content_lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\n"
    b"okhello",
    "bad_content_length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok",
    "negative_content_length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
    "short_body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
    "bad_chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "thousands_of_headers": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    + b"Content-Length: 2\r\n\r\nok",
    "huge_header": b"HTTP/1.1 200 OK\r\nX-A: "
    + b"a" * 100_000
    + b"\r\nContent-Length: 2\r\n\r\nok",
    "cr_in_header": b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok",
    "nul_in_header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "cr_in_reason": b"HTTP/1.1 200 OK\rX-Evil: 1\r\nContent-Length: 2\r\n\r\nok",
    "space_in_header_name": b"HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 2\r\n\r\nok",
    "no_content_with_body": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("answer", BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys())
async def test_broken_upstream_answer_gives_a_clear_502(answer: bytes) -> None:
    async with proxy_to(first_connection(answer)) as (up, sc):
        received = await exchange(
            sc.proxy_port,
            infer() + b"GET /after HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        failed, after = await responses(received)
        assert failed.status == 502
        assert failed.json["reason"] == "upstream_failed"
        assert failed.header(b"Set-Cookie") == []
        # The client's connection is intact: its next request is answered, by a new upstream
        # connection.
        assert (after.status, after.body) == (200, b"/after")
        assert up.targets == [INFER, b"/after"]
        assert [seen.connection for seen in up.requests] == [0, 1]
        assert failures(sc, "server_error") == 1
        assert metric(sc, "model_inference_total", status="error", **LABELS) == 1
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 0
        assert active(sc) == 0


async def test_storm_of_interim_answers_is_skipped() -> None:
    storm = b"HTTP/1.1 100 Continue\r\n\r\n" * 10_000 + b"HTTP/1.1 103 Early Hints\r\n\r\n" * 10
    final = b'{"outputs":[]}'
    async with proxy_to(first_connection(storm + ok(final))) as (_, sc):
        (answer,) = await responses(
            await exchange(sc.proxy_port, infer(extra=b"Connection: close\r\n"))
        )
        assert (answer.status, answer.body) == (200, final)
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 1
        assert active(sc) == 0


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\n",
    ],
    ids=["100", "103", "101"],
)
async def test_upstream_going_silent_after_an_interim_answer_times_out(interim: bytes) -> None:
    async with proxy_to(first_connection(interim, then="open"), upstream_timeout=0.3) as (_, sc):
        reader, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        writer.write(infer(extra=b"Connection: close\r\n"))
        try:
            received = await asyncio.wait_for(reader.read(-1), 1.5)
        except asyncio.TimeoutError:
            received = b""
            assert active(sc) == 0, "the request hangs (and is counted as active) forever"
        finally:
            writer.close()
        (answer,) = await responses(received)
        assert answer.status in (502, 504)
        assert failures(sc, "timeout") + failures(sc, "server_error") == 1
        assert active(sc) == 0


@pytest.mark.parametrize(
    "status_line", [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"], ids=["http11", "http10"]
)
async def test_close_delimited_upstream_answer_keeps_its_body(status_line: bytes) -> None:
    body = b'{"outputs":"sent until the connection closes"}'
    answer = status_line + b"\r\nContent-Type: application/json\r\n\r\n" + body
    async with proxy_to(first_connection(answer)) as (_, sc):
        (reply,) = await responses(
            await exchange(sc.proxy_port, infer(extra=b"Connection: close\r\n"))
        )
        assert reply.status == 200
        assert reply.body == body
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 1


async def test_invalid_upstream_status_gives_a_502() -> None:
    answer = b"HTTP/1.1 099 Weird\r\nContent-Length: 2\r\n\r\nok"
    async with proxy_to(first_connection(answer)) as (_, sc):
        received = await exchange(sc.proxy_port, infer(extra=b"Connection: close\r\n"))
        assert received.startswith(b"HTTP/1.1 502 ")
        assert failures(sc, "server_error") == 1
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
async def test_upstream_dying_mid_answer_cuts_the_client_connection(chunked: bool) -> None:
    """A streamed answer (chunked, or over BUFFER_RESPONSE_BYTES) has its status line out
    before the upstream fails: the client's connection is cut, short of the promised end."""
    if chunked:
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789"
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 300_000
    async with proxy_to(first_connection(answer)) as (_, sc):
        received = await exchange(sc.proxy_port, infer())  # keep-alive: only a cut ends it
        assert await responses(received) == []  # no whole answer
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        if chunked:
            assert b"Transfer-Encoding: chunked" in head
            assert not body.endswith(b"0\r\n\r\n")
        else:
            assert b"Content-Length: 1000000" in head
            assert len(body) < 1_000_000
        assert failures(sc, "server_error") == 1
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 0
        assert active(sc) == 0


async def test_endless_answer_abandoned_by_the_client_is_stopped_upstream() -> None:
    async def endless(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RawUpstream, index: int
    ) -> None:
        if index > 0:
            await echo_targets(reader, writer, up, index)
            return
        up.requests.append(await read_request(reader, index))
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
        while True:
            writer.write(chunk)
            await writer.drain()

    async with proxy_to(endless) as (up, sc):
        reader, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        writer.write(infer())
        got = b""
        while len(got) < 200_000:
            got += await asyncio.wait_for(reader.read(65536), 3)
        writer.close()
        await poll(lambda: up.eofs == 1 and active(sc) == 0, timeout=3.0)
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert failures(sc, "cancelled") == 1
        assert metric(sc, "model_inference_total", status="success", **LABELS) == 0
        await assert_still_serving(sc, up)


async def test_extra_answer_from_the_upstream_never_reaches_the_next_client() -> None:
    async def chatty(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: RawUpstream, index: int
    ) -> None:
        if index > 0:
            await echo_targets(reader, writer, up, index)
            return
        seen = await read_request(reader, index)
        up.requests.append(seen)
        writer.write(ok(seen.target) + ok(b"/unsolicited"))
        await reader.read(-1)

    async with proxy_to(chatty) as (_, sc):
        assert sc.proxy is not None
        for target in (b"/first", b"/second"):
            (answer,) = await responses(
                await exchange(
                    sc.proxy_port,
                    b"GET %s HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n" % target,
                )
            )
            assert (answer.status, answer.body) == (200, target)
        assert sc.proxy.pool.opened == 2


async def test_folded_upstream_header_is_not_split_into_two() -> None:
    """RFC 9112 5.2: a proxy that receives obs-fold in a response either unfolds it or answers
    502; the sidecar answers 502, and never passes the folded line on as a header of its own."""
    answer = b"HTTP/1.1 200 OK\r\nX-A: a\r\n Set-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok"
    async with proxy_to(first_connection(answer)) as (_, sc):
        (reply,) = await responses(
            await exchange(sc.proxy_port, infer(extra=b"Connection: close\r\n"))
        )
        assert reply.status == 502
        assert b"upstream_failed" in reply.body
        assert reply.header(b"Set-Cookie") == []
