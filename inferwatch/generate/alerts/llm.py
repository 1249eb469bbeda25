"""LLM generations: slow first tokens and slow token streams spending their latency budgets
(the same multi-window burn rates as the inference SLOs), and answers cut off at max_tokens."""

from __future__ import annotations

import math
from typing import Any

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.alerts import slo
from inferwatch.generate.alerts.alert import MODEL, Alert, AlertTest
from inferwatch.generate.options import GenerateOptions

# The truncation alert's window and `for`: long enough for a few hundred generations.
TRUNCATION_WINDOW = "30m"
TRUNCATION_FOR = "15m"
LLM = {**MODEL, "model_name": "llama"}


def recording_rules(options: GenerateOptions) -> dict[str, Any]:
    """The slow-generation ratios per model over every burn-rate window."""
    rules: list[dict[str, str]] = []
    for window in promql.rule_windows(options.window_scale):
        rules += [
            {
                "record": promql.slow_ttft_ratio_rule(window),
                "expr": promql.slow_ttft_ratio_expr(window, options.ttft_threshold_seconds),
            },
            {
                "record": promql.slow_tpot_ratio_rule(window),
                "expr": promql.slow_tpot_ratio_expr(window, options.tpot_threshold_seconds),
            },
        ]
    return {"name": "inferwatch.llm", "rules": rules}


def alerts(options: GenerateOptions) -> list[Alert]:
    return [
        *time_to_first_token_burn(options),
        *time_per_output_token_burn(options),
        generations_truncated(options),
    ]


def observations(
    options: GenerateOptions,
    family: schema.Family,
    threshold: float,
    minutes: int,
    slow_fraction: float,
) -> dict[str, str]:
    """Histogram counters of ``minutes`` of steady generations, ``slow_fraction`` of them above
    ``threshold``."""
    labels = {**LLM, "source": options.slo_source, "model_version": "1"}
    per_min = slo.PER_MINUTE
    slow = round(per_min * slow_fraction)
    return {
        promql.series(family.count, **labels): f"0+{per_min}x{minutes}",
        promql.series(family.bucket, le=promql.le(threshold), **labels): (
            f"0+{per_min - slow}x{minutes}"
        ),
    }


def time_to_first_token_burn(options: GenerateOptions) -> list[Alert]:
    threshold = options.ttft_threshold_seconds

    def slow(minutes: int, fraction: float) -> dict[str, str]:
        return observations(options, schema.TIME_TO_FIRST_TOKEN, threshold, minutes, fraction)

    return slo.burn_rate_alerts(
        options,
        "InferenceTimeToFirstTokenBudgetBurn",
        promql.slow_ttft_ratio_rule,
        options.ttft_objective,
        f"time-to-first-token ({threshold:g} s)",
        slow,
        model=LLM,
        runbook=f"""
More streamed generations than the objective allows wait longer than {threshold:g} s for their
first token (`{schema.TIME_TO_FIRST_TOKEN.name}`). Users see nothing happen. Critical: at this
rate the month's budget is gone in days; warning: before the month ends.

1. Open the inferwatch LLM dashboard: compare sidecar and app time to first token. A gap is
   queueing in front of the engine (sidecar admission queue, requests in flight).
2. Queue and in-flight requests growing: the engine is saturated (prefill competes with
   decoding); scale out, or lower the sidecar's max concurrency so callers get a fast 503.
3. No queueing: prompts got longer (input tokens/s against requests), or the model or engine
   changed (a rollout, a larger model, prefix caching off). Check GPU utilization and clocks.
""",
    )


def time_per_output_token_burn(options: GenerateOptions) -> list[Alert]:
    threshold = options.tpot_threshold_seconds

    def slow(minutes: int, fraction: float) -> dict[str, str]:
        return observations(options, schema.TIME_PER_OUTPUT_TOKEN, threshold, minutes, fraction)

    return slo.burn_rate_alerts(
        options,
        "InferenceTimePerOutputTokenBudgetBurn",
        promql.slow_tpot_ratio_rule,
        options.tpot_objective,
        f"time-per-output-token ({threshold:g} s)",
        slow,
        model=LLM,
        runbook=f"""
More streamed generations than the objective allows produce their tokens slower than
{threshold:g} s a token on average (`{schema.TIME_PER_OUTPUT_TOKEN.name}`): text crawls out.
Critical: the month's budget is gone in days at this rate; warning: before the month ends.

1. Open the inferwatch LLM dashboard: requests in flight per model. Decoding slows down as the
   engine batches more sequences; more in flight than usual means it is saturated: scale out or
   cap concurrency at the sidecar.
2. Output tokens/s flat while in flight grows: the GPU is the limit. Check utilization, clocks,
   power and temperature on the GPU dashboard (a throttled GPU decodes slower).
3. Nothing saturated: the model or engine changed (a rollout, quantization off, a longer
   context); roll back and compare.
""",
    )


def generations_truncated(options: GenerateOptions) -> Alert:
    ratio = options.truncation_alert_ratio
    least = options.truncation_min_generations
    family = schema.FINISH_REASONS_TOTAL.name
    labels = {**LLM, "source": options.slo_source}

    def finished(stop_per_min: int, length_per_min: int) -> dict[str, str]:
        return {
            promql.series(family, reason=schema.FINISH_STOP, **labels): f"0+{stop_per_min}x60",
            promql.series(family, reason=schema.FINISH_LENGTH, **labels): (
                f"0+{length_per_min}x60"
            ),
        }

    # Enough generations a minute for the guard over half an hour; a share halfway between the
    # threshold and all of them, and one half the threshold.
    per_min = max(100, least)
    loud, quiet = math.ceil(per_min * (1 + ratio) / 2), math.floor(per_min * ratio / 2)
    # Half truncated, but fewer generations over the window than the guard asks for.
    sparse = (least - 1) // 60
    few = (AlertTest("too few generations", finished(sparse, sparse), "50m", []),) if sparse else ()
    return Alert(
        name="InferenceGenerationsTruncated",
        expr=promql.generations_truncated(
            promql.selector(source=options.slo_source), TRUNCATION_WINDOW, ratio, least
        ),
        for_=TRUNCATION_FOR,
        severity="warning",
        summary="{{ $labels.model_name }} cuts many answers off at max_tokens.",
        description=(
            f"More than {ratio:.0%} of the generations of {{{{ $labels.model_name }}}} in "
            f"{{{{ $labels.namespace }}}} ({options.slo_source}) over the last "
            f"{TRUNCATION_WINDOW} ended at their token limit (finish reason "
            f'"{schema.FINISH_LENGTH}"), for {TRUNCATION_FOR}: callers get truncated answers.'
        ),
        runbook=f"""
A large share of generations end because they hit their token limit (finish reason
`{schema.FINISH_LENGTH}` in `{family}`), not because the model finished: callers get answers
cut off mid-sentence or JSON that does not parse. Only models with at least {least} generations
over {TRUNCATION_WINDOW} alert.

1. Open the inferwatch LLM dashboard: finish reasons by model, and output tokens against
   requests. Did the share jump at a rollout (a new model version that rambles or repeats
   itself, a changed system prompt or chat template)? Roll back.
2. One caller: its `max_tokens` is too low for what it asks; raise it there.
3. Prompts near the context window leave little room for output: check input tokens/s per
   request, and the engine's maximum model length.
""",
        tests=(
            AlertTest("truncating", finished(per_min - loud, loud), "50m", [labels]),
            AlertTest("mostly finished", finished(per_min - quiet, quiet), "50m", []),
            *few,
        ),
    )
