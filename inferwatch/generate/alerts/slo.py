"""Service level objectives: the SRE workbook's multi-window, multi-burn-rate alerts, and the
recording rules of the ratios they read (one set per window)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferwatch.generate import promql
from inferwatch.generate.alerts.alert import MODEL, Alert, AlertTest
from inferwatch.generate.options import GenerateOptions

# Inferences per minute in the test series: fine enough for a bad fraction of half a 0.1% budget.
PER_MINUTE = 100_000

# minutes of test data, bad fraction -> the series of that many minutes of steady traffic
SeriesMaker = Callable[[int, float], dict[str, str]]


def recording_rules(options: GenerateOptions) -> dict[str, Any]:
    """Requests, errors and both bad-event ratios per model, over every burn-rate window."""
    rules: list[dict[str, str]] = []
    for window in promql.rule_windows(options.window_scale):
        rules += [
            {"record": promql.requests_rule(window), "expr": promql.requests_expr(window)},
            {"record": promql.errors_rule(window), "expr": promql.errors_expr(window)},
            {"record": promql.error_ratio_rule(window), "expr": promql.error_ratio_expr(window)},
            {
                "record": promql.slow_ratio_rule(window),
                "expr": promql.slow_ratio_expr(window, options.latency_threshold_seconds),
            },
        ]
    return {"name": "inferwatch.slo", "rules": rules}


def _minutes(text: str) -> float:
    return promql.seconds(text) / 60


def burn_rate_alerts(
    options: GenerateOptions,
    name: str,
    ratio_rule: Callable[[str], str],
    objective: float,
    what: str,
    make_series: SeriesMaker,
    runbook: str,
    extra_tests: tuple[AlertTest, ...] = (),
    model: dict[str, str] = MODEL,
) -> list[Alert]:
    """One alert per burn-rate condition, over the bad-event ratio ``ratio_rule`` records;
    ``model``: the labels of the model ``make_series`` makes series of."""
    budget = 1 - objective
    source = promql.selector(source=options.slo_source)
    conditions = promql.burn_windows(options.window_scale)
    # promtool cases: a burn far above every threshold (every condition whose `for` has passed
    # fires), and one just under the slowest burn (nothing fires). Evaluated at 70 minutes of
    # data (scaled), which passes the `for` of both pages and of the first ticket.
    horizon = max(2, round(_minutes(conditions[0].long) * 70 / 60)) + 1
    eval_minutes = horizon - 1
    # Half bad, unless the fastest threshold is that high (a loose objective): then all bad; a
    # condition whose threshold is not below that can never fire (a ratio is at most 1).
    loud_fraction = 0.5 if max(c.factor for c in conditions) * budget < 0.5 else 1.0
    loud = make_series(horizon, loud_fraction)
    quiet = make_series(horizon, budget / 2)
    alerts = []
    for condition in conditions:
        threshold = condition.factor * budget
        fires = _minutes(condition.for_) <= eval_minutes - 2 and threshold < loud_fraction
        labels = {**model, "source": options.slo_source}
        alerts.append(
            Alert(
                name=name,
                expr=promql.burning(ratio_rule, condition, source, threshold),
                for_=condition.for_,
                severity=condition.severity,
                labels={"window": f"{condition.long}/{condition.short}"},
                summary=f"{{{{ $labels.model_name }}}} is burning its {what} budget "
                f"{condition.factor:g}x too fast.",
                description=(
                    f"Model {{{{ $labels.model_name }}}} in {{{{ $labels.namespace }}}} "
                    f"({options.slo_source}) has spent its {what} error budget at "
                    f"{condition.factor:g} times the sustainable rate over both {condition.long} "
                    f"and {condition.short} (objective {objective:.4g}). At this rate the 30-day "
                    f"budget is gone in {30 / condition.factor:.3g} days."
                ),
                runbook=runbook,
                tests=(
                    AlertTest("burning", loud, f"{eval_minutes}m", [labels] if fires else []),
                    AlertTest("within budget", quiet, f"{eval_minutes}m", []),
                    *extra_tests,
                ),
            )
        )
    return alerts
