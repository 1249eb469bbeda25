"""OTLP export of the inference families, for pipelines built on an OpenTelemetry Collector.

The numbers are prometheus_client's, read from the registry (multiprocess-aware) every
``interval`` seconds and pushed as cumulative OTLP metrics: counters as monotonic sums (the
name without ``_total``, which a Collector's Prometheus exporter adds back), gauges as gauges,
histograms with the schema's bucket boundaries. Names, labels and units are the schema's, so
what a Collector forwards to Prometheus matches what a scrape would have read. Exemplars are not
carried (the traces are exported on their own).

Configured by ``OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT``/``_PROTOCOL``/``_HEADERS`` and
``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds), or by the arguments of
:func:`start_otlp_metrics`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
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


def metrics_data(
    collector: Collector,
    families: frozenset[str] = DEFAULT_FAMILIES,
    *,
    start_time_ns: int,
    resource: Any = None,
) -> Any:
    """The families of ``collector`` named in ``families`` as an OTLP ``MetricsData``."""
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
    for family in collector.collect():
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
    scope = ScopeMetrics(InstrumentationScope("inferwatch"), metrics, "")
    return MetricsData([ResourceMetrics(resource or Resource.create(), [scope], "")])


def _histogram_points(samples: Iterable[Any], start: int, now: int, point: Any) -> Iterable[Any]:
    """prometheus_client's cumulative ``le`` buckets as OTLP per-bucket counts."""
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
        yield point(
            entry["labels"], start, now, entry["count"], entry["sum"], counts, bounds, None, None
        )


class OtlpMetricsExporter:
    """A thread that pushes the families every ``interval`` seconds; :meth:`close` pushes a
    last time and stops."""

    def __init__(
        self, collector: Collector, exporter: Any, interval: float, families: frozenset[str]
    ) -> None:
        from opentelemetry.sdk.resources import Resource

        self._collector = collector
        self._exporter = exporter
        self._interval = interval
        self._families = families
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
            self._collector, self._families, start_time_ns=self._start, resource=self._resource
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
) -> OtlpMetricsExporter:
    """Push the inference families of ``registry`` (default: prometheus_client's; every
    process's in multiprocess mode) over OTLP until :meth:`OtlpMetricsExporter.close`."""
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
    return OtlpMetricsExporter(scrape_registry(registry), exporter, interval, frozenset(families))
