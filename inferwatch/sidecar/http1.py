"""The proxy port's HTTP/1.1 server: a lean protocol around httptools' request parser.

aiohttp's web server builds a request object, a task, a response object and a header map
per request; for a proxy whose response is the upstream's, most of that is spent only to be
thrown away. This server parses with httptools (llhttp, the parser of Node.js, aiohttp and
uvicorn) through its callbacks, hands the handler a small :class:`Request` whose body is a
:class:`~inferwatch.sidecar.body.BodyReader`, and writes the status line, the upstream's
headers as they came (names, case and order kept) and the body straight to the socket.

Keep-alive, pipelining (answered in order), ``Expect: 100-continue``, HEAD, HTTP/1.0 clients,
chunked bodies both ways, client disconnects (the handler is cancelled, as the upstream
request it is waiting for must be) and graceful close are handled here; TLS, HTTP/2 and
protocol upgrades (WebSocket) are not: the sidecar sits behind the pod's own networking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from inferwatch.sidecar.body import EMPTY_BODY, BodyReader, FlowControl

log = logging.getLogger(__name__)

WRITE_BUFFER_HIGH: Final = 256 * 1024  # wait for the client to read before writing more
KEEPALIVE_TIMEOUT = 75.0  # idle keep-alive connections are closed after this (nginx's default)
MAX_PIPELINED: Final = 128  # requests queued on one connection before we stop reading it
MAX_LINE: Final = 8190  # longest request target, and longest header line (aiohttp's and nginx's 8k)
MAX_HEADERS: Final = 128  # most header fields in one request
_NO_BODY_STATUS: Final = frozenset((204, 304))
_VERSIONS: Final = {"1.1": (1, 1), "1.0": (1, 0)}
_NOT_IN_TRAILERS: Final = frozenset((b"content-length", b"transfer-encoding", b"host"))
_FRAMING_LENGTHS: Final = frozenset(len(name) for name in _NOT_IN_TRAILERS)
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    413: "Payload Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


_STATUS_LINES: Final[dict[tuple[int, str], bytes]] = {}  # the few an upstream sends


def _status_line(status: int, reason: str) -> bytes:
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1", "replace"))
        if len(_STATUS_LINES) < 256:  # reasons are the upstream's: keep the first ones only
            _STATUS_LINES[(status, reason)] = line
    return line


class RequestPayloadError(Exception):
    """The client's request body was malformed or cut short."""


class BadRequest(Exception):
    """A request head over the limits (raised from a parser callback)."""


def header_map(raw_headers: Iterable[tuple[bytes, bytes]]) -> CIMultiDictProxy[str]:
    """Raw header fields as a case-insensitive multidict (latin-1: every byte kept)."""
    fields = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw_headers]
    return CIMultiDictProxy(CIMultiDict(fields))


_FIELD_NAMES: Final[dict[str, bytes]] = {}  # names asked for: lower-cased, as the raw fields


class RawHeaderLookup:
    """The first value of a header field by name, in any case, read from the raw fields:
    what ``headers.get(name)`` gives, without building the multidict. A request has a few
    fields and a step asks for one or two, so a scan that compares lengths first costs less
    than a map of them all."""

    __slots__ = ("_raw",)

    def __init__(self, raw_headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._raw = raw_headers

    def get(self, name: str, /) -> str | None:
        wanted = _FIELD_NAMES.get(name)
        if wanted is None:
            try:
                wanted = name.lower().encode("latin-1")
            except UnicodeEncodeError:
                return None  # no field is named so (llhttp takes ASCII names only)
            if len(_FIELD_NAMES) < 64:  # the hot path asks for a few names, always the same
                _FIELD_NAMES[name] = wanted
        size = len(wanted)
        for field, value in self._raw:
            if len(field) == size and field.lower() == wanted:
                return value.decode("latin-1")
        return None


class HeaderFields:
    """A message's header fields as sent (``raw_headers``) and, made on first use, by name:
    every value (``headers``, a multidict) or each field's first (``first_values``, cheaper).
    The hot path reads the raw ones and the first values."""

    __slots__ = ("_first_values", "_headers", "raw_headers")

    def __init__(self, raw_headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.raw_headers = raw_headers
        self._headers: CIMultiDictProxy[str] | None = None
        self._first_values: RawHeaderLookup | None = None

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = header_map(self.raw_headers)
        return self._headers

    @property
    def first_values(self) -> RawHeaderLookup:
        if self._first_values is None:
            self._first_values = RawHeaderLookup(self.raw_headers)
        return self._first_values


class Request(HeaderFields):
    """One parsed request; its body is ``payload``."""

    __slots__ = (
        "conn",
        "content_length",
        "method",
        "payload",
        "should_close",
        "target",
        "transfer_encoding",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        version: tuple[int, int],
        raw_headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        transfer_encoding: bool,
        should_close: bool,
        payload: BodyReader,
        conn: Connection,
    ) -> None:
        super().__init__(raw_headers)
        self.method = method
        self.target = target  # as sent: path and query, percent-encoding kept
        self.version = version
        self.content_length = content_length
        self.transfer_encoding = transfer_encoding  # it has a Transfer-Encoding header
        self.should_close = should_close
        self.payload = payload
        self.conn = conn

    @property
    def body_exists(self) -> bool:
        return self.payload is not EMPTY_BODY

    @property
    def remote(self) -> str:
        return self.conn.peer


Handler = Callable[[Request], Awaitable[None]]


class Connection(FlowControl):
    """One client connection: requests are handled one after another, in order."""

    def __init__(self, server: HTTP1Server) -> None:
        super().__init__(server.loop)
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.server = server
        self.peer = ""
        self._queue: deque[Request] = deque()
        self._parsed: list[Request] = []  # by the read being parsed
        self._task: asyncio.Task[None] | None = None  # from the first request to the close
        self._waiter: asyncio.Future[None] | None = None  # the task's, while it waits for one
        self._handling = False  # requests are queued or being answered
        self.idle_since: float | None = None  # loop time it became idle; None while busy
        self._closing = False
        self._last_request = False  # no requests after the queued ones (upgrade, flood)
        self._payload: BodyReader | None = None  # of the request being handled
        self.last_read = 0.0  # loop time of the last bytes from the client
        self._reject_after: str | None = None  # a malformed request behind the one in flight
        # The request being parsed:
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_trailers = False
        self._length: int | None = None
        self._has_body = False
        self._has_transfer_encoding = False
        self._has_host = False
        self._body: BodyReader | None = None  # receiving its bytes
        # Set per response:
        self.keep_alive = True
        self.started = False
        self.finished = False
        self.status = 0  # of the answer sent last (its span reads it)
        self._chunked = False
        self._head_only = False

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.server.connections.discard(self)
        self._closing = True
        self._cancel_idle_timer()
        self._parser = None
        reset = ConnectionResetError("the client closed the connection")
        if self._body is not None:
            self._body.set_exception(reset)  # a body cut short
        for request in self._queue:
            request.payload.set_exception(reset)
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()  # the handler stops waiting for an answer nobody will read

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self._closing or parser is None:
            return
        self.last_read = self._loop.time()
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._parser = None
            self._queue_parsed()
            self._last_request = True  # answer it (without the upgrade), then close
            return
        except (httptools.HttpParserError, BadRequest) as exc:
            self._parser = None
            self._drop_broken(exc)
            self._queue_parsed()
            if self._last_request:
                return  # bytes after the last request this connection answers: ignored
            self._last_request = True
            self._reject_after = f"bad request: {exc}"
            if not self._handling and not self._queue:
                self._reject(self._reject_after)
            return
        self._queue_parsed()

    def _drop_broken(self, exc: BaseException) -> None:
        """The request whose body broke the parse: never forwarded if it has not started."""
        broken, self._body = self._body, None
        if broken is None:
            return
        broken.set_exception(RequestPayloadError(str(exc)))
        parsed = self._parsed
        if parsed and parsed[-1].payload is broken:
            parsed.pop()

    def _queue_parsed(self) -> None:
        """The requests of one read join the queue once the whole read has parsed, so a
        request that turns out malformed later in the read is never forwarded."""
        parsed = self._parsed
        if not parsed:
            return
        self._parsed = []
        if self._last_request:
            return
        queue = self._queue
        queue.extend(parsed)
        if len(queue) > MAX_PIPELINED or any(request.should_close for request in parsed):
            self._last_request = True  # answer these, then close (RFC 9112 9.6)
        self._cancel_idle_timer()
        self._handling = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # (cancelled: the connection is going)
                waiter.set_result(None)  # the connection's task goes on with these
        elif self._task is None:
            self._task = self._loop.create_task(self._serve())

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._target = b""
        self._headers = []
        self._in_trailers = False
        self._length = None
        self._has_body = False
        self._has_transfer_encoding = False
        self._has_host = False

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_LINE:
            raise BadRequest(f"request target over {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        if len(headers) > MAX_HEADERS or len(name) + len(value) > MAX_LINE:
            raise BadRequest(f"over {MAX_HEADERS} header fields, or a line over {MAX_LINE} bytes")
        if len(name) in _FRAMING_LENGTHS:  # cheap: most names cannot be one of those
            lname = name.lower()
            if self._in_trailers and lname in _NOT_IN_TRAILERS:
                raise BadRequest(f"{name!r} in a trailer")
            if lname == b"content-length":
                self._length = int(value)  # llhttp checked its digits (and any repeat)
                self._has_body = self._length > 0
            elif lname == b"transfer-encoding":
                self._has_body = self._has_transfer_encoding = True
            elif lname == b"host":
                if self._has_host:
                    raise BadRequest("two Host header fields")
                self._has_host = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        body = BodyReader(self) if self._has_body else EMPTY_BODY
        self._body = body if self._has_body else None
        self._in_trailers = True  # header fields from now on are the body's trailers
        headers, self._headers = self._headers, []
        if self._last_request:
            return  # parsed only to find where it ends
        self._parsed.append(
            Request(
                parser.get_method().decode("latin-1"),
                self._target.decode("latin-1"),
                _VERSIONS.get(parser.get_http_version(), (1, 1)),
                headers,
                self._length,
                self._has_transfer_encoding,
                not parser.should_keep_alive() or parser.should_upgrade(),
                body,
                self,
            )
        )

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        if self._body is not None:
            self._body.feed_eof()
            self._body = None

    # --- request loop --------------------------------------------------------------------------

    async def _serve(self) -> None:
        """The connection's task, from its first request to its close: it answers the queued
        requests in order, then waits for the next ones (a task per connection, not one per
        request)."""
        try:
            while await self._answer_queued():
                self._handling = False
                if self._reject_after is not None:
                    self._reject(self._reject_after)
                    return
                if self._last_request or self._closing:
                    self._close()
                    return
                self._arm_idle_timer()
                waiter = self._waiter = self._loop.create_future()
                await waiter  # _queue_parsed wakes it; connection_lost cancels it
        finally:
            self._task = None
            self._waiter = None
            self._handling = False
            self._payload = None

    async def _answer_queued(self) -> bool:
        """Answers the queued requests in order; False once the connection must close."""
        queue = self._queue
        handler = self.server.handler
        while queue and not self._closing:
            request = queue.popleft()
            payload = self._payload = request.payload
            self.keep_alive = not request.should_close
            self.started = self.finished = False
            try:
                await handler(request)
            except asyncio.CancelledError:
                self._close()
                return False
            except ConnectionError:  # the client went away
                self._close()
                return False
            except Exception:
                log.exception("proxy handler failed")
                if not self.started and not self._closing:
                    self.keep_alive = False
                    with contextlib.suppress(ConnectionError):
                        await self.send_json(
                            request, 500, b'{"error":"internal error","reason":"bug"}'
                        )
            if not self.finished or not payload.complete:
                # A half-written answer, or a body nobody read: the connection's state is
                # unknown, so it cannot carry another request.
                self._close()
                return False
            if not self.keep_alive or self.server.closing:
                self._close()
                return False
        self._payload = None
        return True

    def _reject(self, message: str) -> None:
        log.debug("closing connection from %s: %s", self.peer, message)
        body = b'{"error":"malformed request","reason":"bad_request"}'
        if self.transport is not None and not self._handling:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._cancel_idle_timer()
        if self.transport is not None:
            self.transport.close()

    def body_stalled(self, cutoff: float) -> bool:
        """Waiting for a request body that stopped arriving before ``cutoff`` (not paused by
        us: an upstream slow to take the body is the upstream timeout's business)."""
        payload = self._payload
        return (
            payload is not None
            and not payload.complete
            and not self.reading_paused
            and self.last_read < cutoff
        )

    def cut_stalled(self) -> None:
        """408 if nothing was answered yet, then close: the handler waiting for the body
        sees the connection go, as for a client that left."""
        log.debug("closing connection from %s: the request body stopped arriving", self.peer)
        if self.transport is not None and not self.started:
            body = b'{"error":"the request body stopped arriving","reason":"request_timeout"}'
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        self._close()

    def close_if_idle(self) -> bool:
        if not self._handling:
            self._close()
            return True
        return False

    # Idle connections are closed by the server's sweep: a timestamp per request is cheaper
    # than a timer per request.
    def _arm_idle_timer(self) -> None:
        self.idle_since = self._loop.time()

    def _cancel_idle_timer(self) -> None:
        self.idle_since = None

    # --- writing the response (called by the handler) --------------------------------------

    def _head(
        self,
        request: Request,
        status: int,
        reason: str,
        headers: Iterable[tuple[bytes, bytes]],
        length: int | None,
    ) -> bytes:
        """Status line and headers; decides the framing (length, chunked or close)."""
        self._head_only = request.method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        self.status = status
        if self.server.closing:
            self.keep_alive = False
        self._chunked = False
        framing = b""
        if not self._head_only:
            if length is not None:
                framing = b"Content-Length: %d\r\n" % length
            elif request.version >= (1, 1):
                self._chunked = True
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.keep_alive = False  # an HTTP/1.0 body without a length ends at close
        if not self.keep_alive:
            framing += b"Connection: close\r\n"
        elif request.version < (1, 1):
            framing += b"Connection: keep-alive\r\n"
        lines = [_status_line(status, reason)]
        for name, value in headers:
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        lines.append(framing)
        lines.append(b"\r\n")
        return b"".join(lines)

    async def send(
        self,
        request: Request,
        status: int,
        reason: str,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        keep_length: bool = False,
    ) -> None:
        """A whole answer. ``keep_length``: ``headers`` already carry its Content-Length (HEAD,
        204 and 304 answers pass the upstream's through)."""
        head = self._head(request, status, reason, headers, None if keep_length else len(body))
        self.started = True
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(head if self._head_only else head + body)
        self.finished = True
        if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            await self.drain()

    async def send_json(
        self,
        request: Request,
        status: int,
        body: bytes,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """One of the sidecar's own answers (errors, probes)."""
        await self.send(
            request,
            status,
            _REASONS.get(status, "Error"),
            ((b"Content-Type", b"application/json"), *headers),
            body,
        )

    def start(
        self,
        request: Request,
        status: int,
        reason: str,
        headers: Iterable[tuple[bytes, bytes]],
        length: int | None,
    ) -> None:
        """Begin a streamed answer: ``length`` None means chunked (or close-delimited)."""
        head = self._head(request, status, reason, headers, length)
        self.started = True
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(head)

    async def write(self, chunk: bytes) -> None:
        """One piece of a streamed answer, sent at once (SSE needs every event flushed)."""
        if self._head_only or not chunk:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
            await self.drain()

    def end(self) -> None:
        """Finish a streamed answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._chunked:
            transport.write(b"0\r\n\r\n")
        self.finished = True

    def send_continue(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def abort(self) -> None:
        """Cut the connection: the answer cannot be completed (the upstream failed mid-way)."""
        self._close()


def _bound_port(server: Any, port: int) -> int:
    """The port ``server`` listens on. Untyped: uvloop's ``Server.sockets`` is a list where
    asyncio's is a tuple, and the compiled module would check the type typeshed gives."""
    sockets = server.sockets
    return int(sockets[0].getsockname()[1]) if sockets else port


class HTTP1Server:
    """Listens, tracks connections, closes gracefully."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, host: str | None, port: int, reuse_port: bool = False) -> int:
        self._server = await self.loop.create_server(
            lambda: Connection(self), host, port, reuse_port=reuse_port or None, backlog=1024
        )
        self._sweep()
        return _bound_port(self._server, port)

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive timeout (and slowloris ones,
        which never complete a request head), and cut requests whose body stopped arriving
        for as long."""
        cutoff = self.loop.time() - KEEPALIVE_TIMEOUT
        for conn in list(self.connections):
            if conn.idle_since is not None:
                if conn.idle_since < cutoff:
                    conn.close_if_idle()
            elif conn.body_stalled(cutoff):
                conn.cut_stalled()
        self._sweeper = self.loop.call_later(KEEPALIVE_TIMEOUT / 5, self._sweep)

    async def close(self, grace: float) -> None:
        """Stop accepting, close idle connections, give busy ones ``grace`` seconds."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + grace
        while True:
            for conn in list(self.connections):
                conn.close_if_idle()
            if not self.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort()
