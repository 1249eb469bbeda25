"""The autoscaling dashboard: exactly what the HPA reads (the recording rules of promql.py)
against the targets of the options, which queues feed the queue length, and the replicas it
asked for. The llm profile's HPA scales on the KV-cache usage instead of the p95 latency: its
panels follow the profile. (The default profile's CPU utilization is kube's own metric, not
drawn here.)"""

from __future__ import annotations

from typing import Any

from grafanalib import core

from inferwatch import schema
from inferwatch.generate import autoscaling as hpa_config
from inferwatch.generate import promql
from inferwatch.generate.dashboards.panels import (
    RATE,
    Query,
    dashboard,
    datasource_variable,
    label_values,
    line,
    query_variable,
    red_above,
    timeseries,
)
from inferwatch.generate.options import GenerateOptions

AUTOSCALING_UID = "inferwatch-autoscaling"

NAMESPACE = promql.grafana_selector(namespace="$namespace")
HPAS = promql.grafana_selector(namespace="$namespace", horizontalpodautoscaler="$hpa")
QUEUE = promql.pod_queue_length(NAMESPACE)
P95_MS = promql.pod_p95_ms(NAMESPACE)
KV_CACHE = promql.pod_kv_cache_usage(NAMESPACE)
POD_LEGEND = "{{namespace}}/{{pod}}"


def autoscaling(options: GenerateOptions) -> dict[str, Any]:
    return dashboard(
        AUTOSCALING_UID,
        "inferwatch / Autoscaling",
        "The HPA's pods metrics (recording rules) against their targets, the queues behind "
        "the queue length, and replicas.",
        [
            datasource_variable(options),
            query_variable(
                "namespace", "Namespace", label_values(schema.QUEUE_LENGTH.name, "namespace")
            ),
            query_variable(
                "hpa",
                "HPA",
                label_values(promql.KSM_MAX_REPLICAS, "horizontalpodautoscaler", NAMESPACE),
            ),
        ],
        [
            (
                "HPA metrics",
                [
                    line(
                        9,
                        (queue_length_per_pod(options), 8),
                        (second_metric_per_pod(options), 8),
                        (queue_length_by_source(), 8),
                    )
                ],
            ),
            (
                "Scaling",
                [
                    line(
                        8,
                        (replicas(), 8),
                        (scaling_pressure(options), 8),
                        (requests_per_pod(), 8),
                    )
                ],
            ),
        ],
    )


# --- HPA metrics ----------------------------------------------------------------------------


def queue_length_per_pod(options: GenerateOptions) -> core.TimeSeries:
    target = options.queue_length_target
    return timeseries(
        "Queue length per pod (inference_queue_length)",
        "Requests waiting per pod (every source: sidecar, app, the model server's own), the "
        "HPA's queue metric; it scales to keep the average over pods at the dashed target.",
        "short",
        [
            Query(QUEUE, POD_LEGEND),
            Query(promql.average_per_namespace(QUEUE), "{{namespace}} average"),
            Query(promql.vector(target), f"target {target}"),
        ],
        dashed=[2],
    )


def second_metric_per_pod(options: GenerateOptions) -> core.TimeSeries:
    """The profile's other pods metric: p95 latency, or (llm) KV-cache usage."""
    if options.autoscaling_profile == "llm":
        return kv_cache_per_pod(options)
    return p95_per_pod(options)


def kv_cache_per_pod(options: GenerateOptions) -> core.TimeSeries:
    target = options.kv_cache_usage_target
    return timeseries(
        "KV-cache usage per pod (kv_cache_usage_ratio)",
        "The fullest KV cache of each pod's model server, the llm profile's second metric; the "
        "HPA scales to keep the average over pods at the dashed target.",
        "percentunit",
        [
            Query(KV_CACHE, POD_LEGEND),
            Query(promql.average_per_namespace(KV_CACHE), "{{namespace}} average"),
            Query(promql.vector(target), f"target {target:g}"),
        ],
        maximum=1,
        dashed=[2],
    )


def queue_length_by_source() -> core.TimeSeries:
    return timeseries(
        "Queue length by source, per pod",
        "Who holds the waiting requests the queue metric counts: the sidecar's admission "
        "queue (sidecar), the app's batcher (app), the model server's own queue, e.g. vLLM's "
        "waiting requests (server). Stacked: the top is the deployment's total.",
        "short",
        [Query(promql.pod_queue_length_by_source(NAMESPACE), "{{namespace}}/{{pod}} {{source}}")],
        stacked=True,
    )


def p95_per_pod(options: GenerateOptions) -> core.TimeSeries:
    target = options.p95_latency_target_ms
    return timeseries(
        "p95 latency per pod (p95_latency_ms)",
        "The sidecar's p95 over 1 minute per pod, the HPA's second metric; it scales to "
        "keep the average over pods at the dashed target.",
        "ms",
        [
            Query(P95_MS, POD_LEGEND),
            Query(promql.average_per_namespace(P95_MS), "{{namespace}} average"),
            Query(promql.vector(target), f"target {target} ms"),
        ],
        dashed=[2],
    )


# --- Scaling --------------------------------------------------------------------------------


def replicas() -> core.TimeSeries:
    return timeseries(
        "Replicas",
        "From kube-state-metrics: current and desired replicas of each HPA, and its "
        "bounds (dashed).",
        "short",
        [
            Query(promql.instant(metric, HPAS), f"{{{{horizontalpodautoscaler}}}} {legend}")
            for metric, legend in (
                (promql.KSM_CURRENT_REPLICAS, "current"),
                (promql.KSM_DESIRED_REPLICAS, "desired"),
                (promql.KSM_MAX_REPLICAS, "max"),
                (promql.KSM_MIN_REPLICAS, "min"),
            )
        ],
        dashed=[2, 3],
    )


def scaling_pressure(options: GenerateOptions) -> core.TimeSeries:
    def over_target(expr: str, target: float) -> str:
        return promql.ratio(promql.average_per_namespace(expr), hpa_config.target_value(target))

    second = (
        Query(over_target(KV_CACHE, options.kv_cache_usage_target), "{{namespace}} KV cache")
        if options.autoscaling_profile == "llm"
        else Query(over_target(P95_MS, options.p95_latency_target_ms), "{{namespace}} p95 latency")
    )
    return timeseries(
        "Scaling pressure",
        "Average over pods divided by the target: above 100% the HPA adds replicas "
        "(desired = current x the larger ratio), well below it removes them.",
        "percentunit",
        [
            Query(over_target(QUEUE, options.queue_length_target), "{{namespace}} queue length"),
            second,
        ],
        thresholds=red_above(1),
    )


def requests_per_pod() -> core.TimeSeries:
    sidecars = promql.grafana_selector(namespace="$namespace", source=schema.SOURCE_SIDECAR)
    return timeseries(
        "Requests per pod",
        "Inferences per second each pod's sidecar completed: how evenly the Service spreads load.",
        "reqps",
        [Query(promql.requests_per_second(sidecars, promql.POD_LABELS, RATE), POD_LEGEND)],
    )
