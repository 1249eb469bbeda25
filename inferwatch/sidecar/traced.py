"""The proxy with tracing on: a SERVER span per proxied request, exemplars on its latencies.

Chosen once at start (:mod:`~inferwatch.sidecar.process`): with tracing off
none of this is on the request path.
"""

from __future__ import annotations

from typing import Any

from inferwatch import schema, tracing
from inferwatch.metrics import ModelInstruments
from inferwatch.sidecar.errors import ClientGone
from inferwatch.sidecar.exchange import Exchange, Exchanges
from inferwatch.sidecar.http1 import Request
from inferwatch.sidecar.protocols import RequestInfo
from inferwatch.sidecar.proxy import ProxyHandler

_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate"))


class TracedExchange(Exchange):
    """A failure also marks the current span: ``error.type`` is the failure reason."""

    __slots__ = ()

    def failed(self, reason: str) -> None:
        super().failed(reason)
        tracing.mark_failed(reason)


class TracedExchanges(Exchanges):
    """Exchanges whose latency observations carry the current span as exemplar."""

    exchange_class = TracedExchange

    def instruments(self, model_name: str | None, model_version: str | None) -> ModelInstruments:
        m = super().instruments(model_name, model_version)
        return m.with_exemplars(tracing.current_exemplar)


class TracedProxyHandler(ProxyHandler):
    async def proxy(self, request: Request, path: str, start: float) -> RequestInfo:
        """The proxied request inside a SERVER span that continues the client's
        ``traceparent`` and whose context goes upstream in place of the client's. A request
        that is not sampled gets no span: only a ``traceparent`` of its own goes upstream."""
        outgoing = tracing.unsampled_traceparent(request.headers.get("traceparent"))
        if outgoing is not None:
            request.raw_headers = (
                *((n, v) for n, v in request.raw_headers if n.lower() != b"traceparent"),
                (b"traceparent", outgoing.encode()),
            )
            return await super().proxy(request, path, start)
        method = request.method
        span = tracing.ServerSpan(
            method,
            request.headers,
            {tracing.ATTR_HTTP_METHOD: method, tracing.ATTR_URL_PATH: path},
        )
        request.raw_headers = (
            *((n, v) for n, v in request.raw_headers if n.lower() not in _TRACE_HEADERS),
            *((k.encode(), v.encode()) for k, v in span.propagation_headers().items()),
        )
        conn = request.conn
        conn.status = 0
        error: BaseException | None = None
        info: RequestInfo | None = None
        try:
            with span:
                info = await super().proxy(request, path, start)
            return info
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._describe(span, method, info)
            span.finish(conn.status, None if isinstance(error, ClientGone) else error)

    def _describe(self, span: Any, method: str, info: RequestInfo | None) -> None:
        """Name the span after the route and say what the request turned out to be."""
        if info is None:
            return
        span.rename(f"{method} {info.route}")
        attributes: dict[str, Any] = {tracing.ATTR_HTTP_ROUTE: info.route}
        if info.is_inference:
            attributes[tracing.ATTR_SOURCE] = schema.SOURCE_SIDECAR
            attributes[tracing.ATTR_MODEL_NAME] = info.model_name or self.config.default_model
            version = info.model_version or self.config.default_version
            if version:
                attributes[tracing.ATTR_MODEL_VERSION] = version
            if info.batch_size is not None:
                attributes[tracing.ATTR_BATCH_SIZE] = info.batch_size
        span.set_attributes(attributes)
