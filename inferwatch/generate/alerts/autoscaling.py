"""Autoscaling: the per-pod series the HPA scales on, their per-workload sums KEDA reads, and an
HPA that cannot scale out."""

from __future__ import annotations

from typing import Any

from inferwatch.generate import promql
from inferwatch.generate.alerts.alert import Alert, AlertTest
from inferwatch.generate.options import GenerateOptions


def recording_rules(options: GenerateOptions) -> dict[str, Any]:
    """Recorded so that the HPA's queries (adapter, KEDA) stay cheap at scale."""
    interval = options.autoscaling_rules_interval_seconds
    return {
        "name": "inferwatch.autoscaling",
        **({"interval": promql.duration(interval)} if interval else {}),
        "rules": [
            {"record": promql.POD_QUEUE_LENGTH, "expr": promql.pod_queue_length_expr()},
            {"record": promql.POD_LATENCY_BUCKETS, "expr": promql.pod_latency_buckets_expr("1m")},
            {"record": promql.POD_P95_SECONDS, "expr": promql.pod_p95_expr()},
            # Per workload, for KEDA and the HPA's Object metrics: read after the per-pod
            # records they sum.
            {
                "record": promql.WORKLOAD_QUEUE_LENGTH,
                "expr": promql.workload_queue_length_expr(),
            },
            {
                "record": promql.WORKLOAD_LATENCY_BUCKETS,
                "expr": promql.workload_latency_buckets_expr(),
            },
            {
                "record": promql.WORKLOAD_KV_CACHE_USAGE,
                "expr": promql.workload_kv_cache_usage_expr(),
            },
        ],
    }


def alerts(options: GenerateOptions) -> list[Alert]:
    return [at_max_replicas(options)]


def at_max_replicas(options: GenerateOptions) -> Alert:
    hpa = {"namespace": options.namespace, "horizontalpodautoscaler": options.deployment}
    current = promql.series(promql.KSM_CURRENT_REPLICAS, **hpa)
    maximum = promql.series(promql.KSM_MAX_REPLICAS, **hpa)
    replicas = f"{options.max_replicas}x30"
    return Alert(
        name="InferenceAutoscalerAtMaxReplicas",
        expr=promql.hpa_at_max_replicas(promql.selector(**hpa)),
        for_="15m",
        severity="warning",
        summary="{{ $labels.horizontalpodautoscaler }} cannot scale out any further.",
        description=(
            "The HPA {{ $labels.namespace }}/{{ $labels.horizontalpodautoscaler }} has run at "
            "its maximum replicas for 15 minutes; queue length and latency will grow with "
            "any more load."
        ),
        runbook="""
The autoscaler wants more replicas than it is allowed. Queue length and latency will keep rising
with load.

1. Check cluster capacity for GPUs: are there pending pods?
2. Raise `maxReplicas` if the cluster has room, or shed load upstream.
""",
        tests=(
            AlertTest("at max", {current: replicas, maximum: replicas}, "20m", [hpa]),
            AlertTest(
                "headroom",
                {current: f"{options.min_replicas}x30", maximum: replicas},
                "20m",
                [],
            ),
        ),
    )
