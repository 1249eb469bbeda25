"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections, raw heads.

aiohttp's ``ClientSession.request`` builds a URL, a request object, header maps, cookies,
tracing and timer contexts for every call: about half the CPU of a proxied request. The
sidecar talks to a single origin with headers that a parser already validated, so it writes
the request head as bytes onto a pooled connection and lets aiohttp's own response protocol
(the C llhttp parser, flow control and read timeout that ``ClientSession`` uses underneath)
parse the answer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ServerDisconnectedError
from aiohttp.client_proto import ResponseHandler
from aiohttp.streams import StreamReader

from inferwatch.sidecar.errors import ConnectFailed

# Headers a client's Connection header may not remove: the message's own framing and target.
# (Naming Content-Length there would otherwise strip the length the body is framed with, and
# the upstream would read the body as a request of its own.)
NEVER_HOP_BY_HOP = frozenset((b"content-length", b"host"))

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",  # the sidecar answers 100-continue itself, before reading the body
    )
)
_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_HOST = b"host"
WRITE_BUFFER_HIGH = 256 * 1024  # wait for the upstream to read before writing more body


class BadAnswer(Exception):
    """The upstream answered with something no HTTP/1.1 server may send here."""


def request_head(
    method: str,
    target: str,
    raw_headers: tuple[tuple[bytes, bytes], ...],
    peer: str,
    scheme: str,
    chunked: bool,
    default_host: bytes = b"",
) -> bytes:
    """The request line and headers to send upstream: the client's, minus hop-by-hop ones,
    plus ``X-Forwarded-*``. ``raw_headers`` come from aiohttp's parser (no CR/LF inside).
    An HTTP/1.0 client may send no Host; HTTP/1.1 requires one: ``default_host`` then."""
    connection_tokens: frozenset[bytes] = frozenset()
    forwarded_for = b""
    has_proto = False
    has_host = False
    has_forwarded_host = False
    host = b""
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    append = lines.append
    for name, value in raw_headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                connection_tokens |= frozenset(
                    t.strip().lower() for t in value.split(b",") if t.strip()
                )
                connection_tokens -= NEVER_HOP_BY_HOP
            continue
        if lname == _XFF:
            forwarded_for = value
            continue
        if lname == _XFP:
            has_proto = True
        elif lname == _HOST:
            host = value
            has_host = True
        elif lname == _XFH:
            has_forwarded_host = True  # set by a proxy in front: keep theirs
        append(name + b": " + value + b"\r\n")
    if connection_tokens:  # headers the client named in Connection are hop-by-hop too
        lines = [lines[0]] + [
            line for line in lines[1:] if line.partition(b":")[0].lower() not in connection_tokens
        ]
        append = lines.append
    peer_bytes = peer.encode("latin-1")
    append(
        b"X-Forwarded-For: "
        + (forwarded_for + b", " + peer_bytes if forwarded_for else peer_bytes)
        + b"\r\n"
    )
    if not has_proto:
        append(b"X-Forwarded-Proto: " + scheme.encode("latin-1") + b"\r\n")
    if host and not has_forwarded_host:
        append(b"X-Forwarded-Host: " + host + b"\r\n")
    if not has_host and default_host:
        append(b"Host: " + default_host + b"\r\n")
    if chunked:
        append(b"Transfer-Encoding: chunked\r\n")
    append(b"\r\n")
    return b"".join(lines)


class UpstreamPool:
    """Keep-alive connections to one origin, most recently used first."""

    def __init__(
        self,
        url: str,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int = 1024,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl.create_default_context()
        self.port = parts.port or (443 if self.ssl else 80)
        self.host_header = parts.netloc.encode("latin-1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._idle: deque[ResponseHandler] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0  # connections opened, for tests and debugging

    async def _connect(self) -> ResponseHandler:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: ResponseHandler(loop), self.host, self.port, ssl=self.ssl
                ),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"{self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        self.opened += 1
        return proto

    def _idle_connection(self) -> ResponseHandler | None:
        idle = self._idle
        while idle:
            proto = idle.pop()
            if proto.is_connected() and not proto.should_close:
                return proto
            proto.close()
        return None

    async def request(
        self,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        head_only: bool,
        chunked: bool = False,
    ) -> tuple[ResponseHandler, Any, StreamReader]:
        """Send one request; returns (connection, RawResponseMessage, payload).

        The caller reads the payload, then calls :meth:`release`. A kept-alive connection the
        upstream closed meanwhile fails before any byte of answer: that is retried once on a
        fresh connection when the whole body is in hand (never for a streamed body).
        """
        proto = self._idle_connection()
        reused = proto is not None
        if proto is None:
            proto = await self._connect()
        try:
            return await self._exchange(proto, head, body, head_only, chunked)
        except ServerDisconnectedError:
            proto.close()
            if not reused or not (body is None or isinstance(body, bytes)):
                raise
        except BaseException:
            proto.close()
            raise
        proto = await self._connect()
        try:
            return await self._exchange(proto, head, body, head_only, chunked)
        except BaseException:
            proto.close()
            raise

    async def _exchange(
        self,
        proto: ResponseHandler,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        head_only: bool,
        chunked: bool,
    ) -> tuple[ResponseHandler, Any, StreamReader]:
        proto.set_response_params(
            skip_payload=head_only,
            read_until_eof=True,  # an answer without framing ends when the upstream closes
            auto_decompress=False,
            read_timeout=self.read_timeout,
        )
        transport = proto.transport
        if transport is None:
            raise ServerDisconnectedError()
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            await self._write_streamed(proto, body, chunked, self.read_timeout)
        proto.start_timeout()
        message, payload = await proto.read()
        while 100 <= message.code < 200:  # 100 Continue, 103 Early Hints: the answer follows
            if message.code == 101:
                # The sidecar forwards no Upgrade header, so nothing was asked to switch.
                raise BadAnswer("101 Switching Protocols to a request that asked for none")
            proto.start_timeout()  # a bodiless answer stopped the clock: the wait starts again
            message, payload = await proto.read()
        if not 200 <= message.code <= 599:
            raise BadAnswer(f"status {message.code} is not an HTTP status")
        return proto, message, payload

    @staticmethod
    async def _write_streamed(
        proto: ResponseHandler, body: AsyncIterable[bytes], chunked: bool, timeout: float
    ) -> None:
        """The body as it arrives: raw under a Content-Length, else in chunked framing. An
        upstream that stops reading it for ``timeout`` seconds times out like one that stops
        answering (504), rather than holding the request forever."""
        async for chunk in body:
            transport = proto.transport
            if transport is None:
                raise ServerDisconnectedError()
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                await asyncio.wait_for(proto._drain_helper(), timeout)
        if chunked:
            if proto.transport is None:
                raise ServerDisconnectedError()
            proto.transport.write(b"0\r\n\r\n")

    def release(self, proto: ResponseHandler) -> None:
        """Back to the pool when the answer was read to its end and the server keeps it open."""
        if proto.should_close or not proto.is_connected() or len(self._idle) >= self.max_idle:
            proto.close()
        else:
            self._idle.append(proto)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
