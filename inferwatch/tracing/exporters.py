"""The span exporter the settings name (OTLP over gRPC or HTTP/protobuf, console, or none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK is imported when tracing is set up, not with inferwatch
    from opentelemetry.sdk.trace.export import SpanExporter

    from inferwatch.tracing.settings import TracingSettings


def span_exporter(settings: TracingSettings) -> SpanExporter | None:
    """The exporter for ``settings``; ``None`` for ``none``."""
    if settings.exporter == "none":
        return None
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    # The exporters read the rest of OTEL_EXPORTER_OTLP_* themselves (timeout, compression,
    # certificates, and endpoint/headers when not given here).
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=settings.endpoint, headers=settings.headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    endpoint = settings.endpoint
    if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    headers = None
    if settings.headers:
        headers = dict(item.split("=", 1) for item in settings.headers.split(",") if "=" in item)
    return HttpExporter(endpoint=endpoint, headers=headers)
