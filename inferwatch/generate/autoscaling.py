"""Autoscaling on queue length and p95 latency: the HPA, prometheus-adapter's rules, KEDA.

Both paths read the recording rules (promql.py), so the HPA, the dashboards and the alerts see
one number. prometheus-adapter is heading for deprecation; KEDA's prometheus trigger is the
recommended path and needs no adapter.
"""

from __future__ import annotations

from typing import Any

from inferwatch.generate import promql, yaml_text
from inferwatch.generate.options import GenerateOptions

QUEUE_METRIC = "inference_queue_length"
P95_METRIC = "p95_latency_ms"


def behavior() -> dict[str, Any]:
    """Scale up at once (a queue is already late), scale down slowly (model loads are slow)."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15},
                {"type": "Pods", "value": 4, "periodSeconds": 15},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "selectPolicy": "Min",
            "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}],
        },
    }


def hpa(options: GenerateOptions) -> dict[str, Any]:
    def pods_metric(name: str, target: int) -> dict[str, Any]:
        return {
            "type": "Pods",
            "pods": {
                "metric": {"name": name},
                "target": {"type": "AverageValue", "averageValue": str(target)},
            },
        }

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
            "metrics": [
                pods_metric(QUEUE_METRIC, options.queue_length_target),
                pods_metric(P95_METRIC, options.p95_latency_target_ms),
            ],
            "behavior": behavior(),
        },
    }


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter custom metrics rules serving the HPA's two pods metrics."""
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
    ]


def adapter_config_map(options: GenerateOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prometheus-adapter", "namespace": "monitoring"},
        "data": {"config.yaml": yaml_text.dump({"rules": adapter_rules()})},
    }


def keda_queries(options: GenerateOptions) -> tuple[str, str]:
    """The deployment-wide queue length and p95 (ms); each returns exactly one element."""
    pods = (
        promql.eq("namespace", options.namespace),
        promql.matches("pod", f"{options.deployment}-.*"),
    )
    return promql.deployment_queue_length(pods), promql.deployment_p95_ms(pods)


def keda_scaled_object(options: GenerateOptions) -> dict[str, Any]:
    queue, p95 = keda_queries(options)

    def trigger(name: str, metric_type: str, query: str, threshold: int) -> dict[str, Any]:
        return {
            "type": "prometheus",
            "name": name,
            "metricType": metric_type,
            "metadata": {
                "serverAddress": options.prometheus_url,
                "query": query,
                "threshold": str(threshold),
            },
        }

    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": options.deployment, "namespace": options.namespace},
        "spec": {
            "scaleTargetRef": {"name": options.deployment},
            "minReplicaCount": options.min_replicas,
            "maxReplicaCount": options.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior()}},
            "triggers": [
                # The queue summed over the deployment, divided by replicas by the HPA
                # (AverageValue): the same as the pods metric above.
                trigger(
                    QUEUE_METRIC.replace("_", "-"),
                    "AverageValue",
                    queue,
                    options.queue_length_target,
                ),
                # A latency does not divide by replicas: compare the deployment's p95 as is.
                trigger(P95_METRIC.replace("_", "-"), "Value", p95, options.p95_latency_target_ms),
            ],
        },
    }
