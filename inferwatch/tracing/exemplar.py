"""Exemplars: the ``{trace_id, span_id}`` a latency observation carries while a sampled span is
current, so the dashboards can link a latency bucket to its trace (OpenMetrics only)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.trace import Span

from inferwatch.tracing.state import tracing_state

# Exemplar label names: the dashboards link a latency bucket to its trace through trace_id.
EXEMPLAR_TRACE_ID = "trace_id"
EXEMPLAR_SPAN_ID = "span_id"


def exemplar_of(span: Span) -> dict[str, str] | None:
    """The exemplar labels of ``span`` when it is sampled, else ``None``."""
    ctx = span.get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return {
        EXEMPLAR_TRACE_ID: format(ctx.trace_id, "032x"),
        EXEMPLAR_SPAN_ID: format(ctx.span_id, "016x"),
    }


def current_exemplar() -> dict[str, str] | None:
    """The exemplar for an observation made now: the current span's, if sampled. What
    :meth:`~inferwatch.metrics.ModelInstruments.with_exemplars` is given."""
    if not tracing_state.exemplars:
        return None
    return exemplar_of(trace.get_current_span())
