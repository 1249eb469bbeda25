"""Prometheus recording and alerting rules, their promtool unit tests, and the runbooks.

Alerts follow the monitoring-mixin conventions: CamelCase names, ``severity`` critical (pages) or
warning (a ticket), ``summary``/``description``/``runbook_url`` annotations. Annotations use
labels only, never ``$value``, so the promtool tests can state them exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.options import GenerateOptions


@dataclass(frozen=True)
class AlertTest:
    """One promtool case: input series, when to look, and the alerts expected then."""

    name: str
    series: dict[str, str]  # series selector -> promtool values notation
    eval_time: str
    firing: list[dict[str, str]]  # labels of each expected alert (beyond the rule's own)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str  # what it means and what to do, for docs/runbooks.md
    labels: dict[str, str] = field(default_factory=dict)
    tests: tuple[AlertTest, ...] = ()

    def rule(self, options: GenerateOptions) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{options.runbook_url}#{self.name.lower()}",
            },
        }


# --- recording rules ------------------------------------------------------------------------------


def recording_rules(options: GenerateOptions) -> dict[str, Any]:
    """What the HPA, the dashboards and the burn-rate alerts query, computed once."""
    windows = promql.rule_windows(options.window_scale)
    slo: list[dict[str, str]] = []
    for window in windows:
        slo += [
            {"record": promql.requests_rule(window), "expr": promql.requests_expr(window)},
            {"record": promql.errors_rule(window), "expr": promql.errors_expr(window)},
            {"record": promql.error_ratio_rule(window), "expr": promql.error_ratio_expr(window)},
            {
                "record": promql.slow_ratio_rule(window),
                "expr": promql.slow_ratio_expr(window, options.latency_threshold_seconds),
            },
        ]
    return {
        "groups": [
            {
                "name": "inferwatch.autoscaling",
                "rules": [
                    {"record": promql.POD_QUEUE_LENGTH, "expr": promql.pod_queue_length_expr()},
                    {"record": promql.POD_P95_SECONDS, "expr": promql.pod_p95_expr("1m")},
                ],
            },
            {
                "name": "inferwatch.models",
                "rules": [
                    {"record": promql.quantile_rule(q), "expr": promql.quantile_expr(q)}
                    for q in (50, 95, 99)
                ],
            },
            {"name": "inferwatch.slo", "rules": slo},
        ]
    }


# --- alerts ---------------------------------------------------------------------------------------

MODEL = {"namespace": "serving", "model_name": "resnet"}
POD = {"namespace": "serving", "pod": "model-server-0"}
GPU = {"gpu": "0", "uuid": "GPU-8f6c1c43", "name": "NVIDIA H100 80GB HBM3", **POD}


def _series(metric: str, /, **labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{metric}{{{inner}}}"


def _traffic(
    options: GenerateOptions, minutes: int, per_min: int, bad_per_min: int, reason: str
) -> dict[str, str]:
    """Counters for ``minutes`` of steady traffic with ``bad_per_min`` failures of ``reason``."""
    labels = {**MODEL, "source": options.slo_source, "model_version": "1"}
    return {
        _series(schema.INFERENCE_TOTAL.name, status=schema.STATUS_SUCCESS, **labels): (
            f"0+{per_min - bad_per_min}x{minutes}"
        ),
        _series(schema.INFERENCE_TOTAL.name, status=schema.STATUS_ERROR, **labels): (
            f"0+{bad_per_min}x{minutes}"
        ),
        _series(schema.INFERENCE_FAILURES.name, reason=reason, **labels): (
            f"0+{bad_per_min}x{minutes}"
        ),
    }


def _latency(
    options: GenerateOptions, minutes: int, per_min: int, slow_per_min: int
) -> dict[str, str]:
    """Duration histogram counters with ``slow_per_min`` inferences over the threshold."""
    labels = {**MODEL, "source": options.slo_source, "model_version": "1"}
    d = schema.INFERENCE_DURATION
    return {
        _series(d.count, **labels): f"0+{per_min}x{minutes}",
        _series(d.bucket, le=promql.le(options.latency_threshold_seconds), **labels): (
            f"0+{per_min - slow_per_min}x{minutes}"
        ),
        _series(schema.INFERENCE_TOTAL.name, status=schema.STATUS_SUCCESS, **labels): (
            f"0+{per_min}x{minutes}"
        ),
    }


def _minutes(text: str) -> float:
    return promql.seconds(text) / 60


def _burn_alerts(
    options: GenerateOptions,
    name: str,
    ratio_rule: Callable[[str], str],
    objective: float,
    what: str,
    make_series: Callable[[int, float], dict[str, str]],
    runbook: str,
    extra_tests: tuple[AlertTest, ...] = (),
) -> list[Alert]:
    """The SRE workbook's multi-window, multi-burn-rate alerts for one objective."""
    budget = 1 - objective
    source = f'source="{options.slo_source}"'
    conditions = promql.burn_windows(options.window_scale)
    # promtool cases: a burn far above every threshold (every condition whose `for` has passed
    # fires), and one just under the slowest burn (nothing fires). Evaluated at 70 minutes of
    # data (scaled), which passes the `for` of both pages and of the first ticket.
    horizon = max(2, round(_minutes(conditions[0].long) * 70 / 60)) + 1
    eval_minutes = horizon - 1
    loud = make_series(horizon, 0.5)
    quiet = make_series(horizon, budget / 2)
    alerts = []
    for condition in conditions:
        threshold = condition.factor * budget
        expr = (
            f"{ratio_rule(condition.long)}{{{source}}} > {threshold:g}\n"
            f"and\n{ratio_rule(condition.short)}{{{source}}} > {threshold:g}"
        )
        window = f"{condition.long}/{condition.short}"
        fires = _minutes(condition.for_) <= eval_minutes - 2
        labels = {**MODEL, "source": options.slo_source}
        alerts.append(
            Alert(
                name=name,
                expr=expr,
                for_=condition.for_,
                severity=condition.severity,
                labels={"window": window},
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


def alerts(options: GenerateOptions) -> list[Alert]:
    """Every alert, each with the promtool cases that show it fires and stays silent."""
    o = options
    per_min = 100_000  # fine enough for a failure fraction of half a 0.1% budget

    def error_series(minutes: int, fraction: float) -> dict[str, str]:
        bad = round(per_min * fraction)
        return _traffic(o, minutes, per_min, bad, schema.REASON_SERVER_ERROR)

    def slow_series(minutes: int, fraction: float) -> dict[str, str]:
        return _latency(o, minutes, per_min, round(per_min * fraction))

    # A client's 4xx spends no budget: half the requests failing that way must stay silent.
    client_errors = _traffic(o, 40, per_min, per_min // 2, schema.REASON_CLIENT_ERROR)
    out = _burn_alerts(
        o,
        "InferenceErrorBudgetBurn",
        promql.error_ratio_rule,
        o.availability_objective,
        "availability",
        error_series,
        _ERROR_BURN_RUNBOOK,
        (AlertTest("client errors spend no budget", client_errors, "35m", []),),
    )
    out += _burn_alerts(
        o,
        "InferenceLatencyBudgetBurn",
        promql.slow_ratio_rule,
        o.latency_objective,
        "latency",
        slow_series,
        _LATENCY_RUNBOOK,
    )

    queue = _series(
        schema.QUEUE_LENGTH.name, source=schema.SOURCE_SIDECAR, model_name="resnet", **POD
    )
    out.append(
        Alert(
            name="InferenceQueueBacklog",
            expr=f"{promql.POD_QUEUE_LENGTH} > {o.queue_length_alert}",
            for_="10m",
            severity="warning",
            summary="{{ $labels.pod }} has a standing inference queue.",
            description=(
                "More than " + str(o.queue_length_alert) + " inferences have been waiting in "
                "{{ $labels.namespace }}/{{ $labels.pod }} for 10 minutes: the autoscaler is "
                "not keeping up, or is at its maximum."
            ),
            runbook=_QUEUE_RUNBOOK,
            tests=(
                AlertTest("backlog", {queue: f"{o.queue_length_alert + 10}x30"}, "20m", [POD]),
                AlertTest("short queue", {queue: f"{o.queue_length_alert // 2}x30"}, "20m", []),
            ),
        )
    )

    rejected = _series(
        schema.INFERENCE_FAILURES.name,
        source=schema.SOURCE_SIDECAR,
        model_version="1",
        reason=schema.REASON_REJECTED,
        **MODEL,
    )
    out.append(
        Alert(
            name="InferenceRequestsRejected",
            expr=(
                f"sum by (namespace, model_name) (rate({schema.INFERENCE_FAILURES.name}"
                f'{{reason="{schema.REASON_REJECTED}"}}[5m])) > 0'
            ),
            for_="5m",
            severity="warning",
            summary="{{ $labels.model_name }} is turning inferences away.",
            description=(
                "The admission queue in front of {{ $labels.model_name }} in "
                "{{ $labels.namespace }} has been full for 5 minutes and callers get 503s."
            ),
            runbook=_QUEUE_RUNBOOK,
            tests=(
                AlertTest("rejecting", {rejected: "0+10x20"}, "15m", [MODEL]),
                AlertTest("not rejecting", {rejected: "0x20"}, "15m", []),
            ),
        )
    )

    total = schema.INFERENCE_TOTAL.name
    traffic = _series(total, source=o.slo_source, model_version="1", status="success", **MODEL)
    out.append(
        Alert(
            name="InferenceNoTraffic",
            expr=(
                f'sum by (namespace, model_name) (rate({total}{{source="{o.slo_source}"}}[10m])) '
                f"== 0\nand\n"
                f'sum by (namespace, model_name) (increase({total}{{source="{o.slo_source}"}}[1d]))'
                " > 0"
            ),
            for_="5m",
            severity="warning",
            summary="{{ $labels.model_name }} stopped receiving inferences.",
            description=(
                "{{ $labels.model_name }} in {{ $labels.namespace }} served traffic in the last "
                "day but none in the last 15 minutes. Check the callers, the Service and the "
                "ingress in front of it."
            ),
            runbook=_NO_TRAFFIC_RUNBOOK,
            tests=(
                AlertTest("traffic stopped", {traffic: "0+100x60 6000x60"}, "90m", [MODEL]),
                AlertTest("still serving", {traffic: "0+100x120"}, "90m", []),
                AlertTest("never served", {traffic: "0x120"}, "90m", []),
            ),
        )
    )

    up = _series(schema.UPSTREAM_UP.name, **POD)
    out.append(
        Alert(
            name="InferenceSidecarUpstreamDown",
            expr=f"{schema.UPSTREAM_UP.name} == 0",
            for_="2m",
            severity="critical",
            summary="The model server behind {{ $labels.pod }} is not ready.",
            description=(
                "The inferwatch sidecar in {{ $labels.namespace }}/{{ $labels.pod }} has found "
                "its model server not ready for 2 minutes; the pod is out of its Service."
            ),
            runbook=_UPSTREAM_RUNBOOK,
            tests=(
                AlertTest("down", {up: "1x10 0x10"}, "15m", [POD]),
                AlertTest("up", {up: "1x20"}, "15m", []),
            ),
        )
    )

    used = _series(schema.GPU_MEMORY_USED.name, **GPU)
    total_mem = _series(schema.GPU_MEMORY_TOTAL.name, **GPU)
    out.append(
        Alert(
            name="GPUMemoryNearFull",
            expr=(
                f"{schema.GPU_MEMORY_USED.name} / {schema.GPU_MEMORY_TOTAL.name} "
                f"> {o.gpu_memory_alert_ratio:g}"
            ),
            for_="15m",
            severity="warning",
            summary="GPU {{ $labels.gpu }} on {{ $labels.pod }} is almost out of memory.",
            description=(
                f"GPU {{{{ $labels.gpu }}}} ({{{{ $labels.name }}}}) has used more than "
                f"{o.gpu_memory_alert_ratio:.0%} of its memory for 15 minutes; the next larger "
                "batch or model load may fail with out-of-memory."
            ),
            runbook=_GPU_MEMORY_RUNBOOK,
            tests=(
                AlertTest("full", {used: "79e9x30", total_mem: "80e9x30"}, "20m", [GPU]),
                AlertTest("half", {used: "40e9x30", total_mem: "80e9x30"}, "20m", []),
            ),
        )
    )

    temperature = _series(schema.GPU_TEMPERATURE.name, **GPU)
    out.append(
        Alert(
            name="GPUTemperatureHigh",
            expr=f"{schema.GPU_TEMPERATURE.name} > {o.gpu_temperature_alert_celsius}",
            for_="5m",
            severity="warning",
            summary="GPU {{ $labels.gpu }} on {{ $labels.pod }} is running hot.",
            description=(
                f"GPU {{{{ $labels.gpu }}}} ({{{{ $labels.name }}}}) has been above "
                f"{o.gpu_temperature_alert_celsius} °C for 5 minutes; it will throttle its "
                "clocks and inference slows down."
            ),
            runbook=_GPU_HOT_RUNBOOK,
            tests=(
                AlertTest("hot", {temperature: "90x20"}, "10m", [GPU]),
                AlertTest("cool", {temperature: "70x20"}, "10m", []),
            ),
        )
    )

    power_reasons = schema.POWER_THROTTLE_REASONS
    capped = _series(schema.GPU_THROTTLED.name, reason=power_reasons[0], **GPU)
    out.append(
        Alert(
            name="GPUPowerThrottling",
            # The power-cap bit flickers under load: alert when it is set most of the time.
            expr=(
                f"max without (reason) (avg_over_time({schema.GPU_THROTTLED.name}"
                f'{{reason=~"{"|".join(power_reasons)}"}}[10m])) > 0.5'
            ),
            for_="15m",
            severity="warning",
            summary="GPU {{ $labels.gpu }} on {{ $labels.pod }} is held at its power limit.",
            description=(
                "GPU {{ $labels.gpu }} ({{ $labels.name }}) has had its clocks held down by its "
                "power limit most of the time for 15 minutes: inference is bound by power, "
                "not by the model."
            ),
            runbook=_GPU_POWER_RUNBOOK,
            tests=(
                AlertTest("capped", {capped: "1 1 0 1 1 1 1 1 1 1 0 1 1x30"}, "30m", [GPU]),
                AlertTest("now and then", {capped: "0 0 1 0 0 0 0 1 0 0x30"}, "30m", []),
            ),
        )
    )

    # A lost GPU stops producing samples (its age grows); other NVML failures are counted.
    errors = _series(schema.GPU_COLLECTOR_ERRORS.name, reason="driver_not_loaded", **POD)
    age = _series(schema.GPU_SAMPLE_AGE.name, **GPU)
    fresh = "5x40"
    cases = {
        "stale": {errors: "0x40", age: "5x10 65+60x30"},
        "errors keep coming": {errors: "0+5x40", age: fresh},
        "one-off error": {errors: "0 1x40", age: fresh},
    }
    failing_gpu = {**GPU}
    failing_calls = {**POD, "reason": "driver_not_loaded"}
    for expr, firing_case, labels, what, problem in (
        (
            f"{schema.GPU_SAMPLE_AGE.name} > 60",
            "stale",
            failing_gpu,
            "GPU {{ $labels.gpu }} has not been read for over a minute",
            "stale_samples",
        ),
        (
            f"rate({schema.GPU_COLLECTOR_ERRORS.name}"
            f'{{reason!="{schema.GPU_ERROR_NOT_SUPPORTED}"}}[10m]) > 0',
            "errors keep coming",
            failing_calls,
            "NVML calls keep failing with {{ $labels.reason }}",
            "nvml_errors",
        ),
    ):
        out.append(
            Alert(
                name="GPUCollectorFailing",
                expr=expr,
                for_="10m",
                severity="warning",
                labels={"problem": problem},
                summary="GPU metrics on {{ $labels.pod }} are failing.",
                description=(
                    f"In {{{{ $labels.namespace }}}}/{{{{ $labels.pod }}}} {what} (10 minutes "
                    "now): GPU panels and alerts are blind there."
                ),
                runbook=_GPU_COLLECTOR_RUNBOOK,
                tests=tuple(
                    AlertTest(name, series, "35m", [labels] if name == firing_case else [])
                    for name, series in cases.items()
                ),
            )
        )

    hpa = {"namespace": o.namespace, "horizontalpodautoscaler": o.deployment}
    current = _series(promql.KSM_CURRENT_REPLICAS, **hpa)
    maximum = _series(promql.KSM_MAX_REPLICAS, **hpa)
    selector = f'namespace="{o.namespace}",horizontalpodautoscaler="{o.deployment}"'
    out.append(
        Alert(
            name="InferenceAutoscalerAtMaxReplicas",
            expr=(
                f"{promql.KSM_CURRENT_REPLICAS}{{{selector}}}\n>=\n{promql.KSM_MAX_REPLICAS}{{{selector}}}"
            ),
            for_="15m",
            severity="warning",
            summary="{{ $labels.horizontalpodautoscaler }} cannot scale out any further.",
            description=(
                "The HPA {{ $labels.namespace }}/{{ $labels.horizontalpodautoscaler }} has run at "
                "its maximum replicas for 15 minutes; queue length and latency will grow with "
                "any more load."
            ),
            runbook=_HPA_RUNBOOK,
            tests=(
                AlertTest(
                    "at max",
                    {current: f"{o.max_replicas}x30", maximum: f"{o.max_replicas}x30"},
                    "20m",
                    [hpa],
                ),
                AlertTest(
                    "headroom",
                    {current: f"{o.min_replicas}x30", maximum: f"{o.max_replicas}x30"},
                    "20m",
                    [],
                ),
            ),
        )
    )
    return out


def alerting_rules(options: GenerateOptions) -> dict[str, Any]:
    rules = [alert.rule(options) for alert in alerts(options)]
    return {"groups": [{"name": "inferwatch.alerts", "rules": rules}]}


# --- promtool unit tests ---------------------------------------------------------------------

_LABEL_REF = re.compile(r"\{\{ \$labels\.([a-z_]+) \}\}")


def _render(template: str, labels: dict[str, str]) -> str:
    return _LABEL_REF.sub(lambda m: labels.get(m.group(1), ""), template)


def rule_tests(options: GenerateOptions, rule_files: list[str]) -> dict[str, Any]:
    """A promtool test file with, for every alert, a case where it fires and one where it won't."""
    tests = []
    by_name: dict[str, list[Alert]] = {}
    for alert in alerts(options):
        by_name.setdefault(alert.name, []).append(alert)
    for name, variants in by_name.items():
        cases = {case.name: case for case in variants[0].tests}
        for case_name, case in cases.items():
            expected = []
            for variant in variants:
                variant_case = next(t for t in variant.tests if t.name == case_name)
                for firing in variant_case.firing:
                    labels = {**firing, "severity": variant.severity, **variant.labels}
                    rule = variant.rule(options)
                    expected.append(
                        {
                            "exp_labels": labels,
                            "exp_annotations": {
                                key: _render(value, labels)
                                for key, value in rule["annotations"].items()
                            },
                        }
                    )
            tests.append(
                {
                    "name": f"{name}: {case_name}",
                    "interval": "1m",
                    "input_series": [
                        {"series": series, "values": values}
                        for series, values in case.series.items()
                    ],
                    "alert_rule_test": [
                        {"eval_time": case.eval_time, "alertname": name, "exp_alerts": expected}
                    ],
                }
            )
    return {"rule_files": rule_files, "evaluation_interval": "1m", "tests": tests}


# --- runbooks -------------------------------------------------------------------------------------


def runbooks(options: GenerateOptions) -> str:
    """docs/runbooks.md: one section per alert, the target of every runbook_url."""
    seen: dict[str, Alert] = {}
    for alert in alerts(options):
        seen.setdefault(alert.name, alert)
    lines = [
        "# inferwatch runbooks",
        "",
        "Generated by `inferwatch generate` from `inferwatch/generate/rules.py`; every alert's",
        "`runbook_url` points at its section here.",
        "",
    ]
    for name, alert in seen.items():
        severities = sorted({a.severity for a in alerts(options) if a.name == name})
        lines += [
            f"## {name}",
            "",
            f"Severity: {', '.join(severities)}. Fires on: `{' '.join(alert.expr.split())}`",
            "",
            alert.runbook.strip().format(
                failures=schema.INFERENCE_FAILURES.name, sample_age=schema.GPU_SAMPLE_AGE.name
            ),
            "",
        ]
    return "\n".join(lines)


_ERROR_BURN_RUNBOOK = """
Server-side failures (5xx from the model server, timeouts, rejections by the sidecar's queue,
an unreachable model server, exceptions in decorated code) are using up the availability error
budget faster than the objective allows. Critical: at this rate the month's budget is gone in
days; warning: it will run out before the month ends. Client errors (4xx) and callers that hang
up do not count.

1. Open the inferwatch overview dashboard for the model and look at the error ratio by reason
   (`{failures}`).
2. `upstream_unavailable` or `server_error`: check the model server's logs and restarts.
   `timeout`: the model is too slow for the sidecar's upstream timeout; see the latency panels.
   `rejected`: the admission queue is full; see InferenceQueueBacklog.
3. If a rollout is in progress, roll it back.
"""

_LATENCY_RUNBOOK = """
More inferences than the latency objective allows take longer than its threshold. Critical: the
month's latency budget will be gone in days.

1. Compare sidecar and app latency on the overview dashboard: a gap is time spent queueing.
2. Queueing: the pods are saturated; check the autoscaling dashboard (is the HPA at its
   maximum? are new pods stuck pending for a GPU?).
3. No queueing: the model itself got slower. Check GPU utilization, clocks and temperature on
   the GPU dashboard, the batch size heatmap, and recent model or driver changes.
"""

_QUEUE_RUNBOOK = """
Inferences wait before reaching the model: the sidecar's admission queue (max concurrency) or
the model server's batcher cannot keep up. Latency grows with the queue, and when the queue is
full the sidecar answers 503 with Retry-After.

1. Check the autoscaling dashboard: the HPA scales on this queue length; is it scaling, and is
   it at its maximum (InferenceAutoscalerAtMaxReplicas)?
2. Check whether new pods are pending (no free GPU) or slow to become ready (model loading).
3. Raise max replicas, or the sidecar's max concurrency if the model server has headroom.
"""

_NO_TRAFFIC_RUNBOOK = """
A model that served inferences in the last day has received none for 15 minutes. Usually
something in front of it broke: the Service selector, an ingress or gateway route, a client
deployment, or DNS.

1. Check that the pods are Ready and in the Service's endpoints.
2. Send a test inference through the Service and through the ingress.
3. If the model was retired on purpose, this resolves by itself after a day.
"""

_UPSTREAM_RUNBOOK = """
The inferwatch sidecar's readiness check of its model server has failed for 2 minutes, so the
pod reports not ready and receives no traffic.

1. `kubectl logs <pod> -c <model server container>`: crash loop, out of memory, still loading?
2. Check the sidecar's `--upstream` address and readiness path match the model server.
3. GPU problems (XID errors, lost GPU) show on the GPU dashboard and in GPUCollectorFailing.
"""

_GPU_MEMORY_RUNBOOK = """
GPU memory is nearly full. The next larger batch, a second model load, or fragmentation can end
in CUDA out-of-memory errors.

1. See per-process GPU memory on the GPU dashboard: which process holds it?
2. Reduce the maximum batch size or the number of models per GPU, or move to a larger GPU.
3. Frameworks that cache memory (PyTorch) show high usage by design; alert only matters if it
   keeps growing or errors appear.
"""

_GPU_HOT_RUNBOOK = """
The GPU is hotter than it should be under sustained load and will lower its clocks.

1. Check the node's cooling and fan status with the hardware team or cloud provider.
2. Compare with other GPUs on the node: one hot GPU points at hardware.
3. If it persists, drain the node.
"""

_GPU_POWER_RUNBOOK = """
The GPU has drawn almost all of its power limit for a long time, so its clocks are capped.
Inference throughput is bounded by power rather than by the model.

1. Check the power limit on the GPU dashboard: was it lowered (`nvidia-smi -pl`)?
2. `hw_power_brake_slowdown`: the power supply or the chassis asked the GPU to slow down;
   check the node's hardware.
3. `sw_power_cap` under full batch load is expected on some GPUs; it matters when the latency
   objective burns too.
"""

_GPU_COLLECTOR_RUNBOOK = """
inferwatch cannot read the GPU's statistics from NVML (the reason label says why: lost GPU,
driver problem, unsupported call). GPU dashboards and alerts are blind on this pod.

1. Run `inferwatch gpu --once` or `nvidia-smi` in the pod.
2. Stale samples (`{sample_age}` growing) usually mean a lost GPU (`gpu_is_lost`): it
   fell off the bus; drain the node and check the kernel log for XID errors.
3. Driver or library errors: check the NVIDIA device plugin and the driver version on the node.
"""

_HPA_RUNBOOK = """
The autoscaler wants more replicas than it is allowed. Queue length and latency will keep rising
with load.

1. Check cluster capacity for GPUs: are there pending pods?
2. Raise `maxReplicas` if the cluster has room, or shed load upstream.
"""
