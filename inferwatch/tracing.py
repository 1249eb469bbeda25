"""OpenTelemetry traces for inferwatch: setup from ``OTEL_*``, spans, exemplars on latency.

Tracing is off until :func:`setup_tracing` turns it on (the sidecar's ``--tracing`` and the
server's ``--tracing`` call it; so does an ``OTEL_*`` exporter setting when ``enabled`` is left
``None``). While off, the instrumented hot paths read one module-level flag, :data:`enabled`,
and never call into OpenTelemetry.

When on, spans go through a ``BatchSpanProcessor`` to an OTLP exporter (gRPC or HTTP/protobuf,
as ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` says), and latency histogram observations made
while a sampled span is current carry an exemplar ``{trace_id, span_id}`` (OpenMetrics only;
multiprocess mode keeps no exemplars, so none are attached there).

Spans that will not be sampled are never handed to the SDK: :func:`start_span` and the
sidecar's :func:`unsampled_traceparent` take the configured sampler's decision themselves and,
for a dropped span, only carry its (unsampled) context on, which at 1 % sampling keeps the
cost per request near that of tracing off.

A forked child does not inherit the exporter's threads or gRPC channel: the child builds its
own provider, with the parent's settings, on its first span.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import random
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from inferwatch import schema

if TYPE_CHECKING:  # the SDK is imported when tracing is set up, not with inferwatch
    from aiohttp import web
    from opentelemetry.sdk.trace import TracerProvider, sampling
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

__all__ = [
    "ATTR_BATCH_REQUESTS",
    "ATTR_BATCH_SIZE",
    "ATTR_MODEL_NAME",
    "ATTR_MODEL_VERSION",
    "ATTR_SOURCE",
    "TracingConfigError",
    "aiohttp_middleware",
    "current_exemplar",
    "enabled",
    "force_flush",
    "setup_tracing",
    "shutdown_tracing",
    "start_span",
    "tracing_middleware",
]

# --- attribute names ----------------------------------------------------------------------------
# HTTP semantic conventions (stable):
ATTR_HTTP_METHOD = "http.request.method"
ATTR_HTTP_ROUTE = "http.route"
ATTR_HTTP_STATUS = "http.response.status_code"
ATTR_URL_PATH = "url.path"
ATTR_ERROR_TYPE = "error.type"
# inferwatch's own (no semantic convention covers a model server's inference):
ATTR_MODEL_NAME = "model.name"
ATTR_MODEL_VERSION = "model.version"
ATTR_BATCH_SIZE = "inference.batch_size"  # items in the request (or, on a batch span, the batch)
ATTR_BATCH_REQUESTS = "inference.batch.requests"  # requests whose items a batch span ran
ATTR_SOURCE = "inference.source"  # "sidecar" or "app", as the metrics' source label

# Exemplar label names: the dashboards link a latency bucket to its trace through trace_id.
EXEMPLAR_TRACE_ID = "trace_id"
EXEMPLAR_SPAN_ID = "span_id"

INSTRUMENTATION_NAME = "inferwatch"

# Read on every instrumented call: True once setup_tracing() turned tracing on.
enabled = False
# Exemplars attached to latency observations (False in prometheus_client multiprocess mode).
exemplars = False

_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_PROTOCOLS = ("grpc", "http/protobuf")


class TracingConfigError(ValueError):
    """A tracing setting that cannot be used; the message names it and where it came from."""


@dataclass(frozen=True)
class TracingSettings:
    """What :func:`setup_tracing` resolved (explicit arguments over ``OTEL_*`` variables)."""

    exporter: str  # "otlp", "console" or "none"
    protocol: str
    endpoint: str | None
    headers: str | None
    sampler: str
    sampler_arg: float
    service_name: str | None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)


_lock = threading.Lock()
_forced = threading.local()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_settings: TracingSettings | None = None
_span_exporter: SpanExporter | None = None  # an exporter given by the caller (tests, benchmarks)
_pid = os.getpid()
_atexit_registered = False


def _env_exporter_configured(env: Mapping[str, str]) -> bool:
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _ratio(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise TracingConfigError(f"{where}: must be a number in [0, 1], got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise TracingConfigError(f"{where}: must be in [0, 1], got {raw!r}")
    return value


def resolve_settings(
    *,
    exporter: str | None = None,
    protocol: str | None = None,
    endpoint: str | None = None,
    headers: str | Mapping[str, str] | None = None,
    sampler: str | None = None,
    sampler_arg: float | None = None,
    service_name: str | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> TracingSettings:
    """Explicit values over the standard ``OTEL_*`` variables over the spec's defaults."""
    env = os.environ if env is None else env
    exporter_name = (exporter or env.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if exporter_name not in ("otlp", "console", "none"):
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER / exporter: must be otlp, console or none, got {exporter_name!r}"
        )
    proto = (
        protocol
        or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if proto not in _PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL / protocol: must be grpc or http/protobuf, got {proto!r}"
        )
    if isinstance(headers, Mapping):
        headers = ",".join(f"{k}={v}" for k, v in headers.items())
    name = (sampler or env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if name not in _SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER / sampler: must be one of {', '.join(_SAMPLERS)}, got {name!r}"
        )
    if sampler_arg is not None:
        arg = _ratio(str(sampler_arg), "sampler_arg")
    elif env.get("OTEL_TRACES_SAMPLER_ARG"):
        arg = _ratio(env["OTEL_TRACES_SAMPLER_ARG"], "OTEL_TRACES_SAMPLER_ARG")
    else:
        arg = 1.0
    return TracingSettings(
        exporter=exporter_name,
        protocol=proto,
        endpoint=endpoint,
        headers=headers,
        sampler=name,
        sampler_arg=arg,
        service_name=service_name,
        resource_attributes=dict(resource_attributes or {}),
    )


def _sampler(settings: TracingSettings) -> sampling.Sampler:
    from opentelemetry.sdk.trace import sampling

    class PreDecided(sampling.Sampler):
        """The configured sampler, unless :func:`start_sampled_root` already decided."""

        def __init__(self, sampler: sampling.Sampler) -> None:
            self._sampler = sampler

        def should_sample(
            self,
            parent_context: otel_context.Context | None,
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


def _exporter(settings: TracingSettings) -> SpanExporter | None:
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


def _multiprocess_mode() -> bool:
    from inferwatch.exposition import multiprocess_dir

    return multiprocess_dir() is not None


def _build(settings: TracingSettings, span_exporter: SpanExporter | None) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, Any] = dict(settings.resource_attributes)
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME under ours.
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_sampler(settings))
    exporter = span_exporter if span_exporter is not None else _exporter(settings)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def setup_tracing(
    enabled: bool | None = True,
    *,
    exporter: str | None = None,
    protocol: str | None = None,
    endpoint: str | None = None,
    headers: str | Mapping[str, str] | None = None,
    sampler: str | None = None,
    sampler_arg: float | None = None,
    service_name: str | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    span_exporter: SpanExporter | None = None,
    set_global: bool = True,
    default_service_name: str | None = None,
) -> bool:
    """Turn tracing on; returns whether it is on.

    ``enabled=None``: on only when the environment configures an exporter
    (``OTEL_TRACES_EXPORTER`` other than ``none``, or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``).
    ``OTEL_SDK_DISABLED=true`` keeps it off whatever the arguments. Other arguments override
    their ``OTEL_*`` variable; ``span_exporter`` replaces the OTLP exporter altogether. With
    ``set_global``, the provider becomes OpenTelemetry's global one if none was set, so the
    application's own spans join the same traces. ``default_service_name`` is used when
    neither ``service_name``, ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` names the
    service. Raises :class:`TracingConfigError`.
    """
    global _provider, _tracer, _settings, _span_exporter, _atexit_registered, _decider
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if enabled is None:
        enabled = span_exporter is not None or _env_exporter_configured(env)
    if not enabled:
        return False
    settings = resolve_settings(
        exporter=exporter,
        protocol=protocol,
        endpoint=endpoint,
        headers=headers,
        sampler=sampler,
        sampler_arg=sampler_arg,
        service_name=service_name,
        resource_attributes=resource_attributes,
    )
    if (
        default_service_name
        and not settings.service_name
        and not env.get("OTEL_SERVICE_NAME")
        and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    ):
        settings = dataclasses.replace(settings, service_name=default_service_name)
    provider = _build(settings, span_exporter)
    with _lock:
        old = _provider
        _provider, _settings, _span_exporter = provider, settings, span_exporter
        _tracer = provider.get_tracer(INSTRUMENTATION_NAME)
        _decider = _Decider(settings)
        _set_flags(True)
        if not _atexit_registered:
            atexit.register(shutdown_tracing)
            _atexit_registered = True
    if old is not None:
        old.shutdown()
    if set_global and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    log.info(
        "tracing on: %s exporter%s, sampler %s(%g)",
        settings.exporter if span_exporter is None else type(span_exporter).__name__,
        f" ({settings.protocol})" if settings.exporter == "otlp" and span_exporter is None else "",
        settings.sampler,
        settings.sampler_arg,
    )
    return True


def _set_flags(on: bool) -> None:
    global enabled, exemplars
    enabled = on
    exemplars = on and not _multiprocess_mode()


def shutdown_tracing() -> None:
    """Export what is buffered and turn tracing off (registered to run at exit)."""
    global _provider, _tracer, _settings, _decider
    with _lock:
        provider = _provider if _pid == os.getpid() else None
        _provider = _tracer = _settings = _decider = None
        _set_flags(False)
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_millis: int = 10_000) -> bool:
    """Export every finished span now (tests, and before a process exits on its own)."""
    provider = _provider
    return provider.force_flush(timeout_millis) if provider is not None else True


def _after_fork_in_child() -> None:
    # The parent's exporter thread and channel did not survive the fork: forget the provider
    # (never shut it down here) and build a fresh one with the same settings on first use.
    global _provider, _tracer, _pid
    _pid = os.getpid()
    _provider = _tracer = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def tracer() -> trace.Tracer:
    """inferwatch's tracer (a no-op one while tracing is off)."""
    global _provider, _tracer
    found = _tracer
    if found is not None:
        return found
    with _lock:
        if _tracer is None:
            if _settings is None or not enabled:
                return trace.NoOpTracer()
            _provider = _build(_settings, _span_exporter)
            _tracer = _provider.get_tracer(INSTRUMENTATION_NAME)
        return _tracer


# --- the unsampled fast path -------------------------------------------------------------------
# Most requests are not sampled at production ratios, and the SDK's unsampled span still costs
# tens of microseconds of a proxy's CPU. These functions decide sampling as the SDK's samplers
# would, and for an unsampled request only write the ``traceparent`` to propagate.

_TRACE_ID_LOW = (1 << 64) - 1
_UNSAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_HEX = frozenset("0123456789abcdef")


class _Decider:
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


_decider: _Decider | None = None


def _parse_traceparent(value: str) -> tuple[int, bool] | None:
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


def unsampled_traceparent(incoming: str | None) -> str | None:
    """The ``traceparent`` to send on for a request that will not be sampled, or ``None``
    when it will be (then start a real span: :func:`start_sampled_root` for a new trace)."""
    decider = _decider
    if decider is None:
        return None
    parent = _parse_traceparent(incoming.strip()) if incoming else None
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
    decider = _decider
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
        _forced.on = True
    try:
        return tracer().start_span(
            name, context=context, kind=kind, attributes=attributes, links=links
        )
    finally:
        if sample:
            _forced.on = False


# --- exemplars ----------------------------------------------------------------------------------


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
    """The exemplar for an observation made now: the current span's, if sampled."""
    if not exemplars:
        return None
    return exemplar_of(trace.get_current_span())


class ExemplarHistogram:
    """A histogram child whose ``observe`` attaches the current span's exemplar."""

    __slots__ = ("_observe",)

    def __init__(self, child: Any) -> None:
        self._observe = child.observe

    def observe(self, amount: float) -> None:
        self._observe(amount, current_exemplar())


class SpanBatchSize:
    """The batch size histogram child; also sets ``inference.batch_size`` on the current span."""

    __slots__ = ("_observe",)

    def __init__(self, child: Any) -> None:
        self._observe = child.observe

    def observe(self, amount: float) -> None:
        self._observe(amount)
        trace.get_current_span().set_attribute(ATTR_BATCH_SIZE, amount)


_traced_instruments: dict[int, tuple[Any, Any]] = {}
_TracedInstruments: Any = None


def _traced_instruments_class() -> Any:
    global _TracedInstruments
    if _TracedInstruments is None:
        from inferwatch.metrics import ModelInstruments

        class TracedInstruments(ModelInstruments):
            """Failures also set ``error.type`` (the failure reason) on the current span."""

            __slots__ = ()

            def record_failure(self, reason: str) -> None:
                super().record_failure(reason)
                span = trace.get_current_span()
                span.set_attribute(ATTR_ERROR_TYPE, reason)
                # A client's mistake is not the server's error.
                if reason != schema.REASON_CLIENT_ERROR:
                    span.set_status(Status(StatusCode.ERROR))

        _TracedInstruments = TracedInstruments
    return _TracedInstruments


def error_type_of(span: Span) -> str | None:
    """The ``error.type`` already set on a (recording) span."""
    attributes = getattr(span, "attributes", None)
    value = attributes.get(ATTR_ERROR_TYPE) if attributes else None
    return value if isinstance(value, str) else None


def with_exemplars(m: Any) -> Any:
    """A copy of a :class:`~inferwatch.metrics.ModelInstruments` whose latency histograms
    (duration, time to first byte, queue duration) attach exemplars and whose batch size also
    goes on the current span. Cached: instruments live as long as their registry."""
    found = _traced_instruments.get(id(m))
    if found is not None and found[0] is m:
        return found[1]
    from inferwatch.metrics import ModelInstruments

    cls = _traced_instruments_class()
    copy = cls.__new__(cls)
    for name in ModelInstruments.__slots__:
        setattr(copy, name, getattr(m, name))
    copy.duration = ExemplarHistogram(m.duration)
    copy.ttfb = ExemplarHistogram(m.ttfb)
    copy.queue_duration = ExemplarHistogram(m.queue_duration)
    copy.batch_size = SpanBatchSize(m.batch_size)
    _traced_instruments[id(m)] = (m, copy)
    return copy


# --- spans --------------------------------------------------------------------------------------


def model_attributes(source: str, model_name: str, model_version: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {ATTR_SOURCE: source, ATTR_MODEL_NAME: model_name}
    if model_version:
        attributes[ATTR_MODEL_VERSION] = model_version
    return attributes


def end_span(span: Span, error: BaseException | None, error_type: str | None = None) -> None:
    """Record a failure (``error.type``, status ERROR, the exception) and end the span."""
    if error is not None or error_type is not None:
        kind = error_type or (type(error).__qualname__ if error is not None else "")
        span.set_attribute(ATTR_ERROR_TYPE, kind)
        span.set_status(Status(StatusCode.ERROR, str(error) if error is not None else None))
        if isinstance(error, Exception):
            span.record_exception(error)
    span.end()


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


# --- aiohttp ------------------------------------------------------------------------------------


# Probes and scrapes: a trace each second per pod would bury the inference traces.
UNTRACED_PATHS = frozenset(
    ("/metrics", "/health", "/ready", "/v2/health/live", "/v2/health/ready", "/livez", "/readyz")
)


def tracing_middleware(untraced_paths: frozenset[str] = UNTRACED_PATHS) -> Any:
    """An aiohttp middleware: a SERVER span per request (except ``untraced_paths``) that
    continues the caller's W3C ``traceparent``, with the HTTP semantic-convention attributes."""

    # A new-style middleware (what aiohttp's @web.middleware marks), so that importing
    # inferwatch does not import aiohttp.
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not enabled or request.path in untraced_paths:
            return await handler(request)
        return await _traced_request(request, handler)

    middleware.__middleware_version__ = 1  # type: ignore[attr-defined]
    return middleware


async def _traced_request(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    from aiohttp.web import HTTPException

    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    attributes: dict[str, Any] = {
        ATTR_HTTP_METHOD: request.method,
        ATTR_URL_PATH: request.path,
    }
    if route:
        attributes[ATTR_HTTP_ROUTE] = route
    span = start_span(
        f"{request.method} {route}" if route else request.method,
        extract(request.headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    status = 500
    error: BaseException | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except HTTPException as exc:
        status = exc.status
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        otel_context.detach(token)
        span.set_attribute(ATTR_HTTP_STATUS, status)
        if error is not None:
            end_span(span, error, type(error).__qualname__)
        elif status >= 500:
            end_span(span, None, str(status))
        else:
            span.end()


aiohttp_middleware = tracing_middleware()
