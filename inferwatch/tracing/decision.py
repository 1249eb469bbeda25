"""The configured sampler's decision: the SDK's sampler, and the same decision without the SDK.

Most requests are not sampled at production ratios, and the SDK's unsampled span still costs
tens of microseconds of a proxy's CPU. :class:`Decider` decides as the SDK's samplers would, so
an unsampled request needs no SDK span at all. When it has decided to sample a new trace, the
SDK must not draw again: :func:`forcing_sample` makes the SDK's sampler say yes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the SDK is imported when tracing is set up, not with inferwatch
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import sampling
    from opentelemetry.trace import SpanKind

    from inferwatch.tracing.settings import TracingSettings

_TRACE_ID_LOW = (1 << 64) - 1
_HEX = frozenset("0123456789abcdef")
_forced = threading.local()


class Decider:
    """The configured sampler's decision, computed without the SDK."""

    __slots__ = ("bound", "parent_based", "root")

    def __init__(self, settings: TracingSettings) -> None:
        name = settings.sampler
        self.parent_based = name.startswith("parentbased_")
        self.root = name.removeprefix("parentbased_")  # always_on, always_off, traceidratio
        self.bound = round(settings.sampler_arg * (_TRACE_ID_LOW + 1))

    def by_trace_id(self, trace_id: int) -> bool:
        if self.root == "traceidratio":
            return trace_id & _TRACE_ID_LOW < self.bound
        return self.root == "always_on"


def parse_traceparent(value: str) -> tuple[int, bool] | None:
    """(trace id, sampled) of a W3C ``traceparent`` as the SDK's propagator accepts it."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_hex, span_hex, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if (
        version == "ff"
        or (version == "00" and len(value) != 55)
        or (len(value) > 55 and value[55] != "-")
    ):
        return None
    if not _HEX.issuperset(value[:2] + trace_hex + span_hex + flags):
        return None
    trace_id = int(trace_hex, 16)
    if trace_id == 0 or int(span_hex, 16) == 0:
        return None
    return trace_id, bool(int(flags, 16) & 1)


def forcing_sample(on: bool) -> None:
    """While on (in this thread), the SDK's sampler records every span it is asked about."""
    _forced.on = on


def sdk_sampler(settings: TracingSettings) -> sampling.Sampler:
    """The SDK sampler the settings name, unless :func:`forcing_sample` already decided."""
    from opentelemetry.sdk.trace import sampling

    class PreDecided(sampling.Sampler):
        """The configured sampler, unless a decision was already taken."""

        def __init__(self, sampler: sampling.Sampler) -> None:
            self._sampler = sampler

        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> sampling.SamplingResult:
            if getattr(_forced, "on", False):
                return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
            return self._sampler.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return self._sampler.get_description()

    return PreDecided(_configured_sampler(settings))


def _configured_sampler(settings: TracingSettings) -> sampling.Sampler:
    from opentelemetry.sdk.trace import sampling

    ratio = sampling.TraceIdRatioBased(settings.sampler_arg)
    return {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(ratio),
    }[settings.sampler]
