"""Autoscaling: the HPA, prometheus-adapter's rules, KEDA.

Two profiles (``autoscaling_profile``). ``default``: CPU utilization (of the pod's requests),
the per-pod queue length and the per-pod p95 latency. ``llm``: waiting requests (the same
queue length; the model server's own waiting generations, source="server", are part of it)
and the model server's KV-cache usage.

The pods metrics read the recording rules (promql.py), so the HPA, the dashboards and the
alerts see one number. prometheus-adapter is heading for deprecation; KEDA's prometheus
trigger is the recommended path and needs no adapter.
"""

from __future__ import annotations

from typing import Any

from inferwatch.generate import promql, yaml_text
from inferwatch.generate.options import GenerateOptions

QUEUE_METRIC = "inference_queue_length"
P95_METRIC = "p95_latency_ms"
KV_CACHE_METRIC = "kv_cache_usage_ratio"
PODS_METRICS = (QUEUE_METRIC, P95_METRIC, KV_CACHE_METRIC)  # what the adapter serves


def behavior(options: GenerateOptions) -> dict[str, Any]:
    """Scale up within a minute (a queue is already late), down slowly (model loads are slow)."""
    return {
        "scaleDown": {
            "stabilizationWindowSeconds": options.scale_down_stabilization_seconds,
            "policies": [
                {
                    "type": "Percent",
                    "value": options.scale_down_percent,
                    "periodSeconds": options.scale_down_period_seconds,
                }
            ],
        },
        "scaleUp": {
            "stabilizationWindowSeconds": options.scale_up_stabilization_seconds,
            "policies": [
                {
                    "type": "Percent",
                    "value": options.scale_up_percent,
                    "periodSeconds": options.scale_up_period_seconds,
                },
                {
                    "type": "Pods",
                    "value": options.scale_up_pods,
                    "periodSeconds": options.scale_up_period_seconds,
                },
            ],
            "selectPolicy": "Max",
        },
    }


def target_value(value: float) -> str:
    """A quantity as the HPA and KEDA take it: "10", "0.8"."""
    return format(value, "g")


def pods_targets(options: GenerateOptions) -> list[tuple[str, str]]:
    """The profile's pods metrics and their per-pod targets (AverageValue), in order."""
    queue = (QUEUE_METRIC, target_value(options.queue_length_target))
    if options.autoscaling_profile == "llm":
        return [queue, (KV_CACHE_METRIC, target_value(options.kv_cache_usage_target))]
    return [queue, (P95_METRIC, target_value(options.p95_latency_target_ms))]


def uses_cpu(options: GenerateOptions) -> bool:
    return options.autoscaling_profile == "default"


def hpa(options: GenerateOptions) -> dict[str, Any]:
    def pods_metric(name: str, target: str) -> dict[str, Any]:
        return {
            "type": "Pods",
            "pods": {
                "metric": {"name": name},
                "target": {"type": "AverageValue", "averageValue": target},
            },
        }

    metrics = [pods_metric(name, target) for name, target in pods_targets(options)]
    if uses_cpu(options):
        # Utilization of the pod's CPU requests: every container requests CPU (kubernetes.py).
        cpu = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": options.cpu_utilization_target,
                },
            },
        }
        metrics.insert(0, cpu)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": options.deployment, "namespace": options.namespace},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": options.deployment,
            },
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            "metrics": metrics,
            "behavior": behavior(options),
        },
    }


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter custom metrics rules serving the pods metrics of both profiles (one
    adapter install serves either HPA; a metric without series is simply not listed)."""
    resources = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    return [
        {
            "seriesQuery": promql.adapter_series(promql.POD_QUEUE_LENGTH),
            "resources": resources,
            "name": {"matches": f"^{promql.POD_QUEUE_LENGTH}$", "as": QUEUE_METRIC},
            "metricsQuery": promql.ADAPTER_SUM_QUERY,
        },
        {
            "seriesQuery": promql.adapter_series(promql.POD_P95_SECONDS),
            "resources": resources,
            "name": {"matches": f"^{promql.POD_P95_SECONDS}$", "as": P95_METRIC},
            "metricsQuery": promql.ADAPTER_MS_QUERY,
        },
        {
            # The llm profile's: the fullest KV cache of each pod, straight from the family
            # (a gauge, no recording rule needed).
            "seriesQuery": promql.adapter_series(promql.KV_CACHE_USAGE_RATIO),
            "resources": resources,
            "name": {"matches": f"^{promql.KV_CACHE_USAGE_RATIO}$", "as": KV_CACHE_METRIC},
            "metricsQuery": promql.ADAPTER_MAX_QUERY,
        },
    ]


def adapter_config_map(options: GenerateOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prometheus-adapter", "namespace": "monitoring"},
        "data": {"config.yaml": yaml_text.dump({"rules": adapter_rules()})},
    }


def keda_queries(options: GenerateOptions) -> dict[str, str]:
    """Pods metric -> its deployment-wide query for KEDA; each returns exactly one element.

    The queue and the KV-cache usage are summed over the deployment's pods (the HPA divides
    them by replicas: an AverageValue, the same as the pods metric); the p95 is the
    deployment's (a Value: a latency does not divide by replicas). The queue and the p95 read
    the per-workload records (a few series, however many pods the deployment has); the
    KV-cache usage reads the family (no record) over the deployment's pods."""
    namespace = promql.eq("namespace", options.namespace)
    pods = (namespace, promql.matches("pod", f"{options.deployment}-.*"))
    deployment = (namespace, promql.workload(options.deployment))
    return {
        QUEUE_METRIC: promql.deployment_queue_length(deployment),
        P95_METRIC: promql.deployment_p95_ms(deployment),
        KV_CACHE_METRIC: promql.deployment_kv_cache_usage(pods),
    }


def keda_scaled_object(options: GenerateOptions) -> dict[str, Any]:
    queries = keda_queries(options)

    def trigger(name: str, threshold: str) -> dict[str, Any]:
        return {
            "type": "prometheus",
            "name": name.replace("_", "-"),
            "metricType": "Value" if name == P95_METRIC else "AverageValue",
            "metadata": {
                "serverAddress": options.prometheus_url,
                "query": queries[name],
                "threshold": threshold,
            },
        }

    triggers = [trigger(name, target) for name, target in pods_targets(options)]
    if uses_cpu(options):
        # KEDA's cpu trigger: the HPA's Resource metric, on the same CPU requests.
        cpu = {
            "type": "cpu",
            "metricType": "Utilization",
            "metadata": {"value": str(options.cpu_utilization_target)},
        }
        triggers.insert(0, cpu)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": options.deployment, "namespace": options.namespace},
        "spec": {
            "scaleTargetRef": {"name": options.deployment},
            "minReplicaCount": options.min_replicas,
            "maxReplicaCount": options.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(options)}},
            "triggers": triggers,
        },
    }
