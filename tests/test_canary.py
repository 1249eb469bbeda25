"""Canary analysis of a model version: the generated Argo Rollouts AnalysisTemplate and Flagger
MetricTemplates and Canary follow those projects' published CRD schemas, read their options, and
send queries promtool parses. (tests/test_live_canary.py runs them against a real Prometheus.)"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from support.canary import (
    argo_phase,
    crd_schemas,
    flagger_passes,
    render_argo,
    render_flagger,
    validate_custom_resource,
)

from inferwatch import generate
from inferwatch.generate import canary, kubernetes, promql
from inferwatch.generate.cli import load_options
from inferwatch.generate.options import GenerateOptions

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = GenerateOptions()
CHECKS = ("error-ratio", "error-ratio-increase", "p95-latency", "p95-latency-ratio")
RELATIVE = {"error-ratio-increase", "p95-latency-ratio"}  # the canary against the stable version
ARGS = {
    "namespace": "serving",
    "workload": "model-server",
    "model": "resnet",
    "canary-version": "2",
    "stable-version": "1",
}
FLAGGER_MODEL = {"namespace": "serving", "target": "model-server", "interval": "1m"}
FLAGGER_VARIABLES = {"model": "resnet", "canary_version": "2", "stable_version": "1"}


def committed(relative: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / relative).read_text()) if d]


ANALYSIS_TEMPLATE_PATH = f"{kubernetes.ARGO_ROLLOUTS}/{canary.ANALYSIS_TEMPLATE_FILE}"
METRIC_TEMPLATES_PATH = f"{kubernetes.FLAGGER}/{canary.METRIC_TEMPLATES_FILE}"
CANARY_PATH = f"{kubernetes.FLAGGER}/{canary.CANARY_FILE}"


def generated_objects(options: GenerateOptions = OPTIONS) -> list[dict[str, Any]]:
    return [
        canary.analysis_template(options),
        *canary.metric_templates(options),
        canary.flagger_canary(options),
    ]


# --- the published schemas -----------------------------------------------------------------------


def test_the_crd_test_data_names_its_source_and_holds_the_kinds() -> None:
    for path in (ROOT / "tests" / "data" / "crds").glob("*.yaml"):
        header = path.read_text().splitlines()[:3]
        assert "https://github.com/" in header[1] and "tag v" in header[2], path
    assert {
        ("argoproj.io/v1alpha1", "AnalysisTemplate"),
        ("flagger.app/v1beta1", "MetricTemplate"),
        ("flagger.app/v1beta1", "Canary"),
    } <= set(crd_schemas())


@pytest.mark.parametrize("path", [ANALYSIS_TEMPLATE_PATH, METRIC_TEMPLATES_PATH, CANARY_PATH])
def test_committed_objects_validate_against_the_published_crds(path: str) -> None:
    docs = committed(path)
    assert docs
    for doc in docs:
        validate_custom_resource(doc)


@pytest.mark.parametrize(
    "options",
    [
        GenerateOptions(
            namespace="serving",
            deployment="bert",
            canary_interval_seconds=3600,
            canary_count=10,
            canary_failure_limit=3,
            canary_model="bert",
            canary_version="2024-06-01",
            stable_version="2024-05-01",
        )
    ],
)
def test_objects_of_other_options_validate(options: GenerateOptions) -> None:
    for doc in generated_objects(options):
        validate_custom_resource(doc)
    # an hour is 60m: Flagger's interval pattern knows only minutes and seconds
    assert canary.flagger_canary(options)["spec"]["analysis"]["interval"] == "60m"
    assert canary.interval(GenerateOptions(canary_interval_seconds=90)) == "90s"


def broken(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("which", "path", "value", "message"),
    [
        # a misspelt field: refused, as kubectl --validate=strict refuses it
        (0, ("spec", "metrics", 0, "succesCondition"), "result[0] < 1", "succesCondition"),
        (0, ("spec", "metrics", 0, "count"), [5], "is not valid under any of the given schemas"),
        (0, ("spec", "args", 0), {"value": "no name"}, "'name' is a required property"),
        (1, ("spec", "provider", "type"), "prom", "is not one of"),
        (-1, ("spec", "analysis", "metrics", 0, "interval"), "a minute", "does not match"),
        (-1, ("spec", "analysis", "metrics", 0, "thresholdRange", "max"), "1%", "not of type"),
        (0, ("apiVersion",), "argoproj.io/v1beta1", "no served CustomResourceDefinition"),
        (-1, ("kind",), "Canaries", "no served CustomResourceDefinition"),
    ],
)
def test_a_broken_object_fails_validation(
    which: int, path: tuple[Any, ...], value: Any, message: str
) -> None:
    doc = generated_objects()[which]
    validate_custom_resource(doc)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_custom_resource(broken(doc, path, value))


# --- what they check ------------------------------------------------------------------------------


def test_argo_analysis_template_checks_the_canary_against_limits_and_the_stable_version() -> None:
    (template,) = committed(ANALYSIS_TEMPLATE_PATH)
    assert template["metadata"]["name"] == canary.ANALYSIS_TEMPLATE
    assert [a["name"] for a in template["spec"]["args"]] == list(ARGS)
    # the version arguments have no default: an analysis without them fails to start
    assert [a.get("value") for a in template["spec"]["args"]] == [
        "default",
        "model-server",
        None,
        None,
        None,
    ]
    metrics = template["spec"]["metrics"]
    assert [m["name"] for m in metrics] == list(CHECKS)
    limits = dict(zip(CHECKS, (0.01, 0.01, 0.5, 1.2), strict=True))
    for metric in metrics:
        assert (metric["interval"], metric["count"], metric["failureLimit"]) == ("1m", 5, 1)
        assert metric["successCondition"] == f"result[0] <= {limits[metric['name']]}"
        assert metric["failureCondition"] == f"result[0] > {limits[metric['name']]}"
        prometheus = metric["provider"]["prometheus"]
        assert prometheus["address"] == OPTIONS.prometheus_url
        query = prometheus["query"]
        assert "{{args.canary-version}}" in query and "[1m]" in query
        assert ("{{args.stable-version}}" in query) == (metric["name"] in RELATIVE)


def test_every_check_selects_one_version_of_one_model_in_the_workload() -> None:
    for check in canary.checks(OPTIONS):
        query = render_argo(check.query(canary.argo_placeholders(OPTIONS)), ARGS)
        versions = ("2", "1") if check.name in RELATIVE else ("2",)
        for version in versions:
            assert promql.model_version("serving", "model-server", "resnet", version) in query
        assert 'model_version="1"' in query or check.name not in RELATIVE
        assert query == render_flagger(
            check.query(canary.flagger_placeholders()), FLAGGER_MODEL, FLAGGER_VARIABLES
        ), "Argo's and Flagger's queries differ only in how they spell their variables"


def test_workload_pods_match_deployment_rollout_and_flagger_primary_pods() -> None:
    matcher = promql.workload_pods("model-server")
    regex = matcher.split("=~", 1)[1].strip('"')
    for pod in ("model-server-7d9f8b6c5d-x7k2p", "model-server-primary-5c4b7d8f9-abcde"):
        assert re.fullmatch(regex, pod), pod
    for pod in ("model-server-gpu-7d9f8b6c5d-x7k2p", "other-7d9f8b6c5d-x7k2p", "model-server-0"):
        assert not re.fullmatch(regex, pod), pod


def test_flagger_templates_and_canary() -> None:
    templates = committed(METRIC_TEMPLATES_PATH)
    assert [t["metadata"]["name"] for t in templates] == [f"inferwatch-{c}" for c in CHECKS]
    for template in templates:
        assert template["spec"]["provider"] == {
            "type": "prometheus",
            "address": OPTIONS.prometheus_url,
        }
        query = template["spec"]["query"]
        for variable in ("{{ namespace }}", "{{ target }}", "{{ interval }}"):
            assert variable in query
        assert "{{ variables.canary_version }}" in query
    (example,) = committed(CANARY_PATH)
    spec = example["spec"]
    assert spec["targetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "model-server",
    }
    assert spec["service"] == {
        "port": kubernetes.SERVICE_PORT,
        "targetPort": kubernetes.PROXY_PORT_NAME,
    }
    analysis = spec["analysis"]
    assert (analysis["interval"], analysis["threshold"]) == ("1m", 2)
    assert [
        (m["name"], m["templateRef"], m["thresholdRange"], m["templateVariables"])
        for m in analysis["metrics"]
    ] == [
        (
            name,
            {"name": f"inferwatch-{name}"},
            {"max": limit},
            {
                "model": "image-classifier",
                "canary_version": "2",
                "stable_version": "1",
            },
        )
        for name, limit in zip(CHECKS, (0.01, 0.01, 0.5, 1.2), strict=True)
    ]


def test_thresholds_follow_the_options(tmp_path: Path) -> None:
    config = tmp_path / "options.yaml"
    config.write_text(
        "canary_interval_seconds: 120\ncanary_count: 8\ncanary_failure_limit: 2\n"
        "canary_max_error_ratio: 0.002\ncanary_max_error_increase: 0.001\n"
        "canary_max_p95_seconds: 2\ncanary_max_p95_ratio: 1.5\n"
    )
    options = load_options(config, {})
    files = generate.render(options)
    (template,) = yaml.safe_load_all(files[ANALYSIS_TEMPLATE_PATH])
    conditions = [m["successCondition"] for m in template["spec"]["metrics"]]
    assert conditions == [
        "result[0] <= 0.002",
        "result[0] <= 0.001",
        "result[0] <= 2",
        "result[0] <= 1.5",
    ]
    for metric in template["spec"]["metrics"]:
        assert (metric["interval"], metric["count"], metric["failureLimit"]) == ("2m", 8, 2)
        assert "[2m]" in metric["provider"]["prometheus"]["query"]
    (example,) = yaml.safe_load_all(files[CANARY_PATH])
    assert example["spec"]["analysis"]["threshold"] == 3
    assert [m["thresholdRange"]["max"] for m in example["spec"]["analysis"]["metrics"]] == [
        0.002,
        0.001,
        2,
        1.5,
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("canary_interval_seconds", 0, "canary_interval_seconds must be positive"),
        ("canary_count", 0, "canary_count must be at least 1"),
        ("canary_failure_limit", 5, "canary_failure_limit must be 0 or more and less than"),
        ("canary_max_error_ratio", 1.5, "canary_max_error_ratio must be a fraction"),
        ("canary_max_error_increase", -0.1, "canary_max_error_increase must be a fraction"),
        ("canary_max_p95_seconds", 0.0, "canary_max_p95_seconds must be positive"),
        ("canary_max_p95_ratio", 0.9, "canary_max_p95_ratio must be at least 1"),
        ("canary_model", "", "canary_model must not be empty"),
        ("stable_version", "2", "canary_version and stable_version must differ"),
    ],
)
def test_bad_canary_options_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GenerateOptions(**{field: value})  # type: ignore[arg-type]


# --- the judges the live test uses, checked on their own ---------------------------------------


def test_argo_phase_follows_argo() -> None:
    metric = {"successCondition": "result[0] <= 0.01", "failureCondition": "result[0] > 0.01"}
    assert argo_phase(metric, [0.0]) == "Successful"
    assert argo_phase(metric, [0.25]) == "Failed"
    assert argo_phase(metric, [float("nan")]) == "Inconclusive"  # no inference in the window
    assert argo_phase(metric, []) == "Error"  # no series: a misspelt version
    assert argo_phase({"successCondition": "result[0] <= 0.01"}, [float("nan")]) == "Failed"


def test_flagger_passes_follows_flagger() -> None:
    metric = {"thresholdRange": {"max": 1.2}}
    assert flagger_passes(metric, [1.1]) and not flagger_passes(metric, [1.3])
    assert not flagger_passes(metric, []) and not flagger_passes(metric, [float("nan")])


# --- PromQL ---------------------------------------------------------------------------------------


def promtool_check(promtool: str, tmp_path: Path, exprs: list[str]) -> str:
    groups = [
        {
            "name": "canary",
            "rules": [{"record": f"check:{i}", "expr": e} for i, e in enumerate(exprs)],
        }
    ]
    path = tmp_path / "canary-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_every_canary_query_parses_once_its_variables_are_filled(
    promtool: str, tmp_path: Path
) -> None:
    (template,) = committed(ANALYSIS_TEMPLATE_PATH)
    exprs = [
        render_argo(m["provider"]["prometheus"]["query"], ARGS) for m in template["spec"]["metrics"]
    ]
    exprs += [
        render_flagger(t["spec"]["query"], FLAGGER_MODEL, FLAGGER_VARIABLES)
        for t in committed(METRIC_TEMPLATES_PATH)
    ]
    assert len(exprs) == 8
    assert promtool_check(promtool, tmp_path, exprs) == ""
    assert "parse error" in promtool_check(promtool, tmp_path, [exprs[0] + ")"])


# --- the README's snippets --------------------------------------------------------------------


def readme_snippets() -> list[dict[str, Any]]:
    """The YAML blocks of the README's "Canary a model version" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Canary a model version", 1)[1].split("\n### ", 1)[0]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def test_the_readme_version_label_is_what_the_generated_sidecar_reads() -> None:
    pod_template = readme_snippets()[0]["template"]
    (deployment,) = committed(f"{kubernetes.BASE}/deployment.yaml")
    generated = deployment["spec"]["template"]["metadata"]["labels"]
    labels = pod_template["metadata"]["labels"]
    assert labels == {**generated, kubernetes.VERSION_LABEL: "2"}
    sidecar = next(
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == kubernetes.SIDECAR_CONTAINER
    )
    env = {v["name"]: v for v in sidecar["env"]}
    field = env["INFERWATCH_SIDECAR_DEFAULT_VERSION"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == f"metadata.labels['{kubernetes.VERSION_LABEL}']"


def test_the_readme_rollout_and_canary_use_the_generated_templates() -> None:
    _labels, rollout, example = readme_snippets()
    assert (rollout["apiVersion"], rollout["kind"]) == (canary.ARGO_API_VERSION, "Rollout")
    (template,) = committed(ANALYSIS_TEMPLATE_PATH)
    (step,) = [
        s["analysis"] for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s
    ]
    assert step["templates"] == [{"templateName": template["metadata"]["name"]}]
    given = {a["name"] for a in step["args"]}
    declared = {a["name"]: a for a in template["spec"]["args"]}
    assert given <= set(declared)
    assert {n for n, a in declared.items() if "value" not in a} <= given, "a required arg missing"
    assert rollout["spec"]["workloadRef"]["name"] == "model-server"
    assert rollout["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "model-server"}

    validate_custom_resource(example)
    (generated,) = committed(CANARY_PATH)
    assert {k: v for k, v in example["spec"].items() if k != "analysis"} == {
        k: v for k, v in generated["spec"].items() if k != "analysis"
    }
    analysis, generated_analysis = example["spec"]["analysis"], generated["spec"]["analysis"]
    assert {k: v for k, v in analysis.items() if k != "metrics"} == {
        k: v for k, v in generated_analysis.items() if k != "metrics"
    }
    metrics = {m["name"]: m for m in generated_analysis["metrics"]}
    for metric in example["spec"]["analysis"]["metrics"]:
        assert metric == metrics[metric["name"]]
