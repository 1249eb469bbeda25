"""compose/ and deploy/kubernetes/: valid, complete, and naming only things that exist.

The generated tree (everything ``render`` makes, plus the compose and Kubernetes files) is
written to a temporary folder; the checks read it as docker compose, kustomize, the Kubernetes
API server and Prometheus would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from support.upstreams import running_upstream

from inferwatch import generate, tracing
from inferwatch.generate import compose, kubernetes
from inferwatch.generate import dashboards as dashboards_module
from inferwatch.generate.options import GenerateOptions
from inferwatch.server import cli as server_cli
from inferwatch.sidecar import config as sidecar_config
from inferwatch.sidecar.process import Sidecar

ROOT = Path(__file__).resolve().parent.parent
CRD_KINDS = {
    "PodMonitor",
    "PrometheusRule",
    "ScaledObject",
    "AnalysisTemplate",
    "MetricTemplate",
    "Canary",
}
CANARY_CHECKS = ("error-ratio", "error-ratio-increase", "p95-latency", "p95-latency-ratio")
BASE_IDS = {
    ("Deployment", "model-server"),
    ("Service", "model-server"),
    ("PodMonitor", "model-server"),
    ("PrometheusRule", "inferwatch"),
    ("ConfigMap", "inferwatch-overview"),
    ("ConfigMap", "inferwatch-gpu"),
    ("ConfigMap", "inferwatch-autoscaling"),
    ("ConfigMap", "inferwatch-llm"),
}


OWN = (kubernetes.ROOT + "/", compose.ROOT + "/")


def generated_files(options: GenerateOptions) -> dict[str, str]:
    """What ``inferwatch generate`` writes, with deploy/kubernetes/ and compose/ as ours."""
    rendered = {p: t for p, t in generate.render(options).items() if not p.startswith(OWN)}
    return {**rendered, **kubernetes.manifests(options), **compose.files(options)}


def test_render_writes_exactly_these_folders() -> None:
    options = GenerateOptions()
    ours = {**kubernetes.manifests(options), **compose.files(options)}
    rendered = generate.render(options)
    assert {p: t for p, t in rendered.items() if p.startswith(OWN)} == ours


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("generated"), generated_files(GenerateOptions()))


# --- kustomize, as `kubectl kustomize` renders our kustomizations ------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images"}


class KustomizeError(Exception):
    pass


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization: resources (recursively), namespace, images; ids must be unique.

    Only the fields our kustomizations use are understood; any other one is an error, so this
    can never silently render something kustomize would render differently.
    """
    path = directory / kubernetes.KUSTOMIZATION
    if not path.is_file():
        raise KustomizeError(f"{directory}: no {kubernetes.KUSTOMIZATION}")
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not know: {sorted(unknown)}")
    if spec.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")
    docs: list[dict[str, Any]] = []
    for ref in spec.get("resources", []):
        target = (directory / ref).resolve()
        if target.is_dir():
            docs += kustomize(target)
        elif target.is_file():
            # kustomize's load restrictor: a file must lie inside the kustomization's folder.
            if not target.is_relative_to(directory.resolve()):
                raise KustomizeError(f"{path}: {ref} is outside {directory}")
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d is not None]
        else:
            raise KustomizeError(f"{path}: resource {ref} does not exist")
    if "namespace" in spec:
        for doc in docs:
            doc["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    ids = Counter(
        (
            d["apiVersion"].split("/")[0],
            d["kind"],
            d["metadata"].get("namespace"),
            d["metadata"]["name"],
        )
        for d in docs
    )
    duplicates = [i for i, n in ids.items() if n > 1]
    if duplicates:
        raise KustomizeError(f"{path}: duplicate resources {duplicates}")
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] != "Deployment":
        return []
    return list(doc["spec"]["template"]["spec"]["containers"])


def ids(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in _containers(deployment) if c["name"] == name)


def sidecar_settings(args: list[str]) -> sidecar_config.SidecarConfig:
    """The sidecar's configuration from these arguments, parsed by its real CLI."""
    assert args[0] == "sidecar"
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=argparse.SUPPRESS)
    sidecar_config.add_arguments(parser)
    return sidecar_config.load_config(vars(parser.parse_args(args[1:])), env={})


def server_settings(args: list[str]) -> argparse.Namespace:
    assert args[0] == "serve"
    parser = argparse.ArgumentParser()
    server_cli.add_arguments(parser)
    return parser.parse_args(args[1:])


def overlay(tree: Path, name: str) -> Path:
    return tree / kubernetes.ROOT / name


def test_every_kustomization_renders_the_expected_resources(tree: Path) -> None:
    base = kustomize(overlay(tree, "base"))
    assert ids(base) == BASE_IDS
    assert ids(kustomize(overlay(tree, "hpa"))) == {
        *BASE_IDS,
        ("HorizontalPodAutoscaler", "model-server"),
    }
    # KEDA makes its own HPA: the two never target the Deployment together.
    assert ids(kustomize(overlay(tree, "keda"))) == {*BASE_IDS, ("ScaledObject", "model-server")}
    adapter = kustomize(overlay(tree, "prometheus-adapter"))
    assert [(d["kind"], d["metadata"]["namespace"]) for d in adapter] == [
        ("ConfigMap", "monitoring")
    ]
    assert ids(kustomize(overlay(tree, "argo-rollouts"))) == {
        ("AnalysisTemplate", "inferwatch-model-version")
    }
    assert ids(kustomize(overlay(tree, "flagger"))) == {
        ("Canary", "model-server"),
        *(("MetricTemplate", f"inferwatch-{name}") for name in CANARY_CHECKS),
    }
    for name in ("base", "hpa", "keda", "argo-rollouts", "flagger"):
        assert {d["metadata"]["namespace"] for d in kustomize(overlay(tree, name))} == {"default"}


def test_every_file_under_deploy_kubernetes_is_referenced(tree: Path) -> None:
    root = (tree / kubernetes.ROOT).resolve()
    referenced = set()
    for path in root.rglob(kubernetes.KUSTOMIZATION):
        referenced.add(path)
        for ref in yaml.safe_load(path.read_text())["resources"]:
            target = (path.parent / ref).resolve()
            if target.is_dir():
                assert (target / kubernetes.KUSTOMIZATION).is_file()
            else:
                referenced.add(target)
    assert set(root.rglob("*.yaml")) == referenced
    assert len(referenced) == 17


def test_the_renderer_refuses_what_kustomize_refuses(tmp_path: Path) -> None:
    def kustomization(folder: Path, **spec: Any) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **spec}
        (folder / kubernetes.KUSTOMIZATION).write_text(yaml.safe_dump(doc))
        return folder

    with pytest.raises(KustomizeError, match=r"missing\.yaml does not exist"):
        kustomize(kustomization(tmp_path / "a", resources=["missing.yaml"]))
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cm.yaml").write_text(yaml.safe_dump(config_map))
    with pytest.raises(KustomizeError, match="duplicate"):
        kustomize(kustomization(tmp_path / "b", resources=["cm.yaml", "cm.yaml"]))
    with pytest.raises(KustomizeError, match="outside"):
        kustomize(kustomization(tmp_path / "c", resources=["../b/cm.yaml"]))
    with pytest.raises(KustomizeError, match="patches"):
        kustomize(kustomization(tmp_path / "d", resources=[], patches=[]))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize(
    "name", ["base", "hpa", "keda", "prometheus-adapter", "argo-rollouts", "flagger"]
)
def test_kubectl_kustomize_renders_the_same(tree: Path, name: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay(tree, name))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    theirs = sorted(
        (d for d in yaml.safe_load_all(out) if d), key=lambda d: (d["kind"], d["metadata"]["name"])
    )
    ours = sorted(kustomize(overlay(tree, name)), key=lambda d: (d["kind"], d["metadata"]["name"]))
    assert theirs == ours


@pytest.mark.parametrize("name", ["hpa", "keda", "prometheus-adapter", "argo-rollouts", "flagger"])
def test_manifests_validate_against_the_kubernetes_schemas(tree: Path, name: str) -> None:
    docs = kustomize(overlay(tree, name))
    builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
    for doc in builtin:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            # Custom resources: the schemas don't have them (checked by hand below).
            with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
                kubernetes_validate.validate(doc, "1.30", strict=True)


def test_a_bad_manifest_fails_validation(tree: Path) -> None:
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    container(deployment, kubernetes.SIDECAR_CONTAINER)["readinessProbe"]["httpGet"]["portt"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)


def test_pod_monitor_and_annotations_scrape_the_sidecar_admin_port(tree: Path) -> None:
    docs = kustomize(overlay(tree, "base"))
    deployment, monitor = one(docs, "Deployment"), one(docs, "PodMonitor")
    pod = deployment["spec"]["template"]
    sidecar = container(deployment, kubernetes.SIDECAR_CONTAINER)
    admin_port = sidecar_settings(sidecar["args"]).admin.port
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["selector"] == deployment["spec"]["selector"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert (ports[endpoint["port"]], endpoint["path"], endpoint["interval"]) == (
        admin_port,
        "/metrics",
        "15s",
    )
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(admin_port)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == endpoint["path"]
    # kube-prometheus-stack's Prometheus selects by its release label.
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_service_sends_port_80_to_the_sidecar(tree: Path) -> None:
    docs = kustomize(overlay(tree, "base"))
    deployment, svc = one(docs, "Deployment"), one(docs, "Service")
    sidecar = container(deployment, kubernetes.SIDECAR_CONTAINER)
    (port,) = svc["spec"]["ports"]
    target = next(p for p in sidecar["ports"] if p["name"] == port["targetPort"])
    assert (port["name"], port["port"], target["containerPort"]) == (
        "http",
        80,
        sidecar_settings(sidecar["args"]).listen.port,
    )
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_prometheus_rule_carries_exactly_the_generated_groups(
    tree: Path, promtool: str, tmp_path: Path
) -> None:
    rule = one(kustomize(overlay(tree, "base")), "PrometheusRule")
    recording = yaml.safe_load((tree / generate.RECORDING_RULES).read_text())["groups"]
    alerting = yaml.safe_load((tree / generate.ALERTING_RULES).read_text())["groups"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == recording + alerting
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The operator hands spec.groups to Prometheus as a rule file: promtool must accept it.
    path = tmp_path / "rule.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run(
        # --lint=none: one alert name with two expressions (GPUCollectorFailing) is on purpose.
        [promtool, "check", "rules", "--lint=none", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    count = sum(len(g["rules"]) for g in recording + alerting)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {count} rules found" in out.stdout


def test_dashboard_config_maps_hold_the_committed_dashboards(tree: Path) -> None:
    maps = [d for d in kustomize(overlay(tree, "base")) if d["kind"] == "ConfigMap"]
    expected = dashboards_module.dashboards(GenerateOptions())
    assert {name for m in maps for name in m["data"]} == set(expected)
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = config_map["data"].items()
        assert text == (tree / "dashboards" / name).read_text()
        assert json.loads(text)["uid"] == config_map["metadata"]["name"]


def test_scaled_object_targets_the_deployment(tree: Path) -> None:
    docs = kustomize(overlay(tree, "keda"))
    scaled, deployment = one(docs, "ScaledObject"), one(docs, "Deployment")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["cpu", "prometheus", "prometheus"]
    hpa = one(kustomize(overlay(tree, "hpa")), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # Neither fights the autoscaler: the Deployment leaves replicas to it.
    assert "replicas" not in deployment["spec"]


def test_every_container_requests_the_cpu_the_hpa_scales_on(tree: Path) -> None:
    """A CPU Utilization target is a share of the pod's CPU requests: without a request in
    every container the HPA cannot compute it (and KEDA's cpu trigger neither)."""
    hpa = one(kustomize(overlay(tree, "hpa")), "HorizontalPodAutoscaler")
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    scaled = one(kustomize(overlay(tree, "keda")), "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"] == {"value": "70"}
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    requests = {
        c["name"]: c["resources"]["requests"]["cpu"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
    }
    assert requests == {kubernetes.SERVER_CONTAINER: "2", kubernetes.SIDECAR_CONTAINER: "250m"}


def test_gpu_goes_to_the_model_container_only(tree: Path) -> None:
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    server = container(deployment, kubernetes.SERVER_CONTAINER)
    sidecar = container(deployment, kubernetes.SIDECAR_CONTAINER)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in sidecar["resources"].get("limits", {})
    # NVML in the sidecar would see no GPU: the server exports gpu_* and the sidecar merges it.
    assert sidecar_settings(sidecar["args"]).gpu_metrics is False
    assert sidecar_settings(sidecar["args"]).metrics_url == "http://127.0.0.1:8000/metrics"
    assert server_settings(server["args"]).device == "auto"


def kubelet_env(
    spec: dict[str, Any], pod: str, namespace: str, labels: dict[str, str] | None = None
) -> dict[str, str]:
    """A container's environment as the kubelet sets it: downward-API fields (a missing
    label is "", as the kubelet's fieldpath.ExtractFieldPathAsString reads it), and $(VAR)
    references to variables defined earlier in the list expanded."""
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for var in spec["env"]:
        if "valueFrom" in var:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
            env[var["name"]] = (labels or {}).get(label[1], "") if label else fields[path]
        else:
            env[var["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"]
            )
    return env


@pytest.mark.parametrize(
    ("name", "service"),
    [
        (kubernetes.SERVER_CONTAINER, "model-server"),
        (kubernetes.SIDECAR_CONTAINER, "model-server-sidecar"),
    ],
)
def test_containers_name_themselves_for_opentelemetry_without_turning_tracing_on(
    tree: Path, name: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    env = kubelet_env(container(deployment, name), "model-server-7d9f-x2b4q", "serving")
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert tracing.setup_tracing(None) is False  # no exporter configured: tracing stays off
    attributes = Resource.create().attributes  # what the SDK makes of them once it is on
    assert attributes["service.name"] == service
    assert attributes["k8s.pod.name"] == "model-server-7d9f-x2b4q"
    assert attributes["k8s.namespace.name"] == "serving"
    assert attributes["k8s.container.name"] == name
    assert attributes["k8s.deployment.name"] == deployment["metadata"]["name"]


def test_sidecar_default_version_comes_from_the_pod_version_label(tree: Path) -> None:
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    sidecar = container(deployment, kubernetes.SIDECAR_CONTAINER)
    (var,) = [v for v in sidecar["env"] if v["name"] == "INFERWATCH_SIDECAR_DEFAULT_VERSION"]
    assert var["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['app.kubernetes.io/version']"
    )
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=argparse.SUPPRESS)
    sidecar_config.add_arguments(parser)
    flags = vars(parser.parse_args(sidecar["args"][1:]))
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    # The generated pod has no version label: "" from the kubelet, today's labels.
    assert kubernetes.VERSION_LABEL not in pod_labels
    env = kubelet_env(sidecar, "model-server-7d9f-x2b4q", "serving", pod_labels)
    assert env["INFERWATCH_SIDECAR_DEFAULT_VERSION"] == ""
    assert sidecar_config.load_config(flags, env=env).default_version == ""
    # A canary's pod template labelled with its version.
    canary = {**pod_labels, kubernetes.VERSION_LABEL: "2"}
    env = kubelet_env(sidecar, "model-server-5c6b-k8d2m", "serving", canary)
    assert sidecar_config.load_config(flags, env=env).default_version == "2"
    # The model container is not given it (the reference server has its own --default-version).
    server = container(deployment, kubernetes.SERVER_CONTAINER)
    assert "INFERWATCH_SIDECAR_DEFAULT_VERSION" not in {v["name"] for v in server["env"]}


def test_read_only_sidecar_has_a_writable_tmp(tree: Path) -> None:
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    sidecar = container(deployment, kubernetes.SIDECAR_CONTAINER)
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = sidecar["volumeMounts"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert mount["mountPath"] == "/tmp"
    assert "emptyDir" in volumes[mount["name"]]


def test_grace_period_covers_the_drain(tree: Path) -> None:
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    sidecar = sidecar_settings(container(deployment, kubernetes.SIDECAR_CONTAINER)["args"])
    server = server_settings(container(deployment, kubernetes.SERVER_CONTAINER)["args"])
    needed = sidecar.drain_quiet_period + sidecar.drain_timeout + server.shutdown_timeout
    assert (sidecar.drain_quiet_period, sidecar.drain_timeout, server.shutdown_timeout) == (
        15,
        120,
        30,
    )
    assert pod["terminationGracePeriodSeconds"] == needed + kubernetes.GRACE_MARGIN == 170


def test_server_probes_name_routes_the_reference_server_serves(tree: Path) -> None:
    from inferwatch.server.app import ServerConfig, create_app

    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    server = container(deployment, kubernetes.SERVER_CONTAINER)
    settings = server_settings(server["args"])
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    app = create_app(ServerConfig(device="cpu"), CollectorRegistry(), runners=[])
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    for probe in ("startupProbe", "livenessProbe"):
        get = server[probe]["httpGet"]
        assert ports[get["port"]] == settings.port == 8000
        assert ("GET", get["path"]) in routes


async def test_sidecar_probes_and_pre_stop_hit_what_the_sidecar_serves(tree: Path) -> None:
    """Run the sidecar as the Deployment configures it (ports moved to loopback) and call
    the kubelet's probes and the model container's preStop hook against it."""
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    spec = container(deployment, kubernetes.SIDECAR_CONTAINER)
    server = container(deployment, kubernetes.SERVER_CONTAINER)
    configured = sidecar_settings(spec["args"])
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    ready, live = spec["readinessProbe"]["httpGet"], spec["livenessProbe"]["httpGet"]
    pre_stop = server["lifecycle"]["preStop"]["httpGet"]
    assert ports[ready["port"]] == ports[live["port"]] == configured.listen.port == 8080
    assert pre_stop["port"] == configured.admin.port == 9464
    assert configured.upstream == f"http://127.0.0.1:{server_settings(server['args']).port}"

    async with running_upstream() as upstream:
        local = dataclasses.replace(
            configured,
            upstream=upstream.url,
            listen=sidecar_config.Address("127.0.0.1", 0),
            admin=sidecar_config.Address("127.0.0.1", 0),
            drain_quiet_period=0.0,
        )
        sidecar = Sidecar(local, CollectorRegistry())
        await sidecar.start()
        proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
        admin = f"http://127.0.0.1:{sidecar.admin_port}"
        try:
            async with aiohttp.ClientSession() as session:

                async def get(url: str) -> int:
                    async with session.get(url) as resp:
                        await resp.read()
                        return resp.status

                assert await get(proxy + ready["path"]) == 200
                assert await get(proxy + live["path"]) == 200
                assert await get(admin + "/metrics") == 200
                async with session.get(admin + pre_stop["path"]) as resp:
                    assert (resp.status, await resp.json()) == (200, {"drained": True})
                # Drained: readiness fails, so no new traffic is sent here.
                assert await get(proxy + ready["path"]) == 503
                assert await get(proxy + live["path"]) == 200
        finally:
            await sidecar.stop()


def test_other_names_and_namespaces_reach_every_resource(tmp_path: Path) -> None:
    options = GenerateOptions(namespace="serving", deployment="bert")
    root = write_tree(tmp_path, generated_files(options))
    docs = kustomize(overlay(root, "keda"))
    assert {d["metadata"]["namespace"] for d in docs} == {"serving"}
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "bert"
    assert one(docs, "PodMonitor")["spec"]["selector"] == deployment["spec"]["selector"]
    assert one(docs, "ScaledObject")["spec"]["scaleTargetRef"] == {"name": "bert"}
    for trigger in one(docs, "ScaledObject")["spec"]["triggers"][1:]:
        assert 'namespace="serving",workload="bert"' in trigger["metadata"]["query"]
    assert one(kustomize(overlay(root, "hpa")), "HorizontalPodAutoscaler")["spec"][
        "scaleTargetRef"
    ]["name"] == ("bert")
    # The canary checks: Argo's arguments default to the workload, Flagger's Canary targets it.
    for name in ("argo-rollouts", "flagger"):
        assert {d["metadata"]["namespace"] for d in kustomize(overlay(root, name))} == {"serving"}
    args = one(kustomize(overlay(root, "argo-rollouts")), "AnalysisTemplate")["spec"]["args"]
    assert args[:2] == [
        {"name": "namespace", "value": "serving"},
        {"name": "workload", "value": "bert"},
    ]
    assert one(kustomize(overlay(root, "flagger")), "Canary")["spec"]["targetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "bert",
    }


# --- compose ------------------------------------------------------------------------------------


def compose_doc(tree: Path, name: str = compose.COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load((tree / name).read_text())  # type: ignore[no-any-return]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        out.append((source, target))
    return out


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def published(service: dict[str, Any]) -> set[int]:
    return {int(p.split(":")[-1]) for p in service.get("ports", [])}


@pytest.mark.parametrize("name", [compose.COMPOSE_FILE, compose.GPU_FILE])
def test_compose_files_follow_the_compose_specification(tree: Path, name: str) -> None:
    parsed = PyCompose.from_yaml((tree / name).read_text())
    parsed.validate()
    expected = {"model-server"} if name == compose.GPU_FILE else set(compose_doc(tree)["services"])
    assert set(parsed.service_names()) == expected


def test_the_compose_validator_rejects_a_bad_file() -> None:
    doc = compose.compose_file(GenerateOptions())
    doc["services"]["sidecar"]["healthcheck"]["interval"] = "5 seconds"
    with pytest.raises(ValueError, match="interval"):
        PyCompose.from_yaml(yaml.safe_dump(doc))


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_merges_the_gpu_override(tree: Path) -> None:
    folder = tree / compose.ROOT
    out = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    server = yaml.safe_load(out.stdout)["services"]["model-server"]
    assert server["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert server_settings(server["command"]).device == "cuda"
    assert server["image"] == compose_doc(tree)["services"]["model-server"]["image"]


def test_every_mounted_file_exists_after_generation(tree: Path) -> None:
    folder = tree / compose.ROOT
    mounts = 0
    for name, service in compose_doc(tree)["services"].items():
        for source, _ in bind_mounts(service):
            path = (folder / source).resolve()
            assert path.is_relative_to(tree.resolve()), f"{name}: {source} leaves the repository"
            assert path.exists(), f"{name}: {source} is not generated"
            mounts += 1
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()
            assert (folder / service["build"]["context"]).resolve() == tree.resolve()
    assert mounts == 8
    # Grafana's dashboard provider reads the folder mounted from dashboards/.
    grafana = dict((t, s) for s, t in bind_mounts(compose_doc(tree)["services"]["grafana"]))
    provider = yaml.safe_load((tree / "dashboards" / dashboards_module.PROVIDERS_FILE).read_text())
    folder_on_host = folder / grafana[provider["providers"][0]["options"]["path"]]
    assert sorted(p.name for p in folder_on_host.glob("*.json")) == sorted(
        dashboards_module.dashboards(GenerateOptions())
    )


def test_prometheus_config_loads_with_the_mounted_rules(
    tree: Path, promtool: str, tmp_path: Path
) -> None:
    """promtool reads the config with each rule path replaced by the file mounted there."""
    services = compose_doc(tree)["services"]
    mounts = {
        t: (tree / compose.ROOT / s).resolve() for s, t in bind_mounts(services["prometheus"])
    }
    config = yaml.safe_load((tree / compose.PROMETHEUS_FILE).read_text())
    assert mounts["/etc/prometheus/prometheus.yml"] == (tree / compose.PROMETHEUS_FILE).resolve()
    assert [mounts[p].name for p in config["rule_files"]] == [
        Path(generate.RECORDING_RULES).name,
        Path(generate.ALERTING_RULES).name,
    ]
    config["rule_files"] = [str(mounts[p]) for p in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    recording = yaml.safe_load((tree / generate.RECORDING_RULES).read_text())["groups"]
    count = sum(len(g["rules"]) for g in recording)
    assert f"SUCCESS: {count} rules found" in out.stdout
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]


def test_prometheus_scrapes_the_sidecar_admin_port_and_alerts_alertmanager(tree: Path) -> None:
    services = compose_doc(tree)["services"]
    config = yaml.safe_load((tree / compose.PROMETHEUS_FILE).read_text())
    (job,) = config["scrape_configs"]
    ((target,),) = [s["targets"] for s in job["static_configs"]]
    host, port = host_port(target)
    sidecar = sidecar_settings(services[host]["command"])
    assert (host, port) == ("sidecar", sidecar.admin.port)
    # The server is scraped through the sidecar's merge, once: not as a job of its own.
    upstream = urlsplit(sidecar.upstream)
    assert upstream.hostname == "model-server"
    assert upstream.port == server_settings(services["model-server"]["command"]).port
    assert sidecar.metrics_url == "http://model-server:8000/metrics"
    assert job["static_configs"][0]["labels"] == {"namespace": "compose", "pod": "model-server"}
    ((am,),) = [s["targets"] for s in config["alerting"]["alertmanagers"][0]["static_configs"]]
    host, port = host_port(am)
    assert (host, port) == ("alertmanager", 9093)  # Alertmanager's default listen port
    assert not any("--web.listen-address" in a for a in services["alertmanager"]["command"])


def test_alertmanager_delivers_to_the_receiver_service(tree: Path) -> None:
    services = compose_doc(tree)["services"]
    config = yaml.safe_load((tree / compose.ALERTMANAGER_FILE).read_text())
    urls = {
        w["url"] for receiver in config["receivers"] for w in receiver.get("webhook_configs", [])
    }
    assert urls == {"http://alert-receiver:9095/alerts"}
    receiver = services["alert-receiver"]
    assert receiver["command"][-1] == "9095"
    assert receiver["expose"] == ["9095"]
    # Otherwise the generated config: same routes, receivers and inhibitions.
    generated = yaml.safe_load((tree / generate.ALERTMANAGER).read_text())
    assert config["route"] == generated["route"]
    assert config["inhibit_rules"] == generated["inhibit_rules"]


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool is not installed")
def test_alertmanager_config_is_valid(tree: Path) -> None:
    out = subprocess.run(
        ["amtool", "check-config", str(tree / compose.ALERTMANAGER_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Found:\n - global config\n - route\n - 2 inhibit rules\n - 2 receivers" in out.stdout


def test_alert_receiver_logs_each_alert() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", compose.RECEIVER_SCRIPT, "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("alert receiver listening on port ")
        url = f"http://127.0.0.1:{int(first.split()[-1])}/alerts"
        payload = {
            "status": "firing",
            "alerts": [
                {"status": "firing", "labels": {"alertname": "InferenceErrorBudgetBurn", "a": "b"}}
            ],
        }
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
        assert proc.stdout.readline() == (
            'firing InferenceErrorBudgetBurn {"a": "b", "alertname": "InferenceErrorBudgetBurn"}\n'
        )
        bad = urllib.request.Request(url, data=b"not json", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=10)
        assert info.value.code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_grafana_reads_prometheus_and_links_exemplars_to_jaeger(tree: Path) -> None:
    services = compose_doc(tree)["services"]
    provisioned = yaml.safe_load((tree / compose.GRAFANA_DATASOURCES_FILE).read_text())
    by_type = {d["type"]: d for d in provisioned["datasources"]}
    prometheus, jaeger = by_type["prometheus"], by_type["jaeger"]
    options = GenerateOptions()
    assert prometheus["uid"] == options.datasource_uid
    assert urlsplit(prometheus["url"]).hostname in services
    assert urlsplit(prometheus["url"]).port == 9090
    assert published(services["prometheus"]) == {9090}
    (link,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert link["datasourceUid"] == jaeger["uid"] == options.traces_datasource_uid
    assert (urlsplit(jaeger["url"]).hostname, urlsplit(jaeger["url"]).port) == ("jaeger", 16686)
    mounts = dict((t, s) for s, t in bind_mounts(services["grafana"]))
    assert mounts["/etc/grafana/provisioning/datasources/inferwatch.yaml"] == (
        "./grafana-datasources.yaml"
    )
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (tree / compose.ROOT / mounts[str(Path(home).parent)] / Path(home).name).is_file()


def test_traces_flow_from_the_apps_to_the_collector_to_jaeger(tree: Path) -> None:
    services = compose_doc(tree)["services"]
    collector = yaml.safe_load((tree / compose.OTEL_COLLECTOR_FILE).read_text())
    pipeline = collector["service"]["pipelines"]["traces"]
    assert set(pipeline["receivers"]) <= set(collector["receivers"])
    assert set(pipeline["exporters"]) <= set(collector["exporters"])
    assert set(pipeline["processors"]) <= set(collector["processors"])
    listening = {
        int(p["endpoint"].rpartition(":")[2])
        for p in collector["receivers"]["otlp"]["protocols"].values()
    }
    assert listening == published(services["otel-collector"]) == {4317, 4318}
    (exporter,) = [collector["exporters"][e] for e in pipeline["exporters"]]
    assert host_port(exporter["endpoint"]) == ("jaeger", 4317)
    for name in ("model-server", "sidecar"):
        endpoint = urlsplit(services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("otel-collector", 4317)


def test_compose_uses_the_kubernetes_images_and_the_design_ports(tree: Path) -> None:
    services = compose_doc(tree)["services"]
    deployment = one(kustomize(overlay(tree, "base")), "Deployment")
    assert (
        services["model-server"]["image"]
        == (container(deployment, kubernetes.SERVER_CONTAINER)["image"])
    )
    assert (
        services["sidecar"]["image"]
        == (container(deployment, kubernetes.SIDECAR_CONTAINER)["image"])
    )
    assert services["sidecar"]["image"] == "inferwatch/sidecar:" + kubernetes.IMAGE_TAG
    ports = {name: published(s) for name, s in services.items() if s.get("ports")}
    assert ports == {
        "model-server": {8000},
        "sidecar": {8080, 9464},
        "prometheus": {9090},
        "alertmanager": {9093},
        "grafana": {3000},
        "otel-collector": {4317, 4318},
        "jaeger": {16686},
    }
    sidecar = sidecar_settings(services["sidecar"]["command"])
    assert (sidecar.listen.port, sidecar.admin.port) == (8080, 9464)
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:")
    # Compose interpolates $: no generated value may carry one.
    assert "$" not in (tree / compose.COMPOSE_FILE).read_text()


def test_rule_file_names_follow_render() -> None:
    names = (Path(generate.RECORDING_RULES).name, Path(generate.ALERTING_RULES).name)
    assert names == compose.RULE_FILES


# --- gRPC: grpc_port ----------------------------------------------------------------------------

GRPC_OPTIONS = GenerateOptions(grpc_port=8001)  # Triton's gRPC port


@pytest.fixture(scope="module")
def grpc_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("grpc"), generated_files(GRPC_OPTIONS))


def test_grpc_is_off_by_default(tree: Path) -> None:
    docs = kustomize(overlay(tree, "base"))
    sidecar = container(one(docs, "Deployment"), kubernetes.SIDECAR_CONTAINER)
    assert sidecar_settings(sidecar["args"]).grpc_listen is None
    assert "grpc" not in {p["name"] for p in sidecar["ports"]}
    assert "httpGet" in sidecar["readinessProbe"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["http"]
    compose_sidecar = sidecar_settings(compose_doc(tree)["services"]["sidecar"]["command"])
    assert compose_sidecar.grpc_listen is None


def test_grpc_port_reaches_the_sidecar_the_service_and_the_model_container(
    grpc_tree: Path,
) -> None:
    docs = kustomize(overlay(grpc_tree, "base"))
    deployment, svc = one(docs, "Deployment"), one(docs, "Service")
    sidecar = container(deployment, kubernetes.SIDECAR_CONTAINER)
    server = container(deployment, kubernetes.SERVER_CONTAINER)
    settings = sidecar_settings(sidecar["args"])
    assert settings.grpc_listen == sidecar_config.Address("", 8081)
    assert settings.grpc_upstream == "127.0.0.1:8001"
    assert settings.listen.port == 8080  # HTTP is still proxied
    sidecar_ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert sidecar_ports == {"http": 8080, "grpc": 8081, "metrics": 9464}
    server_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert server_ports == {"model": 8000, "model-grpc": 8001}
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    grpc_port = ports["grpc"]
    assert sidecar_ports[grpc_port["targetPort"]] == settings.grpc_listen.port
    assert (grpc_port["port"], grpc_port["appProtocol"]) == (8081, "kubernetes.io/h2c")
    assert "appProtocol" not in ports["http"]
    # The readiness probe stays HTTP /ready unless asked (see sidecar_readiness_probe).
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert (
        "model server 127.0.0.1:8001"
        in (grpc_tree / kubernetes.BASE / "deployment.yaml").read_text()
    )


def test_the_native_grpc_readiness_probe_targets_the_sidecar_grpc_port(tmp_path: Path) -> None:
    options = dataclasses.replace(GRPC_OPTIONS, grpc_readiness_probe=True)
    docs = kustomize(overlay(write_tree(tmp_path, generated_files(options)), "base"))
    deployment = one(docs, "Deployment")
    sidecar = container(deployment, kubernetes.SIDECAR_CONTAINER)
    probe = sidecar["readinessProbe"]
    assert probe["grpc"] == {"port": sidecar_settings(sidecar["args"]).grpc_listen.port}
    assert "httpGet" not in probe
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/health"
    kubernetes_validate.validate(deployment, "1.30", strict=True)
    # A grpc probe takes a port number only: a name is refused, so the generator writes 8081.
    probe["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)


@pytest.mark.parametrize("name", ["hpa", "keda"])
def test_grpc_manifests_validate_against_the_kubernetes_schemas(grpc_tree: Path, name: str) -> None:
    docs = kustomize(overlay(grpc_tree, name))
    for doc in docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, "1.30", strict=True)
    svc = one(docs, "Service")
    bad = {**svc["spec"]["ports"][1], "appProtocoll": "kubernetes.io/h2c"}
    svc["spec"]["ports"][1] = bad
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(svc, "1.30", strict=True)


async def test_the_kubelet_grpc_probe_gets_the_sidecar_readiness(grpc_tree: Path) -> None:
    """Run the sidecar as the Deployment configures it (ports moved to loopback) and ask
    grpc.health.v1 what the kubelet's grpc probe asks: SERVING, then NOT_SERVING in the drain."""
    from grpc import aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from support.polling import poll

    deployment = one(kustomize(overlay(grpc_tree, "base")), "Deployment")
    configured = sidecar_settings(container(deployment, kubernetes.SIDECAR_CONTAINER)["args"])
    async with running_upstream() as upstream:
        local = dataclasses.replace(
            configured,
            upstream=upstream.url,
            listen=sidecar_config.Address("127.0.0.1", 0),
            admin=sidecar_config.Address("127.0.0.1", 0),
            grpc_listen=sidecar_config.Address("127.0.0.1", 0),
            drain_quiet_period=30.0,
        )
        sidecar = Sidecar(local, CollectorRegistry())
        await sidecar.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def says(wanted: int) -> bool:
                    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                    return bool(answer.status == wanted)

                serving = health_pb2.HealthCheckResponse.SERVING
                await poll(lambda: says(serving), "SERVING once the model server is ready")
                assert sidecar.drainer is not None
                sidecar.drainer.begin()
                not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
                await poll(lambda: says(not_serving), "NOT_SERVING during the drain")
        finally:
            await sidecar.stop()


def test_compose_publishes_the_sidecar_grpc_port(grpc_tree: Path) -> None:
    text = (grpc_tree / compose.COMPOSE_FILE).read_text()
    PyCompose.from_yaml(text).validate()
    services = compose_doc(grpc_tree)["services"]
    sidecar = sidecar_settings(services["sidecar"]["command"])
    assert sidecar.grpc_listen is not None
    assert (sidecar.grpc_listen.port, sidecar.grpc_upstream) == (8081, "model-server:8001")
    assert published(services["sidecar"]) == {8080, 8081, 9464}
    assert published(services["model-server"]) == {8000}


# --- Dockerfiles --------------------------------------------------------------------------------


def dockerfile(name: str) -> dict[str, list[str]]:
    """Instruction -> arguments, continuation lines joined."""
    out: dict[str, list[str]] = {}
    text = (ROOT / "docker" / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.setdefault(instruction, []).append(rest.strip())
    return out


@pytest.mark.parametrize(
    ("name", "command", "ports"),
    [
        ("sidecar.Dockerfile", "sidecar", {8080, 9464}),
        ("server.Dockerfile", "serve", {8000}),
    ],
)
def test_dockerfiles_install_the_package_and_run_inferwatch(
    name: str, command: str, ports: set[int]
) -> None:
    spec = dockerfile(name)
    assert spec["FROM"] == ["python:3.11-slim"]
    assert json.loads(spec["ENTRYPOINT"][0]) == ["inferwatch"]
    cmd = json.loads(spec["CMD"][0])
    assert cmd[0] == command
    assert {int(p) for p in spec["EXPOSE"][0].split()} == ports
    assert spec["USER"] == [f"{kubernetes.RUN_AS_USER}:{kubernetes.RUN_AS_USER}"]
    for copy in spec["COPY"]:
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), source
    if command == "serve":
        assert server_settings(cmd).port == 8000
        assert any('".[server,fast]"' in run for run in spec["RUN"])
    else:
        env = " ".join(spec["ENV"])
        assert "INFERWATCH_SIDECAR_UPSTREAM=http://127.0.0.1:8000" in env
    ignore = (ROOT / "docker" / f"{name}.dockerignore").read_text().split()
    assert {"!pyproject.toml", "!README.md", "!inferwatch"} <= set(ignore)


def test_layout() -> None:
    options = GenerateOptions()
    assert sorted(kubernetes.manifests(options)) == [
        f"deploy/kubernetes/{name}"
        for name in (
            "argo-rollouts/analysis-template.yaml",
            "argo-rollouts/kustomization.yaml",
            "base/dashboards.yaml",
            "base/deployment.yaml",
            "base/kustomization.yaml",
            "base/podmonitor.yaml",
            "base/prometheusrule.yaml",
            "base/service.yaml",
            "flagger/canary.yaml",
            "flagger/kustomization.yaml",
            "flagger/metric-templates.yaml",
            "hpa/hpa.yaml",
            "hpa/kustomization.yaml",
            "keda/keda-scaledobject.yaml",
            "keda/kustomization.yaml",
            "prometheus-adapter/kustomization.yaml",
            "prometheus-adapter/prometheus-adapter-config.yaml",
        )
    ]
    assert sorted(compose.files(options)) == [
        f"compose/{name}"
        for name in (
            "alertmanager.yml",
            "docker-compose.gpu.yml",
            "docker-compose.yml",
            "grafana-datasources.yaml",
            "otel-collector.yaml",
            "prometheus.yml",
        )
    ]
