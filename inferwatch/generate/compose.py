"""The stack in docker compose: model server, sidecar, Prometheus, Alertmanager, Grafana, traces.

Everything it mounts is generated too: ``compose/`` holds the files that differ from the
Kubernetes ones (service names instead of cluster addresses), and the rule files and
dashboards are mounted from ``alerts/`` and ``dashboards/`` as committed. One scrape per model
server pod, as in Kubernetes: the sidecar's admin port serves its own families and the model
server's, merged (scraping the server as well would count its series twice).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from inferwatch.generate import alertmanager, dashboards, kubernetes, yaml_text
from inferwatch.generate.options import GenerateOptions

ROOT = "compose"
COMPOSE_FILE = f"{ROOT}/docker-compose.yml"
GPU_FILE = f"{ROOT}/docker-compose.gpu.yml"
PROMETHEUS_FILE = f"{ROOT}/prometheus.yml"
ALERTMANAGER_FILE = f"{ROOT}/alertmanager.yml"
GRAFANA_DATASOURCES_FILE = f"{ROOT}/grafana-datasources.yaml"
OTEL_COLLECTOR_FILE = f"{ROOT}/otel-collector.yaml"

PROMETHEUS_IMAGE = "prom/prometheus:v2.54.1"
ALERTMANAGER_IMAGE = "prom/alertmanager:v0.27.0"
GRAFANA_IMAGE = "grafana/grafana:11.2.0"
OTEL_COLLECTOR_IMAGE = "otel/opentelemetry-collector:0.110.0"
JAEGER_IMAGE = "jaegertracing/jaeger:2.5.0"
PYTHON_IMAGE = "python:3.11-slim"  # the base of our images: already pulled once they are built

SERVER_IMAGE = f"{kubernetes.SERVER_IMAGE}:{kubernetes.IMAGE_TAG}"
SIDECAR_IMAGE = f"{kubernetes.SIDECAR_IMAGE}:{kubernetes.IMAGE_TAG}"
SERVER_DOCKERFILE = "docker/server.Dockerfile"
SIDECAR_DOCKERFILE = "docker/sidecar.Dockerfile"

# Service names double as host names on the compose network.
SERVER, SIDECAR, PROMETHEUS, ALERTMANAGER = "model-server", "sidecar", "prometheus", "alertmanager"
RECEIVER, GRAFANA, COLLECTOR, JAEGER = "alert-receiver", "grafana", "otel-collector", "jaeger"

SERVER_PORT = kubernetes.SERVER_PORT
PROXY_PORT = kubernetes.PROXY_PORT
GRPC_PROXY_PORT = kubernetes.GRPC_PROXY_PORT
ADMIN_PORT = kubernetes.ADMIN_PORT
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
RECEIVER_PORT = 9095
GRAFANA_PORT = 3000
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
JAEGER_UI_PORT = 16686

# Labels a PodMonitor gives in Kubernetes, so every rule and dashboard works as there.
TARGET_LABELS = {"namespace": "compose", "pod": "model-server"}

# Rule files as `inferwatch generate` writes them under alerts/, and where Prometheus reads them.
RULE_FILES = ("inferwatch-recording-rules.yaml", "inferwatch-alerts.yaml")
RULES_DIR = "/etc/prometheus/rules"

# No endpoints controller to wait for here: a short quiet period keeps `down` quick.
DRAIN_QUIET_PERIOD = 2
DRAIN_TIMEOUT = 20

# Alertmanager's webhook, logged one line per alert (`docker compose logs alert-receiver`).
RECEIVER_SCRIPT = """\
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            alerts = json.loads(body)["alerts"]
        except (ValueError, KeyError, TypeError):
            self.send_response(400)
            self.end_headers()
            return
        for alert in alerts:
            labels = alert.get("labels", {})
            print(alert.get("status"), labels.get("alertname"), json.dumps(labels, sort_keys=True),
                  flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Receiver)
print("alert receiver listening on port", server.server_address[1], flush=True)
server.serve_forever()
"""


def _publish(*ports: int) -> list[str]:
    """Published on the host's loopback only: anonymous Grafana is not for the whole network."""
    return [f"127.0.0.1:{port}:{port}" for port in ports]


def _http_check(url: str) -> dict[str, Any]:
    """A healthcheck with the image's own Python (slim images have no curl)."""
    return {
        "test": [
            "CMD",
            "python",
            "-c",
            f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)",
        ],
        "interval": "5s",
        "timeout": "3s",
        "retries": 3,
        "start_period": "120s",
    }


def _otel_env(service_name: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{COLLECTOR}:{OTLP_GRPC_PORT}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        # A tenth of new traces; a caller's sampled traceparent is always followed.
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }


def sidecar_ports(options: GenerateOptions) -> tuple[int, ...]:
    """Published: the proxy, the gRPC proxy when the model server has a gRPC port, admin."""
    grpc = (GRPC_PROXY_PORT,) if options.grpc_port else ()
    return (PROXY_PORT, *grpc, ADMIN_PORT)


def server_command(device: str = "auto") -> list[str]:
    return ["serve", "--host", "0.0.0.0", "--port", str(SERVER_PORT), "--device", device]


def compose_file(options: GenerateOptions) -> dict[str, Any]:
    rules_mounts = [f"../alerts/{name}:{RULES_DIR}/{name}:ro" for name in RULE_FILES]
    # No top-level `name`: docker-compose v1 rejects it (the project is named after compose/).
    return {
        "services": {
            SERVER: {
                "image": SERVER_IMAGE,
                "build": {"context": "..", "dockerfile": SERVER_DOCKERFILE},
                # CPU unless a GPU is visible: add docker-compose.gpu.yml to reserve one.
                "command": server_command(),
                "environment": _otel_env(SERVER),
                "ports": _publish(SERVER_PORT),
                "healthcheck": _http_check(f"http://127.0.0.1:{SERVER_PORT}/v2/health/ready"),
                "stop_grace_period": f"{kubernetes.SERVER_SHUTDOWN_TIMEOUT + 5}s",
            },
            SIDECAR: {
                "image": SIDECAR_IMAGE,
                "build": {"context": "..", "dockerfile": SIDECAR_DOCKERFILE},
                "command": [
                    "sidecar",
                    *("--upstream", f"http://{SERVER}:{SERVER_PORT}"),
                    *("--listen", f":{PROXY_PORT}"),
                    # With grpc_port: gRPC on :8081 to the model server's gRPC port.
                    *kubernetes.sidecar_args(SERVER, options),
                    *("--admin", f":{ADMIN_PORT}"),
                    *("--drain-quiet-period", str(DRAIN_QUIET_PERIOD)),
                    *("--drain-timeout", str(DRAIN_TIMEOUT)),
                ],
                "environment": _otel_env(SIDECAR),
                "ports": _publish(*sidecar_ports(options)),
                "depends_on": {SERVER: {"condition": "service_started"}},
                "healthcheck": _http_check(f"http://127.0.0.1:{PROXY_PORT}/ready"),
                "stop_grace_period": f"{DRAIN_QUIET_PERIOD + DRAIN_TIMEOUT + 5}s",
            },
            PROMETHEUS: {
                "image": PROMETHEUS_IMAGE,
                "command": [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    # Latency histograms carry trace ids: Grafana links them to the traces.
                    "--enable-feature=exemplar-storage",
                    "--web.enable-lifecycle",
                ],
                "volumes": [
                    "./prometheus.yml:/etc/prometheus/prometheus.yml:ro",
                    *rules_mounts,
                ],
                "ports": _publish(PROMETHEUS_PORT),
            },
            ALERTMANAGER: {
                "image": ALERTMANAGER_IMAGE,
                "command": [
                    "--config.file=/etc/alertmanager/alertmanager.yml",
                    "--storage.path=/alertmanager",
                ],
                "volumes": ["./alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"],
                "ports": _publish(ALERTMANAGER_PORT),
            },
            RECEIVER: {
                "image": PYTHON_IMAGE,
                "command": ["python", "-c", RECEIVER_SCRIPT, str(RECEIVER_PORT)],
                "init": True,  # as PID 1 without a SIGTERM handler it would wait for SIGKILL
                "expose": [str(RECEIVER_PORT)],
            },
            GRAFANA: {
                "image": GRAFANA_IMAGE,
                "environment": {
                    "GF_AUTH_ANONYMOUS_ENABLED": "true",
                    "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                    "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": (
                        f"{dashboards.DASHBOARDS_PATH}/{dashboards.OVERVIEW_UID}.json"
                    ),
                },
                "volumes": [
                    "./grafana-datasources.yaml:/etc/grafana/provisioning/datasources/"
                    "inferwatch.yaml:ro",
                    f"../dashboards/{dashboards.PROVIDERS_FILE}:/etc/grafana/"
                    f"{dashboards.PROVIDERS_FILE}:ro",
                    f"../dashboards:{dashboards.DASHBOARDS_PATH}:ro",
                ],
                "ports": _publish(GRAFANA_PORT),
                "depends_on": [PROMETHEUS, JAEGER],
            },
            COLLECTOR: {
                "image": OTEL_COLLECTOR_IMAGE,
                "command": ["--config=/etc/otelcol/config.yaml"],
                "volumes": ["./otel-collector.yaml:/etc/otelcol/config.yaml:ro"],
                "ports": _publish(OTLP_GRPC_PORT, OTLP_HTTP_PORT),
                "depends_on": [JAEGER],
            },
            JAEGER: {
                "image": JAEGER_IMAGE,
                # Its OTLP receivers listen on localhost unless told otherwise.
                "environment": {"JAEGER_LISTEN_HOST": "0.0.0.0"},
                "ports": _publish(JAEGER_UI_PORT),
            },
        },
    }


def gpu_override() -> dict[str, Any]:
    """``-f docker-compose.gpu.yml``: reserve one GPU (NVIDIA Container Toolkit) and insist
    on CUDA; the server then exports the gpu_* families, which the sidecar's scrape carries."""
    return {
        "services": {
            SERVER: {
                "command": server_command("cuda"),
                "deploy": {
                    "resources": {
                        "reservations": {
                            "devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
                        }
                    }
                },
            }
        }
    }


def prometheus_config(options: GenerateOptions) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": options.scrape_interval,
            "evaluation_interval": options.scrape_interval,
        },
        "rule_files": [f"{RULES_DIR}/{name}" for name in RULE_FILES],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{ALERTMANAGER}:{ALERTMANAGER_PORT}"]}]}
            ]
        },
        "scrape_configs": [
            {
                # The sidecar's admin /metrics: its own families plus the server's, merged.
                "job_name": "inferwatch",
                "static_configs": [
                    {"targets": [f"{SIDECAR}:{ADMIN_PORT}"], "labels": dict(TARGET_LABELS)}
                ],
            }
        ],
    }


def compose_options(options: GenerateOptions) -> GenerateOptions:
    """The same options, with addresses on the compose network."""
    return dataclasses.replace(
        options,
        prometheus_url=f"http://{PROMETHEUS}:{PROMETHEUS_PORT}",
        alert_webhook_url=f"http://{RECEIVER}:{RECEIVER_PORT}/alerts",
    )


def grafana_datasources(options: GenerateOptions) -> dict[str, Any]:
    """The generated Prometheus data source, plus Jaeger under the uid exemplars link to."""
    local = compose_options(options)
    provisioned = yaml.safe_load(dashboards.provisioning(local)[dashboards.DATASOURCES_FILE])
    provisioned["datasources"].append(
        {
            "name": "Jaeger",
            "uid": options.traces_datasource_uid,
            "type": "jaeger",
            "access": "proxy",
            "url": f"http://{JAEGER}:{JAEGER_UI_PORT}",
            "editable": False,
        }
    )
    return provisioned


def otel_collector_config() -> dict[str, Any]:
    return {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"0.0.0.0:{OTLP_GRPC_PORT}"},
                    "http": {"endpoint": f"0.0.0.0:{OTLP_HTTP_PORT}"},
                }
            }
        },
        "processors": {"batch": {}},
        "exporters": {
            "otlp/jaeger": {"endpoint": f"{JAEGER}:{OTLP_GRPC_PORT}", "tls": {"insecure": True}}
        },
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["otlp/jaeger"],
                }
            }
        },
    }


def files(options: GenerateOptions) -> dict[str, str]:
    """Repository-relative path -> text, for everything under ``compose/``."""
    return {
        COMPOSE_FILE: yaml_text.generated(compose_file(options)),
        GPU_FILE: yaml_text.generated(gpu_override()),
        PROMETHEUS_FILE: yaml_text.generated(prometheus_config(options)),
        ALERTMANAGER_FILE: yaml_text.generated(
            alertmanager.alertmanager_config(compose_options(options))
        ),
        GRAFANA_DATASOURCES_FILE: yaml_text.generated(grafana_datasources(options)),
        OTEL_COLLECTOR_FILE: yaml_text.generated(otel_collector_config()),
    }
