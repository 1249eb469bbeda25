"""A lean HTTP/1.1 client for the one upstream: pooled keep-alive connections, raw heads.

aiohttp's ``ClientSession.request`` builds a URL, a request object, header maps, cookies,
tracing and timer contexts for every call: about half the CPU of a proxied request. The
sidecar talks to a single origin with headers that a parser already validated, so it writes
the request head as bytes onto a pooled connection and parses the answer with httptools'
response parser (llhttp) through its callbacks: the head is delivered once parsed, the body
through a :class:`~inferwatch.sidecar.body.BodyReader`, and a read timeout runs between the
upstream's bytes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, Sequence
from typing import Final
from urllib.parse import urlsplit

import httptools

from inferwatch.sidecar.body import EMPTY_BODY, BodyReader, FlowControl
from inferwatch.sidecar.errors import ConnectFailed
from inferwatch.sidecar.http1 import MAX_HEADERS, MAX_LINE, HeaderFields

# Headers a client's Connection header may not remove: the message's own framing and target.
# (Naming Content-Length there would otherwise strip the length the body is framed with, and
# the upstream would read the body as a request of its own.)
NEVER_HOP_BY_HOP: Final = frozenset((b"content-length", b"host"))

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP: Final = frozenset(
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
_NOT_END_TO_END: Final = HOP_BY_HOP | {b"content-length"}
_NOT_END_TO_END_LENGTHS: Final = frozenset(len(name) for name in _NOT_END_TO_END)
_CONNECTION_OPTIONS: Final = HOP_BY_HOP | {b"close"}
_XFF: Final = b"x-forwarded-for"
_XFP: Final = b"x-forwarded-proto"
_XFH: Final = b"x-forwarded-host"
_HOST: Final = b"host"
_REQUEST_SPECIAL: Final = HOP_BY_HOP | {_XFF, _XFP, _XFH, _HOST}
_REQUEST_SPECIAL_LENGTHS: Final = frozenset(len(name) for name in _REQUEST_SPECIAL)
WRITE_BUFFER_HIGH: Final = 256 * 1024  # wait for the upstream to read before writing more body


class UpstreamError(Exception):
    """The upstream connection failed: closed, or an answer no HTTP/1.1 server may send."""


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before its answer was whole."""


class BadAnswer(UpstreamError):
    """The upstream answered with something no HTTP/1.1 server may send here."""


class Answer(HeaderFields):
    """The head of the upstream's answer: its status, and its end-to-end header fields as
    sent (names, case, order); its framing is in ``length`` and ``chunked``."""

    __slots__ = ("chunked", "code", "length", "reason")

    def __init__(
        self,
        code: int,
        reason: str,
        raw_headers: list[tuple[bytes, bytes]],
        length: int | None,
        chunked: bool,
    ) -> None:
        super().__init__(raw_headers)
        self.code = code
        self.reason = reason
        self.length = length  # its Content-Length, if it has one
        self.chunked = chunked


class _HeadDone(Exception):
    """Raised from the parser's callback to stop at the head of an answer to HEAD."""


class UpstreamConnection(FlowControl):
    """One connection to the upstream, carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        super().__init__(loop)
        self._parser = httptools.HttpResponseParser(self)
        self.read_timeout = read_timeout
        self.should_close = False  # not to be used again
        self._answer: asyncio.Future[tuple[Answer, BodyReader]] | None = None
        self._parsed: tuple[Answer, BodyReader] | None = None  # delivered once the read is
        self._body: BodyReader | None = None  # receiving its bytes
        self._head_only = False
        self._until_close = False  # the answer's body ends when the upstream closes
        self._last_data = 0.0
        self._timed = False  # an exchange is waiting for the upstream's bytes
        self._timer: asyncio.TimerHandle | None = None
        # The answer being parsed:
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []  # its end-to-end fields
        self._count = 0
        self._connection: frozenset[bytes] = frozenset()  # the Connection header's tokens
        self._length: int | None = None
        self._chunked = False
        self._interim = False  # a 1xx answer: the real one follows
        self._unsolicited = False  # an answer to no request

    def is_connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.should_close = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    # --- one exchange ------------------------------------------------------------------------

    def expect(self, head_only: bool) -> asyncio.Future[tuple[Answer, BodyReader]]:
        """Get ready for the answer to a request about to be written."""
        self._head_only = head_only
        self._answer = answer = self._loop.create_future()
        self._parsed = None
        self._body = None
        return answer

    def start_timer(self) -> None:
        """The request is written: the upstream has ``read_timeout`` seconds between bytes.

        One timer serves the connection's exchanges one after another: it is armed when none
        is, and when it fires early (the deadline moved with the bytes read, or with a later
        exchange) it is armed again for what is left, so a keep-alive connection arms about
        one timer per ``read_timeout`` rather than one per request."""
        if self._answer is not None or self._body is not None:
            self._last_data = self._loop.time()
            self._timed = True
            if self._timer is None:
                self._timer = self._loop.call_at(
                    self._last_data + self.read_timeout, self._check_timeout
                )

    def _check_timeout(self) -> None:
        """No byte from the upstream for ``read_timeout`` seconds: the exchange times out
        (not while the proxy itself stopped reading, waiting for a slow client)."""
        self._timer = None
        if not self._timed:
            return  # the exchange ended; the next one arms a timer of its own
        now = self._loop.time()
        if self.reading_paused:
            self._last_data = now
        deadline = self._last_data + self.read_timeout
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._check_timeout)
            return
        self._fail(asyncio.TimeoutError())
        self.close()

    def _stop_timer(self) -> None:
        """The exchange ended: the timer, if still armed, lapses when it fires."""
        self._timed = False

    def _cancel_timer(self) -> None:
        self._timed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: BaseException) -> None:
        self.should_close = True
        answer = self._answer
        if answer is not None and not answer.done():
            self._answer = self._parsed = None
            answer.set_exception(exc)
        elif self._body is not None:
            self._body.set_exception(exc)
            self._body = None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.should_close = True
        self._cancel_timer()
        if self._body is not None and self._until_close:
            self._body.feed_eof()  # the answer had no framing: the close ends it
            self._body = None
        self._fail(UpstreamClosed("the upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        """Parses the whole read before the answer is handed over, so an answer that breaks
        later in the same read fails cleanly (502) rather than after its head went out."""
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.should_close = True  # the parser stopped mid-stream: never reuse it
            if isinstance(exc.__context__, _HeadDone):
                self._deliver()
            else:
                self._fail(BadAnswer(str(exc)))
                self.close()
        except httptools.HttpParserUpgrade:
            # The sidecar forwards no Upgrade header, so nothing was asked to switch.
            self._fail(BadAnswer("101 Switching Protocols to a request that asked for none"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"malformed answer: {exc}"))
            self.close()
        else:
            self._deliver()

    def _deliver(self) -> None:
        parsed, self._parsed = self._parsed, None
        if parsed is not None:
            answer, self._answer = self._answer, None
            if answer is not None and not answer.done():
                answer.set_result(parsed)

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._count = 0
        self._connection = frozenset()
        self._length = None
        self._chunked = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keeps the end-to-end fields; the framing ones are this connection's business (the
        body it delivers is decoded), and hop-by-hop ones are never forwarded."""
        self._count += 1
        if len(value) > MAX_LINE or self._count > MAX_HEADERS:
            raise BadAnswer("a header of the answer over the limits")
        lname = name.lower() if len(name) in _NOT_END_TO_END_LENGTHS else b""  # cheap: most
        if lname not in _NOT_END_TO_END:  # names cannot be one of those, by their length
            self._headers.append((name, value))
        elif lname == b"content-length":
            self._length = int(value)
        elif lname == b"transfer-encoding":
            self._chunked = value.lower().rstrip().endswith(b"chunked")
        elif lname == b"connection":
            value = value.lower()
            if value != b"keep-alive" and value != b"close":  # the usual ones name no field
                self._connection |= frozenset(token.strip() for token in value.split(b","))

    def on_headers_complete(self) -> None:
        code = self._parser.get_status_code()
        self._interim = 100 <= code < 200 and code != 101
        if self._interim:  # 100 Continue, 103 Early Hints: the answer follows
            return
        if self._answer is None or self._parsed is not None:
            # An answer to no request (a second one in the read, or one on an idle
            # connection): skipped, and the connection is not used again.
            self._unsolicited = True
            self.should_close = True
            return
        head_only = self._head_only or code in (204, 304)
        framed = self._chunked or self._length is not None
        has_body = not head_only and (self._chunked or bool(self._length) or not framed)
        body = BodyReader(self) if has_body else EMPTY_BODY
        self._body = body if has_body else None
        self._until_close = has_body and not framed
        if not framed and not head_only:
            self.should_close = True
        headers = self._headers
        if self._connection and self._connection - _CONNECTION_OPTIONS:  # named: hop-by-hop
            headers = [(n, v) for n, v in headers if n.lower() not in self._connection]
        head = Answer(code, self._reason.decode("latin-1"), headers, self._length, self._chunked)
        self._parsed = (head, body)
        if self._head_only:
            # llhttp would wait for the body its Content-Length announces; stop here.
            self._stop_timer()
            self.should_close = True
            raise _HeadDone

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)

    def on_message_complete(self) -> None:
        if self._interim or self._unsolicited:
            self._interim = self._unsolicited = False
            return
        self._stop_timer()
        if not self._parser.should_keep_alive():
            self.should_close = True
        if self._body is not None:
            self._body.feed_eof()
            self._body = None


def request_head(
    method: str,
    target: str,
    raw_headers: Sequence[tuple[bytes, bytes]],
    peer: str,
    scheme: str,
    chunked: bool,
    default_host: bytes = b"",
) -> bytes:
    """The request line and headers to send upstream: the client's, minus hop-by-hop ones,
    plus ``X-Forwarded-*``. ``raw_headers`` come from llhttp (no CR/LF inside).
    An HTTP/1.0 client may send no Host; HTTP/1.1 requires one: ``default_host`` then."""
    connection = _connection_options(raw_headers)
    forwarded_for = b""
    has_proto = False
    has_host = False
    has_forwarded_host = False
    host = b""
    # A field is forwarded as four pieces (name, ": ", value, CRLF), joined once at the end.
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
    for name, value in raw_headers:
        if connection or len(name) in _REQUEST_SPECIAL_LENGTHS:  # else it cannot be special
            lname = name.lower()
            if lname in HOP_BY_HOP:
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
            if lname in connection:  # headers the client named in Connection: hop-by-hop too
                continue
        lines.append(name)
        lines.append(b": ")
        lines.append(value)
        lines.append(b"\r\n")
    lines.append(b"X-Forwarded-For: ")
    if forwarded_for:
        lines.append(forwarded_for)
        lines.append(b", ")
    lines.append(peer.encode("latin-1"))
    lines.append(b"\r\n")
    if not has_proto:
        lines.append(b"X-Forwarded-Proto: ")
        lines.append(scheme.encode("latin-1"))
        lines.append(b"\r\n")
    if host and not has_forwarded_host:
        lines.append(b"X-Forwarded-Host: ")
        lines.append(host)
        lines.append(b"\r\n")
    if not has_host and default_host:
        lines.append(b"Host: ")
        lines.append(default_host)
        lines.append(b"\r\n")
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _connection_options(raw_headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The field names a request's Connection header lists (never its framing or Host)."""
    options: frozenset[bytes] = frozenset()
    for name, value in raw_headers:
        if len(name) == len(b"connection") and name.lower() == b"connection":
            options |= frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
    return options - NEVER_HOP_BY_HOP if options else options


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
        self._idle: deque[UpstreamConnection] = deque()
        self.opened = 0  # connections opened, for tests and debugging

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(loop, self.read_timeout),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                ),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"{self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        self.opened += 1
        return conn

    def _idle_connection(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.is_connected() and not conn.should_close:
                return conn
            conn.close()
        return None

    async def request(
        self,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        head_only: bool,
        chunked: bool = False,
    ) -> tuple[UpstreamConnection, Answer, BodyReader]:
        """Send one request; returns (connection, answer head, answer body).

        The caller reads the body, then calls :meth:`release`. A kept-alive connection the
        upstream closed meanwhile fails before any byte of answer: that is retried once on a
        fresh connection when the whole body is in hand (never for a streamed body).
        """
        conn = self._idle_connection()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        try:
            return await self._exchange(conn, head, body, head_only, chunked)
        except UpstreamClosed:
            conn.close()
            if not reused or not (body is None or isinstance(body, bytes)):
                raise
        except BaseException:
            conn.close()
            raise
        conn = await self._connect()
        try:
            return await self._exchange(conn, head, body, head_only, chunked)
        except BaseException:
            conn.close()
            raise

    async def _exchange(
        self,
        conn: UpstreamConnection,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        head_only: bool,
        chunked: bool,
    ) -> tuple[UpstreamConnection, Answer, BodyReader]:
        transport = conn.transport
        if transport is None:
            raise UpstreamClosed("the upstream closed the connection")
        answered = conn.expect(head_only)
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            await self._write_streamed(conn, body, chunked, self.read_timeout)
        conn.start_timer()
        answer, payload = await answered
        if not 200 <= answer.code <= 599:
            raise BadAnswer(f"status {answer.code} is not an HTTP status")
        return conn, answer, payload

    @staticmethod
    async def _write_streamed(
        conn: UpstreamConnection, body: AsyncIterable[bytes], chunked: bool, timeout: float
    ) -> None:
        """The body as it arrives: raw under a Content-Length, else in chunked framing. An
        upstream that stops reading it for ``timeout`` seconds times out like one that stops
        answering (504), rather than holding the request forever."""
        async for chunk in body:
            transport = conn.transport
            if transport is None:
                raise UpstreamClosed("the upstream closed the connection")
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                await asyncio.wait_for(conn.drain(), timeout)
        if chunked:
            if conn.transport is None:
                raise UpstreamClosed("the upstream closed the connection")
            conn.transport.write(b"0\r\n\r\n")

    def release(self, conn: UpstreamConnection) -> None:
        """Back to the pool when the answer was read to its end and the server keeps it open."""
        if conn.should_close or not conn.is_connected() or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
