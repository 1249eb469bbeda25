"""The proxy handler: forward one request to the upstream and measure it as an inference.

The hot path is written for a request every few microseconds of CPU: label children come
from the per-model cache, small bodies are read whole and parsed only when the route says the
body can tell the model or batch size, large bodies are streamed (a bounded prefix is peeked
for parsing, then prefix + rest go upstream), and responses are relayed chunk by chunk with
the upstream's own headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

from aiohttp import ClientError, StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from inferwatch import schema
from inferwatch import tracing as _tracing
from inferwatch.metrics import BoundedLabel, InferenceMetrics, ModelInstruments
from inferwatch.sidecar.admission import Admission, Rejected
from inferwatch.sidecar.config import SidecarConfig
from inferwatch.sidecar.health import Drainer, UpstreamHealth
from inferwatch.sidecar.httpserver import Request
from inferwatch.sidecar.protocols import (
    Classifier,
    RequestInfo,
    SSEUsageScanner,
    usage_from_json,
)
from inferwatch.sidecar.upstream import HOP_BY_HOP, ConnectFailed, UpstreamPool, request_head

log = logging.getLogger(__name__)

# Responses up to this size with a Content-Length are read whole, then written in one go.
BUFFER_RESPONSE_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 64 * 1024
# The upstream's framing headers: the proxy frames the answer itself.
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))
_DROP_FROM_RESPONSE = HOP_BY_HOP | _FRAMING
_TEXT = ((b"Content-Type", b"text/plain; charset=utf-8"),)

# Errors the sidecar itself answers with (the upstream's own errors pass through unchanged).
ERR_BAD_REQUEST = "bad_request"
ERR_CODING = "unsupported_transfer_coding"
ERR_TOO_LARGE = "body_too_large"
ERR_OVERLOADED = "overloaded"
ERR_TIMEOUT = "upstream_timeout"
ERR_UNAVAILABLE = "upstream_unavailable"
ERR_UPSTREAM_FAILED = "upstream_failed"
ERR_NOT_READY = "not_ready"
ERR_DRAINING = "draining"


def error_body(error: str, reason: str) -> bytes:
    """The sidecar's own error document: ``{"error": ..., "reason": ...}``."""
    return json.dumps({"error": error, "reason": reason}).encode()


def json_error(
    status: int, error: str, reason: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The same error as an aiohttp response (the admin port)."""
    return web.Response(
        body=error_body(error, reason),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _codings(headers: Any) -> list[str]:
    """A request's transfer codings, in order, from every Transfer-Encoding header."""
    return [
        token.strip().lower()
        for value in headers.getall("Transfer-Encoding", ())
        for token in value.split(",")
        if token.strip()
    ]


class BodyTooLarge(Exception):
    pass


class _StreamedBody:
    """A request body forwarded as it arrives: the peeked prefix, then the rest, size-checked."""

    __slots__ = ("_content", "_limit", "_prefix", "too_large")

    def __init__(self, content: StreamReader, prefix: bytes, limit: int) -> None:
        self._content = content
        self._prefix = prefix
        self._limit = limit
        self.too_large = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = len(self._prefix)
        if self._prefix:
            yield self._prefix
        limit = self._limit
        async for chunk in self._content.iter_chunked(STREAM_CHUNK_BYTES):
            sent += len(chunk)
            if limit and sent > limit:
                self.too_large = True
                raise BodyTooLarge
            yield chunk


async def _read_prefix(content: StreamReader, size: int) -> bytes:
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


def _response_headers(raw_headers: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    """The upstream's end-to-end headers, as sent (names, case, order)."""
    connection_tokens: frozenset[bytes] = frozenset()
    kept = []
    for name, value in raw_headers:
        lname = name.lower()
        if lname in _DROP_FROM_RESPONSE:
            if lname == b"connection":
                connection_tokens |= frozenset(t.strip().lower() for t in value.split(b","))
            continue
        kept.append((name, value))
    if connection_tokens:
        kept = [(n, v) for n, v in kept if n.lower() not in connection_tokens]
    return kept


_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate"))


def _end_proxy_span(
    span: Any,
    method: str,
    info: RequestInfo | None,
    status: int,
    error: BaseException | None,
    default: str,
) -> None:
    """Name the span after the route, set what the request turned out to be, end it."""
    if info is not None:
        span.update_name(f"{method} {info.route}")
        attributes: dict[str, Any] = {_tracing.ATTR_HTTP_ROUTE: info.route}
        if info.is_inference:
            attributes[_tracing.ATTR_SOURCE] = schema.SOURCE_SIDECAR
            attributes[_tracing.ATTR_MODEL_NAME] = info.model_name or default
            if info.model_version:
                attributes[_tracing.ATTR_MODEL_VERSION] = info.model_version
            if info.batch_size is not None:
                attributes[_tracing.ATTR_BATCH_SIZE] = info.batch_size
        span.set_attributes(attributes)
    if status:
        span.set_attribute(_tracing.ATTR_HTTP_STATUS, status)
    if error is not None and not isinstance(error, _Gone):
        _tracing.end_span(span, error, _tracing.error_type_of(span) or type(error).__qualname__)
    elif status >= 500 and _tracing.error_type_of(span) is None:
        _tracing.end_span(span, None, str(status))
    else:
        span.end()


class _Gone(Exception):
    """The client went away, or the answer had to be cut: close the upstream connection."""


class Proxy:
    """The handler of the proxy port."""

    def __init__(
        self,
        config: SidecarConfig,
        metrics: InferenceMetrics,
        drainer: Drainer,
        health: UpstreamHealth,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.pool = UpstreamPool(config.upstream, config.connect_timeout, config.upstream_timeout)
        self.drainer = drainer
        self.health = health
        self.classifier = Classifier(config.routes, config.default_model)
        self.admission: Admission | None = None
        if config.max_concurrency > 0:
            self.admission = Admission(
                config.max_concurrency, config.queue_limit, config.queue_timeout
            )
        self._model_label = BoundedLabel(config.max_models, set(config.allow_models))
        self._version_label = BoundedLabel(config.max_versions)
        self._max_body = config.max_body_bytes
        self._parse_limit = config.parse_body_bytes
        self._retry_after = ((b"Retry-After", str(config.retry_after).encode()),)
        self._local: dict[str, Callable[[Request], Awaitable[None]]] = {}
        if config.health_path:
            self._local[config.health_path] = self.health_endpoint
        if config.ready_path:
            self._local[config.ready_path] = self.ready_endpoint
        if _tracing.enabled:
            # Chosen once: with tracing off the request path is exactly the untraced one.
            self._proxy = self._traced_proxy  # type: ignore[method-assign]
            self.instruments = self._traced_instruments  # type: ignore[method-assign]

    # --- probes (answered here, never forwarded) -----------------------------------------------

    async def health_endpoint(self, request: Request) -> None:
        await request.conn.send(request, 200, "OK", _TEXT, b"ok\n")

    async def ready_endpoint(self, request: Request) -> None:
        if self.drainer.draining:
            body = error_body("the sidecar is draining", ERR_DRAINING)
            await request.conn.send_json(request, 503, body)
        elif not self.health.up:
            body = error_body("the upstream is not ready", ERR_NOT_READY)
            await request.conn.send_json(request, 503, body)
        else:
            await request.conn.send(request, 200, "OK", _TEXT, b"ready\n")

    def instruments(self, model_name: str | None, model_version: str | None) -> ModelInstruments:
        """The bounded label children for a model named by a request."""
        name = self._model_label(model_name or self.config.default_model)
        version = self._version_label(model_version) if model_version else ""
        return self.metrics.model(schema.SOURCE_SIDECAR, name, version)

    def _traced_instruments(
        self, model_name: str | None, model_version: str | None
    ) -> ModelInstruments:
        """The children whose latency observations carry the current span as exemplar."""
        m: ModelInstruments = _tracing.with_exemplars(
            Proxy.instruments(self, model_name, model_version)
        )
        return m

    async def _traced_proxy(self, request: Request, path: str, start: float) -> RequestInfo:
        """:meth:`_proxy` inside a SERVER span that continues the client's ``traceparent``
        and whose context goes upstream in place of the client's. A request that is not
        sampled gets no span: only a ``traceparent`` of its own goes upstream."""
        headers = request.headers
        outgoing = _tracing.unsampled_traceparent(headers.get("traceparent"))
        if outgoing is not None:
            request.raw_headers = (
                *((n, v) for n, v in request.raw_headers if n.lower() != b"traceparent"),
                (b"traceparent", outgoing.encode()),
            )
            return await Proxy._proxy(self, request, path, start)
        parent = _tracing.extract_context(headers)
        method = request.method
        span = _tracing.start_sampled_root(
            method,
            parent,
            kind=_tracing.SpanKind.SERVER,
            attributes={_tracing.ATTR_HTTP_METHOD: method, _tracing.ATTR_URL_PATH: path},
        )
        ctx = _tracing.trace.set_span_in_context(span, parent)
        request.raw_headers = (
            *((n, v) for n, v in request.raw_headers if n.lower() not in _TRACE_HEADERS),
            *((k.encode(), v.encode()) for k, v in _tracing.inject_headers(ctx).items()),
        )
        conn = request.conn
        conn.status = 0
        token = _tracing.otel_context.attach(ctx)
        error: BaseException | None = None
        info: RequestInfo | None = None
        try:
            info = await Proxy._proxy(self, request, path, start)
            return info
        except BaseException as exc:
            error = exc
            raise
        finally:
            _tracing.otel_context.detach(token)
            _end_proxy_span(span, method, info, conn.status, error, self.config.default_model)

    # --- the proxy ---------------------------------------------------------------------------

    async def __call__(self, request: Request) -> None:
        start = perf_counter()
        target = request.target
        if target[:1] != "/" or request.method == "CONNECT":
            # Absolute-form and authority-form targets would make us an open forward proxy.
            request.conn.keep_alive = False
            body = error_body("only origin-form requests are proxied", ERR_BAD_REQUEST)
            await request.conn.send_json(request, 400, body)
            return
        headers = request.headers
        if "Transfer-Encoding" in headers and _codings(headers) != ["chunked"]:
            # RFC 9112 6.1: the sidecar removes chunked framing only; forwarding a body still
            # in another coding (gzip, chunked) as if it were plain would change the request.
            request.conn.keep_alive = False
            body = error_body("transfer codings other than chunked are not supported", ERR_CODING)
            await request.conn.send_json(request, 501, body)
            return
        path, _, _ = target.partition("?")
        local = self._local.get(path)
        if local is not None:
            await local(request)
            return
        drainer = self.drainer
        if drainer.draining:
            request.conn.keep_alive = False  # move keep-alive clients off this pod
        drainer.started()
        try:
            await self._proxy(request, path, start)
        finally:
            drainer.finished()

    async def _proxy(self, request: Request, path: str, start: float) -> RequestInfo:
        method = request.method
        info = self.classifier.classify(method, path)
        headers = request.headers
        length = request.content_length
        data: Any = None
        streamed: _StreamedBody | None = None
        too_large = bool(self._max_body and length is not None and length > self._max_body)
        has_body = request.body_exists
        if (
            has_body
            and not too_large
            and "Expect" in headers
            and headers["Expect"].lower() == "100-continue"
            and request.version >= (1, 1)
        ):
            request.conn.send_continue()  # (Expect is not forwarded: we read the body)
        if too_large or not has_body:
            pass
        elif length is not None and length <= self._parse_limit:
            data = await request.payload.readexactly(length)
            if info.wants_body:
                self.classifier.parse_body(info, headers, data, True)
        else:
            prefix = b""
            if info.wants_body and self._parse_limit:
                prefix = await _read_prefix(request.payload, self._parse_limit)
                complete = len(prefix) < self._parse_limit  # the body ended within the prefix
                self.classifier.parse_body(info, headers, prefix, complete)
            if self._max_body and len(prefix) > self._max_body:
                too_large = True
            else:
                data = streamed = _StreamedBody(request.payload, prefix, self._max_body)

        m: ModelInstruments | None = None
        if info.is_inference:
            m = self.instruments(info.model_name, info.model_version)
            if info.batch_size is not None:
                m.batch_size.observe(info.batch_size)
        if too_large:
            await self._too_large(request, m, start)
            return info

        admission = self.admission
        if admission is not None:
            if admission.try_acquire():
                if m is not None:
                    m.queue_duration.observe(0.0)
            elif not await self._wait_for_admission(request, admission, m, start):
                return info
        try:
            if m is not None:
                m.active.inc()
            try:
                await self._forward(request, info, m, data, streamed, start)
            finally:
                if m is not None:
                    m.active.dec()
        finally:
            if admission is not None:
                admission.release()
        return info

    async def _wait_for_admission(
        self, request: Request, admission: Admission, m: ModelInstruments | None, start: float
    ) -> bool:
        """Queue for a slot; False (after answering 503) if none came."""
        if m is not None:
            m.queue_length.inc()
        queued = perf_counter()
        try:
            await admission.acquire()
        except Rejected as exc:
            if m is not None:
                m.queue_length.dec()
                if exc.queued:
                    m.queue_duration.observe(perf_counter() - queued)
                m.duration.observe(perf_counter() - start)
                m.record_failure(schema.REASON_REJECTED)
            why = "timed out in the admission queue" if exc.queued else "admission queue is full"
            body = error_body(f"overloaded: {why}", ERR_OVERLOADED)
            await request.conn.send_json(request, 503, body, self._retry_after)
            return False
        except asyncio.CancelledError:
            if m is not None:
                m.queue_length.dec()
                m.duration.observe(perf_counter() - start)
                m.record_failure(schema.REASON_CANCELLED)
            raise
        if m is not None:
            m.queue_length.dec()
            m.queue_duration.observe(perf_counter() - queued)
        return True

    async def _too_large(self, request: Request, m: ModelInstruments | None, start: float) -> None:
        self._record_failure(m, schema.REASON_CLIENT_ERROR, start)
        request.conn.keep_alive = False  # do not read the rest of an oversized body
        body = error_body(f"request body over {self._max_body} bytes", ERR_TOO_LARGE)
        await request.conn.send_json(request, 413, body)

    async def _forward(
        self,
        request: Request,
        info: Any,
        m: ModelInstruments | None,
        data: Any,
        streamed: _StreamedBody | None,
        start: float,
    ) -> None:
        method = request.method
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
            proto, message, payload = await self.pool.request(head, data, method == "HEAD", chunked)
        except asyncio.CancelledError:
            self._record_failure(m, schema.REASON_CANCELLED, start)
            raise
        except Exception as exc:
            if streamed is not None and streamed.too_large:
                await self._too_large(request, m, start)
            else:
                await self._upstream_failed(request, exc, m, start)
            return
        try:
            await self._relay(request, info, m, message, payload, start)
        except _Gone:
            proto.close()
            return
        except BaseException:
            proto.close()
            raise
        self.pool.release(proto)

    @staticmethod
    def _record_failure(m: ModelInstruments | None, reason: str, start: float) -> None:
        if m is not None:
            m.duration.observe(perf_counter() - start)
            m.record_failure(reason)

    async def _upstream_failed(
        self, request: Request, exc: BaseException, m: ModelInstruments | None, start: float
    ) -> None:
        if isinstance(exc, ConnectFailed):
            status, reason, error = 502, schema.REASON_UPSTREAM_UNAVAILABLE, ERR_UNAVAILABLE
            message = "cannot connect to the upstream"
        elif isinstance(exc, asyncio.TimeoutError):
            status, reason, error = 504, schema.REASON_TIMEOUT, ERR_TIMEOUT
            message = f"the upstream did not answer within {self.config.upstream_timeout:g}s"
        else:
            status, reason, error = 502, schema.REASON_SERVER_ERROR, ERR_UPSTREAM_FAILED
            message = f"the upstream failed: {type(exc).__name__}"
        log.debug("upstream request failed: %r", exc)
        self._record_failure(m, reason, start)
        await request.conn.send_json(request, status, error_body(message, error))

    async def _relay(
        self,
        request: Request,
        info: Any,
        m: ModelInstruments | None,
        message: Any,
        payload: StreamReader,
        start: float,
    ) -> None:
        """Write the upstream's answer to the client."""
        conn = request.conn
        status: int = message.code
        headers = _response_headers(message.raw_headers)
        length_header = message.headers.get("Content-Length")
        length = int(length_header) if length_header is not None and not message.chunked else None
        head_only = request.method == "HEAD" or status in (204, 304)
        if head_only and length_header is not None:
            headers.append((b"Content-Length", length_header.encode()))
        scanner = None
        try:
            if head_only:
                await conn.send(request, status, message.reason, headers, b"", keep_length=True)
            elif length is not None and length <= BUFFER_RESPONSE_BYTES and not info.stream:
                body = await payload.read()
                await conn.send(request, status, message.reason, headers, body)
                if m is not None and info.protocol == "openai" and status < 400:
                    usage = usage_from_json(body)
                    if usage is not None:
                        m.tokens_input.inc(usage[0])
                        m.tokens_output.inc(usage[1])
            else:
                conn.start(request, status, message.reason, headers, length)
                if m is not None and info.stream:
                    scanner = SSEUsageScanner()
                first_chunk = True
                async for chunk in payload.iter_any():
                    if first_chunk:
                        first_chunk = False
                        if m is not None and length is None:
                            m.ttfb.observe(perf_counter() - start)
                    await conn.write(chunk)
                    if scanner is not None:
                        scanner.feed(chunk)
                conn.end()
        except asyncio.CancelledError:
            self._record_failure(m, schema.REASON_CANCELLED, start)
            raise
        except ConnectionError as exc:
            # The client went away while we wrote to it.
            self._record_failure(m, schema.REASON_CANCELLED, start)
            raise _Gone from exc
        except (ClientError, HttpProcessingError, asyncio.TimeoutError) as exc:
            # The upstream failed mid-answer.
            timed_out = isinstance(exc, asyncio.TimeoutError)
            if not conn.started:
                await self._upstream_failed(request, exc, m, start)
                raise _Gone from exc
            # Once the status line is out, the only honest signal left is to cut the
            # client's connection, so it cannot mistake half an answer for a whole one.
            self._record_failure(
                m, schema.REASON_TIMEOUT if timed_out else schema.REASON_SERVER_ERROR, start
            )
            conn.abort()
            raise _Gone from exc
        if m is not None:
            m.duration.observe(perf_counter() - start)
            if status < 400:
                m.success.inc()
            else:
                m.record_failure(
                    schema.REASON_CLIENT_ERROR if status < 500 else schema.REASON_SERVER_ERROR
                )
            if scanner is not None:
                usage = scanner.usage
                if usage is not None:
                    m.tokens_input.inc(usage[0])
                    m.tokens_output.inc(usage[1])
