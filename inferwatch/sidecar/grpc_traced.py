"""The gRPC proxy with tracing on: a SERVER span per call that continues the caller's trace.

Chosen once at start (:mod:`~inferwatch.sidecar.process`), like the HTTP proxy's traced
handler. The span is current while the call runs, so the exchange's latency observations
carry it as exemplar and its failures mark it; the upstream gets the span's
``traceparent`` in place of the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from grpc import aio

from inferwatch import tracing
from inferwatch.sidecar.grpc_protocols import GrpcRoute
from inferwatch.sidecar.grpc_proxy import GrpcProxy, Metadata, UnaryUpstream, Upstream

_TRACE_KEYS = frozenset(("traceparent", "tracestate"))
# The trace metadata this call sends upstream (each gRPC call runs in a task of its own).
_outgoing: ContextVar[Metadata] = ContextVar("inferwatch_grpc_trace_metadata", default=())


class _CallSpan:
    """The SERVER span of one call, current inside the ``with`` block; for a call that is not
    sampled, no span: only a ``traceparent`` of its own goes upstream."""

    __slots__ = ("_context", "_span")

    def __init__(self, method: str, route: GrpcRoute, context: aio.ServicerContext) -> None:
        self._context = context
        self._span: tracing.ServerSpan | None = None
        incoming = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if key in _TRACE_KEYS and isinstance(value, str)
        }
        unsampled = tracing.unsampled_traceparent(incoming.get("traceparent"))
        if unsampled is not None:
            _outgoing.set((("traceparent", unsampled),))
            return
        service, _, name = method.lstrip("/").partition("/")
        self._span = tracing.ServerSpan(
            route.route,
            incoming,
            {
                tracing.ATTR_RPC_SYSTEM: "grpc",
                tracing.ATTR_RPC_SERVICE: service,
                tracing.ATTR_RPC_METHOD: name,
            },
        )
        _outgoing.set(tuple(self._span.propagation_headers().items()))

    def __enter__(self) -> None:
        if self._span is not None:
            self._span.__enter__()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        span = self._span
        if span is None:
            return
        span.__exit__(exc_type, exc, tb)
        code = self._context.code()
        span.set_attributes({tracing.ATTR_RPC_GRPC_STATUS: code.value[0] if code else 0})
        span.finish(0, exc)


class TracedGrpcProxy(GrpcProxy):
    async def _call_unary(
        self,
        route: GrpcRoute,
        upstream: UnaryUpstream,
        request: bytes,
        context: aio.ServicerContext,
    ) -> bytes | None:
        with _CallSpan(route.route, route, context):  # unary routes are known methods
            return await super()._call_unary(route, upstream, request, context)

    async def _proxy(
        self,
        method: str,
        route: GrpcRoute,
        upstream: Upstream,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext,
        start: float,
    ) -> None:
        with _CallSpan(method, route, context):
            await super()._proxy(method, route, upstream, requests, context, start)

    def upstream_metadata(self, context: aio.ServicerContext) -> Metadata:
        kept = tuple(
            (key, value)
            for key, value in super().upstream_metadata(context)
            if key not in _TRACE_KEYS
        )
        return kept + _outgoing.get()
