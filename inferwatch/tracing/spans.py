"""Span helpers for the instrumented code: outcomes on spans, the inference span, propagation.

They take plain values and callables, never metrics objects: the tracing package does not
import :mod:`inferwatch.metrics`, whose instruments put exemplars on latency themselves
(:meth:`~inferwatch.metrics.ModelInstruments.with_exemplars`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, Status, StatusCode

from inferwatch import schema
from inferwatch.tracing.attributes import ATTR_BATCH_SIZE, ATTR_ERROR_TYPE
from inferwatch.tracing.sampling import start_span


def end_span(span: Span, error: BaseException | None, error_type: str | None = None) -> None:
    """Record a failure (``error.type``, status ERROR, the exception) and end the span."""
    if error is not None or error_type is not None:
        kind = error_type or (type(error).__qualname__ if error is not None else "")
        span.set_attribute(ATTR_ERROR_TYPE, kind)
        span.set_status(Status(StatusCode.ERROR, str(error) if error is not None else None))
        if isinstance(error, Exception):
            span.record_exception(error)
    span.end()


def error_type_of(span: Span) -> str | None:
    """The ``error.type`` already set on a (recording) span."""
    attributes = getattr(span, "attributes", None)
    value = attributes.get(ATTR_ERROR_TYPE) if attributes else None
    return value if isinstance(value, str) else None


def set_attributes(attributes: Mapping[str, Any], span: Span | None = None) -> None:
    """Set ``attributes`` on ``span`` (default: the current span)."""
    (trace.get_current_span() if span is None else span).set_attributes(attributes)


def set_batch_size(size: float, span: Span | None = None) -> None:
    """Say on ``span`` (default: the current span) how many items the inference had."""
    (trace.get_current_span() if span is None else span).set_attribute(ATTR_BATCH_SIZE, size)


def mark_failed(reason: str, span: Span | None = None) -> None:
    """Mark ``span`` (default: the current span) as a failed inference: ``error.type`` is the
    failure reason, and the status ERROR unless the client's mistake (``client_error``),
    which is not the server's error."""
    span = trace.get_current_span() if span is None else span
    span.set_attribute(ATTR_ERROR_TYPE, reason)
    if reason != schema.REASON_CLIENT_ERROR:
        span.set_status(Status(StatusCode.ERROR))


def batch_sizes_on_span(observe: Callable[[float], None]) -> Callable[[float], None]:
    """``observe`` (a batch size histogram's) that also sets the size on the current span."""

    def observe_on_span(size: float) -> None:
        observe(size)
        set_batch_size(size)

    return observe_on_span


def failures_on_span(record_failure: Callable[[str], None]) -> Callable[[str], None]:
    """``record_failure`` that also marks the current span failed (:func:`mark_failed`)."""

    def record_on_span(reason: str) -> None:
        record_failure(reason)
        mark_failed(reason)

    return record_on_span


class inference_span:
    """A span, current while the block runs; an exception ends it as an error."""

    __slots__ = ("_error_type", "_token", "span")

    def __init__(
        self, name: str, attributes: Mapping[str, Any], error_type: Callable[[BaseException], str]
    ) -> None:
        self.span = start_span(name, attributes=attributes)
        self._error_type = error_type
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if exc is None:
            self.span.end()
        else:
            end_span(self.span, exc, self._error_type(exc))


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The context a request's W3C ``traceparent``/``tracestate`` headers carry."""
    return extract(headers)


def inject_headers(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """``traceparent``/``tracestate`` for the current (or given) context."""
    carrier: dict[str, str] = {}
    inject(carrier, context=ctx)
    return carrier


def context_of(span: Span) -> otel_context.Context:
    """A context in which ``span`` is current: :func:`attach` it around each stretch of code run
    on the span's behalf (each step of a generator), :func:`detach` after."""
    return trace.set_span_in_context(span)


# Make a context current (attach returns a token), then restore the one before (detach takes
# the token): OpenTelemetry's own, named here so that instrumented code needs only tracing.
attach = otel_context.attach
detach = otel_context.detach
