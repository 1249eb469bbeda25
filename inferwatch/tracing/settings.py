"""Tracing settings: explicit arguments over the standard ``OTEL_*`` variables over defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROTOCOLS = ("grpc", "http/protobuf")


class TracingConfigError(ValueError):
    """A tracing setting that cannot be used; the message names it and where it came from."""


@dataclass(frozen=True)
class TracingSettings:
    """What :func:`~inferwatch.tracing.setup_tracing` resolved (explicit arguments over
    ``OTEL_*`` variables)."""

    exporter: str  # "otlp", "console" or "none"
    protocol: str
    endpoint: str | None
    headers: str | None
    sampler: str
    sampler_arg: float
    service_name: str | None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)


def exporter_configured(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for spans to go somewhere (what ``enabled=None`` follows)."""
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
    if proto not in PROTOCOLS:
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL / protocol: must be grpc or http/protobuf, got {proto!r}"
        )
    if isinstance(headers, Mapping):
        headers = ",".join(f"{k}={v}" for k, v in headers.items())
    name = (sampler or env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if name not in SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER / sampler: must be one of {', '.join(SAMPLERS)}, got {name!r}"
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
