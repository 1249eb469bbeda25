"""The SERVER span of a request a proxy forwards: it continues the caller's trace, is current
while the request is handled, and its context goes upstream in place of the caller's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from inferwatch.tracing.attributes import ATTR_HTTP_STATUS
from inferwatch.tracing.sampling import start_sampled_root
from inferwatch.tracing.spans import end_span, error_type_of, extract_context, inject_headers


class ServerSpan:
    """A SERVER span for a request :func:`~inferwatch.tracing.unsampled_traceparent` found
    sampled, child of the context its ``headers`` carry; ``with`` it to make it current,
    then :meth:`finish` it once, after the block."""

    __slots__ = ("_context", "_token", "span")

    def __init__(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any] | None = None
    ) -> None:
        parent = extract_context(headers)
        self.span: Span = start_sampled_root(
            name, parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self._context = trace.set_span_in_context(self.span, parent)
        self._token: object = None

    def propagation_headers(self) -> dict[str, str]:
        """``traceparent``/``tracestate`` to send upstream: this span as the parent."""
        return inject_headers(self._context)

    def __enter__(self) -> ServerSpan:
        self._token = otel_context.attach(self._context)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]

    def rename(self, name: str) -> None:
        """A better name, once known (``METHOD route`` after routing)."""
        self.span.update_name(name)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.span.set_attributes(attributes)

    def finish(self, status: int, error: BaseException | None = None) -> None:
        """End it with the response's ``status`` (0: none was sent). An ``error`` (one to
        report: not a client that went away) or a 5xx marks it failed, unless a failure reason
        already did (``error.type`` set while it was current)."""
        span = self.span
        if status:
            span.set_attribute(ATTR_HTTP_STATUS, status)
        if error is not None:
            end_span(span, error, error_type_of(span) or type(error).__qualname__)
        elif status >= 500 and error_type_of(span) is None:
            end_span(span, None, str(status))
        else:
            span.end()
