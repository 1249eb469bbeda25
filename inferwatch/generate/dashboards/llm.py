"""LLM serving: per model time to first token, time per output token and end-to-end latency
(sidecar and app side by side), token throughput, finish reasons, and the engine's load."""

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
    label_values,
    line,
    query_variable,
    red_above,
    stat,
    timeseries,
)
from inferwatch.generate.options import GenerateOptions

LLM_UID = "inferwatch-llm"

NAMESPACE = promql.grafana_selector(namespace="$namespace")
PER_SOURCE = ("source",)
PER_MODEL = ("source", "model_name")
MODEL_LEGEND = "{{model_name}} ({{source}})"


def llm(options: GenerateOptions) -> dict[str, Any]:
    return dashboard(
        LLM_UID,
        "inferwatch / LLM serving",
        "Per-model LLM serving: time to first token, time per output token, end-to-end "
        "latency, token throughput, finish reasons and engine load, from the sidecar and the app.",
        [
            datasource_variable(options),
            query_variable(
                "namespace", "Namespace", label_values(schema.INFERENCE_TOTAL.name, "namespace")
            ),
            query_variable(
                "model",
                "Model",
                label_values(schema.TOKENS.name, "model_name", NAMESPACE),
            ),
        ],
        [
            (
                "Summary",
                [
                    line(
                        4,
                        (ttft_p95(options), 5),
                        (tpot_p95(options), 5),
                        (output_tokens_per_second(), 5),
                        (in_flight(), 4),
                        (truncated(options), 5),
                    )
                ],
            ),
            (
                "Time to first token",
                [line(9, (ttft_sidecar(options), 12), (ttft_app(options), 12))],
            ),
            (
                "Time per output token",
                [line(9, (tpot_sidecar(options), 12), (tpot_app(options), 12))],
            ),
            (
                "End-to-end latency",
                [line(8, (end_to_end_sidecar(), 12), (end_to_end_app(), 12))],
            ),
            (
                "Throughput",
                [
                    line(
                        8,
                        (input_tokens_per_model(), 8),
                        (output_tokens_per_model(), 8),
                        (requests_per_model(), 8),
                    )
                ],
            ),
            (
                "Finish reasons",
                [line(8, (finish_reasons(), 12), (truncation_ratio(options), 12))],
            ),
            (
                "Engine",
                [
                    line(
                        8,
                        (running_per_model(), 8),
                        (waiting_per_model(), 8),
                        (kv_cache_per_model(), 8),
                    )
                ],
            ),
        ],
    )


def models(*matchers: str, **labels: str) -> str:
    """The selected namespaces and models, narrowed by ``matchers`` and ``labels``."""
    return promql.grafana_selector(*matchers, namespace="$namespace", model_name="$model", **labels)


def quantiles(family: schema.Family, source: str) -> list[Query]:
    return [
        Query(
            promql.quantile(q, family, models(source=source), ("model_name",), RATE),
            f"{{{{model_name}}}} p{q}",
        )
        for q in promql.QUANTILES
    ]


def percentiles(
    title: str, description: str, family: schema.Family, source: str, threshold: float | None
) -> core.TimeSeries:
    return timeseries(
        title,
        description,
        "s",
        quantiles(family, source),
        exemplar=True,
        thresholds=red_above(threshold) if threshold is not None else None,
    )


# --- Summary --------------------------------------------------------------------------------


def ttft_p95(options: GenerateOptions) -> core.Stat:
    return stat(
        "TTFT p95",
        "Time to first token over all selected models, as each layer measured it. Red above "
        "the time-to-first-token objective's threshold.",
        "s",
        [
            Query(
                promql.quantile(95, schema.TIME_TO_FIRST_TOKEN, models(), PER_SOURCE, RATE),
                "{{source}}",
            )
        ],
        red_above(options.ttft_threshold_seconds),
    )


def tpot_p95(options: GenerateOptions) -> core.Stat:
    return stat(
        "TPOT p95",
        "Time per output token over all selected models. Red above the time-per-output-token "
        "objective's threshold.",
        "s",
        [
            Query(
                promql.quantile(95, schema.TIME_PER_OUTPUT_TOKEN, models(), PER_SOURCE, RATE),
                "{{source}}",
            )
        ],
        red_above(options.tpot_threshold_seconds),
    )


def output_tokens_per_second() -> core.Stat:
    return stat(
        "Generated tokens/s",
        "Output tokens per second over all selected models.",
        "short",
        [
            Query(
                promql.tokens_per_second(models(type=schema.TOKEN_OUTPUT), PER_SOURCE, RATE),
                "{{source}}",
            )
        ],
    )


def in_flight() -> core.Stat:
    return stat(
        "In flight",
        "Generations running now.",
        "short",
        [Query(promql.gauge_sum(schema.ACTIVE_REQUESTS, models(), PER_SOURCE), "{{source}}")],
    )


def truncated(options: GenerateOptions) -> core.Stat:
    return stat(
        "Truncated",
        "Share of generations cut off at max_tokens (finish reason length). Red above the "
        "truncation alert's ratio.",
        "percentunit",
        [Query(promql.truncation_ratio(models(), PER_SOURCE, RATE), "{{source}}")],
        red_above(options.truncation_alert_ratio),
    )


# --- Latency --------------------------------------------------------------------------------


def ttft_sidecar(options: GenerateOptions) -> core.TimeSeries:
    return percentiles(
        "TTFT: sidecar",
        "Time to first token, p50/p95/p99 per model, measured by the sidecar from arrival "
        "(admission queueing included) to the first chunk carrying generated text. Dashed: "
        "the objective's threshold. Exemplars link a slow generation to its trace.",
        schema.TIME_TO_FIRST_TOKEN,
        schema.SOURCE_SIDECAR,
        options.ttft_threshold_seconds,
    )


def ttft_app(options: GenerateOptions) -> core.TimeSeries:
    return percentiles(
        "TTFT: app",
        "Time to first token measured in-process by the decorators, from the call to the "
        "first token yielded; the gap to the sidecar is transport and queueing.",
        schema.TIME_TO_FIRST_TOKEN,
        schema.SOURCE_APP,
        options.ttft_threshold_seconds,
    )


def tpot_sidecar(options: GenerateOptions) -> core.TimeSeries:
    return percentiles(
        "TPOT: sidecar",
        "Time per output token, p50/p95/p99 per model, per generation: (end - first token) "
        "/ (output tokens - 1), measured by the sidecar. Dashed: the objective's threshold.",
        schema.TIME_PER_OUTPUT_TOKEN,
        schema.SOURCE_SIDECAR,
        options.tpot_threshold_seconds,
    )


def tpot_app(options: GenerateOptions) -> core.TimeSeries:
    return percentiles(
        "TPOT: app",
        "Time per output token measured in-process by the decorators.",
        schema.TIME_PER_OUTPUT_TOKEN,
        schema.SOURCE_APP,
        options.tpot_threshold_seconds,
    )


def end_to_end_sidecar() -> core.TimeSeries:
    return percentiles(
        "End-to-end: sidecar",
        "Whole generations, arrival to last byte, p50/p95/p99 per model (sidecar).",
        schema.INFERENCE_DURATION,
        schema.SOURCE_SIDECAR,
        None,
    )


def end_to_end_app() -> core.TimeSeries:
    return percentiles(
        "End-to-end: app",
        "Whole generations, call to last token, p50/p95/p99 per model (decorators).",
        schema.INFERENCE_DURATION,
        schema.SOURCE_APP,
        None,
    )


# --- Throughput -----------------------------------------------------------------------------


def tokens(title: str, description: str, kind: str) -> core.TimeSeries:
    return timeseries(
        title,
        description,
        "short",
        [Query(promql.tokens_per_second(models(type=kind), PER_MODEL, RATE), MODEL_LEGEND)],
    )


def input_tokens_per_model() -> core.TimeSeries:
    return tokens(
        "Input tokens/s",
        "Prompt tokens per second, per model, from OpenAI-style usage reports.",
        schema.TOKEN_INPUT,
    )


def output_tokens_per_model() -> core.TimeSeries:
    return tokens(
        "Output tokens/s",
        "Generated tokens per second, per model: the engine's decoding throughput.",
        schema.TOKEN_OUTPUT,
    )


def requests_per_model() -> core.TimeSeries:
    return timeseries(
        "Requests/s",
        "Generations completed per second, per model.",
        "reqps",
        [Query(promql.requests_per_second(models(), PER_MODEL, RATE), MODEL_LEGEND)],
    )


# --- Finish reasons -------------------------------------------------------------------------


def finish_reasons() -> core.TimeSeries:
    return timeseries(
        "Generations by finish reason",
        "Generations ended per second, by why they ended: stop (the model finished), length "
        "(cut off at max_tokens), tool_calls, content_filter, other.",
        "reqps",
        [
            Query(
                promql.finish_reasons_per_second(models(), PER_MODEL, RATE),
                "{{model_name}} {{reason}} ({{source}})",
            )
        ],
        stacked=True,
    )


def truncation_ratio(options: GenerateOptions) -> core.TimeSeries:
    return timeseries(
        "Truncation ratio",
        "Generations cut off at max_tokens (finish reason length) per generation, per model. "
        "Dashed: the ratio InferenceGenerationsTruncated alerts above.",
        "percentunit",
        [Query(promql.truncation_ratio(models(), PER_MODEL, RATE), MODEL_LEGEND)],
        thresholds=red_above(options.truncation_alert_ratio),
    )


# --- Engine ---------------------------------------------------------------------------------


def running_per_model() -> core.TimeSeries:
    return timeseries(
        "Running",
        "Generations in flight per model, by who counts them: the sidecar (admitted, not yet "
        "answered), the app, and the model server's own engine (source server) where the "
        "sidecar merges its metrics.",
        "short",
        [Query(promql.gauge_sum(schema.ACTIVE_REQUESTS, models(), PER_MODEL), MODEL_LEGEND)],
    )


def waiting_per_model() -> core.TimeSeries:
    return timeseries(
        "Waiting",
        "Generations waiting per model: in the sidecar's admission queue, in the app's "
        "batcher, or in the engine's own queue (source server). The three are disjoint.",
        "short",
        [Query(promql.gauge_sum(schema.QUEUE_LENGTH, models(), PER_MODEL), MODEL_LEGEND)],
    )


def kv_cache_per_model() -> core.TimeSeries:
    return timeseries(
        "KV cache usage",
        "Fraction of the engine's KV cache in use per model (source server: vLLM, SGLang, "
        "TensorRT-LLM as the sidecar reads their metrics); the fullest engine where several "
        "serve a model. Near 1 the engine queues or preempts generations.",
        "percentunit",
        [Query(promql.kv_cache_usage_max(models(), PER_MODEL), MODEL_LEGEND)],
        maximum=1,
    )
