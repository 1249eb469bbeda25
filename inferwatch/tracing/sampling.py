"""Starting spans with the sampler's decision taken here, not by the SDK.

A span that will not be sampled is never handed to the SDK: :func:`start_span` and the
sidecar's :func:`unsampled_traceparent` decide as the configured sampler would and, for a
dropped span, only carry its (unsampled) context on, which at 1 % sampling keeps the cost per
request near that of tracing off.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind

from inferwatch.tracing.decision import forcing_sample, parse_traceparent
from inferwatch.tracing.provider import tracer
from inferwatch.tracing.state import tracing_state

_UNSAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)


def unsampled_traceparent(incoming: str | None) -> str | None:
    """The ``traceparent`` to send on for a request that will not be sampled, or ``None``
    when it will be (then start a real span: :func:`start_sampled_root` for a new trace)."""
    decider = tracing_state.decider
    if decider is None:
        return None
    parent = parse_traceparent(incoming.strip()) if incoming else None
    if parent is not None:
        trace_id, parent_sampled = parent
        sampled = parent_sampled if decider.parent_based else decider.by_trace_id(trace_id)
    else:
        trace_id = random.getrandbits(128) or 1
        sampled = decider.by_trace_id(trace_id)
    if sampled:
        return None
    return f"00-{trace_id:032x}-{random.getrandbits(64) or 1:016x}-00"


def start_sampled_root(name: str, context: otel_context.Context, **kwargs: Any) -> Span:
    """A span for a request :func:`unsampled_traceparent` found sampled. A new trace's
    decision was taken on an id of our own, so the SDK must not draw again."""
    return start_span(name, context, sample=not _has_valid_parent(context), **kwargs)


def _has_valid_parent(context: otel_context.Context) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


def start_linked_root(
    name: str, linked: Iterable[Span], attributes: Mapping[str, Any] | None = None
) -> Span:
    """A recorded span starting a trace of its own, linked to the ``linked`` spans: work done
    for several requests at once (a batch), which none of their traces owns."""
    return start_span(
        name,
        otel_context.Context(),
        links=[Link(span.get_span_context()) for span in linked],
        attributes=attributes,
        sample=True,
    )


def start_span(
    name: str,
    context: otel_context.Context | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[Link] | None = None,
    sample: bool = False,
) -> Span:
    """A span, child of ``context`` (default: the current one). One that would not be
    sampled is a bare ``NonRecordingSpan`` carrying the unsampled context, as the SDK's
    would, without the SDK's cost. ``sample``: record it whatever the sampler says."""
    decider = tracing_state.decider
    parent = trace.get_current_span(context).get_span_context()
    if decider is not None and not sample:
        if parent.is_valid:
            trace_id = parent.trace_id
            if decider.parent_based:
                sampled = parent.trace_flags.sampled
            else:
                sampled = decider.by_trace_id(trace_id)
        else:
            trace_id = random.getrandbits(128) or 1
            sampled = decider.by_trace_id(trace_id)
        if not sampled:
            state = parent.trace_state if parent.is_valid else None
            return trace.NonRecordingSpan(
                trace.SpanContext(trace_id, random.getrandbits(64) or 1, False, _UNSAMPLED, state)
            )
        sample = not parent.is_valid  # a new trace's draw is taken: the SDK must not redraw
    if sample:
        forcing_sample(True)
    try:
        return tracer().start_span(
            name, context=context, kind=kind, attributes=attributes, links=links
        )
    finally:
        if sample:
            forcing_sample(False)
