"""Kubernetes manifests: a kustomize base for the model server pod, and autoscaling overlays.

Layout under ``deploy/kubernetes/``::

    base/                 Deployment (model server + inferwatch sidecar), Service, PodMonitor,
                          PrometheusRule, dashboards as ConfigMaps for Grafana's sidecar
    hpa/                  base + the HorizontalPodAutoscaler on the two pods metrics
    keda/                 base + a KEDA ScaledObject (it makes its own HPA: never both)
    prometheus-adapter/   the adapter's rules (namespace monitoring), serving the HPA's metrics
    argo-rollouts/        an AnalysisTemplate checking a canary model version (canary.py)
    flagger/              MetricTemplates for the same checks, and an example Canary

The pod follows Knative's sequence on shutdown: every container gets its preStop hook at once;
the sidecar has none, so it takes SIGTERM at once, fails readiness, serves through its quiet
period and waits for what is in flight; the model container's preStop waits on the sidecar's
``/wait-for-drain``, so the model server gets SIGTERM only once nothing can reach it.
"""

from __future__ import annotations

import json
from typing import Any

from inferwatch._version import __version__
from inferwatch.generate import autoscaling, canary, dashboards, rules, yaml_text
from inferwatch.generate import options as pod_ports
from inferwatch.generate.options import GenerateOptions

ROOT = "deploy/kubernetes"
BASE = f"{ROOT}/base"
HPA = f"{ROOT}/hpa"
KEDA = f"{ROOT}/keda"
ADAPTER = f"{ROOT}/prometheus-adapter"
ARGO_ROLLOUTS = f"{ROOT}/argo-rollouts"
FLAGGER = f"{ROOT}/flagger"
KUSTOMIZATION = "kustomization.yaml"

SERVER_IMAGE = "inferwatch/server"
SIDECAR_IMAGE = "inferwatch/sidecar"
IMAGE_TAG = __version__

# kube-prometheus-stack's Prometheus selects PodMonitors and PrometheusRules by its Helm release
# label (`helm install kube-prometheus-stack ...`); its Grafana loads ConfigMaps with this label
# from every namespace and names its Prometheus data source `prometheus` (our datasource_uid).
PROMETHEUS_SELECTOR_LABELS = {"release": "kube-prometheus-stack"}
GRAFANA_DASHBOARD_LABEL = {"grafana_dashboard": "1"}

# Ports: the reference server, and the sidecar's proxy, gRPC proxy and admin ports (DESIGN.md).
SERVER_PORT = pod_ports.SERVER_PORT
PROXY_PORT = pod_ports.PROXY_PORT
GRPC_PROXY_PORT = pod_ports.GRPC_PROXY_PORT
ADMIN_PORT = pod_ports.ADMIN_PORT
SERVICE_PORT = 80
GRPC_SERVICE_PORT = GRPC_PROXY_PORT  # gRPC clients name a port anyway: the pod's own number
PROXY_PORT_NAME = "http"
GRPC_PORT_NAME = "grpc"
ADMIN_PORT_NAME = "metrics"
SERVER_PORT_NAME = "model"
SERVER_GRPC_PORT_NAME = "model-grpc"
# Tells Services, gateways and meshes that the port speaks HTTP/2 without TLS (gRPC).
GRPC_APP_PROTOCOL = "kubernetes.io/h2c"

# The drain: Knative's quiet period, then the sidecar waits at most DRAIN_TIMEOUT for what is in
# flight; the model server then finishes its own queue within SERVER_SHUTDOWN_TIMEOUT.
DRAIN_QUIET_PERIOD = 15
DRAIN_TIMEOUT = 120
SERVER_SHUTDOWN_TIMEOUT = 30
GRACE_MARGIN = 5
RUN_AS_USER = 10001  # the images' numeric user, so runAsNonRoot can be checked by the kubelet

TMP_VOLUME = "sidecar-tmp"
SERVER_CONTAINER = "model-server"
SIDECAR_CONTAINER = "inferwatch-sidecar"


def labels(options: GenerateOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.deployment, "app.kubernetes.io/part-of": "inferwatch"}


def selector(options: GenerateOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": options.deployment}


def termination_grace_seconds() -> int:
    """Quiet period + in-flight drain + the model server's own shutdown, with a margin.

    The sidecar's drain timeout already counts from SIGTERM (the quiet period is inside it);
    adding both keeps the bound right even for a sidecar told a longer quiet period.
    """
    return DRAIN_QUIET_PERIOD + DRAIN_TIMEOUT + SERVER_SHUTDOWN_TIMEOUT + GRACE_MARGIN


def _metadata(options: GenerateOptions, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": options.namespace, **extra}


def _security_context(read_only_root: bool) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def otel_env(options: GenerateOptions, container: str, service_name: str) -> list[dict[str, Any]]:
    """Who is sending, for traces and OTLP metrics: the service name and the Kubernetes
    resource attributes (semantic conventions), the pod's from the downward API. They switch
    nothing on: tracing starts only once an exporter is configured (OTEL_EXPORTER_OTLP_ENDPOINT
    or OTEL_TRACES_EXPORTER, e.g. added by a kustomize patch)."""

    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    attributes = ",".join(
        (
            "k8s.namespace.name=$(POD_NAMESPACE)",
            "k8s.pod.name=$(POD_NAME)",
            f"k8s.container.name={container}",
            f"k8s.deployment.name={options.deployment}",
        )
    )
    return [
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        {"name": "OTEL_SERVICE_NAME", "value": service_name},
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": attributes},
    ]


def server_container(options: GenerateOptions) -> dict[str, Any]:
    """The reference model server; it owns the GPU, so it also exports the gpu_* families.

    NVML in a container sees only the GPUs assigned to that container, and the device plugin
    assigns them to the container whose limits ask for them: this one. The server starts the
    NVML collector itself when it runs on CUDA and serves gpu_* on its /metrics, which the
    sidecar merges into the one scrape on its admin port. The sidecar therefore runs without
    --gpu-metrics (it would see no GPU, or, given NVIDIA_VISIBLE_DEVICES=all, every GPU of the
    node). For a model server that exports no gpu_* families, start
    ``inferwatch.gpu.start_gpu_metrics`` in its process, or run dcgm-exporter on the node.
    """
    return {
        "name": SERVER_CONTAINER,
        "image": f"{SERVER_IMAGE}:{IMAGE_TAG}",
        "args": [
            "serve",
            *("--host", "0.0.0.0"),
            *("--port", str(SERVER_PORT)),
            *("--device", "auto"),
            *("--shutdown-timeout", str(SERVER_SHUTDOWN_TIMEOUT)),
        ],
        "env": otel_env(options, SERVER_CONTAINER, options.deployment),
        "ports": server_ports(options),
        "resources": {
            "requests": {"cpu": "2", "memory": "4Gi"},
            "limits": {"memory": "8Gi", "nvidia.com/gpu": 1},
        },
        # Model loading can take minutes: liveness starts only once the server answers.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": SERVER_PORT_NAME},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": SERVER_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {
            # Blocks until the sidecar has drained, so the model server is not stopped while
            # the proxy still forwards to it. A port number: a name would be looked up among
            # this container's ports.
            "preStop": {"httpGet": {"path": "/wait-for-drain", "port": ADMIN_PORT}}
        },
        "securityContext": _security_context(read_only_root=False),
    }


def server_ports(options: GenerateOptions) -> list[dict[str, Any]]:
    ports = [{"name": SERVER_PORT_NAME, "containerPort": SERVER_PORT, "protocol": "TCP"}]
    if options.grpc_port:
        # Documents the port (kubectl port-forward, debugging); the sidecar reaches it on
        # 127.0.0.1 and the Service sends gRPC to the sidecar only.
        ports.append(
            {"name": SERVER_GRPC_PORT_NAME, "containerPort": options.grpc_port, "protocol": "TCP"}
        )
    return ports


def sidecar_args(upstream_host: str, options: GenerateOptions) -> list[str]:
    """``--grpc-listen``/``--grpc-upstream`` when the model server has a gRPC port."""
    if not options.grpc_port:
        return []
    return [
        *("--grpc-listen", f":{GRPC_PROXY_PORT}"),
        *("--grpc-upstream", f"{upstream_host}:{options.grpc_port}"),
    ]


def sidecar_readiness_probe(options: GenerateOptions) -> dict[str, Any]:
    """The pod's readiness, answered by the sidecar: ready only while the model server is
    ready (checked in the background) and the sidecar is not draining.

    HTTP ``GET /ready`` on the proxy port unless ``grpc_readiness_probe`` asks for the native
    gRPC probe. With gRPC on, HTTP stays the default: the HTTP proxy port is always served and
    both answers come from the same readiness, so either probe takes the pod out of the
    endpoints at the same moment (the gRPC health status is copied from it every 0.2 s);
    httpGet takes a named port while a grpc probe takes only a number, and grpc probes need
    Kubernetes 1.24 or later (GA in 1.27). The gRPC probe is there for a pod whose clients
    are all gRPC, so the probe checks the port they use.
    """
    timing = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2}
    if options.grpc_readiness_probe:
        # grpc.health.v1.Health/Check with service "": what the sidecar sets.
        return {"grpc": {"port": GRPC_PROXY_PORT}, **timing}
    return {"httpGet": {"path": "/ready", "port": PROXY_PORT_NAME}, **timing}


# The pod label naming the version this pod's unversioned URLs serve (Kubernetes' recommended
# label); the sidecar labels inferences that name no version with it.
VERSION_LABEL = "app.kubernetes.io/version"


def default_version_env() -> dict[str, Any]:
    """``INFERWATCH_SIDECAR_DEFAULT_VERSION`` from the pod label :data:`VERSION_LABEL`, through
    the downward API: a canary's pods labelled with their version are told apart from the
    stable ones even when callers use unversioned URLs. A pod without the label gets an empty
    string (the kubelet reads a missing label as ""), which the sidecar takes as no default."""
    return {
        "name": "INFERWATCH_SIDECAR_DEFAULT_VERSION",
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{VERSION_LABEL}']"}},
    }


def sidecar_container(options: GenerateOptions) -> dict[str, Any]:
    ports = [{"name": PROXY_PORT_NAME, "containerPort": PROXY_PORT, "protocol": "TCP"}]
    if options.grpc_port:
        ports.append({"name": GRPC_PORT_NAME, "containerPort": GRPC_PROXY_PORT, "protocol": "TCP"})
    ports.append({"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"})
    return {
        "name": SIDECAR_CONTAINER,
        "image": f"{SIDECAR_IMAGE}:{IMAGE_TAG}",
        "args": [
            "sidecar",
            *("--upstream", f"http://127.0.0.1:{SERVER_PORT}"),
            *("--listen", f":{PROXY_PORT}"),
            *sidecar_args("127.0.0.1", options),
            *("--admin", f":{ADMIN_PORT}"),
            *("--drain-quiet-period", str(DRAIN_QUIET_PERIOD)),
            *("--drain-timeout", str(DRAIN_TIMEOUT)),
        ],
        "env": [
            default_version_env(),
            *otel_env(options, SIDECAR_CONTAINER, f"{options.deployment}-sidecar"),
        ],
        "ports": ports,
        "resources": {
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "readinessProbe": sidecar_readiness_probe(options),
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": PROXY_PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        # A read-only root; --workers > 1 keeps its multiprocess metric files in /tmp.
        "securityContext": _security_context(read_only_root=True),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }


def deployment(options: GenerateOptions) -> dict[str, Any]:
    # No `replicas`: the HPA or KEDA owns it, and an apply would reset it (1 without them).
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options, options.deployment, labels=labels(options)),
        "spec": {
            "selector": {"matchLabels": selector(options)},
            "template": {
                "metadata": {
                    "labels": labels(options),
                    "annotations": {
                        # For a Prometheus that scrapes by annotation; with the Prometheus
                        # Operator the PodMonitor does it. Use one, or series are doubled.
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ADMIN_PORT),
                        "prometheus.io/path": "/metrics",
                        "kubectl.kubernetes.io/default-container": SERVER_CONTAINER,
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": termination_grace_seconds(),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [server_container(options), sidecar_container(options)],
                    "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def service(options: GenerateOptions) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [
        {
            "name": PROXY_PORT_NAME,
            "port": SERVICE_PORT,
            "targetPort": PROXY_PORT_NAME,
            "protocol": "TCP",
        }
    ]
    if options.grpc_port:
        ports.append(
            {
                "name": GRPC_PORT_NAME,
                "port": GRPC_SERVICE_PORT,
                "targetPort": GRPC_PORT_NAME,
                "protocol": "TCP",
                "appProtocol": GRPC_APP_PROTOCOL,
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options, options.deployment, labels=labels(options)),
        "spec": {"selector": selector(options), "ports": ports},
    }


def pod_monitor(options: GenerateOptions) -> dict[str, Any]:
    """One scrape per pod: the sidecar's admin /metrics, the model server's merged in."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(
            options, options.deployment, labels={**labels(options), **PROMETHEUS_SELECTOR_LABELS}
        ),
        "spec": {
            "selector": {"matchLabels": selector(options)},
            "podMetricsEndpoints": [
                {"port": ADMIN_PORT_NAME, "path": "/metrics", "interval": options.scrape_interval}
            ],
        },
    }


def prometheus_rule(options: GenerateOptions) -> dict[str, Any]:
    """The generated recording and alerting groups, as the Prometheus Operator loads them."""
    groups = rules.recording_rules(options)["groups"] + rules.alerting_rules(options)["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _metadata(
            options, "inferwatch", labels={**labels(options), **PROMETHEUS_SELECTOR_LABELS}
        ),
        "spec": {"groups": groups},
    }


def dashboard_json(dashboard: dict[str, Any]) -> str:
    """The same text as the committed dashboards/*.json."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def dashboard_config_maps(options: GenerateOptions) -> list[dict[str, Any]]:
    """One ConfigMap per dashboard (each stays far below the 1 MiB and apply's 256 KiB)."""
    out = []
    for filename, dashboard in dashboards.dashboards(options).items():
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _metadata(
                    options,
                    filename.removesuffix(".json"),
                    labels={**labels(options), **GRAFANA_DASHBOARD_LABEL},
                ),
                "data": {filename: dashboard_json(dashboard)},
            }
        )
    return out


def kustomization(
    resources: list[str], namespace: str | None = None, images: bool = False
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
    }
    if namespace is not None:
        doc["namespace"] = namespace
    doc["resources"] = resources
    if images:
        # Point these at your registry (newName) to run your own builds.
        doc["images"] = [
            {"name": SERVER_IMAGE, "newTag": IMAGE_TAG},
            {"name": SIDECAR_IMAGE, "newTag": IMAGE_TAG},
        ]
    return doc


DEPLOYMENT_NOTE = """\
# The model server pod: the reference server and the inferwatch sidecar in front of it.
# Traffic: Service :80 -> sidecar :8080 -> model server 127.0.0.1:8000.
# Metrics: one scrape of the sidecar's admin port :9464 (its families, the server's merged in,
# gpu_* included: the model container owns the GPU, so it is the one that can read NVML).
# Shutdown: the sidecar drains (readiness fails, quiet period, in-flight requests finish) while
# the model container's preStop waits on /wait-for-drain; then the model server stops.
# Versions: a pod label app.kubernetes.io/version (the version its unversioned URLs serve:
# for the reference server, its --default-version, 1 unless given) labels the sidecar's
# inferences that name no version, so canary analysis tells this pod's version apart.
"""


def deployment_note(options: GenerateOptions) -> str:
    if not options.grpc_port:
        return DEPLOYMENT_NOTE
    grpc = (
        f"# gRPC: Service :{GRPC_SERVICE_PORT} -> sidecar :{GRPC_PROXY_PORT} -> model server "
        f"127.0.0.1:{options.grpc_port}.\n"
    )
    first, _, rest = DEPLOYMENT_NOTE.partition("\n# Metrics:")
    return f"{first}\n{grpc}# Metrics:{rest}"


def _documents(*docs: dict[str, Any]) -> str:
    return yaml_text.HEADER + "---\n".join(yaml_text.dump(doc) for doc in docs)


def manifests(options: GenerateOptions) -> dict[str, str]:
    """Repository-relative path -> YAML, for everything under ``deploy/kubernetes/``."""
    config_maps = dashboard_config_maps(options)
    return {
        f"{BASE}/{KUSTOMIZATION}": yaml_text.generated(
            kustomization(
                [
                    "deployment.yaml",
                    "service.yaml",
                    "podmonitor.yaml",
                    "prometheusrule.yaml",
                    "dashboards.yaml",
                ],
                namespace=options.namespace,
                images=True,
            )
        ),
        f"{BASE}/deployment.yaml": yaml_text.HEADER
        + deployment_note(options)
        + yaml_text.dump(deployment(options)),
        f"{BASE}/service.yaml": yaml_text.generated(service(options)),
        f"{BASE}/podmonitor.yaml": yaml_text.generated(pod_monitor(options)),
        f"{BASE}/prometheusrule.yaml": yaml_text.generated(prometheus_rule(options)),
        f"{BASE}/dashboards.yaml": _documents(*config_maps),
        f"{HPA}/{KUSTOMIZATION}": yaml_text.generated(
            kustomization(["../base", "hpa.yaml"], namespace=options.namespace)
        ),
        f"{HPA}/hpa.yaml": yaml_text.generated(autoscaling.hpa(options)),
        f"{KEDA}/{KUSTOMIZATION}": yaml_text.generated(
            kustomization(["../base", "keda-scaledobject.yaml"], namespace=options.namespace)
        ),
        f"{KEDA}/keda-scaledobject.yaml": yaml_text.generated(
            autoscaling.keda_scaled_object(options)
        ),
        f"{ADAPTER}/{KUSTOMIZATION}": yaml_text.generated(
            kustomization(["prometheus-adapter-config.yaml"])
        ),
        f"{ADAPTER}/prometheus-adapter-config.yaml": yaml_text.generated(
            autoscaling.adapter_config_map(options)
        ),
        # Canary analysis of a model version: standalone, next to base/, hpa/ or keda/.
        f"{ARGO_ROLLOUTS}/{KUSTOMIZATION}": yaml_text.generated(
            kustomization([canary.ANALYSIS_TEMPLATE_FILE], namespace=options.namespace)
        ),
        f"{ARGO_ROLLOUTS}/{canary.ANALYSIS_TEMPLATE_FILE}": yaml_text.generated(
            canary.analysis_template(options)
        ),
        f"{FLAGGER}/{KUSTOMIZATION}": yaml_text.generated(
            kustomization(
                [canary.METRIC_TEMPLATES_FILE, canary.CANARY_FILE], namespace=options.namespace
            )
        ),
        f"{FLAGGER}/{canary.METRIC_TEMPLATES_FILE}": _documents(*canary.metric_templates(options)),
        f"{FLAGGER}/{canary.CANARY_FILE}": yaml_text.generated(canary.flagger_canary(options)),
    }
