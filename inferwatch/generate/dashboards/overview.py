"""The inference overview: per-model traffic, errors, latency and load, from sidecar and app."""

from __future__ import annotations

from typing import Any

from grafanalib import core

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.dashboards.panels import (
    RATE,
    Query,
    dashboard,
    datasource_variable,
    heatmap,
    label_values,
    line,
    query_variable,
    red_above,
    stat,
    timeseries,
)
from inferwatch.generate.options import GenerateOptions

OVERVIEW_UID = "inferwatch-overview"

NAMESPACE = promql.grafana_selector(namespace="$namespace")
PER_SOURCE = ("source",)
PER_MODEL = ("source", "model_name")
MODEL_LEGEND = "{{model_name}} ({{source}})"
PER_VERSION = promql.VERSION_LABELS
VERSION_LEGEND = "{{model_name}} {{model_version}} ({{source}})"


def overview(options: GenerateOptions) -> dict[str, Any]:
    return dashboard(
        OVERVIEW_UID,
        "inferwatch / Inference",
        "Per-model inference traffic, errors, latency and load, from the sidecar and the app.",
        [
            datasource_variable(options),
            query_variable(
                "namespace", "Namespace", label_values(schema.INFERENCE_TOTAL.name, "namespace")
            ),
            query_variable(
                "model",
                "Model",
                label_values(schema.INFERENCE_TOTAL.name, "model_name", NAMESPACE),
            ),
        ],
        [
            (
                "Summary",
                [
                    line(
                        4,
                        (requests_per_second(), 4),
                        (error_ratio(options), 4),
                        (p95_latency(options), 4),
                        (in_flight(), 4),
                        (queue_length(), 4),
                        (upstreams_ready(), 4),
                    )
                ],
            ),
            (
                "Traffic",
                [
                    line(
                        8,
                        (request_rate_per_model(), 8),
                        (error_ratio_per_model(options), 8),
                        (failures_by_reason(), 8),
                    )
                ],
            ),
            (
                "Versions",
                [
                    line(
                        8, (request_rate_per_version(), 12), (error_ratio_per_version(options), 12)
                    ),
                    line(
                        8,
                        *((latency_per_version(q, options), 8) for q in promql.QUANTILES),
                    ),
                ],
            ),
            (
                "Latency",
                [
                    line(9, (sidecar_latency(options), 12), (app_latency(options), 12)),
                    line(8, (time_to_first_byte(), 12), (queue_wait(), 12)),
                ],
            ),
            (
                "Load",
                [
                    line(
                        8,
                        (active_requests_per_model(), 8),
                        (queue_length_per_model(), 8),
                        (tokens_per_model(), 8),
                    ),
                    line(
                        8,
                        (items_per_request(), 8),
                        (executed_batch_size(), 8),
                        (mean_batch_size(), 8),
                    ),
                ],
            ),
            ("Sidecar", [line(7, (upstream_ready(), 12), (upstream_scrape_errors(), 12))]),
        ],
    )


def models(*matchers: str, **labels: str) -> str:
    """The selected namespaces and models, narrowed by ``matchers`` and ``labels``."""
    return promql.grafana_selector(*matchers, namespace="$namespace", model_name="$model", **labels)


def error_budget(options: GenerateOptions) -> float:
    return round(1 - options.availability_objective, 12)  # 0.001, not 0.0010000000000000009


def p95_target_seconds(options: GenerateOptions) -> float:
    return options.p95_latency_target_ms / 1000


def quantiles(
    family: schema.Family, selector: str, labels: tuple[str, ...], legend: str
) -> list[Query]:
    return [
        Query(promql.quantile(q, family, selector, labels, RATE), f"{legend} p{q}")
        for q in promql.QUANTILES
    ]


def server_side_error_ratio(labels: tuple[str, ...]) -> str:
    return promql.error_ratio(models(promql.SERVER_SIDE), models(), labels, RATE)


# --- Summary --------------------------------------------------------------------------------


def requests_per_second() -> core.Stat:
    return stat(
        "Requests/s",
        "Inferences completed per second, as each layer measured them.",
        "reqps",
        [Query(promql.requests_per_second(models(), PER_SOURCE, RATE), "{{source}}")],
    )


def error_ratio(options: GenerateOptions) -> core.Stat:
    return stat(
        "Error ratio",
        "Server-side failures (5xx, timeouts, rejections, unreachable upstream, "
        "exceptions) per inference: what the availability objective counts. Red "
        "above the error budget.",
        "percentunit",
        [Query(server_side_error_ratio(PER_SOURCE), "{{source}}")],
        red_above(error_budget(options)),
    )


def p95_latency(options: GenerateOptions) -> core.Stat:
    return stat(
        "p95 latency",
        "Over all selected models. Red above the autoscaling target.",
        "s",
        [
            Query(
                promql.quantile(95, schema.INFERENCE_DURATION, models(), PER_SOURCE, RATE),
                "{{source}}",
            )
        ],
        red_above(p95_target_seconds(options)),
    )


def in_flight() -> core.Stat:
    return stat(
        "In flight",
        "Inferences running now.",
        "short",
        [Query(promql.gauge_sum(schema.ACTIVE_REQUESTS, models(), PER_SOURCE), "{{source}}")],
    )


def queue_length() -> core.Stat:
    return stat(
        "Queue length",
        "Inferences waiting: in the sidecar's admission queue, or for a batch in the app.",
        "short",
        [Query(promql.gauge_sum(schema.QUEUE_LENGTH, models(), PER_SOURCE), "{{source}}")],
    )


def upstreams_ready() -> core.Stat:
    ready = promql.upstream_ready(NAMESPACE)
    return stat(
        "Upstreams ready",
        "Sidecars whose model server answers its readiness check, of all sidecars.",
        "short",
        [Query(promql.total(ready), "ready"), Query(promql.count(ready), "sidecars")],
    )


# --- Traffic --------------------------------------------------------------------------------


def request_rate_per_model() -> core.TimeSeries:
    return timeseries(
        "Request rate per model",
        "Inferences completed per second, per model. The sidecar and the app measure the "
        "same traffic at two layers: compare them, never add them. The sidecar counts "
        "requests; an app that batches may count items (the reference server does), "
        "and then runs at the sidecar's rate times the items per request.",
        "reqps",
        [Query(promql.requests_per_second(models(), PER_MODEL, RATE), MODEL_LEGEND)],
    )


def error_ratio_per_model(options: GenerateOptions) -> core.TimeSeries:
    return timeseries(
        "Error ratio per model",
        "Server-side failures per inference, per model (client errors and callers that "
        "hung up are left out). The dashed line is the error budget.",
        "percentunit",
        [Query(server_side_error_ratio(PER_MODEL), MODEL_LEGEND)],
        thresholds=red_above(error_budget(options)),
    )


def failures_by_reason() -> core.TimeSeries:
    return timeseries(
        "Failures by reason",
        "Every failed inference per second, by reason, client errors included.",
        "reqps",
        [
            Query(
                promql.failures_per_second(models(), PER_MODEL, RATE),
                "{{model_name}} {{reason}} ({{source}})",
            )
        ],
        stacked=True,
    )


# --- Versions: one model's versions side by side (a canary against the stable version) -----

VERSIONS_HELP = (
    " Select one model to compare its versions (a canary against the stable version: the "
    "checks in deploy/kubernetes/argo-rollouts/ and flagger/ read the same series)."
)


def request_rate_per_version() -> core.TimeSeries:
    return timeseries(
        "Request rate per version",
        "Inferences completed per second, per model version (model_version: the version the "
        "request named; when it named none, the sidecar's default_version, empty unless set)."
        + VERSIONS_HELP,
        "reqps",
        [Query(promql.requests_per_second(models(), PER_VERSION, RATE), VERSION_LEGEND)],
    )


def error_ratio_per_version(options: GenerateOptions) -> core.TimeSeries:
    return timeseries(
        "Error ratio per version",
        "Server-side failures per inference, per model version. The dashed line is the error "
        "budget." + VERSIONS_HELP,
        "percentunit",
        [Query(server_side_error_ratio(PER_VERSION), VERSION_LEGEND)],
        thresholds=red_above(error_budget(options)),
    )


def latency_per_version(q: int, options: GenerateOptions) -> core.TimeSeries:
    return timeseries(
        f"p{q} latency per version",
        f"The p{q} latency of each model version. Dashed: the p95 autoscaling target."
        + VERSIONS_HELP,
        "s",
        [
            Query(
                promql.quantile(q, schema.INFERENCE_DURATION, models(), PER_VERSION, RATE),
                VERSION_LEGEND,
            )
        ],
        exemplar=True,
        thresholds=red_above(p95_target_seconds(options)),
    )


# --- Latency --------------------------------------------------------------------------------

LATENCY_HELP = (
    "p50, p95 and p99 per model{}. Dashed: the p95 autoscaling target. Exemplars link a "
    "slow request to its trace."
)


def latency(title: str, source: str, measured: str, options: GenerateOptions) -> core.TimeSeries:
    return timeseries(
        title,
        LATENCY_HELP.format(measured),
        "s",
        quantiles(
            schema.INFERENCE_DURATION, models(source=source), ("model_name",), "{{model_name}}"
        ),
        exemplar=True,
        thresholds=red_above(p95_target_seconds(options)),
    )


def sidecar_latency(options: GenerateOptions) -> core.TimeSeries:
    return latency(
        "Latency: sidecar",
        schema.SOURCE_SIDECAR,
        ", measured by the sidecar at the pod boundary (what callers feel, "
        "admission queueing included)",
        options,
    )


def app_latency(options: GenerateOptions) -> core.TimeSeries:
    return latency(
        "Latency: app",
        schema.SOURCE_APP,
        ", measured in-process by the decorators (model code only); the gap "
        "to the sidecar is transport, parsing and queueing",
        options,
    )


def time_to_first_byte() -> core.TimeSeries:
    return timeseries(
        "Time to first byte",
        "Streamed answers (SSE, chunked): time to the first chunk, the first token of an LLM.",
        "s",
        quantiles(schema.TIME_TO_FIRST_BYTE, models(), PER_MODEL, MODEL_LEGEND),
        exemplar=True,
    )


def queue_wait() -> core.TimeSeries:
    return timeseries(
        "Queue wait",
        "Time waiting for admission (sidecar) or for a batch to run (app).",
        "s",
        quantiles(schema.QUEUE_DURATION, models(), PER_MODEL, MODEL_LEGEND),
        exemplar=True,
    )


# --- Load -----------------------------------------------------------------------------------


def active_requests_per_model() -> core.TimeSeries:
    return timeseries(
        "Active requests per model",
        "Inferences in flight, per model.",
        "short",
        [Query(promql.gauge_sum(schema.ACTIVE_REQUESTS, models(), PER_MODEL), MODEL_LEGEND)],
    )


def queue_length_per_model() -> core.TimeSeries:
    return timeseries(
        "Queue length per model",
        "Inferences waiting, per model. The HPA scales on the per-pod sum (Autoscaling dashboard).",
        "short",
        [Query(promql.gauge_sum(schema.QUEUE_LENGTH, models(), PER_MODEL), MODEL_LEGEND)],
    )


def tokens_per_model() -> core.TimeSeries:
    return timeseries(
        "Tokens/s per model",
        "Tokens per second from OpenAI-style usage reports, input and output.",
        "short",
        [
            Query(
                promql.tokens_per_second(models(), PER_MODEL, RATE),
                "{{model_name}} {{type}} ({{source}})",
            )
        ],
    )


def items_per_request() -> core.Panel:
    return heatmap(
        "Items per request (sidecar)",
        "How many items callers put in one request.",
        promql.bucket_increase(schema.BATCH_SIZE, models(source=schema.SOURCE_SIDECAR), RATE),
    )


def executed_batch_size() -> core.Panel:
    return heatmap(
        "Executed batch size (app)",
        "How many items ran together in one batch (dynamic batching works when this "
        "sits above the items per request).",
        promql.bucket_increase(schema.BATCH_SIZE, models(source=schema.SOURCE_APP), RATE),
    )


def mean_batch_size() -> core.TimeSeries:
    return timeseries(
        "Mean batch size",
        "Items per request (sidecar) and per executed batch (app).",
        "short",
        [Query(promql.mean(schema.BATCH_SIZE, models(), PER_MODEL, RATE), MODEL_LEGEND)],
    )


# --- Sidecar --------------------------------------------------------------------------------


def upstream_ready() -> core.TimeSeries:
    return timeseries(
        "Upstream ready",
        "1 while the sidecar's model server answers its readiness check.",
        "short",
        [Query(promql.upstream_ready(NAMESPACE), "{{namespace}}/{{pod}}")],
        maximum=1,
    )


def upstream_scrape_errors() -> core.TimeSeries:
    return timeseries(
        "Upstream /metrics scrape errors",
        "Scrapes of the model server's own /metrics that the sidecar had to leave "
        "out, by reason (0 for a sidecar without any).",
        "short",
        [
            Query(
                promql.upstream_scrape_errors(NAMESPACE, RATE),
                "{{namespace}}/{{pod}} {{reason}}",
            )
        ],
    )
