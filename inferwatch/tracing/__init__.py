"""OpenTelemetry traces for inferwatch: setup from ``OTEL_*``, spans, exemplars on latency.

Tracing is off until :func:`setup_tracing` turns it on (the sidecar's ``--tracing`` and the
server's ``--tracing`` call it; so does an ``OTEL_*`` exporter setting when ``enabled`` is left
``None``). While off, the instrumented hot paths read one flag, ``tracing_state.enabled``, and
never call into OpenTelemetry.

When on, spans go through a ``BatchSpanProcessor`` to an OTLP exporter (gRPC or HTTP/protobuf,
as ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` says), and latency histogram observations made
while a sampled span is current carry an exemplar ``{trace_id, span_id}`` (OpenMetrics only;
multiprocess mode keeps no exemplars, so none are attached there).

The modules, each one concern: :mod:`.settings` (``OTEL_*`` resolution), :mod:`.state` (the
switches hot paths read), :mod:`.decision` (the sampler's decision, with and without the SDK),
:mod:`.exporters`, :mod:`.provider` (setup, shutdown, fork), :mod:`.sampling` (starting spans
with the decision taken here), :mod:`.attributes`, :mod:`.spans` (outcomes, the inference span,
propagation), :mod:`.server_span` (a proxy's SERVER span), :mod:`.exemplar` and
:mod:`.middleware` (aiohttp). The SDK is imported when tracing is set up, not with inferwatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inferwatch.tracing.attributes import (
    ATTR_BATCH_REQUESTS,
    ATTR_BATCH_SIZE,
    ATTR_ERROR_TYPE,
    ATTR_HTTP_METHOD,
    ATTR_HTTP_ROUTE,
    ATTR_HTTP_STATUS,
    ATTR_MODEL_NAME,
    ATTR_MODEL_VERSION,
    ATTR_RPC_GRPC_STATUS,
    ATTR_RPC_METHOD,
    ATTR_RPC_SERVICE,
    ATTR_RPC_SYSTEM,
    ATTR_SOURCE,
    ATTR_URL_PATH,
    model_attributes,
)
from inferwatch.tracing.exemplar import (
    EXEMPLAR_SPAN_ID,
    EXEMPLAR_TRACE_ID,
    current_exemplar,
    exemplar_of,
)
from inferwatch.tracing.middleware import UNTRACED_PATHS, aiohttp_middleware, tracing_middleware
from inferwatch.tracing.provider import (
    INSTRUMENTATION_NAME,
    force_flush,
    setup_tracing,
    shutdown_tracing,
    tracer,
)
from inferwatch.tracing.sampling import (
    start_linked_root,
    start_sampled_root,
    start_span,
    unsampled_traceparent,
)
from inferwatch.tracing.server_span import ServerSpan
from inferwatch.tracing.settings import TracingConfigError, TracingSettings, resolve_settings
from inferwatch.tracing.spans import (
    attach,
    batch_sizes_on_span,
    context_of,
    detach,
    end_span,
    error_type_of,
    extract_context,
    failures_on_span,
    inference_span,
    inject_headers,
    mark_failed,
    set_attributes,
    set_batch_size,
)
from inferwatch.tracing.state import TracingState, tracing_state

__all__ = [
    "ATTR_BATCH_REQUESTS",
    "ATTR_BATCH_SIZE",
    "ATTR_ERROR_TYPE",
    "ATTR_HTTP_METHOD",
    "ATTR_HTTP_ROUTE",
    "ATTR_HTTP_STATUS",
    "ATTR_MODEL_NAME",
    "ATTR_MODEL_VERSION",
    "ATTR_RPC_GRPC_STATUS",
    "ATTR_RPC_METHOD",
    "ATTR_RPC_SERVICE",
    "ATTR_RPC_SYSTEM",
    "ATTR_SOURCE",
    "ATTR_URL_PATH",
    "EXEMPLAR_SPAN_ID",
    "EXEMPLAR_TRACE_ID",
    "INSTRUMENTATION_NAME",
    "UNTRACED_PATHS",
    "ServerSpan",
    "TracingConfigError",
    "TracingSettings",
    "TracingState",
    "aiohttp_middleware",
    "attach",
    "batch_sizes_on_span",
    "context_of",
    "current_exemplar",
    "detach",
    "end_span",
    "error_type_of",
    "exemplar_of",
    "extract_context",
    "failures_on_span",
    "force_flush",
    "inference_span",
    "inject_headers",
    "mark_failed",
    "model_attributes",
    "resolve_settings",
    "set_attributes",
    "set_batch_size",
    "setup_tracing",
    "shutdown_tracing",
    "start_linked_root",
    "start_sampled_root",
    "start_span",
    "tracer",
    "tracing_middleware",
    "tracing_state",
    "unsampled_traceparent",
]

# ``tracing.enabled`` / ``tracing.exemplars`` are read from their one owner at each access (a
# plain re-export would be a copy taken at import). Hot paths read tracing_state directly.
if TYPE_CHECKING:
    enabled: bool
    exemplars: bool
else:
    _SWITCHES = frozenset(("enabled", "exemplars"))

    def __getattr__(name: str) -> Any:
        if name in _SWITCHES:
            return getattr(tracing_state, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
