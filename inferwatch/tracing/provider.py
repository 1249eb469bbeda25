"""The tracer provider: turned on by :func:`setup_tracing`, off by :func:`shutdown_tracing`.

Spans go through a ``BatchSpanProcessor`` to the exporter the settings name. A forked child
does not inherit the exporter's threads or gRPC channel: the child builds its own provider,
with the parent's settings, on its first span.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from inferwatch.tracing.decision import Decider, sdk_sampler
from inferwatch.tracing.exporters import span_exporter as configured_exporter
from inferwatch.tracing.settings import TracingSettings, exporter_configured, resolve_settings
from inferwatch.tracing.state import tracing_state

if TYPE_CHECKING:  # the SDK is imported when tracing is set up, not with inferwatch
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "inferwatch"

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_settings: TracingSettings | None = None
_span_exporter: SpanExporter | None = None  # an exporter given by the caller (tests, benchmarks)
_pid = os.getpid()
_atexit_registered = False


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
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sdk_sampler(settings))
    exporter = span_exporter if span_exporter is not None else configured_exporter(settings)
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
    service. Raises :class:`~inferwatch.tracing.TracingConfigError`.
    """
    global _provider, _tracer, _settings, _span_exporter, _atexit_registered
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if enabled is None:
        enabled = span_exporter is not None or exporter_configured(env)
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
        tracing_state.decider = Decider(settings)
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
    tracing_state.enabled = on
    tracing_state.exemplars = on and not _multiprocess_mode()


def shutdown_tracing() -> None:
    """Export what is buffered and turn tracing off (registered to run at exit)."""
    global _provider, _tracer, _settings
    with _lock:
        provider = _provider if _pid == os.getpid() else None
        _provider = _tracer = _settings = None
        tracing_state.decider = None
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
            if _settings is None or not tracing_state.enabled:
                return trace.NoOpTracer()
            _provider = _build(_settings, _span_exporter)
            _tracer = _provider.get_tracer(INSTRUMENTATION_NAME)
        return _tracer
