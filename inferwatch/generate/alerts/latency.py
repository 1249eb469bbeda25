"""Latency: inferences slower than the objective's threshold spending the latency budget, and
the per-model percentiles recorded for everyone to read."""

from __future__ import annotations

from typing import Any

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.alerts import slo
from inferwatch.generate.alerts.alert import MODEL, Alert
from inferwatch.generate.options import GenerateOptions


def recording_rules(options: GenerateOptions) -> dict[str, Any]:
    return {
        "name": "inferwatch.models",
        "rules": [
            {"record": promql.quantile_rule(q), "expr": promql.quantile_expr(q)}
            for q in promql.QUANTILES
        ],
    }


def alerts(options: GenerateOptions) -> list[Alert]:
    return latency_budget_burn(options)


def durations(
    options: GenerateOptions, minutes: int, per_min: int, slow_per_min: int
) -> dict[str, str]:
    """Duration histogram counters with ``slow_per_min`` inferences over the threshold."""
    labels = {**MODEL, "source": options.slo_source, "model_version": "1"}
    d = schema.INFERENCE_DURATION
    threshold = promql.le(options.latency_threshold_seconds)
    return {
        promql.series(d.count, **labels): f"0+{per_min}x{minutes}",
        promql.series(d.bucket, le=threshold, **labels): f"0+{per_min - slow_per_min}x{minutes}",
        promql.series(schema.INFERENCE_TOTAL.name, status=schema.STATUS_SUCCESS, **labels): (
            f"0+{per_min}x{minutes}"
        ),
    }


def latency_budget_burn(options: GenerateOptions) -> list[Alert]:
    per_min = slo.PER_MINUTE

    def slow(minutes: int, fraction: float) -> dict[str, str]:
        return durations(options, minutes, per_min, round(per_min * fraction))

    return slo.burn_rate_alerts(
        options,
        "InferenceLatencyBudgetBurn",
        promql.slow_ratio_rule,
        options.latency_objective,
        "latency",
        slow,
        """
More inferences than the latency objective allows take longer than its threshold. Critical: the
month's latency budget will be gone in days.

1. Compare sidecar and app latency on the overview dashboard: a gap is time spent queueing.
2. Queueing: the pods are saturated; check the autoscaling dashboard (is the HPA at its
   maximum? are new pods stuck pending for a GPU?).
3. No queueing: the model itself got slower. Check GPU utilization, clocks and temperature on
   the GPU dashboard, the batch size heatmap, and recent model or driver changes.
""",
    )
