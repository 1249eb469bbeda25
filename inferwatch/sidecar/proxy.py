"""The proxy handler: forward one request to the upstream and report it to its exchange.

A request goes through these steps, in order (each one a method below):

1. refuse what must not be forwarded (absolute-form targets, CONNECT, transfer codings other
   than chunked) and answer the probes (``/health``, ``/ready``) here;
2. count it in flight for the drain;
3. classify it (protocol, model, version, batch size) from the path and a bounded prefix of
   the body, and open its :class:`~inferwatch.sidecar.exchange.Exchange`;
4. admit it (concurrency limit and queue) or answer 503;
5. forward it upstream and relay the answer chunk by chunk, or answer the failure.

The steps only forward bytes and report transitions to the exchange; every metric is the
exchange's work. The hot path is written for a request every few microseconds of CPU: small
bodies are read whole and parsed only when the route says the body can tell the model or batch
size, large bodies are streamed (a bounded prefix is peeked for parsing, then prefix + rest go
upstream), and responses are relayed with the upstream's own headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any, Final

from mypy_extensions import mypyc_attr

from inferwatch import schema
from inferwatch.sidecar.admission import Admission, admit
from inferwatch.sidecar.body import BodyReader
from inferwatch.sidecar.config import SidecarConfig
from inferwatch.sidecar.errors import (
    ERR_BAD_REQUEST,
    ERR_CODING,
    ERR_OVERLOADED,
    ERR_TOO_LARGE,
    BodyTooLarge,
    ClientGone,
    error_body,
    failure_message,
    reason_for_status,
    upstream_failure,
)
from inferwatch.sidecar.exchange import NO_EXCHANGE, Exchange, Exchanges
from inferwatch.sidecar.health import Drainer, Readiness
from inferwatch.sidecar.http1 import Request
from inferwatch.sidecar.protocols import (
    Classifier,
    RequestInfo,
    SSEStreamScanner,
    answer_from_json,
)
from inferwatch.sidecar.upstream import (
    Answer,
    UpstreamError,
    UpstreamPool,
    request_head,
)

log = logging.getLogger(__name__)

# Responses up to this size with a Content-Length are read whole, then written in one go.
BUFFER_RESPONSE_BYTES: Final = 256 * 1024
STREAM_CHUNK_BYTES: Final = 64 * 1024
_TEXT: Final = ((b"Content-Type", b"text/plain; charset=utf-8"),)


def _codings(headers: Any) -> list[str]:
    """A request's transfer codings, in order, from every Transfer-Encoding header."""
    return [
        token.strip().lower()
        for value in headers.getall("Transfer-Encoding", ())
        for token in value.split(",")
        if token.strip()
    ]


class StreamedBody:
    """A request body forwarded as it arrives: the peeked prefix, then the rest, size-checked."""

    __slots__ = ("_content", "_limit", "_prefix", "too_large")

    def __init__(self, content: BodyReader, prefix: bytes, limit: int) -> None:
        self._content = content
        self._prefix = prefix
        self._limit = limit
        self.too_large = False

    def __aiter__(self) -> _StreamedChunks:
        return _StreamedChunks(self)


class _StreamedChunks:
    """One pass over a :class:`StreamedBody` (a class, not an async generator: the compiled
    hot path has no async generators)."""

    __slots__ = ("_body", "_chunks", "_prefix", "_sent")

    def __init__(self, body: StreamedBody) -> None:
        self._body = body
        self._prefix = body._prefix
        self._sent = len(body._prefix)
        self._chunks = body._content.chunks(STREAM_CHUNK_BYTES)

    def __aiter__(self) -> _StreamedChunks:
        return self

    async def __anext__(self) -> bytes:
        prefix = self._prefix
        if prefix:
            self._prefix = b""
            return prefix
        chunk = await self._chunks.__anext__()
        self._sent += len(chunk)
        limit = self._body._limit
        if limit and self._sent > limit:
            self._body.too_large = True
            raise BodyTooLarge
        return chunk


async def _read_prefix(content: BodyReader, size: int) -> bytes:
    """Up to ``size`` bytes from the start of the body (less only at its end)."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = await content.read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _refusal(request: Request) -> tuple[int, bytes] | None:
    """The answer (status, body) to a request that must not be forwarded, else ``None``."""
    if request.target[:1] != "/" or request.method == "CONNECT":
        # Absolute-form and authority-form targets would make us an open forward proxy.
        return 400, error_body("only origin-form requests are proxied", ERR_BAD_REQUEST)
    if request.transfer_encoding and _codings(request.headers) != ["chunked"]:
        # RFC 9112 6.1: the sidecar removes chunked framing only; forwarding a body still in
        # another coding (gzip, chunked) as if it were plain would change the request.
        message = "transfer codings other than chunked are not supported"
        return 501, error_body(message, ERR_CODING)
    return None


Body = bytes | StreamedBody | None


@mypyc_attr(allow_interpreted_subclasses=True)  # tracing's subclass
class ProxyHandler:
    """The handler of the proxy port (:class:`~inferwatch.sidecar.http1.HTTP1Server` calls it
    once per request)."""

    def __init__(
        self,
        config: SidecarConfig,
        exchanges: Exchanges,
        admission: Admission | None,
        drainer: Drainer,
        readiness: Readiness,
    ) -> None:
        self.config = config
        self.exchanges = exchanges
        self.pool = UpstreamPool(config.upstream, config.connect_timeout, config.upstream_timeout)
        self.admission = admission
        self.drainer = drainer
        self.readiness = readiness
        self.classifier = Classifier(config.routes, config.default_model)
        self._max_body = config.max_body_bytes
        self._parse_limit = config.parse_body_bytes
        self._retry_after = ((b"Retry-After", str(config.retry_after).encode()),)
        self._probes: dict[str, Callable[[Request], Awaitable[None]]] = {}
        if config.health_path:
            self._probes[config.health_path] = self.health_probe
        if config.ready_path:
            self._probes[config.ready_path] = self.ready_probe

    # --- 1. refusals and probes (answered here, never forwarded) -------------------------------

    async def __call__(self, request: Request) -> None:
        start = perf_counter()
        refusal = _refusal(request)
        if refusal is not None:
            request.conn.keep_alive = False
            await request.conn.send_json(request, *refusal)
            return
        path, _, _ = request.target.partition("?")
        probe = self._probes.get(path)
        if probe is not None:
            await probe(request)
            return
        drainer = self.drainer
        if drainer.draining:
            request.conn.keep_alive = False  # move keep-alive clients off this pod
        drainer.started()
        try:
            await self.proxy(request, path, start)
        finally:
            drainer.finished()

    async def health_probe(self, request: Request) -> None:
        await request.conn.send(request, 200, "OK", _TEXT, b"ok\n")

    async def ready_probe(self, request: Request) -> None:
        not_ready = self.readiness.why_not()
        if not_ready is None:
            await request.conn.send(request, 200, "OK", _TEXT, b"ready\n")
        else:
            body = error_body(not_ready.message, not_ready.error)
            await request.conn.send_json(request, 503, body)

    # --- 2-5. one proxied request ------------------------------------------------------------

    async def proxy(self, request: Request, path: str, start: float) -> RequestInfo:
        """Classify, admit, forward and relay one request; the traced subclass wraps this."""
        info = self.classifier.classify(request.method, path)
        try:
            body = await self._read_body(request, info)
        except BodyTooLarge:
            await self._answer_too_large(request, self._open(info, start))
            return info
        exchange = self._open(info, start)
        admission = self.admission
        if admission is not None and not await self._admit(request, admission, exchange):
            return info
        try:
            exchange.forwarding()
            try:
                await self._forward(request, info, body, exchange)
            finally:
                exchange.forwarded()
        finally:
            if admission is not None:
                admission.release()
        return info

    def _open(self, info: RequestInfo, start: float) -> Exchange:
        if not info.is_inference:
            return NO_EXCHANGE
        return self.exchanges.open(info.model_name, info.model_version, info.batch_size, start)

    async def _read_body(self, request: Request, info: RequestInfo) -> Body:
        """The body to forward: whole when small, else streamed after a peeked prefix. Parses
        what the route says the body can tell (into ``info``). Raises BodyTooLarge."""
        length = request.content_length
        if self._max_body and length is not None and length > self._max_body:
            raise BodyTooLarge
        if not request.body_exists:
            return None
        headers = request.first_values  # the multidict is not needed here
        expect = headers.get("Expect")
        if expect is not None and expect.lower() == "100-continue" and request.version >= (1, 1):
            request.conn.send_continue()  # (Expect is not forwarded: we read the body)
        if length is not None and length <= self._parse_limit:
            data = await request.payload.readexactly(length)
            if info.wants_body:
                self.classifier.parse_body(info, headers, data, True)
            return data
        prefix = b""
        if info.wants_body and self._parse_limit:
            prefix = await _read_prefix(request.payload, self._parse_limit)
            complete = len(prefix) < self._parse_limit  # the body ended within the prefix
            self.classifier.parse_body(info, headers, prefix, complete)
        if self._max_body and len(prefix) > self._max_body:
            raise BodyTooLarge
        return StreamedBody(request.payload, prefix, self._max_body)

    async def _answer_too_large(self, request: Request, exchange: Exchange) -> None:
        exchange.failed(schema.REASON_CLIENT_ERROR)
        request.conn.keep_alive = False  # do not read the rest of an oversized body
        body = error_body(f"request body over {self._max_body} bytes", ERR_TOO_LARGE)
        await request.conn.send_json(request, 413, body)

    async def _admit(self, request: Request, admission: Admission, exchange: Exchange) -> bool:
        """A slot at once, or after queueing for one; False (after answering 503) if none."""
        rejected = await admit(admission, exchange)
        if rejected is None:
            return True
        body = error_body(rejected.why, ERR_OVERLOADED)
        await request.conn.send_json(request, 503, body, self._retry_after)
        return False

    async def _forward(
        self, request: Request, info: RequestInfo, body: Body, exchange: Exchange
    ) -> None:
        method = request.method
        streamed = body if isinstance(body, StreamedBody) else None
        chunked = streamed is not None and request.content_length is None
        head = request_head(
            method,
            request.target,
            request.raw_headers,
            request.remote,
            "http",
            chunked,
            self.pool.host_header,
        )
        try:
            proto, message, payload = await self.pool.request(head, body, method == "HEAD", chunked)
        except asyncio.CancelledError:
            exchange.failed(schema.REASON_CANCELLED)
            raise
        except Exception as exc:
            if streamed is not None and streamed.too_large:
                await self._answer_too_large(request, exchange)
            else:
                await self._answer_failure(request, exchange, exc)
            return
        try:
            await self._relay(request, info, exchange, message, payload)
        except ClientGone:
            proto.close()
            return
        except BaseException:
            proto.close()
            raise
        self.pool.release(proto)

    async def _answer_failure(
        self, request: Request, exchange: Exchange, exc: BaseException
    ) -> None:
        """The upstream failed before any of its answer was sent: say so (502, 504)."""
        failure = upstream_failure(exc)
        log.debug("upstream request failed: %r", exc)
        exchange.failed(failure.reason)
        message = failure_message(failure, exc, self.config.upstream_timeout)
        await request.conn.send_json(request, failure.status, error_body(message, failure.error))

    async def _relay(
        self,
        request: Request,
        info: RequestInfo,
        exchange: Exchange,
        message: Answer,
        payload: BodyReader,
    ) -> None:
        """Write the upstream's answer to the client; its status decides the outcome."""
        conn = request.conn
        status = message.code
        headers = message.raw_headers  # its end-to-end fields, made for this answer alone
        length = None if message.chunked else message.length
        head_only = request.method == "HEAD" or status in (204, 304)
        if head_only and message.length is not None:
            headers = [*headers, (b"Content-Length", b"%d" % message.length)]
        scanner: SSEStreamScanner | None = None
        try:
            if head_only:
                await conn.send(request, status, message.reason, headers, b"", keep_length=True)
            elif length is not None and length <= BUFFER_RESPONSE_BYTES and not info.stream:
                body = await payload.read()
                await conn.send(request, status, message.reason, headers, body)
                if info.protocol == "openai" and info.is_inference and status < 400:
                    _report_answer(exchange, body)
            else:
                if info.is_inference and (info.stream or _is_sse(info, message)):
                    scanner = SSEStreamScanner()
                await self._stream(request, exchange, message, payload, headers, length, scanner)
        except asyncio.CancelledError:
            _report_generation(exchange, scanner)
            exchange.failed(schema.REASON_CANCELLED)
            raise
        except ConnectionError as exc:
            # The client went away while we wrote to it.
            _report_generation(exchange, scanner)
            exchange.failed(schema.REASON_CANCELLED)
            raise ClientGone from exc
        except (UpstreamError, asyncio.TimeoutError) as exc:
            # The upstream failed mid-answer.
            if not conn.started:
                await self._answer_failure(request, exchange, exc)
                raise ClientGone from exc
            # Once the status line is out, the only honest signal left is to cut the
            # client's connection, so it cannot mistake half an answer for a whole one.
            _report_generation(exchange, scanner)
            exchange.failed(upstream_failure(exc).reason)
            conn.abort()
            raise ClientGone from exc
        _report_generation(exchange, scanner)
        reason = reason_for_status(status)
        if reason is None:
            exchange.succeeded()
        else:
            exchange.failed(reason)

    @staticmethod
    async def _stream(
        request: Request,
        exchange: Exchange,
        message: Answer,
        payload: BodyReader,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
        scanner: SSEStreamScanner | None,
    ) -> None:
        """Relay a large or streamed answer as it comes. A streamed LLM answer also goes
        through ``scanner``, after each chunk is written: the time of the chunk that holds the
        first output is taken when it is read, before writing it."""
        conn = request.conn
        conn.start(request, message.code, message.reason, headers, length)
        first_chunk = True
        if scanner is None:
            async for chunk in payload.chunks():
                if first_chunk:
                    first_chunk = False
                    if length is None:
                        exchange.first_byte()
                await conn.write(chunk)
        else:
            async for chunk in payload.chunks():
                at = perf_counter()
                if first_chunk:
                    first_chunk = False
                    if length is None:
                        exchange.first_byte()
                await conn.write(chunk)
                if scanner.feed(chunk, at):
                    exchange.first_token(at)
        conn.end()


def _is_sse(info: RequestInfo, message: Answer) -> bool:
    """An OpenAI-compatible answer streamed as server-sent events (``stream`` unread)."""
    if info.protocol != "openai":
        return False
    content_type = message.first_values.get("Content-Type")
    return content_type is not None and content_type.startswith("text/event-stream")


def _report_answer(exchange: Exchange, body: bytes) -> None:
    """Usage and finish reasons of a non-streamed OpenAI answer."""
    usage, finishes = answer_from_json(body)
    for reason in finishes:
        exchange.finished(reason)
    if usage is not None:
        exchange.tokens(*usage)


def _report_generation(exchange: Exchange, scanner: SSEStreamScanner | None) -> None:
    """What a streamed LLM answer generated, however it ended: its finish reasons, and its
    tokens (the usage it reported, else its output chunks as output tokens)."""
    if scanner is None:
        return
    for reason in scanner.finish_reasons:
        exchange.finished(reason)
    usage = scanner.usage_
    if usage is None:
        usage = (0, scanner.outputs)
    if usage[1] or scanner.outputs:
        exchange.generated(usage[1], scanner.last_output_at)
    if usage != (0, 0):
        exchange.tokens(*usage)
