"""Availability: server-side failures spending the error budget."""

from __future__ import annotations

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.alerts import slo
from inferwatch.generate.alerts.alert import MODEL, Alert, AlertTest
from inferwatch.generate.options import GenerateOptions


def alerts(options: GenerateOptions) -> list[Alert]:
    return error_budget_burn(options)


def traffic(
    options: GenerateOptions, minutes: int, per_min: int, bad_per_min: int, reason: str
) -> dict[str, str]:
    """Counters for ``minutes`` of steady traffic with ``bad_per_min`` failures of ``reason``."""
    labels = {**MODEL, "source": options.slo_source, "model_version": "1"}
    total, failures = schema.INFERENCE_TOTAL.name, schema.INFERENCE_FAILURES.name
    return {
        promql.series(total, status=schema.STATUS_SUCCESS, **labels): (
            f"0+{per_min - bad_per_min}x{minutes}"
        ),
        promql.series(total, status=schema.STATUS_ERROR, **labels): f"0+{bad_per_min}x{minutes}",
        promql.series(failures, reason=reason, **labels): f"0+{bad_per_min}x{minutes}",
    }


def error_budget_burn(options: GenerateOptions) -> list[Alert]:
    per_min = slo.PER_MINUTE

    def server_errors(minutes: int, fraction: float) -> dict[str, str]:
        bad = round(per_min * fraction)
        return traffic(options, minutes, per_min, bad, schema.REASON_SERVER_ERROR)

    # A client's 4xx spends no budget: half the requests failing that way must stay silent.
    client_errors = traffic(options, 40, per_min, per_min // 2, schema.REASON_CLIENT_ERROR)
    return slo.burn_rate_alerts(
        options,
        "InferenceErrorBudgetBurn",
        promql.error_ratio_rule,
        options.availability_objective,
        "availability",
        server_errors,
        f"""
Server-side failures (5xx from the model server, timeouts, rejections by the sidecar's queue,
an unreachable model server, exceptions in decorated code) are using up the availability error
budget faster than the objective allows. Critical: at this rate the month's budget is gone in
days; warning: it will run out before the month ends. Client errors (4xx) and callers that hang
up do not count.

1. Open the inferwatch overview dashboard for the model and look at the error ratio by reason
   (`{schema.INFERENCE_FAILURES.name}`).
2. `upstream_unavailable` or `server_error`: check the model server's logs and restarts.
   `timeout`: the model is too slow for the sidecar's upstream timeout; see the latency panels.
   `rejected`: the admission queue is full; see InferenceQueueBacklog.
3. If a rollout is in progress, roll it back.
""",
        (AlertTest("client errors spend no budget", client_errors, "35m", []),),
    )
