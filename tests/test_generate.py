"""Generated rules, autoscaling and Alertmanager configs: fresh, valid, checked by real tools."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inferwatch import cli, generate, schema
from inferwatch.autoscale.replay import render_adapter_query
from inferwatch.generate import autoscaling, kubernetes, promql
from inferwatch.generate.cli import load_options
from inferwatch.generate.options import AUTOSCALING_PROFILES, GenerateOptions

ROOT = Path(__file__).resolve().parent.parent


def run(tool: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_committed_files_are_fresh() -> None:
    stale = generate.stale(ROOT)
    assert stale == [], f"regenerate with `inferwatch generate` and commit: {stale}"


def test_generate_says_what_it_changed_and_leaves_the_rest_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["generate", "--out", str(tmp_path)]) == 0
    total = len(generate.render())
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .endswith(f": {total} created, 0 updated, 0 unchanged")
    )
    rules = tmp_path / generate.ALERTING_RULES
    dashboard = tmp_path / "dashboards" / "inferwatch-overview.json"
    rules.write_text("groups: []\n")
    os.utime(dashboard, (1_000_000_000, 1_000_000_000))
    assert cli.main(["generate", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"updated  {rules}",
        f"{total} files under {tmp_path}: 0 created, 1 updated, {total - 1} unchanged",
    ]
    assert rules.read_text() == generate.render()[generate.ALERTING_RULES]
    assert dashboard.stat().st_mtime == 1_000_000_000  # an unchanged file is not rewritten


def test_generate_check_detects_a_stale_file(tmp_path: Path) -> None:
    assert cli.main(["generate", "--out", str(tmp_path)]) == 0
    assert cli.main(["generate", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / generate.ALERTING_RULES).write_text("groups: []\n")
    assert cli.main(["generate", "--out", str(tmp_path), "--check"]) == 1


def test_promtool_checks_and_unit_tests_pass(promtool: str) -> None:
    done = run(promtool, "check", "rules", generate.RECORDING_RULES, generate.ALERTING_RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run(promtool, "test", "rules", generate.RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    tests = yaml.safe_load((ROOT / generate.RULE_TESTS).read_text())["tests"]
    alerts = yaml.safe_load((ROOT / generate.ALERTING_RULES).read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in alerts}
    fires = {
        t["alert_rule_test"][0]["alertname"] for t in tests if t["alert_rule_test"][0]["exp_alerts"]
    }
    silent = {
        t["alert_rule_test"][0]["alertname"]
        for t in tests
        if not t["alert_rule_test"][0]["exp_alerts"]
    }
    assert names == fires == silent
    for rule in alerts:
        assert re.fullmatch(r"([A-Z][a-z0-9]*|GPU)+", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
        anchor = rule["annotations"]["runbook_url"].split("#")[1]
        assert f"## {rule['alert']}" in (ROOT / generate.RUNBOOKS).read_text()
        assert anchor == rule["alert"].lower()


def test_a_broken_threshold_fails_the_unit_tests(tmp_path: Path, promtool: str) -> None:
    """The promtool tests can tell: raise the fastest burn threshold and they fail."""
    shutil.copytree(ROOT / "alerts", tmp_path / "alerts")
    alerts_file = tmp_path / generate.ALERTING_RULES
    text = alerts_file.read_text()
    assert "> 0.0144" in text
    alerts_file.write_text(text.replace("> 0.0144", "> 0.9"))
    done = run(promtool, "test", "rules", generate.RULE_TESTS, cwd=tmp_path)
    assert done.returncode != 0
    assert "InferenceErrorBudgetBurn: burning" in done.stdout + done.stderr


def test_alertmanager_config_and_routes(amtool: str) -> None:
    done = run(amtool, "check-config", generate.ALERTMANAGER)
    assert done.returncode == 0, done.stdout + done.stderr
    for labels, receiver in (("severity=critical", "pager"), ("severity=warning", "tickets")):
        done = run(
            amtool, "config", "routes", "test", f"--config.file={generate.ALERTMANAGER}", labels
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == receiver


def test_every_autoscaling_query_parses(tmp_path: Path, promtool: str) -> None:
    exprs = []
    for rule in autoscaling.adapter_rules():
        pods = render_adapter_query(rule, "pod", "serving", '=~"a-1|a-2"')
        deployment = render_adapter_query(rule, "deployment", "serving", '="model-server"')
        exprs.append(pods or deployment)
        assert (pods is None) != (deployment is None)  # each rule serves one resource
    for profile in AUTOSCALING_PROFILES:
        options = GenerateOptions(autoscaling_profile=profile)
        scaled = autoscaling.keda_scaled_object(options)
        exprs += [
            t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"
        ]
    exprs += list(autoscaling.keda_queries(GenerateOptions()).values())
    assert len(exprs) == 6 + 2 + 2 + 3
    rules = [{"record": f"check:query:{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def adapter_rules_of(text: str) -> list[dict[str, Any]]:
    config_map = yaml.safe_load(text)
    return yaml.safe_load(config_map["data"]["config.yaml"])["rules"]  # type: ignore[no-any-return]


def test_adapter_serves_the_hpa_metric_names() -> None:
    rules = adapter_rules_of(
        (
            ROOT / generate.KUBERNETES / "prometheus-adapter/prometheus-adapter-config.yaml"
        ).read_text()
    )

    def served(resource: str) -> set[str]:
        return {
            r["name"]["as"]
            for r in rules
            if render_adapter_query(r, resource, "ns", '="x"') is not None
        }

    names = {"inference_queue_length", "p95_latency_ms", "kv_cache_usage_ratio"}
    assert served("pod") == served("deployment") == names
    # One adapter install serves any generated HPA: both profiles, Pods or Object metrics.
    for profile in AUTOSCALING_PROFILES:
        for kind, resource in (("Pods", "pod"), ("Object", "deployment")):
            options = GenerateOptions(autoscaling_profile=profile, hpa_metric_type=kind)
            spec = autoscaling.hpa(options)["spec"]
            key = kind.lower()
            wanted = {m[key]["metric"]["name"] for m in spec["metrics"] if m["type"] == kind}
            assert wanted and wanted <= served(resource)
    for rule in rules:
        assert "<<.GroupBy>>" in rule["metricsQuery"].split(")")[0]  # inside the aggregation
    kv = [r for r in rules if r["name"]["as"] == "kv_cache_usage_ratio"]
    assert [r["seriesQuery"] for r in kv] == [
        'model_kv_cache_usage_ratio{namespace!="",pod!=""}',
        f'{promql.WORKLOAD_KV_CACHE_USAGE}{{namespace!="",workload!=""}}',
    ]
    # A Deployment's metrics: the workload label is the Deployment (group apps).
    overrides = {r["resources"]["overrides"]["workload"]["resource"] for r in rules[3:]}
    assert overrides == {"deployment"}
    # The family the sidecar exports (a 0-1 gauge per source and model) is the one it reads.
    family = schema.KV_CACHE_USAGE
    assert family.name == promql.KV_CACHE_USAGE_RATIO
    assert (family.kind, family.labels) == ("gauge", ("source", "model_name"))


# The seed's HPA, as shipped by default: what `deploy/kubernetes/hpa/hpa.yaml` must say.
SEED_BEHAVIOR = {
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
    },
    "scaleUp": {
        "stabilizationWindowSeconds": 60,
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 30},
            {"type": "Pods", "value": 2, "periodSeconds": 30},
        ],
        "selectPolicy": "Max",
    },
}


def test_the_generated_hpa_is_the_seed_hpa() -> None:
    hpa = yaml.safe_load((ROOT / generate.KUBERNETES / "hpa/hpa.yaml").read_text())
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["metadata"] == {"name": "model-server", "namespace": "default"}
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "model-server",
    }
    assert spec["minReplicas"] == 2
    assert spec["maxReplicas"] == 20
    cpu, queue, p95 = spec["metrics"]
    assert cpu == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    assert queue == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "inference_queue_length"},
            "target": {"type": "AverageValue", "averageValue": "10"},
        },
    }
    assert p95 == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "p95_latency_ms"},
            "target": {"type": "AverageValue", "averageValue": "100"},
        },
    }
    assert spec["behavior"]["scaleDown"] == SEED_BEHAVIOR["scaleDown"]
    assert spec["behavior"]["scaleUp"] == SEED_BEHAVIOR["scaleUp"]
    assert spec == {
        "scaleTargetRef": spec["scaleTargetRef"],
        "minReplicas": 2,
        "maxReplicas": 20,
        "metrics": [cpu, queue, p95],
        "behavior": SEED_BEHAVIOR,
    }
    kubernetes_validate.validate(hpa, "1.30", strict=True)


def test_object_metrics_read_the_deployment() -> None:
    """hpa_metric_type Object: the same targets, as metrics of the Deployment (the queue and
    the KV cache summed over its pods and divided by the HPA, the p95 the Deployment's)."""
    options = GenerateOptions(namespace="serving", deployment="bert", hpa_metric_type="Object")
    spec = autoscaling.hpa(options)["spec"]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bert"}
    cpu, queue, p95 = spec["metrics"]
    assert cpu["type"] == "Resource"
    assert queue == {
        "type": "Object",
        "object": {
            "describedObject": deployment,
            "metric": {"name": "inference_queue_length"},
            "target": {"type": "AverageValue", "averageValue": "10"},
        },
    }
    assert p95 == {
        "type": "Object",
        "object": {
            "describedObject": deployment,
            "metric": {"name": "p95_latency_ms"},
            "target": {"type": "Value", "value": "100"},
        },
    }
    llm = GenerateOptions(autoscaling_profile="llm", hpa_metric_type="Object")
    queue, kv = autoscaling.hpa(llm)["spec"]["metrics"]
    assert (queue["type"], kv["type"]) == ("Object", "Object")
    assert kv["object"]["metric"] == {"name": "kv_cache_usage_ratio"}
    assert kv["object"]["target"] == {"type": "AverageValue", "averageValue": "0.8"}
    # Everything but the metrics is the seed's.
    seed = autoscaling.hpa(GenerateOptions(namespace="serving", deployment="bert"))
    assert {k: v for k, v in spec.items() if k != "metrics"} == {
        k: v for k, v in seed["spec"].items() if k != "metrics"
    }
    kubernetes_validate.validate(autoscaling.hpa(options), "1.30", strict=True)
    kubernetes_validate.validate(autoscaling.hpa(llm), "1.30", strict=True)
    # What the adapter runs for the Deployment: its per-workload records, no pod names.
    queries = {
        r["name"]["as"]: render_adapter_query(r, "deployment", "serving", '="bert"')
        for r in autoscaling.adapter_rules()[3:]
    }
    selector = 'namespace="serving",workload="bert"'
    assert queries["inference_queue_length"] == (
        f"sum by (workload) ({promql.WORKLOAD_QUEUE_LENGTH}{{{selector}}})"
    )
    assert queries["p95_latency_ms"] == (
        "1000 * (histogram_quantile(0.95, sum by (workload, le) "
        f"({promql.WORKLOAD_LATENCY_BUCKETS}{{{selector}}})) >= 0) "
        f'or 0 * sum by (workload) ({promql.WORKLOAD_LATENCY_BUCKETS}{{{selector},le="+Inf"}})'
    )


def test_the_autoscaling_rules_interval_follows_its_option() -> None:
    def group(**options: Any) -> dict[str, Any]:
        groups = generate.rules.recording_rules(GenerateOptions(**options))["groups"]
        return next(g for g in groups if g["name"] == "inferwatch.autoscaling")  # type: ignore[no-any-return]

    assert "interval" not in group()  # Prometheus' evaluation_interval
    assert group(autoscaling_rules_interval_seconds=30)["interval"] == "30s"
    assert group(autoscaling_rules_interval_seconds=120)["interval"] == "2m"
    with pytest.raises(ValueError, match="autoscaling_rules_interval_seconds must be 0"):
        GenerateOptions(autoscaling_rules_interval_seconds=-1)


def test_generating_for_thousands_of_pods_advises_object_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "options.yaml"
    config.write_text("max_replicas: 5000\n")
    out = tmp_path / "out"
    assert cli.main(["generate", "--out", str(out), "--config", str(config)]) == 0
    assert "max_replicas 5000 with Pods metrics" in capsys.readouterr().err
    config.write_text("max_replicas: 5000\nhpa_metric_type: Object\n")
    assert cli.main(["generate", "--out", str(out), "--config", str(config)]) == 0
    assert "note:" not in capsys.readouterr().err
    hpa = yaml.safe_load((out / generate.KUBERNETES / "hpa/hpa.yaml").read_text())
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Object"}
    assert hpa["spec"]["maxReplicas"] == 5000
    assert autoscaling.advice(GenerateOptions()) == []  # the seed's 20 replicas


def test_an_unknown_hpa_metric_type_is_named() -> None:
    with pytest.raises(ValueError, match="hpa_metric_type must be one of Pods, Object, got 'pods'"):
        GenerateOptions(hpa_metric_type="pods")


def test_the_keda_scaled_object_scales_as_the_seed_hpa() -> None:
    scaled = yaml.safe_load(
        (ROOT / generate.KUBERNETES / "keda/keda-scaledobject.yaml").read_text()
    )
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 20)
    assert spec["advanced"] == {"horizontalPodAutoscalerConfig": {"behavior": SEED_BEHAVIOR}}
    cpu, queue, p95 = spec["triggers"]
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    assert (queue["name"], queue["metricType"], queue["metadata"]["threshold"]) == (
        "inference-queue-length",
        "AverageValue",
        "10",
    )
    assert (p95["name"], p95["metricType"], p95["metadata"]["threshold"]) == (
        "p95-latency-ms",
        "Value",
        "100",
    )


@pytest.mark.parametrize(
    "name", ["hpa/hpa.yaml", "prometheus-adapter/prometheus-adapter-config.yaml"]
)
def test_kubernetes_manifests_validate(name: str) -> None:
    manifest = yaml.safe_load((ROOT / generate.KUBERNETES / name).read_text())
    kubernetes_validate.validate(manifest, "1.30", strict=True)


def test_keda_scaled_object_shape() -> None:
    scaled = yaml.safe_load(
        (ROOT / generate.KUBERNETES / "keda/keda-scaledobject.yaml").read_text()
    )
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"}
    assert triggers["inference-queue-length"]["metricType"] == "AverageValue"
    assert triggers["p95-latency-ms"]["metricType"] == "Value"
    for trigger in triggers.values():
        assert set(trigger["metadata"]) == {"serverAddress", "query", "threshold"}
        assert trigger["metadata"]["query"].endswith("or vector(0)")  # always one element


def test_keda_reads_one_workloads_records() -> None:
    options = GenerateOptions(namespace="serving", deployment="bert")
    queries = autoscaling.keda_queries(options)
    workload = 'namespace="serving",workload="bert"'
    assert queries["inference_queue_length"] == (
        f"sum({promql.WORKLOAD_QUEUE_LENGTH}{{{workload}}}) or vector(0)"
    )
    assert queries["p95_latency_ms"] == (
        "1000 * (histogram_quantile(0.95, sum by (le) "
        f"({promql.WORKLOAD_LATENCY_BUCKETS}{{{workload}}})) >= 0) or vector(0)"
    )
    assert queries["kv_cache_usage_ratio"] == (
        f"sum({promql.WORKLOAD_KV_CACHE_USAGE}{{{workload}}}) or vector(0)"
    )
    # level:metric:operations, the level naming the labels each record keeps.
    assert promql.WORKLOAD_QUEUE_LENGTH == "namespace_workload:model_inference_queue_length:sum"
    assert promql.WORKLOAD_LATENCY_BUCKETS == (
        "namespace_workload_le:model_inference_duration_seconds_bucket:rate1m"
    )
    # Each record after the per-pod one it reads, in the same group (evaluated in order).
    groups = yaml.safe_load((ROOT / generate.RECORDING_RULES).read_text())["groups"]
    (group,) = [g for g in groups if g["name"] == "inferwatch.autoscaling"]
    order = [r["record"] for r in group["rules"]]
    assert order.index(promql.POD_QUEUE_LENGTH) < order.index(promql.WORKLOAD_QUEUE_LENGTH)
    assert order.index(promql.POD_LATENCY_BUCKETS) < order.index(promql.WORKLOAD_LATENCY_BUCKETS)
    assert promql.WORKLOAD_KV_CACHE_USAGE in order


LONG_46 = "inference-server-text-generation-llama-3-8b-it"  # Deployment names
LONG_50 = "inference-server-text-generation-llama-3-8b-instru"
LONG_56 = "inference-server-text-generation-llama-3-8b-instruct-v2b"


def pod_of(deployment: str, template_hash: str, suffix: str = "x2z9q") -> str:
    """A Deployment's pod name as Kubernetes makes it (generateName cut at 58, then 5)."""
    return f"{deployment}-{template_hash}-"[:58] + suffix


def test_workload_records_sum_a_deployments_pods(tmp_path: Path, promtool: str) -> None:
    """promtool evaluates the generated rules on raw series: each pod goes to its Deployment
    (the name less the ReplicaSet hash and the pod's suffix); a pod named otherwise (a
    StatefulSet's) is its own workload."""
    pods = {  # pod: (its workload, its queue, its inferences per second under 100 ms)
        "bert-7d9f8c6b5-abcde": ("bert", 3, 1),
        "bert-7d9f8c6b5-fghij": ("bert", 4, 2),
        "bert-66b4f9d8c-x2z9q": ("bert", 1, 4),  # the next ReplicaSet, mid-rollout
        "bert-canary-5c4b3a2d1-klmno": ("bert-canary", 5, 8),
        "llm-0": ("llm-0", 6, 16),
        # Long names: Kubernetes cuts <deployment>-<hash>- at 58 characters, then adds 5.
        pod_of(LONG_46, "6d5c4b3a29"): (LONG_46, 2, 1),  # 63 characters, nothing cut
        pod_of(LONG_50, "6d5c4b3a29"): (LONG_50, 3, 2),  # the hash cut to 7
        pod_of(LONG_50, "8e7f6a5b4c", "zz9y8"): (LONG_50, 4, 4),
        pod_of(LONG_56, "6d5c4b3a29"): (LONG_56, 5, 8),  # the hash cut to 1
    }
    assert {len(p) for p in pods if p.startswith("inference-")} == {63}
    assert [len(name) for name in (LONG_46, LONG_50, LONG_56)] == [46, 50, 56]
    series = []
    kv_total: dict[str, float] = {}
    for pod, (workload, queue, per_second) in pods.items():
        labels = f'namespace="serving",pod="{pod}",model_name="m"'
        # Two models' KV caches in each pod: the fullest counts, summed over the workload.
        for model, kv in (("a", per_second / 32), ("b", per_second / 64)):
            series.append(
                {
                    "series": f"{promql.KV_CACHE_USAGE_RATIO}"
                    f'{{namespace="serving",pod="{pod}",model_name="{model}",source="server"}}',
                    "values": f"{kv}x20",
                }
            )
        kv_total[workload] = kv_total.get(workload, 0.0) + per_second / 32
        series.append(
            {
                "series": f'model_inference_queue_length{{{labels},source="sidecar"}}',
                "values": f"{queue}x20",
            }
        )
        series.append(
            {
                "series": f"model_inference_duration_seconds_bucket"
                f'{{{labels},source="sidecar",le="0.1"}}',
                "values": f"0+{15 * per_second}x20",
            }
        )
    expected: dict[str, tuple[int, int]] = {}
    for workload, queue, per_second in pods.values():
        q, r = expected.get(workload, (0, 0))
        expected[workload] = (q + queue, r + per_second)
    queue_samples = [
        {
            "labels": f'{promql.WORKLOAD_QUEUE_LENGTH}{{namespace="serving",workload="{w}"}}',
            "value": q,
        }
        for w, (q, _) in expected.items()
    ]
    bucket_samples = [
        {
            "labels": f"{promql.WORKLOAD_LATENCY_BUCKETS}"
            f'{{le="0.1",namespace="serving",workload="{w}"}}',
            "value": r,
        }
        for w, (_, r) in expected.items()
    ]
    shutil.copy(ROOT / generate.RECORDING_RULES, tmp_path / "rules.yaml")
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": promql.WORKLOAD_QUEUE_LENGTH,
                        "eval_time": "4m",
                        "exp_samples": queue_samples,
                    },
                    {
                        "expr": promql.WORKLOAD_LATENCY_BUCKETS,
                        "eval_time": "4m",
                        "exp_samples": bucket_samples,
                    },
                    {
                        "expr": promql.WORKLOAD_KV_CACHE_USAGE,
                        "eval_time": "4m",
                        "exp_samples": [
                            {
                                "labels": f"{promql.WORKLOAD_KV_CACHE_USAGE}"
                                f'{{namespace="serving",workload="{w}"}}',
                                "value": kv,
                            }
                            for w, kv in kv_total.items()
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    done = run(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected["bert"] == (8, 7)
    assert kv_total["bert"] == 7 / 32


def test_every_autoscaling_value_follows_its_option() -> None:
    options = GenerateOptions(
        min_replicas=3,
        max_replicas=9,
        cpu_utilization_target=55,
        queue_length_target=4,
        p95_latency_target_ms=300,
        scale_up_stabilization_seconds=10,
        scale_up_percent=200,
        scale_up_pods=5,
        scale_up_period_seconds=20,
        scale_down_stabilization_seconds=600,
        scale_down_percent=25,
        scale_down_period_seconds=120,
    )
    hpa, scaled = autoscaling.hpa(options), autoscaling.keda_scaled_object(options)
    behavior = {
        "scaleDown": {
            "stabilizationWindowSeconds": 600,
            "policies": [{"type": "Percent", "value": 25, "periodSeconds": 120}],
        },
        "scaleUp": {
            "stabilizationWindowSeconds": 10,
            "policies": [
                {"type": "Percent", "value": 200, "periodSeconds": 20},
                {"type": "Pods", "value": 5, "periodSeconds": 20},
            ],
            "selectPolicy": "Max",
        },
    }
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"], spec["behavior"]) == (3, 9, behavior)
    cpu, queue, p95 = spec["metrics"]
    assert cpu["resource"]["target"]["averageUtilization"] == 55
    assert queue["pods"]["target"]["averageValue"] == "4"
    assert p95["pods"]["target"]["averageValue"] == "300"
    keda = scaled["spec"]
    assert (keda["minReplicaCount"], keda["maxReplicaCount"]) == (3, 9)
    assert keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == behavior
    assert [t["metadata"].get("value") or t["metadata"]["threshold"] for t in keda["triggers"]] == [
        "55",
        "4",
        "300",
    ]
    kubernetes_validate.validate(hpa, "1.30", strict=True)


def test_the_llm_profile_scales_on_waiting_requests_and_kv_cache() -> None:
    options = GenerateOptions(autoscaling_profile="llm", kv_cache_usage_target=0.75)
    hpa = autoscaling.hpa(options)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "inference_queue_length"},
                "target": {"type": "AverageValue", "averageValue": "10"},
            },
        },
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "kv_cache_usage_ratio"},
                "target": {"type": "AverageValue", "averageValue": "0.75"},
            },
        },
    ]
    assert hpa["spec"]["behavior"] == SEED_BEHAVIOR
    kubernetes_validate.validate(hpa, "1.30", strict=True)
    scaled = autoscaling.keda_scaled_object(options)["spec"]
    queue, kv = scaled["triggers"]
    assert [t["type"] for t in (queue, kv)] == ["prometheus", "prometheus"]
    assert (kv["name"], kv["metricType"], kv["metadata"]["threshold"]) == (
        "kv-cache-usage-ratio",
        "AverageValue",
        "0.75",
    )
    # The workload's pods only (not a same-prefix "model-server-canary"'s), from the record.
    assert kv["metadata"]["query"] == (
        "sum(namespace_workload:model_kv_cache_usage_ratio:sum"
        '{namespace="default",workload="model-server"}) or vector(0)'
    )
    assert queue["metadata"]["query"] == autoscaling.keda_queries(options)["inference_queue_length"]
    # The queue signal is the same recorded sum of every source's queue (server's included).
    assert promql.pod_queue_length_expr() == (
        "sum by (namespace, pod) (model_inference_queue_length)"
    )
    # The llm profile's files: its HPA, and the same adapter rules as the default's.
    files = kubernetes.manifests(options)
    assert yaml.safe_load(files[f"{kubernetes.HPA}/hpa.yaml"]) == hpa
    adapter = f"{kubernetes.ADAPTER}/prometheus-adapter-config.yaml"
    assert files[adapter] == kubernetes.manifests(GenerateOptions())[adapter]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("autoscaling_profile", "gpu"),
        ("cpu_utilization_target", 0),
        ("queue_length_target", -1),
        ("p95_latency_target_ms", 0),
        ("kv_cache_usage_target", 1.5),
        ("kv_cache_usage_target", 0.0),
        ("min_replicas", 0),
        ("max_replicas", 1),
        ("scale_up_stabilization_seconds", 3601),
        ("scale_down_stabilization_seconds", -1),
        ("scale_up_period_seconds", 0),
        ("scale_down_period_seconds", 1801),
        ("scale_up_percent", 0),
        ("scale_up_pods", 0),
        ("scale_down_percent", -5),
    ],
)
def test_bad_autoscaling_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        GenerateOptions(**{field: value})  # type: ignore[arg-type]


def test_short_windows_for_live_tests_still_parse(tmp_path: Path, promtool: str) -> None:
    files = generate.render(GenerateOptions(window_scale=1 / 60))
    for name in (generate.RECORDING_RULES, generate.ALERTING_RULES):
        (tmp_path / Path(name).name).write_text(files[name])
    done = run(promtool, "check", "rules", *(p.name for p in tmp_path.iterdir()), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio_rate1m" in files[generate.RECORDING_RULES]  # the 1h window scaled to 1m


def test_short_windows_shrink_alertmanager_waits(tmp_path: Path, amtool: str) -> None:
    # A page that fires for a few seconds in a shrunk run must outlast group_wait to be sent.
    files = generate.render(GenerateOptions(window_scale=1 / 60))
    config = yaml.safe_load(files[generate.ALERTMANAGER])
    assert config["route"]["group_wait"] == "1s"  # 30s / 60, never under a second
    assert config["route"]["group_interval"] == "5s"
    assert config["route"]["routes"][0]["group_wait"] == "1s"
    path = tmp_path / "alertmanager.yml"
    path.write_text(files[generate.ALERTMANAGER])
    done = run(amtool, "check-config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_only_server_side_failures_spend_the_budget() -> None:
    expr = promql.errors_expr("5m")
    for reason in schema.SERVER_SIDE_REASONS:
        assert reason in expr
    assert schema.REASON_CLIENT_ERROR not in expr
    assert schema.REASON_CANCELLED not in expr


def test_bad_options_name_the_field(tmp_path: Path) -> None:
    config = tmp_path / "options.yaml"
    config.write_text("namespce: serving\n")
    with pytest.raises(ValueError, match="unknown option 'namespce'"):
        load_options(config, {})
    config.write_text("max_replicas: lots\n")
    with pytest.raises(ValueError, match="option 'max_replicas' must be int"):
        load_options(config, {})
    with pytest.raises(ValueError, match="latency_threshold_seconds"):
        GenerateOptions(latency_threshold_seconds=0.3)
    config.write_text("namespace: serving\nlatency_objective: 0.995\n")
    options = load_options(config, {"deployment": "bert"})
    assert (options.namespace, options.deployment, options.latency_objective) == (
        "serving",
        "bert",
        0.995,
    )


def test_grpc_options_are_checked(tmp_path: Path) -> None:
    assert (GenerateOptions().grpc_port, GenerateOptions().grpc_readiness_probe) == (0, False)
    for port in (8000, 8080, 8081, 9464):  # the pod's ports: the containers share them
        with pytest.raises(ValueError, match=f"grpc_port {port} is taken in the pod"):
            GenerateOptions(grpc_port=port)
    for port in (-1, 65536):
        with pytest.raises(ValueError, match="grpc_port must be 0"):
            GenerateOptions(grpc_port=port)
    with pytest.raises(ValueError, match="grpc_readiness_probe needs grpc_port"):
        GenerateOptions(grpc_readiness_probe=True)
    config = tmp_path / "options.yaml"
    config.write_text("grpc_port: '8001'\n")
    with pytest.raises(ValueError, match="option 'grpc_port' must be int"):
        load_options(config, {})
    config.write_text("grpc_port: 8001\ngrpc_readiness_probe: true\n")
    options = load_options(config, {})
    assert (options.grpc_port, options.grpc_readiness_probe) == (8001, True)
    # Off, the committed files; on, only the manifests and compose change.
    default, grpc = generate.render(), generate.render(options)
    changed = {path for path in default if default[path] != grpc[path]}
    assert changed == {
        "deploy/kubernetes/base/deployment.yaml",
        "deploy/kubernetes/base/service.yaml",
        "compose/docker-compose.yml",
    }


def test_generate_reports_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "options.yaml"
    config.write_text("slo_source: gateway\n")
    assert cli.main(["generate", "--out", str(tmp_path), "--config", str(config)]) == 2
    assert "slo_source must be 'sidecar' or 'app'" in capsys.readouterr().err


def test_durations() -> None:
    assert [promql.duration(s) for s in (300, 3600, 86400, 90, 2.5)] == [
        "5m",
        "1h",
        "1d",
        "90s",
        "2500ms",
    ]


def test_the_generators_read_gpu_label_values_from_the_schema_not_the_collector() -> None:
    # Generating configs must not need the NVML collector (or anything it imports).
    generators = Path(generate.__file__).parent
    for path in generators.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [f"{node.module}.{a.name}" for a in node.names]
            )
        }
        collector = {
            n for n in imported if n == "inferwatch.gpu" or n.startswith("inferwatch.gpu.")
        }
        assert not collector, path


def test_every_throttle_reason_the_gpu_alert_reads_is_one_nvml_reports() -> None:
    reasons = [reason for reason, _ in schema.THROTTLE_REASONS]
    assert set(schema.POWER_THROTTLE_REASONS) <= set(reasons)
    rules = yaml.safe_load(generate.render()[generate.ALERTING_RULES])["groups"][0]["rules"]
    (power,) = [r for r in rules if r["alert"] == "GPUPowerThrottling"]
    assert f'reason=~"{"|".join(schema.POWER_THROTTLE_REASONS)}"' in power["expr"]


def test_llm_options_are_checked() -> None:
    defaults = GenerateOptions()
    assert (defaults.ttft_threshold_seconds, defaults.ttft_objective) == (2.0, 0.99)
    assert (defaults.tpot_threshold_seconds, defaults.tpot_objective) == (0.1, 0.99)
    assert defaults.ttft_threshold_seconds in schema.TTFT_BUCKETS
    assert defaults.tpot_threshold_seconds in schema.TPOT_BUCKETS
    with pytest.raises(ValueError, match="ttft_threshold_seconds must be one of the bucket"):
        GenerateOptions(ttft_threshold_seconds=0.9)  # between 0.85 and 0.95
    with pytest.raises(ValueError, match="tpot_threshold_seconds must be one of the bucket"):
        GenerateOptions(tpot_threshold_seconds=0.08)
    for name in ("ttft_objective", "tpot_objective", "truncation_alert_ratio"):
        with pytest.raises(ValueError, match=name):
            GenerateOptions(**{name: 1.0})
    with pytest.raises(ValueError, match="truncation_min_generations"):
        GenerateOptions(truncation_min_generations=0)


def test_llm_rules_read_the_options_and_their_cases_still_pass(
    tmp_path: Path, promtool: str
) -> None:
    options = GenerateOptions(
        ttft_threshold_seconds=0.5,
        ttft_objective=0.995,
        tpot_threshold_seconds=0.05,
        tpot_objective=0.9,
        truncation_alert_ratio=0.3,
        truncation_min_generations=500,
    )
    files = generate.render(options)
    recorded = yaml.safe_load(files[generate.RECORDING_RULES])["groups"]
    (llm,) = [g for g in recorded if g["name"] == "inferwatch.llm"]
    exprs = {r["record"]: r["expr"] for r in llm["rules"]}
    assert (
        'model_inference_time_to_first_token_seconds_bucket{le="0.5"}'
        in exprs[promql.slow_ttft_ratio_rule("5m")]
    )
    assert (
        'model_inference_time_per_output_token_seconds_bucket{le="0.05"}'
        in exprs[promql.slow_tpot_ratio_rule("3d")]
    )
    alerting = yaml.safe_load(files[generate.ALERTING_RULES])["groups"][0]["rules"]
    by_name: dict[str, list[str]] = {}
    for rule in alerting:
        by_name.setdefault(rule["alert"], []).append(rule["expr"])
    # the fastest page: 14.4 times the budget (0.5% and 10%)
    assert "> 0.072\n" in by_name["InferenceTimeToFirstTokenBudgetBurn"][0]
    # 90%: the fastest page's threshold is above 1, it cannot fire; the cases know it
    assert "> 1.44\n" in by_name["InferenceTimePerOutputTokenBudgetBurn"][0]
    assert "> 0.3\nand\n" in by_name["InferenceGenerationsTruncated"][0]
    assert by_name["InferenceGenerationsTruncated"][0].endswith("[30m])) >= 500")
    for name in (generate.RECORDING_RULES, generate.ALERTING_RULES, generate.RULE_TESTS):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(files[name])
    done = run(promtool, "test", "rules", generate.RULE_TESTS, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = yaml.safe_load(files[generate.RULE_TESTS])["tests"]
    names = {t["name"] for t in tests}
    assert "InferenceGenerationsTruncated: too few generations" in names
