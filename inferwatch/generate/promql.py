"""PromQL shared by the dashboards, the rules and the autoscaling configs.

Recording rule names and the expressions behind them are defined here once, so the HPA, the
dashboards and the alerts cannot disagree about what "p95" or "error ratio" means. Names follow
Prometheus' ``level:metric:operations`` convention.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferwatch import schema

# Labels every per-model rule keeps: the pod's namespace, which layer measured, which model.
MODEL_LABELS = ("namespace", "source", "model_name")
POD_LABELS = ("namespace", "pod")

SERVER_SIDE_REASONS_RE = "|".join(schema.SERVER_SIDE_REASONS)


def by(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def duration(seconds: float) -> str:
    """A Prometheus duration: 300 -> '5m', 86400 -> '1d', 2.5 -> '2500ms'."""
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it in the ``le`` label."""
    return repr(float(bound))


# kube-state-metrics' HPA series (not ours: the autoscaling dashboard and alert read them).
KSM_CURRENT_REPLICAS = "kube_horizontalpodautoscaler_status_current_replicas"
KSM_DESIRED_REPLICAS = "kube_horizontalpodautoscaler_status_desired_replicas"
KSM_MIN_REPLICAS = "kube_horizontalpodautoscaler_spec_min_replicas"
KSM_MAX_REPLICAS = "kube_horizontalpodautoscaler_spec_max_replicas"
KSM_METRICS = (KSM_CURRENT_REPLICAS, KSM_DESIRED_REPLICAS, KSM_MIN_REPLICAS, KSM_MAX_REPLICAS)

# --- per-pod: what the HPA scales on ----------------------------------------------------------

POD_QUEUE_LENGTH = f"namespace_pod:{schema.QUEUE_LENGTH.name}:sum"
POD_P95_SECONDS = f"namespace_pod:{schema.INFERENCE_DURATION.name}:p95_rate1m"


def pod_queue_length_expr() -> str:
    # Both layers' queues: requests waiting in the sidecar's admission queue plus those waiting
    # in the app's batcher are all work the pod has not started.
    return f"sum by ({by(POD_LABELS)}) ({schema.QUEUE_LENGTH.name})"


def pod_p95_expr(window: str = "1m") -> str:
    # The sidecar measures at the pod boundary (queueing included): that is what callers feel.
    return (
        f"histogram_quantile(0.95, sum by ({by(POD_LABELS)}, le) "
        f'(rate({schema.INFERENCE_DURATION.bucket}{{source="{schema.SOURCE_SIDECAR}"}}[{window}])))'
    )


# --- per-model: dashboards and SLOs -----------------------------------------------------------


def requests_rule(window: str) -> str:
    return f"namespace_model:model_inference_requests:rate{window}"


def errors_rule(window: str) -> str:
    return f"namespace_model:model_inference_errors:rate{window}"


def error_ratio_rule(window: str) -> str:
    return f"namespace_model:model_inference_errors:ratio_rate{window}"


def slow_ratio_rule(window: str) -> str:
    return f"namespace_model:model_inference_slow:ratio_rate{window}"


def quantile_rule(q: int, window: str = "5m") -> str:
    return f"namespace_model:{schema.INFERENCE_DURATION.name}:p{q}_rate{window}"


def requests_expr(window: str) -> str:
    return f"sum by ({by(MODEL_LABELS)}) (rate({schema.INFERENCE_TOTAL.name}[{window}]))"


def errors_expr(window: str) -> str:
    # Only the serving side's failures spend the error budget: a client's 4xx or a caller that
    # hung up is not the model server's fault.
    return (
        f"sum by ({by(MODEL_LABELS)}) (rate({schema.INFERENCE_FAILURES.name}"
        f'{{reason=~"{SERVER_SIDE_REASONS_RE}"}}[{window}]))'
    )


def error_ratio_expr(window: str) -> str:
    return f"{errors_rule(window)} / {requests_rule(window)}"


def slow_ratio_expr(window: str, threshold_seconds: float) -> str:
    """Fraction of inferences slower than the latency objective's threshold."""
    d = schema.INFERENCE_DURATION
    return (
        f"1 - (sum by ({by(MODEL_LABELS)}) "
        f'(rate({d.bucket}{{le="{le(threshold_seconds)}"}}[{window}])) '
        f"/ sum by ({by(MODEL_LABELS)}) (rate({d.count}[{window}])))"
    )


def quantile_expr(q: int, window: str = "5m") -> str:
    return (
        f"histogram_quantile({q / 100}, sum by ({by(MODEL_LABELS)}, le) "
        f"(rate({schema.INFERENCE_DURATION.bucket}[{window}])))"
    )


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window, multi-burn-rate alert condition (the SRE workbook's table)."""

    long: str
    short: str
    factor: float
    severity: str
    for_: str


def burn_windows(scale: float = 1.0) -> tuple[BurnWindow, ...]:
    """The SRE workbook's four conditions; ``scale`` shrinks every window (tests only)."""

    def w(seconds: float) -> str:
        return duration(seconds * scale)

    return (
        BurnWindow(w(3600), w(300), 14.4, "critical", w(120)),
        BurnWindow(w(6 * 3600), w(1800), 6.0, "critical", w(900)),
        BurnWindow(w(86400), w(7200), 3.0, "warning", w(3600)),
        BurnWindow(w(3 * 86400), w(6 * 3600), 1.0, "warning", w(3 * 3600)),
    )


def rule_windows(scale: float = 1.0) -> tuple[str, ...]:
    """Every window the burn-rate alerts read, deduplicated, shortest first."""
    seen: dict[str, None] = {}
    for condition in burn_windows(scale):
        seen[condition.short] = None
        seen[condition.long] = None
    return tuple(sorted(seen, key=_seconds))


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(text)
