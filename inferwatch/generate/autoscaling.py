"""Autoscaling: the HPA, prometheus-adapter's rules, KEDA.

Two profiles (``autoscaling_profile``). ``default``: CPU utilization (of the pod's requests),
the per-pod queue length and the per-pod p95 latency. ``llm``: waiting requests (the same
queue length; the model server's own waiting generations, source="server", are part of it)
and the model server's KV-cache usage.

The HPA reads them through prometheus-adapter as Pods metrics (one value per pod, the seed's
HPA) or, with ``hpa_metric_type: Object``, as metrics of the Deployment (one value, from the
per-workload records: the adapter's query names no pods, so its cost does not grow with the
replicas). Either way they read the recording rules (promql.py), so the HPA, the dashboards and
the alerts see one number. prometheus-adapter is heading for deprecation; KEDA's prometheus
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
# The adapter's label -> resource maps: a per-pod series is a pod's metric, a per-workload one
# a Deployment's (an Argo Rollout's would need {group: argoproj.io, resource: rollout}).
POD_RESOURCES = {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
DEPLOYMENT_RESOURCES = {
    "overrides": {
        "namespace": {"resource": "namespace"},
        "workload": {"group": "apps", "resource": "deployment"},
    }
}


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


# Past this many replicas a Pods metric's adapter query, which lists every pod by name, takes
# tens of milliseconds (about 185 ms at 10,000 pods, benchmarks/bench_autoscaling_scale.py).
MANY_REPLICAS = 2000


def advice(options: GenerateOptions) -> list[str]:
    """What a user generating for this scale should know."""
    if options.hpa_metric_type == "Pods" and options.max_replicas >= MANY_REPLICAS:
        return [
            f"max_replicas {options.max_replicas} with Pods metrics: prometheus-adapter's query "
            "lists every pod by name (about 185 ms at 10,000 pods); hpa_metric_type: Object "
            "reads the Deployment's per-workload records instead, at any replica count"
        ]
    return []


def target_value(value: float) -> str:
    """A quantity as the HPA and KEDA take it: "10", "0.8"."""
    return format(value, "g")


def metric_targets(options: GenerateOptions) -> list[tuple[str, str]]:
    """The profile's metrics (besides CPU) and their targets, in order."""
    queue = (QUEUE_METRIC, target_value(options.queue_length_target))
    if options.autoscaling_profile == "llm":
        return [queue, (KV_CACHE_METRIC, target_value(options.kv_cache_usage_target))]
    return [queue, (P95_METRIC, target_value(options.p95_latency_target_ms))]


def target_type(name: str) -> str:
    """A deployment-wide p95 is a Value (a latency does not divide by replicas); a queue or a
    KV-cache usage summed over the pods is an AverageValue (the HPA divides it by replicas)."""
    return "Value" if name == P95_METRIC else "AverageValue"


def uses_cpu(options: GenerateOptions) -> bool:
    return options.autoscaling_profile == "default"


def pods_metric(name: str, target: str) -> dict[str, Any]:
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": target},
        },
    }


def object_metric(options: GenerateOptions, name: str, target: str) -> dict[str, Any]:
    kind = target_type(name)
    value_key = "value" if kind == "Value" else "averageValue"
    return {
        "type": "Object",
        "object": {
            "describedObject": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": options.deployment,
            },
            "metric": {"name": name},
            "target": {"type": kind, value_key: target},
        },
    }


def hpa(options: GenerateOptions) -> dict[str, Any]:
    if options.hpa_metric_type == "Object":
        metrics = [object_metric(options, *target) for target in metric_targets(options)]
    else:
        metrics = [pods_metric(*target) for target in metric_targets(options)]
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


def adapter_rule(series: str, resources: dict[str, Any], name: str, query: str) -> dict[str, Any]:
    resource_label = next(k for k in resources["overrides"] if k != "namespace")
    return {
        "seriesQuery": promql.adapter_series(series, resource_label),
        "resources": resources,
        "name": {"matches": f"^{series}$", "as": name},
        "metricsQuery": query,
    }


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter custom metrics rules serving both profiles' metrics, for pods and
    for Deployments (one adapter install serves any generated HPA; a metric without series is
    simply not listed)."""
    return [
        adapter_rule(
            promql.POD_QUEUE_LENGTH, POD_RESOURCES, QUEUE_METRIC, promql.ADAPTER_SUM_QUERY
        ),
        adapter_rule(promql.POD_P95_SECONDS, POD_RESOURCES, P95_METRIC, promql.ADAPTER_MS_QUERY),
        # The llm profile's: the fullest KV cache of each pod, straight from the family (a
        # gauge, no recording rule needed).
        adapter_rule(
            promql.KV_CACHE_USAGE_RATIO, POD_RESOURCES, KV_CACHE_METRIC, promql.ADAPTER_MAX_QUERY
        ),
        # The same metrics of a Deployment, from the per-workload records.
        adapter_rule(
            promql.WORKLOAD_QUEUE_LENGTH,
            DEPLOYMENT_RESOURCES,
            QUEUE_METRIC,
            promql.ADAPTER_SUM_QUERY,
        ),
        adapter_rule(
            promql.WORKLOAD_LATENCY_BUCKETS,
            DEPLOYMENT_RESOURCES,
            P95_METRIC,
            promql.ADAPTER_WORKLOAD_MS_QUERY,
        ),
        adapter_rule(
            promql.WORKLOAD_KV_CACHE_USAGE,
            DEPLOYMENT_RESOURCES,
            KV_CACHE_METRIC,
            promql.ADAPTER_SUM_QUERY,
        ),
    ]


def adapter_config_map(options: GenerateOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prometheus-adapter", "namespace": "monitoring"},
        "data": {"config.yaml": yaml_text.dump({"rules": adapter_rules()})},
    }


def keda_queries(options: GenerateOptions) -> dict[str, str]:
    """Metric -> its deployment-wide query for KEDA; each returns exactly one element.

    The queue and the KV-cache usage are summed over the deployment's pods (the HPA divides
    them by replicas: an AverageValue, the same as the pods metric); the p95 is the
    deployment's (a Value: a latency does not divide by replicas). All read the per-workload
    records: a few series, however many pods the deployment has."""
    deployment = (promql.eq("namespace", options.namespace), promql.workload(options.deployment))
    return {
        QUEUE_METRIC: promql.workload_total(promql.WORKLOAD_QUEUE_LENGTH, deployment),
        P95_METRIC: promql.deployment_p95_ms(deployment),
        KV_CACHE_METRIC: promql.workload_total(promql.WORKLOAD_KV_CACHE_USAGE, deployment),
    }


def keda_scaled_object(options: GenerateOptions) -> dict[str, Any]:
    queries = keda_queries(options)

    def trigger(name: str, threshold: str) -> dict[str, Any]:
        return {
            "type": "prometheus",
            "name": name.replace("_", "-"),
            "metricType": target_type(name),
            "metadata": {
                "serverAddress": options.prometheus_url,
                "query": queries[name],
                "threshold": threshold,
            },
        }

    triggers = [trigger(name, target) for name, target in metric_targets(options)]
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
