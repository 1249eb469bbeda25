"""Generated Grafana dashboards: complete panels, known metric names, PromQL promtool parses."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferwatch import schema
from inferwatch.generate import dashboards, promql, rules
from inferwatch.generate.dashboards import DATASOURCE, panel_queries
from inferwatch.generate.options import GenerateOptions

OPTIONS = GenerateOptions()
BOARDS = dashboards.dashboards(OPTIONS)
OVERVIEW = BOARDS["inferwatch-overview.json"]
LLM = BOARDS["inferwatch-llm.json"]
GPU = BOARDS["inferwatch-gpu.json"]
AUTOSCALING = BOARDS["inferwatch-autoscaling.json"]

# Series that are not ours, from kube-state-metrics: spelled here on purpose, so that a typo in
# the dashboards module fails the test instead of being copied into it.
KUBE_STATE_METRICS = {
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "kube_horizontalpodautoscaler_spec_min_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
}
GRAFANA_BUILTINS = {"__rate_interval"}
# Concrete values for Grafana's variables, so promtool sees the query Grafana would send.
VALUES = {
    "__rate_interval": "1m",
    "namespace": "serving",
    "model": "resnet|llama",
    "instance": "10.0.0.7:9464",
    "gpu": "0",
    "hpa": "model-server",
}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows, which only group."""
    return [p for p in board["panels"] if p["type"] != "row"]


def by_title(board: dict[str, Any], title: str) -> dict[str, Any]:
    (panel,) = [p for p in board["panels"] if p["title"] == title]
    return panel


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        return VALUES[match.group(1) or match.group(2)]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def variable_selectors(board: dict[str, Any]) -> list[str]:
    """The series selector inside each label_values(selector, label) variable query."""
    out = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
            assert match, var["query"]
            out.append(match.group(1))
    return out


# --- a small PromQL lexer: the metric names an expression reads ----------------------------

KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may hold anything
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", text):
        token = match.group()
        if token.lower() in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # an operator, or a function / aggregation call
        names.add(token)
    return names


def test_metric_names_finds_series_and_skips_functions_labels_and_numbers() -> None:
    expr = (
        'sum by (le, pod) (rate(foo_bucket{a="b", c=~"x|y"}[5m])) / on (pod) group_left '
        'bar_total offset 1m > 1e-9 and vector(1) or ns:rule:sum{x!~"y.z"} * 0.95'
    )
    assert metric_names(expr) == {"foo_bucket", "bar_total", "ns:rule:sum"}


def known_names() -> set[str]:
    recorded = {
        rule["record"]
        for group in rules.recording_rules(OPTIONS)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    return recorded | KUBE_STATE_METRICS


def is_known(name: str) -> bool:
    try:
        schema.by_name(name)
    except KeyError:
        return name in known_names()
    return True


def test_a_misspelt_metric_name_is_caught() -> None:
    assert is_known(schema.INFERENCE_DURATION.bucket)
    assert is_known(promql.POD_P95_SECONDS)
    assert not is_known("model_inference_duration_second_bucket")
    assert not is_known("kube_horizontalpodautoscaler_status_current_replica")


# --- the dashboards -------------------------------------------------------------------------


def test_four_dashboards_with_stable_uids_and_settings() -> None:
    assert {name: board["uid"] for name, board in BOARDS.items()} == {
        "inferwatch-overview.json": "inferwatch-overview",
        "inferwatch-llm.json": "inferwatch-llm",
        "inferwatch-gpu.json": "inferwatch-gpu",
        "inferwatch-autoscaling.json": "inferwatch-autoscaling",
    }
    for board in BOARDS.values():
        assert board["schemaVersion"] == 39
        assert board["editable"] is True
        assert board["refresh"] == "30s"
        assert board["time"] == {"from": "now-1h", "to": "now"}
        assert board["tags"] == ["inferwatch"]
        assert board["id"] is None  # provisioned: Grafana assigns the database id
        assert board["title"].startswith("inferwatch / ")


def test_output_is_deterministic() -> None:
    first, second = (
        dashboards.dashboards(GenerateOptions()),
        dashboards.dashboards(GenerateOptions()),
    )
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert dashboards.provisioning(GenerateOptions()) == dashboards.provisioning(GenerateOptions())


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_has_datasource_targets_gridpos_and_a_unique_id(name: str) -> None:
    board = BOARDS[name]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    titles = [p["title"] for p in board["panels"]]
    assert len(titles) == len(set(titles)), "titles identify panels in reports"
    for panel in board["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            assert panel["targets"] == [] and panel["gridPos"]["w"] == 24
            continue
        assert panel["type"] in {"timeseries", "stat", "heatmap"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids == [chr(ord("A") + i) for i in range(len(ref_ids))], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"].strip() and target["legendFormat"], panel["title"]
        unit = (
            panel["options"]["yAxis"]["unit"]
            if panel["type"] == "heatmap"
            else panel["fieldConfig"]["defaults"]["unit"]
        )
        assert unit, f"{panel['title']} has no unit"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panels_do_not_overlap(name: str) -> None:
    boxes = [(p["title"], p["gridPos"]) for p in BOARDS[name]["panels"]]
    for (a, pa), (b, pb) in itertools.combinations(boxes, 2):
        apart = (
            pa["x"] + pa["w"] <= pb["x"]
            or pb["x"] + pb["w"] <= pa["x"]
            or pa["y"] + pa["h"] <= pb["y"]
            or pb["y"] + pb["h"] <= pa["y"]
        )
        assert apart, f"{a!r} overlaps {b!r}"


def test_a_line_wider_than_the_grid_is_refused() -> None:
    panel = by_title(OVERVIEW, "Requests/s")
    with pytest.raises(ValueError, match="24 grid columns"):
        dashboards.line(4, (panel, 12), (panel, 13))


def test_template_variables() -> None:
    assert list(variables(OVERVIEW)) == ["datasource", "namespace", "model"]
    assert list(variables(LLM)) == ["datasource", "namespace", "model"]
    assert list(variables(GPU)) == ["datasource", "instance", "gpu"]
    assert list(variables(AUTOSCALING)) == ["datasource", "namespace", "hpa"]
    for board in BOARDS.values():
        source = variables(board)["datasource"]
        assert (source["type"], source["query"]) == ("datasource", "prometheus")
        assert source["current"]["value"] == OPTIONS.datasource_uid
        for var in board["templating"]["list"][1:]:
            assert var["type"] == "query" and var["datasource"] == DATASOURCE
            assert var["multi"] is True and var["includeAll"] is True
            # "All" as a regex matches series without the label too (a local stack)
            assert var["allValue"] == ".*"
            assert var["current"]["value"] == ["$__all"]
            assert var["definition"] == var["query"]
    assert variables(OVERVIEW)["namespace"]["query"] == (
        "label_values(model_inference_total, namespace)"
    )
    assert variables(OVERVIEW)["model"]["query"] == (
        'label_values(model_inference_total{namespace=~"$namespace"}, model_name)'
    )
    assert variables(LLM)["model"]["query"] == (
        'label_values(model_inference_tokens_total{namespace=~"$namespace"}, model_name)'
    )
    assert variables(GPU)["gpu"]["query"] == (
        'label_values(gpu_memory_total_bytes{instance=~"$instance"}, gpu)'
    )


def test_datasource_variable_follows_the_options() -> None:
    board = dashboards.dashboards(GenerateOptions(datasource_uid="thanos"))["inferwatch-gpu.json"]
    assert variables(board)["datasource"]["current"]["value"] == "thanos"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_variable_a_query_uses_is_defined(name: str) -> None:
    board = BOARDS[name]
    defined = set(variables(board)) | GRAFANA_BUILTINS
    used = set()
    for _, expr in panel_queries(board):
        used |= {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", expr)}
    for var in board["templating"]["list"]:
        used |= {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", var["query"])}
    assert used <= defined, used - defined
    assert used >= defined - {"datasource"}, "a variable no query reads"


def test_every_expression_uses_only_known_metric_names() -> None:
    seen = set()
    for board in BOARDS.values():
        for title, expr in panel_queries(board) + [
            ("variable", s) for s in variable_selectors(board)
        ]:
            names = metric_names(expr)
            unknown = {n for n in names if not is_known(n)}
            assert not unknown, f"{title}: {unknown} in {expr}"
            seen |= names
    # every inference family has a panel
    assert {schema.by_name(n) for n in seen if n not in known_names()} >= set(
        schema.INFERENCE_FAMILIES
    )


def test_every_gpu_family_but_two_has_a_panel() -> None:
    shown = {schema.by_name(n) for _, expr in panel_queries(GPU) for n in metric_names(expr)}
    # free = total - used, drawn as the gap in "Memory used"; energy is the integral of "Power"
    assert set(schema.GPU_FAMILIES) - shown == {schema.GPU_MEMORY_FREE, schema.GPU_ENERGY}


def promtool_check_rules(promtool: str, tmp_path: Path, expressions: list[str]) -> str:
    """Run `promtool check rules` on the expressions as recording rules; '' when they parse."""
    groups = [
        {
            "name": "dashboards",
            "rules": [
                {"record": f"dashboard:query_{i}:check", "expr": expr}
                for i, expr in enumerate(expressions)
            ],
        }
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_every_expression_parses_with_promtool(promtool: str, tmp_path: Path) -> None:
    expressions = [
        substitute(expr)
        for board in BOARDS.values()
        for expr in [e for _, e in panel_queries(board)] + variable_selectors(board)
    ]
    assert len(expressions) > 50
    assert not any("$" in e for e in expressions)
    assert promtool_check_rules(promtool, tmp_path, expressions) == ""


def test_the_promtool_check_fails_on_a_broken_expression(promtool: str, tmp_path: Path) -> None:
    broken = "sum by (le) (rate(model_batch_size_bucket[1m])"
    assert "parse error" in promtool_check_rules(promtool, tmp_path, [broken])


# --- what the panels show -------------------------------------------------------------------


def test_units() -> None:
    expected = {
        OVERVIEW["uid"]: {
            "Request rate per model": "reqps",
            "Error ratio per model": "percentunit",
            "Request rate per version": "reqps",
            "Error ratio per version": "percentunit",
            "p95 latency per version": "s",
            "Latency: sidecar": "s",
            "Latency: app": "s",
            "Time to first byte": "s",
            "Queue wait": "s",
            "Queue length per model": "short",
            "Tokens/s per model": "short",
        },
        LLM["uid"]: {
            "TTFT p95": "s",
            "TPOT p95": "s",
            "Truncated": "percentunit",
            "TTFT: sidecar": "s",
            "TTFT: app": "s",
            "TPOT: sidecar": "s",
            "TPOT: app": "s",
            "End-to-end: sidecar": "s",
            "End-to-end: app": "s",
            "Input tokens/s": "short",
            "Output tokens/s": "short",
            "Requests/s": "reqps",
            "Generations by finish reason": "reqps",
            "Generated tokens/s": "short",
            "Truncation ratio": "percentunit",
            "Running": "short",
            "Waiting": "short",
        },
        GPU["uid"]: {
            "GPU utilization": "percentunit",
            "Memory used": "bytes",
            "Memory per process": "bytes",
            "Temperature": "celsius",
            "Power": "watt",
            "Clocks": "hertz",
        },
        AUTOSCALING["uid"]: {
            "Queue length per pod (inference_queue_length)": "short",
            "p95 latency per pod (p95_latency_ms)": "ms",
            "Replicas": "short",
            "Scaling pressure": "percentunit",
        },
    }
    for board in BOARDS.values():
        for title, unit in expected[board["uid"]].items():
            assert by_title(board, title)["fieldConfig"]["defaults"]["unit"] == unit, title


def test_latency_panels_sidecar_and_app_side_by_side_with_exemplars() -> None:
    sidecar, app = by_title(OVERVIEW, "Latency: sidecar"), by_title(OVERVIEW, "Latency: app")
    assert sidecar["gridPos"]["y"] == app["gridPos"]["y"]
    assert sidecar["gridPos"]["x"] + sidecar["gridPos"]["w"] == app["gridPos"]["x"]
    for panel, source in ((sidecar, "sidecar"), (app, "app")):
        assert exprs(panel) == [
            f"histogram_quantile({q}, sum by (model_name, le) (rate("
            'model_inference_duration_seconds_bucket{namespace=~"$namespace", '
            f'model_name=~"$model", source="{source}"}}[$__rate_interval])))'
            for q in ("0.5", "0.95", "0.99")
        ]
        assert [t["legendFormat"] for t in panel["targets"]] == [
            "{{model_name}} p50",
            "{{model_name}} p95",
            "{{model_name}} p99",
        ]
    # exemplars on every latency quantile, nowhere else
    for board in BOARDS.values():
        for panel in panels(board):
            for target in panel["targets"]:
                latency = (
                    target["expr"].startswith("histogram_quantile") and panel["type"] != "stat"
                )
                assert target["exemplar"] is latency, (panel["title"], target["expr"])


def test_llm_latency_panels_sidecar_and_app_side_by_side_against_the_objectives() -> None:
    options = GenerateOptions(ttft_threshold_seconds=1.05, tpot_threshold_seconds=0.05)
    board = dashboards.dashboards(options)["inferwatch-llm.json"]
    for kind, family, threshold in (
        ("TTFT", schema.TIME_TO_FIRST_TOKEN, 1.05),
        ("TPOT", schema.TIME_PER_OUTPUT_TOKEN, 0.05),
        ("End-to-end", schema.INFERENCE_DURATION, None),
    ):
        sidecar, app = by_title(board, f"{kind}: sidecar"), by_title(board, f"{kind}: app")
        assert sidecar["gridPos"]["y"] == app["gridPos"]["y"]
        assert sidecar["gridPos"]["x"] + sidecar["gridPos"]["w"] == app["gridPos"]["x"]
        for panel, source in ((sidecar, "sidecar"), (app, "app")):
            assert exprs(panel) == [
                f"histogram_quantile({q}, sum by (model_name, le) (rate({family.bucket}"
                f'{{namespace=~"$namespace", model_name=~"$model", source="{source}"}}'
                "[$__rate_interval])))"
                for q in ("0.5", "0.95", "0.99")
            ]
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            if threshold is None:
                assert len(steps) == 1
            else:
                assert steps[1]["value"] == threshold
        stat_panel = by_title(board, f"{kind} p95") if threshold else None
        if stat_panel:
            assert stat_panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == (
                threshold
            )


def test_llm_throughput_and_finish_reasons() -> None:
    selected = 'namespace=~"$namespace", model_name=~"$model"'
    for title, kind in (("Input tokens/s", "input"), ("Output tokens/s", "output")):
        assert exprs(by_title(LLM, title)) == [
            "sum by (source, model_name, type) (rate(model_inference_tokens_total"
            f'{{{selected}, type="{kind}"}}[$__rate_interval]))'
        ]
    assert exprs(by_title(LLM, "Generations by finish reason")) == [
        "sum by (source, model_name, reason) (rate(model_inference_finish_reasons_total"
        f"{{{selected}}}[$__rate_interval]))"
    ]
    generations = (
        "sum by (source, model_name) (rate(model_inference_finish_reasons_total"
        f"{{{selected}}}[$__rate_interval]))"
    )
    # 0 rather than no data while nothing was truncated (the length series appears on first use)
    assert exprs(by_title(LLM, "Truncation ratio")) == [
        "(sum by (source, model_name) (rate(model_inference_finish_reasons_total"
        f'{{{selected}, reason="length"}}[$__rate_interval])) or 0 * {generations}) / '
        f"{generations}"
    ]
    options = GenerateOptions(truncation_alert_ratio=0.25)
    board = dashboards.dashboards(options)["inferwatch-llm.json"]
    for title in ("Truncation ratio", "Truncated"):
        steps = by_title(board, title)["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[1]["value"] == 0.25
    # the engine's load, from every source (the model server's own too, once merged)
    assert [metric_names(e) for e in exprs(by_title(LLM, "Running"))] == [
        {schema.ACTIVE_REQUESTS.name}
    ]
    assert [metric_names(e) for e in exprs(by_title(LLM, "Waiting"))] == [
        {schema.QUEUE_LENGTH.name}
    ]
    assert "source=" not in exprs(by_title(LLM, "Waiting"))[0]


def test_batch_size_heatmaps_read_the_buckets_as_they_are() -> None:
    for title, source in (
        ("Items per request (sidecar)", "sidecar"),
        ("Executed batch size (app)", "app"),
    ):
        panel = by_title(OVERVIEW, title)
        assert panel["type"] == "heatmap"
        assert panel["options"]["calculate"] is False
        (target,) = panel["targets"]
        assert (target["format"], target["legendFormat"]) == ("heatmap", "{{le}}")
        assert target["expr"] == (
            'sum by (le) (increase(model_batch_size_bucket{namespace=~"$namespace", '
            f'model_name=~"$model", source="{source}"}}[$__rate_interval]))'
        )


def test_tokens_per_second_by_type() -> None:
    assert exprs(by_title(OVERVIEW, "Tokens/s per model")) == [
        "sum by (source, model_name, type) (rate(model_inference_tokens_total"
        '{namespace=~"$namespace", model_name=~"$model"}[$__rate_interval]))'
    ]


def test_versions_row_compares_one_models_versions_side_by_side() -> None:
    titles = [p["title"] for p in OVERVIEW["panels"]]
    start = titles.index("Versions")
    assert OVERVIEW["panels"][start]["type"] == "row"
    row = [by_title(OVERVIEW, t) for t in titles[start + 1 : start + 6]]
    assert [p["title"] for p in row] == [
        "Request rate per version",
        "Error ratio per version",
        "p50 latency per version",
        "p95 latency per version",
        "p99 latency per version",
    ]
    assert [p["fieldConfig"]["defaults"]["unit"] for p in row] == [
        "reqps",
        "percentunit",
        "s",
        "s",
        "s",
    ]
    per_version = "sum by (source, model_name, model_version"
    for panel in row:
        (target,) = panel["targets"]
        assert per_version in target["expr"], panel["title"]
        assert 'model_name=~"$model"' in target["expr"]
        assert target["legendFormat"] == "{{model_name}} {{model_version}} ({{source}})"
    rate, errors, *latencies = (p["targets"][0]["expr"] for p in row)
    assert rate.startswith("sum by (source, model_name, model_version) (rate(model_inference_total")
    assert f'reason=~"{promql.SERVER_SIDE_REASONS_RE}"' in errors
    assert latencies == [
        f"histogram_quantile({q}, sum by (source, model_name, model_version, le) (rate("
        'model_inference_duration_seconds_bucket{namespace=~"$namespace", '
        'model_name=~"$model"}[$__rate_interval])))'
        for q in ("0.5", "0.95", "0.99")
    ]
    # side by side: the rate and the error ratio on one line, the three percentiles on the next
    assert [(p["gridPos"]["x"], p["gridPos"]["w"]) for p in row] == [
        (0, 12),
        (12, 12),
        (0, 8),
        (8, 8),
        (16, 8),
    ]


def test_error_ratio_counts_the_server_side_failures_the_slo_counts() -> None:
    (expr,) = exprs(by_title(OVERVIEW, "Error ratio per model"))
    assert f'reason=~"{promql.SERVER_SIDE_REASONS_RE}"' in expr
    assert set(promql.SERVER_SIDE_REASONS_RE.split("|")) == set(schema.SERVER_SIDE_REASONS)
    thresholds = by_title(OVERVIEW, "Error ratio per model")["fieldConfig"]["defaults"]
    assert thresholds["thresholds"]["steps"][1]["value"] == 0.001


def test_autoscaling_shows_the_hpa_metrics_against_the_targets_of_the_options() -> None:
    options = GenerateOptions(queue_length_target=7, p95_latency_target_ms=250)
    board = dashboards.dashboards(options)["inferwatch-autoscaling.json"]
    queue = by_title(board, "Queue length per pod (inference_queue_length)")
    assert exprs(queue) == [
        f'{promql.POD_QUEUE_LENGTH}{{namespace=~"$namespace"}}',
        f'avg by (namespace) ({promql.POD_QUEUE_LENGTH}{{namespace=~"$namespace"}})',
        "vector(7)",
    ]
    p95 = by_title(board, "p95 latency per pod (p95_latency_ms)")
    per_pod = f'1000 * ({promql.POD_P95_SECONDS}{{namespace=~"$namespace"}} >= 0)'
    assert exprs(p95) == [per_pod, f"avg by (namespace) ({per_pod})", "vector(250)"]
    # the target lines are drawn dashed
    for panel in (queue, p95):
        (override,) = panel["fieldConfig"]["overrides"]
        assert override["matcher"] == {"id": "byFrameRefID", "options": "C"}
    replicas = exprs(by_title(board, "Replicas"))
    assert [metric_names(e) for e in replicas] == [
        {"kube_horizontalpodautoscaler_status_current_replicas"},
        {"kube_horizontalpodautoscaler_status_desired_replicas"},
        {"kube_horizontalpodautoscaler_spec_max_replicas"},
        {"kube_horizontalpodautoscaler_spec_min_replicas"},
    ]
    pressure = exprs(by_title(board, "Scaling pressure"))
    assert pressure[0].endswith(" / 7") and pressure[1].endswith(" / 250")


def test_autoscaling_shows_which_sources_feed_the_queue_signal() -> None:
    panel = by_title(AUTOSCALING, "Queue length by source, per pod")
    assert exprs(panel) == [
        'sum by (namespace, pod, source) (model_inference_queue_length{namespace=~"$namespace"})'
    ]
    assert panel["targets"][0]["legendFormat"] == "{{namespace}}/{{pod}} {{source}}"
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    for source in ("sidecar", "app", "server"):
        assert f"({source})" in panel["description"]
    # Next to the two HPA metrics, in the HPA metrics row.
    queue = by_title(AUTOSCALING, "Queue length per pod (inference_queue_length)")
    assert (panel["gridPos"]["y"], panel["gridPos"]["w"]) == (queue["gridPos"]["y"], 8)


def test_the_llm_profile_draws_the_kv_cache_instead_of_the_p95(
    promtool: str, tmp_path: Path
) -> None:
    options = GenerateOptions(autoscaling_profile="llm", kv_cache_usage_target=0.75)
    board = dashboards.dashboards(options)["inferwatch-autoscaling.json"]
    titles = {p["title"] for p in panels(board)}
    assert "p95 latency per pod (p95_latency_ms)" not in titles
    kv = by_title(board, "KV-cache usage per pod (kv_cache_usage_ratio)")
    per_pod = 'max by (namespace, pod) (model_kv_cache_usage_ratio{namespace=~"$namespace"})'
    assert exprs(kv) == [per_pod, f"avg by (namespace) ({per_pod})", "vector(0.75)"]
    pressure = exprs(by_title(board, "Scaling pressure"))
    assert pressure[1] == f"avg by (namespace) ({per_pod}) / 0.75"
    queries = [substitute(e) for _, e in panel_queries(board)]
    assert promtool_check_rules(promtool, tmp_path, queries) == ""


def test_gpu_thresholds_follow_the_alert_options() -> None:
    options = GenerateOptions(gpu_temperature_alert_celsius=80, gpu_memory_alert_ratio=0.9)
    board = dashboards.dashboards(options)["inferwatch-gpu.json"]
    for title, value in (("Temperature", 80), ("Memory used ratio", 0.9)):
        defaults = by_title(board, title)["fieldConfig"]["defaults"]
        assert defaults["thresholds"]["steps"][1]["value"] == value
        assert defaults["custom"]["thresholdsStyle"]["mode"] == "dashed"


def test_panel_queries_reads_collapsed_rows_and_skips_empty_targets() -> None:
    board = {
        "panels": [
            {"title": "a", "type": "timeseries", "targets": [{"expr": "x", "refId": "A"}]},
            {
                "title": "row",
                "type": "row",
                "panels": [
                    {
                        "title": "b",
                        "targets": [{"expr": "y", "refId": "A"}, {"expr": "", "refId": "B"}],
                    }
                ],
            },
        ]
    }
    assert panel_queries(board) == [("a", "x"), ("b", "y")]


# --- provisioning ---------------------------------------------------------------------------


def test_provisioning_files() -> None:
    options = GenerateOptions(datasource_uid="prom-main", prometheus_url="http://prometheus:9090")
    files = dashboards.provisioning(options)
    assert set(files) == {
        "provisioning/datasources/inferwatch.yaml",
        "provisioning/dashboards/inferwatch.yaml",
    }
    sources = yaml.safe_load(files["provisioning/datasources/inferwatch.yaml"])
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (
        "prom-main",
        "prometheus",
        "http://prometheus:9090",
    )
    assert source["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "traces"}
    ]
    providers = yaml.safe_load(files["provisioning/dashboards/inferwatch.yaml"])
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/inferwatch"
