"""OTLP export of the inference families, for pipelines built on an OpenTelemetry Collector.

The numbers are prometheus_client's, read from the registry (multiprocess-aware) every
``interval`` seconds and pushed as cumulative OTLP metrics: counters as monotonic sums (the
name without ``_total``, which a Collector's Prometheus exporter adds back), gauges as gauges,
histograms with the schema's bucket boundaries. Names, labels and units are the schema's, so
what a Collector forwards to Prometheus matches what a scrape would have read. Exemplars are not
carried (the traces are exported on their own).

Models that generate tokens are also pushed under the OpenTelemetry GenAI semantic conventions'
model server metrics (semantic-conventions v1.41.0, docs/gen-ai/gen-ai-metrics.md):
``gen_ai.server.time_to_first_token``, ``gen_ai.server.time_per_output_token`` and
``gen_ai.server.request.duration``, derived from the schema's histograms and re-bucketed to the
boundaries the conventions advise (see :func:`rebucket`).

Configured by ``OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT``/``_PROTOCOL``/``_HEADERS`` and
``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds), or by the arguments of
:func:`start_otlp_metrics`.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from inferwatch import schema
from inferwatch.exposition import scrape_registry

log = logging.getLogger(__name__)

_UNITS = {"seconds": "s", "bytes": "By", "ratio": "1", "celsius": "Cel", "watts": "W"}
DEFAULT_FAMILIES = frozenset(f.name for f in schema.INFERENCE_FAMILIES)
# client_python leaves a family's unit empty unless it was created with one: take the schema's.
_SCHEMA_UNITS = {f.name.removesuffix("_total"): f.unit for f in schema.families() if f.unit}


def _base_name(name: str) -> str:
    return name.removesuffix("_total")


# --- OpenTelemetry GenAI semantic conventions (v1.41.0), model server metrics -------------------

GEN_AI_SEMCONV_VERSION = "1.41.0"
GEN_AI_OPERATION = "chat"  # gen_ai.operation.name: our families do not keep the API called
GEN_AI_PROVIDER = "inferwatch"  # gen_ai.provider.name: a self-hosted model, no well-known value
# The ExplicitBucketBoundaries each metric SHOULD be specified with.
GEN_AI_TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
GEN_AI_TPOT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
GEN_AI_DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
# (our family, GenAI name, the conventions' description, their boundaries)
GEN_AI_METRICS: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    (
        schema.TIME_TO_FIRST_TOKEN.name,
        "gen_ai.server.time_to_first_token",
        "Time to generate first token for successful responses.",
        GEN_AI_TTFT_BUCKETS,
    ),
    (
        schema.TIME_PER_OUTPUT_TOKEN.name,
        "gen_ai.server.time_per_output_token",
        "Time per output token generated after the first token for successful responses.",
        GEN_AI_TPOT_BUCKETS,
    ),
    (
        schema.INFERENCE_DURATION.name,
        "gen_ai.server.request.duration",
        "Generative AI server request duration such as time-to-last byte or last output token.",
        GEN_AI_DURATION_BUCKETS,
    ),
)


def rebucket(bounds: Sequence[float], counts: Sequence[int], target: Sequence[float]) -> list[int]:
    """Per-bucket ``counts`` over ``bounds`` (the last count is +Inf's) re-counted over
    ``target``: exact at a boundary both share; inside one of ours, linear interpolation (what
    ``histogram_quantile`` assumes); above our last finite boundary, counted above ``target``'s
    boundary. Cumulative counts stay monotonic, so successive cumulative pushes do too."""
    total = sum(counts)
    known: list[tuple[float, float]] = [(0.0, 0.0)]
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        known.append((bound, float(running)))
    out: list[int] = []
    previous = 0
    for b in target:
        at = bisect.bisect_left(known, b, key=lambda k: k[0])
        if at == len(known):
            cumulative = known[-1][1]
        elif known[at][0] == b:
            cumulative = known[at][1]
        else:
            (lo, lo_c), (hi, hi_c) = known[at - 1], known[at]
            cumulative = lo_c + (hi_c - lo_c) * (b - lo) / (hi - lo)
        whole = min(max(round(cumulative), previous), total)
        out.append(whole - previous)
        previous = whole
    out.append(total - previous)
    return out


def _gen_ai_metrics(
    collected: Mapping[str, Any], start: int, now: int, operation: str, provider: str, point: Any
) -> list[tuple[str, str, list[Any]]]:
    """(name, description, points) of the GenAI metrics, for the models that generated tokens:
    a first token observed or output tokens counted."""
    generative: set[tuple[str, str]] = set()
    ttft = collected.get(schema.TIME_TO_FIRST_TOKEN.name)
    if ttft is not None:
        for s in ttft.samples:
            if s.name.endswith("_count") and s.value > 0:
                generative.add((s.labels.get("source", ""), s.labels.get("model_name", "")))
    tokens = collected.get(_base_name(schema.TOKENS.name))
    if tokens is not None:
        for s in tokens.samples:
            output = s.labels.get("type") == schema.TOKEN_OUTPUT
            if output and s.name.endswith("_total") and s.value > 0:
                generative.add((s.labels.get("source", ""), s.labels.get("model_name", "")))
    out: list[tuple[str, str, list[Any]]] = []
    if not generative:
        return out
    for family_name, name, description, target in GEN_AI_METRICS:
        family = collected.get(family_name)
        if family is None:
            continue
        points = []
        for labels, bounds, counts, total_sum, count in _histogram_series(family.samples):
            source, model = labels.get("source", ""), labels.get("model_name", "")
            if (source, model) not in generative:
                continue
            attributes = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "inference.source": source,
                "model.version": labels.get("model_version", ""),
            }
            counts = rebucket(bounds, counts, target)
            points.append(
                point(attributes, start, now, count, total_sum, counts, list(target), None, None)
            )
        out.append((name, description, points))
    return out


def metrics_data(
    collector: Collector,
    families: frozenset[str] = DEFAULT_FAMILIES,
    *,
    start_time_ns: int,
    resource: Any = None,
    gen_ai: bool = True,
    gen_ai_operation: str = GEN_AI_OPERATION,
    gen_ai_provider: str = GEN_AI_PROVIDER,
) -> Any:
    """The families of ``collector`` named in ``families`` as an OTLP ``MetricsData``, and
    (``gen_ai``) the GenAI model server metrics of the models that generated tokens."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    wanted = {_base_name(name) for name in families}
    now = time.time_ns()
    cumulative = AggregationTemporality.CUMULATIVE
    metrics = []
    collected = {family.name: family for family in collector.collect()}
    for family in collected.values():
        if family.name not in wanted:
            continue
        prometheus_unit = family.unit or _SCHEMA_UNITS.get(family.name, "")
        unit = _UNITS.get(prometheus_unit, prometheus_unit)
        if family.type == "counter":
            points = [
                NumberDataPoint(dict(s.labels), start_time_ns, now, s.value)
                for s in family.samples
                if s.name.endswith("_total")
            ]
            data: Any = Sum(points, cumulative, is_monotonic=True)
        elif family.type == "gauge":
            points = [
                NumberDataPoint(dict(s.labels), start_time_ns, now, s.value) for s in family.samples
            ]
            data = Gauge(points)
        elif family.type == "histogram":
            data = Histogram(
                list(_histogram_points(family.samples, start_time_ns, now, HistogramDataPoint)),
                cumulative,
            )
        else:
            continue
        metrics.append(Metric(family.name, family.documentation, unit, data))
    if gen_ai:
        for name, description, gen_ai_points in _gen_ai_metrics(
            collected, start_time_ns, now, gen_ai_operation, gen_ai_provider, HistogramDataPoint
        ):
            metrics.append(Metric(name, description, "s", Histogram(gen_ai_points, cumulative)))
    scope = ScopeMetrics(InstrumentationScope("inferwatch"), metrics, "")
    return MetricsData([ResourceMetrics(resource or Resource.create(), [scope], "")])


def _histogram_series(
    samples: Iterable[Any],
) -> Iterable[tuple[dict[str, str], list[float], list[int], float, int]]:
    """prometheus_client's cumulative ``le`` buckets as (labels, finite bounds, per-bucket
    counts with +Inf's last, sum, count), one per series."""
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in samples:
        labels = {k: v for k, v in s.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        entry = series.setdefault(key, {"labels": labels, "buckets": [], "sum": 0.0, "count": 0})
        if s.name.endswith("_bucket"):
            entry["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_sum"):
            entry["sum"] = s.value
        elif s.name.endswith("_count"):
            entry["count"] = int(s.value)
    for entry in series.values():
        buckets = sorted(entry["buckets"])
        bounds = [le for le, _ in buckets if le != float("inf")]
        counts, previous = [], 0.0
        for _, cumulative in buckets:
            counts.append(int(cumulative - previous))
            previous = cumulative
        yield entry["labels"], bounds, counts, entry["sum"], entry["count"]


def _histogram_points(samples: Iterable[Any], start: int, now: int, point: Any) -> Iterable[Any]:
    """prometheus_client's cumulative ``le`` buckets as OTLP per-bucket counts."""
    for labels, bounds, counts, total_sum, count in _histogram_series(samples):
        yield point(labels, start, now, count, total_sum, counts, bounds, None, None)


class OtlpMetricsExporter:
    """A thread that pushes the families every ``interval`` seconds; :meth:`close` pushes a
    last time and stops."""

    def __init__(
        self,
        collector: Collector,
        exporter: Any,
        interval: float,
        families: frozenset[str],
        gen_ai: Mapping[str, Any] | None = None,
    ) -> None:
        from opentelemetry.sdk.resources import Resource

        self._collector = collector
        self._exporter = exporter
        self._interval = interval
        self._families = families
        self._gen_ai = dict(gen_ai or {})
        self._resource = Resource.create()
        self._start = time.time_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="inferwatch-otlp-metrics", daemon=True
        )
        self._thread.start()

    def export_now(self) -> bool:
        """Push once; whether the receiver took it."""
        from opentelemetry.sdk.metrics.export import MetricExportResult

        data = metrics_data(
            self._collector,
            self._families,
            start_time_ns=self._start,
            resource=self._resource,
            **self._gen_ai,
        )
        try:
            return bool(self._exporter.export(data) is MetricExportResult.SUCCESS)
        except Exception:
            log.warning("OTLP metrics export failed", exc_info=True)
            return False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.export_now()

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.export_now()
        self._exporter.shutdown()


def otlp_metrics_settings(
    interval: float | None = None, protocol: str | None = None
) -> tuple[float, str]:
    """The push interval (seconds) and protocol: arguments, else the OTEL_* variables, else
    the specification's defaults. Raises ValueError naming what is wrong, so a command can
    refuse to start (before it forks workers) rather than fail later."""
    env = os.environ
    if interval is None:
        text = env.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        try:
            interval = float(text) / 1000.0
        except ValueError:
            raise ValueError(
                f"OTEL_METRIC_EXPORT_INTERVAL must be milliseconds, got {text!r}"
            ) from None
    if interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval}")
    proto = (
        protocol
        or env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if proto not in ("grpc", "http/protobuf"):
        raise ValueError(f"protocol must be grpc or http/protobuf, got {proto!r}")
    return interval, proto


def start_otlp_metrics(
    registry: CollectorRegistry | None = None,
    *,
    interval: float | None = None,
    protocol: str | None = None,
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    families: Iterable[str] = DEFAULT_FAMILIES,
    exporter: Any = None,
    gen_ai: bool = True,
    gen_ai_operation: str = GEN_AI_OPERATION,
    gen_ai_provider: str = GEN_AI_PROVIDER,
) -> OtlpMetricsExporter:
    """Push the inference families of ``registry`` (default: prometheus_client's; every
    process's in multiprocess mode) over OTLP until :meth:`OtlpMetricsExporter.close`, with
    the GenAI model server metrics unless ``gen_ai=False`` (``gen_ai_operation`` and
    ``gen_ai_provider`` set ``gen_ai.operation.name`` and ``gen_ai.provider.name``)."""
    interval, proto = otlp_metrics_settings(interval, protocol)
    if exporter is None:
        if proto == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcExporter,
            )

            exporter = GrpcExporter(endpoint=endpoint, headers=dict(headers) if headers else None)
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpExporter,
            )

            if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/metrics"):
                endpoint = endpoint.rstrip("/") + "/v1/metrics"
            exporter = HttpExporter(endpoint=endpoint, headers=dict(headers) if headers else None)
    options = {
        "gen_ai": gen_ai,
        "gen_ai_operation": gen_ai_operation,
        "gen_ai_provider": gen_ai_provider,
    }
    return OtlpMetricsExporter(
        scrape_registry(registry), exporter, interval, frozenset(families), options
    )
