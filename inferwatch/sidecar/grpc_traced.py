"""The gRPC proxy with tracing on: a SERVER span per call that continues the caller's trace.

Chosen once at start (:mod:`~inferwatch.sidecar.process`), like the HTTP proxy's traced
handler. The span is current while the call runs, so the exchange's latency observations
carry it as exemplar and its failures mark it; the upstream gets the span's
``traceparent`` in place of the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar

from grpc import aio

from inferwatch import tracing
from inferwatch.sidecar.grpc_protocols import GrpcRoute
from inferwatch.sidecar.grpc_proxy import GrpcProxy, Metadata, Upstream

_TRACE_KEYS = frozenset(("traceparent", "tracestate"))
# The trace metadata this call sends upstream (each gRPC call runs in a task of its own).
_outgoing: ContextVar[Metadata] = ContextVar("inferwatch_grpc_trace_metadata", default=())


class TracedGrpcProxy(GrpcProxy):
    async def _proxy(
        self,
        method: str,
        route: GrpcRoute,
        upstream: Upstream,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext,
        start: float,
    ) -> None:
        incoming = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if key in _TRACE_KEYS and isinstance(value, str)
        }
        unsampled = tracing.unsampled_traceparent(incoming.get("traceparent"))
        if unsampled is not None:  # not sampled: no span, only a traceparent of its own
            _outgoing.set((("traceparent", unsampled),))
            await super()._proxy(method, route, upstream, requests, context, start)
            return
        service, _, name = method.lstrip("/").partition("/")
        span = tracing.ServerSpan(
            route.route,
            incoming,
            {
                tracing.ATTR_RPC_SYSTEM: "grpc",
                tracing.ATTR_RPC_SERVICE: service,
                tracing.ATTR_RPC_METHOD: name,
            },
        )
        _outgoing.set(tuple(span.propagation_headers().items()))
        error: BaseException | None = None
        try:
            with span:
                await super()._proxy(method, route, upstream, requests, context, start)
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = context.code()
            span.set_attributes({tracing.ATTR_RPC_GRPC_STATUS: code.value[0] if code else 0})
            span.finish(0, error)

    def upstream_metadata(self, context: aio.ServicerContext) -> Metadata:
        kept = tuple(
            (key, value)
            for key, value in super().upstream_metadata(context)
            if key not in _TRACE_KEYS
        )
        return kept + _outgoing.get()
