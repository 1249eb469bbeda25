"""The metric schema: naming conventions, the p95 accuracy of the latency buckets, one source."""

from __future__ import annotations

import ast
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from support.metrics import histogram_quantile, lognormal_buckets
from support.prometheus import promtool_check_metrics

from inferwatch import schema

ROOT = Path(__file__).resolve().parent.parent


def test_names_follow_prometheus_conventions() -> None:
    names = [f.name for f in schema.FAMILIES]
    assert len(names) == len(set(names)), "duplicate family name"
    for family in schema.FAMILIES:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", family.name), family.name
        assert family.help.endswith("."), family.name
        if family.kind == "counter":
            assert family.name.endswith("_total"), family.name
        else:
            assert not family.name.endswith("_total"), family.name
        if family.unit:
            assert f"_{family.unit}" in family.name, family.name
        if family.kind == "histogram":
            assert family.buckets, family.name
            assert list(family.buckets) == sorted(set(family.buckets)), family.name
            assert math.inf not in family.buckets  # prometheus_client adds +Inf itself
        for label in family.labels:
            assert label not in ("le", "quantile", "job", "instance"), (family.name, label)


def test_every_inference_family_carries_source() -> None:
    for family in schema.INFERENCE_FAMILIES:
        assert family.labels[0] == "source", family.name
        assert "model_name" in family.labels, family.name


def test_lookup_by_series_name() -> None:
    assert schema.by_name("model_inference_duration_seconds_bucket") is schema.INFERENCE_DURATION
    assert schema.by_name("model_inference_total") is schema.INFERENCE_TOTAL
    with pytest.raises(KeyError):
        schema.by_name("model_inference")


def test_every_family_exposes_cleanly(promtool: str) -> None:
    registry = CollectorRegistry()
    for family in schema.FAMILIES:
        metric = family.create(registry)
        labels = [f"v{i}" for i in range(len(family.labels))]
        child = metric.labels(*labels) if labels else metric
        if family.kind == "histogram":
            child.observe(0.1)  # type: ignore[union-attr]
        elif family.kind == "counter":
            child.inc()  # type: ignore[union-attr]
        else:
            child.set(1)  # type: ignore[union-attr]
    text = generate_latest(registry).decode()
    assert promtool_check_metrics(promtool, text) == ""
    for family in schema.FAMILIES:
        assert f"# TYPE {family.name} {family.kind}" in text


# --- bucket accuracy ----------------------------------------------------------------------------

SEED_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5)


def worst_p95_error(
    bounds: tuple[float, ...], sigmas: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
) -> float:
    """Largest relative p95 error over lognormal latencies with p95 in 50-200 ms."""
    worst = 0.0
    for p95_ms in range(50, 201):
        p95 = p95_ms / 1000
        for sigma in sigmas:
            estimate = histogram_quantile(0.95, lognormal_buckets(bounds, p95, sigma))
            worst = max(worst, abs(estimate - p95) / p95)
    return worst


def test_latency_buckets_estimate_p95_within_ten_percent_near_100ms() -> None:
    assert worst_p95_error(schema.LATENCY_BUCKETS) < 0.07
    assert worst_p95_error(schema.LATENCY_BUCKETS, sigmas=(0.1, 0.25, 0.5, 1.0)) < 0.04


def worst_error_over(
    bounds: tuple[float, ...],
    p95s: range,
    scale: float,
    sigmas: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0),
) -> float:
    """Largest relative p95 error over lognormal latencies whose p95 is each of
    ``p95s`` times ``scale`` seconds."""
    worst = 0.0
    for step in p95s:
        p95 = step * scale
        for sigma in sigmas:
            estimate = histogram_quantile(0.95, lognormal_buckets(bounds, p95, sigma))
            worst = max(worst, abs(estimate - p95) / p95)
    return worst


def test_ttft_buckets_estimate_p95_within_ten_percent_from_half_a_second_to_two() -> None:
    # LLM TTFT SLOs sit anywhere in 0.5-2 s: every 10 ms of that range (worst seen 5.7%).
    assert worst_error_over(schema.TTFT_BUCKETS, range(50, 201), 0.01) < 0.06
    assert worst_error_over(schema.TTFT_BUCKETS, range(50, 201), 0.01, (0.1, 0.25, 0.5, 1.0)) < 0.04


def test_tpot_buckets_estimate_p95_within_ten_percent_from_20_to_100ms() -> None:
    # TPOT SLOs at 20-100 ms, every 0.5 ms (worst seen 5.1%) ...
    assert worst_error_over(schema.TPOT_BUCKETS, range(40, 201), 0.0005) < 0.06
    # ... and fast GPUs' 5 ms resolved: every 0.1 ms from 4 to 20 ms (worst seen 5.1%).
    assert worst_error_over(schema.TPOT_BUCKETS, range(40, 201), 0.0001) < 0.06


def test_the_latency_buckets_would_not_do_for_llms() -> None:
    # The same sweeps tell the request-latency buckets apart: LLM families need their own.
    assert worst_error_over(schema.LATENCY_BUCKETS, range(50, 201), 0.01) > 0.1
    assert worst_error_over(schema.LATENCY_BUCKETS, range(40, 201), 0.0001) > 0.1


def test_the_seed_buckets_would_not() -> None:
    # The same check fails for the buckets inferwatch replaced: it can tell good from bad.
    assert worst_p95_error(SEED_BUCKETS) > 0.5


def test_interpolation_matches_prometheus(tmp_path: Path, promtool: str) -> None:
    """histogram_quantile above gives what Prometheus itself computes for the same buckets."""
    cases = [(0.095, 0.3), (0.13, 0.1), (0.06, 1.0), (0.2, 0.05)]
    series, checks = [], []
    for i, (p95, sigma) in enumerate(cases):
        buckets = lognormal_buckets(schema.LATENCY_BUCKETS, p95, sigma, n=100_000)
        counted = [(le, float(round(count))) for le, count in buckets]
        for le, count in counted:
            le_text = "+Inf" if le == math.inf else repr(le)
            series.append(
                {"series": f'h_bucket{{case="{i}",le="{le_text}"}}', "values": f"{count:.0f}"}
            )
        expected = histogram_quantile(0.95, counted)
        quantile = f'histogram_quantile(0.95, h_bucket{{case="{i}"}})'
        checks.append(
            {
                "expr": f"abs({quantile} - {expected!r}) < bool 1e-9",
                "eval_time": "0m",
                "exp_samples": [{"labels": f'{{case="{i}"}}', "value": 1}],
            }
        )
    (tmp_path / "rules.yml").write_text("groups: []\n")
    test_file = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test_file))
    done = subprocess.run(
        [promtool, "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- one source of truth --------------------------------------------------------------------------


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_module_but_the_schema_spells_a_metric_name() -> None:
    names = {f.name for f in schema.FAMILIES} | {
        f.name.removesuffix("_total") for f in schema.FAMILIES
    }
    pattern = re.compile(
        r"\b(" + "|".join(re.escape(n) for n in sorted(names)) + r")(_bucket|_count|_sum)?\b"
    )
    offenders = []
    for path in sorted((ROOT / "inferwatch").rglob("*.py")):
        if path.name == "schema.py":
            continue
        for node in _string_constants(ast.parse(path.read_text(), str(path))):
            match = pattern.search(node.value)
            if match:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {match.group(0)}")
    assert offenders == []


def test_llm_buckets_hold_every_genai_boundary() -> None:
    """The OTLP GenAI export re-counts our buckets onto the conventions' boundaries: exact
    when each of theirs is one of ours."""
    from inferwatch import otlp_metrics

    assert set(otlp_metrics.GEN_AI_TTFT_BUCKETS) <= set(schema.TTFT_BUCKETS)
    assert set(otlp_metrics.GEN_AI_TPOT_BUCKETS) <= set(schema.TPOT_BUCKETS)
