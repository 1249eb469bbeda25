"""What a user can tune in the generated dashboards, rules and autoscaling configs."""

from __future__ import annotations

from dataclasses import dataclass, fields

from inferwatch import schema

# Autoscaling profiles: what the HPA (or KEDA) scales on.
# default: CPU utilization, the per-pod queue length and the per-pod p95 latency.
# llm: waiting requests (the same queue length, the model server's own waiting generations
# included) and the model server's KV-cache usage; a generation's latency grows with its
# output length and a GPU-bound server's CPU says little, so neither is a scaling signal there.
AUTOSCALING_PROFILES = ("default", "llm")
# How the HPA reads the queue, latency and KV-cache metrics through prometheus-adapter.
# Pods: one value per pod, averaged by the HPA (the seed's HPA). Object: one value for the
# Deployment, from the per-workload records: the adapter's query then names no pods, so it
# stays a few milliseconds however many replicas there are (a Pods query carries every pod's
# name: 185 ms at 10,000 pods, benchmarks/bench_autoscaling_scale.py).
HPA_METRIC_TYPES = ("Pods", "Object")

# The pod's fixed ports, in deploy/kubernetes/ and compose/: the reference model server's HTTP
# port, and the sidecar's HTTP proxy, gRPC proxy and admin ports (the containers share one
# network namespace, so the model server's gRPC port must be none of these).
SERVER_PORT = 8000
PROXY_PORT = 8080
GRPC_PROXY_PORT = 8081
ADMIN_PORT = 9464
POD_PORTS = (SERVER_PORT, PROXY_PORT, GRPC_PROXY_PORT, ADMIN_PORT)


@dataclass(frozen=True)
class GenerateOptions:
    """Every knob of ``inferwatch generate``; the defaults produce the committed files."""

    # Kubernetes: where the model server runs.
    namespace: str = "default"
    deployment: str = "model-server"
    # The model server's gRPC port (0: HTTP only, the default: the reference server has none).
    # Set, the sidecar also proxies gRPC on GRPC_PROXY_PORT to 127.0.0.1:<grpc_port>, and the
    # Service and compose publish that port.
    grpc_port: int = 0
    # With grpc_port: probe the sidecar's readiness with Kubernetes' native gRPC probe
    # (grpc.health.v1 on GRPC_PROXY_PORT) instead of HTTP GET /ready; both read one readiness.
    grpc_readiness_probe: bool = False
    # Autoscaling: the profile (AUTOSCALING_PROFILES), the targets of its metrics, the bounds.
    autoscaling_profile: str = "default"
    hpa_metric_type: str = "Pods"  # HPA_METRIC_TYPES
    # How often Prometheus evaluates the autoscaling records (0: its global
    # evaluation_interval). Past a few thousand pods one evaluation takes seconds (about 13 s
    # at 10,000 pods, benchmarks/bench_autoscaling_scale.py): set it above that.
    autoscaling_rules_interval_seconds: int = 0
    cpu_utilization_target: int = 70  # percent of the pod's CPU requests (default profile)
    queue_length_target: int = 10  # waiting requests per pod, on average (both profiles)
    p95_latency_target_ms: int = 100  # per pod, on average (default profile)
    kv_cache_usage_target: float = 0.8  # fraction of the KV cache in use, per pod (llm profile)
    min_replicas: int = 2
    max_replicas: int = 20
    # How fast the HPA moves (its `behavior`; KEDA passes the same block on). Up: within a
    # minute's stabilization, by the larger of 100% or 2 pods every 30 s; down: after 5
    # minutes' stabilization, by at most 50% a minute (model loads are slow, so are GPUs).
    scale_up_stabilization_seconds: int = 60
    scale_up_percent: int = 100
    scale_up_pods: int = 2
    scale_up_period_seconds: int = 30
    scale_down_stabilization_seconds: int = 300
    scale_down_percent: int = 50
    scale_down_period_seconds: int = 60
    # Service level objectives, measured by this layer.
    slo_source: str = schema.SOURCE_SIDECAR
    availability_objective: float = 0.999  # fraction of inferences without a server-side error
    latency_threshold_seconds: float = 0.25  # an inference slower than this is "slow"
    latency_objective: float = 0.99  # fraction of inferences faster than the threshold
    # LLM generations (streamed): a first token later than ttft_threshold_seconds, or tokens
    # slower on average than tpot_threshold_seconds, is "slow"; each objective is the fraction
    # of generations that must not be. 2 s to the first token and 100 ms a token (10 tokens/s,
    # faster than anyone reads) at 99% are the interactive chat targets most serving SLOs and
    # benchmarks (vLLM's, MLPerf's) use; both sit on bucket bounds (TTFT_BUCKETS, TPOT_BUCKETS).
    ttft_threshold_seconds: float = 2.0
    ttft_objective: float = 0.99
    tpot_threshold_seconds: float = 0.1
    tpot_objective: float = 0.99
    # Generations cut off at max_tokens (finish reason "length"): alert above this share over
    # half an hour, once the model has ended at least truncation_min_generations generations.
    truncation_alert_ratio: float = 0.1
    truncation_min_generations: int = 100
    # Alert thresholds.
    queue_length_alert: int = 50  # waiting requests per pod, sustained
    gpu_memory_alert_ratio: float = 0.95
    gpu_temperature_alert_celsius: int = 85
    # Shrinks every burn-rate window and `for` duration; 1.0 in production, small in tests.
    window_scale: float = 1.0
    # Canary analysis of a model version (Argo Rollouts AnalysisTemplate, Flagger MetricTemplates
    # and Canary): every canary_interval_seconds the canary version's server-side error ratio and
    # p95 latency, as the sidecars measure them, are checked against absolute limits and against
    # the stable version's: at most canary_max_error_ratio and at most canary_max_error_increase
    # above the stable version's (0.01: one percentage point); a p95 of at most
    # canary_max_p95_seconds and at most canary_max_p95_ratio times the stable version's.
    # canary_count measurements (Argo); more than canary_failure_limit failed ones fail the
    # analysis (Argo's failureLimit; Flagger's threshold is one more: it rolls back at that many).
    canary_interval_seconds: int = 60
    canary_count: int = 5
    canary_failure_limit: int = 1
    canary_max_error_ratio: float = 0.01
    canary_max_error_increase: float = 0.01
    canary_max_p95_seconds: float = 0.5
    canary_max_p95_ratio: float = 1.2
    # The Flagger Canary example's model and versions (its metrics' templateVariables).
    canary_model: str = "image-classifier"
    canary_version: str = "2"
    stable_version: str = "1"
    # Where things are.
    datasource_uid: str = "prometheus"
    traces_datasource_uid: str = "traces"  # where latency exemplars link (Tempo, Jaeger)
    scrape_interval: str = "15s"  # Grafana's $__rate_interval is at least four of these
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    runbook_url: str = "https://github.com/inferwatch/inferwatch/blob/main/docs/runbooks.md"
    alert_webhook_url: str = "http://127.0.0.1:9095/alerts"

    def __post_init__(self) -> None:
        problems = []
        if self.latency_threshold_seconds not in schema.LATENCY_BUCKETS:
            problems.append(
                "latency_threshold_seconds must be one of the latency bucket bounds "
                f"{schema.LATENCY_BUCKETS}, so the ratio of slow inferences is exact"
            )
        for name, value, buckets in (
            ("ttft_threshold_seconds", self.ttft_threshold_seconds, schema.TTFT_BUCKETS),
            ("tpot_threshold_seconds", self.tpot_threshold_seconds, schema.TPOT_BUCKETS),
        ):
            if value not in buckets:
                problems.append(
                    f"{name} must be one of the bucket bounds {buckets}, so the ratio of slow "
                    "generations is exact"
                )
        if not 0 < self.truncation_alert_ratio < 1:
            problems.append(
                "truncation_alert_ratio must be between 0 and 1 (exclusive), "
                f"got {self.truncation_alert_ratio}"
            )
        if self.truncation_min_generations < 1:
            problems.append("truncation_min_generations must be at least 1")
        for name in (
            "availability_objective",
            "latency_objective",
            "ttft_objective",
            "tpot_objective",
        ):
            value = getattr(self, name)
            if not 0 < value < 1:
                problems.append(f"{name} must be between 0 and 1 (exclusive), got {value}")
        if self.slo_source not in (schema.SOURCE_SIDECAR, schema.SOURCE_APP):
            problems.append(f"slo_source must be 'sidecar' or 'app', got {self.slo_source!r}")
        if not 0 < self.min_replicas <= self.max_replicas:
            problems.append(
                "min_replicas and max_replicas need 0 < min_replicas <= max_replicas, got "
                f"min_replicas={self.min_replicas}, max_replicas={self.max_replicas}"
            )
        problems += self._autoscaling_problems()
        problems += self._canary_problems()
        if not 0 <= self.grpc_port <= 65535:
            problems.append(f"grpc_port must be 0 (off) or a port 1-65535, got {self.grpc_port}")
        elif self.grpc_port in POD_PORTS:
            problems.append(
                f"grpc_port {self.grpc_port} is taken in the pod: the model server's and the "
                f"sidecar's ports are {', '.join(map(str, POD_PORTS))}"
            )
        if self.grpc_readiness_probe and not self.grpc_port:
            problems.append("grpc_readiness_probe needs grpc_port (there is no gRPC port)")
        if self.window_scale <= 0:
            problems.append("window_scale must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    def _autoscaling_problems(self) -> list[str]:
        problems = []
        for name, allowed in (
            ("autoscaling_profile", AUTOSCALING_PROFILES),
            ("hpa_metric_type", HPA_METRIC_TYPES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.autoscaling_rules_interval_seconds < 0:
            problems.append(
                "autoscaling_rules_interval_seconds must be 0 (Prometheus' evaluation_interval) "
                f"or positive, got {self.autoscaling_rules_interval_seconds}"
            )
        for name in ("cpu_utilization_target", "queue_length_target", "p95_latency_target_ms"):
            value = getattr(self, name)
            if value <= 0:
                problems.append(f"{name} must be positive, got {value}")
        if not 0 < self.kv_cache_usage_target <= 1:
            problems.append(
                "kv_cache_usage_target must be a fraction in (0, 1], "
                f"got {self.kv_cache_usage_target}"
            )
        # The HPA's limits: a window of at most an hour, policies' periods of at most 30
        # minutes, positive values.
        for name in ("scale_up_stabilization_seconds", "scale_down_stabilization_seconds"):
            value = getattr(self, name)
            if not 0 <= value <= 3600:
                problems.append(f"{name} must be 0-3600 (the HPA's limit), got {value}")
        for name in ("scale_up_period_seconds", "scale_down_period_seconds"):
            value = getattr(self, name)
            if not 0 < value <= 1800:
                problems.append(f"{name} must be 1-1800 (the HPA's limit), got {value}")
        for name in ("scale_up_percent", "scale_up_pods", "scale_down_percent"):
            value = getattr(self, name)
            if value <= 0:
                problems.append(f"{name} must be positive, got {value}")
        return problems

    def _canary_problems(self) -> list[str]:
        problems = []
        # Flagger's metric interval must match ^[0-9]+(m|s): whole seconds.
        if self.canary_interval_seconds <= 0:
            problems.append(
                f"canary_interval_seconds must be positive, got {self.canary_interval_seconds}"
            )
        if self.canary_count < 1:
            problems.append(f"canary_count must be at least 1, got {self.canary_count}")
        if not 0 <= self.canary_failure_limit < self.canary_count:
            problems.append(
                "canary_failure_limit must be 0 or more and less than canary_count, got "
                f"{self.canary_failure_limit} (canary_count={self.canary_count})"
            )
        for name in ("canary_max_error_ratio", "canary_max_error_increase"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                problems.append(f"{name} must be a fraction in [0, 1), got {value}")
        if self.canary_max_p95_seconds <= 0:
            problems.append(
                f"canary_max_p95_seconds must be positive, got {self.canary_max_p95_seconds}"
            )
        if self.canary_max_p95_ratio < 1:
            problems.append(
                "canary_max_p95_ratio must be at least 1 (the canary may be as slow as the "
                f"stable version), got {self.canary_max_p95_ratio}"
            )
        for name in ("canary_model", "canary_version", "stable_version"):
            if not getattr(self, name):
                problems.append(f"{name} must not be empty")
        if self.canary_version == self.stable_version:
            problems.append("canary_version and stable_version must differ")
        return problems

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
