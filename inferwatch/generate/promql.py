"""Every PromQL expression the dashboards, the rules and the autoscaling configs send.

Each query is a function of the selectors (label matchers) its caller chooses: the dashboards
pass Grafana variables and ``$__rate_interval``, the rules fixed labels and windows. So the HPA,
the dashboards and the alerts cannot disagree about what "p95" or "error ratio" means, and a
renamed family cannot leave a query behind. Recording rule names follow Prometheus'
``level:metric:operations`` convention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inferwatch import schema

# Labels every per-model rule keeps: the pod's namespace, which layer measured, which model.
MODEL_LABELS = ("namespace", "source", "model_name")
POD_LABELS = ("namespace", "pod")

SERVER_SIDE_REASONS_RE = "|".join(schema.SERVER_SIDE_REASONS)
# The latency percentiles recorded per model and drawn on the dashboards.
QUANTILES = (50, 95, 99)


# --- spelling: durations, bucket bounds, label lists, selectors -------------------------------


def duration(seconds: float) -> str:
    """A Prometheus duration: 300 -> '5m', 86400 -> '1d', 2.5 -> '2500ms'."""
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def seconds(text: str) -> float:
    """The inverse of duration(): '5m' -> 300."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


def le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it in the ``le`` label."""
    return repr(float(bound))


def by(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def ne(label: str, value: str) -> str:
    return f'{label}!="{value}"'


def matches(label: str, regex: str) -> str:
    return f'{label}=~"{regex}"'


def one_of(label: str, values: Sequence[str]) -> str:
    return matches(label, "|".join(values))


# The failures that spend the availability budget: not a client's 4xx, not a caller hanging up.
SERVER_SIDE = matches("reason", SERVER_SIDE_REASONS_RE)


def selector(*matchers: str, **labels: str) -> str:
    """``{a="1",b=~"x"}``, as rules and configs write it: keywords (equality) first."""
    return "{" + ",".join([*(eq(k, v) for k, v in labels.items()), *matchers]) + "}"


def series(metric: str, **labels: str) -> str:
    """One series, labels sorted: promtool's input notation."""
    return metric + selector(**dict(sorted(labels.items())))


def grafana_selector(*matchers: str, **labels: str) -> str:
    """A selector on Grafana variables: a keyword whose value is a variable ("$model") matches
    as a regex, since a variable's value is one (multi-value, "All")."""
    pairs = [matches(k, v) if v.startswith("$") else eq(k, v) for k, v in labels.items()]
    return "{" + ", ".join([*pairs, *matchers]) + "}"


# --- building blocks ----------------------------------------------------------------------------


def instant(metric: str, selector: str) -> str:
    return f"{metric}{selector}"


def rate(metric: str, selector: str, window: str) -> str:
    return f"rate({metric}{selector}[{window}])"


def increase(metric: str, selector: str, window: str) -> str:
    return f"increase({metric}{selector}[{window}])"


def sum_by(labels: Sequence[str], expr: str) -> str:
    return f"sum by ({by(labels)}) ({expr})"


def quantile(
    q: int, family: schema.Family, selector: str, labels: Sequence[str], window: str
) -> str:
    """The q-th percentile of a histogram family, per ``labels``."""
    buckets = sum_by([*labels, "le"], rate(family.bucket, selector, window))
    return f"histogram_quantile({q / 100:g}, {buckets})"


def total(expr: str) -> str:
    return f"sum({expr})"


def count(expr: str) -> str:
    return f"count({expr})"


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / {denominator}"


def vector(value: float) -> str:
    """A constant line (a target drawn next to the series it bounds)."""
    return f"vector({value})"


def average_per_namespace(expr: str) -> str:
    return f"avg by (namespace) ({expr})"


def ms_without_idle(seconds_expr: str) -> str:
    """Seconds as milliseconds; a pod without traffic (NaN) left out, as the adapter serves it."""
    return f"1000 * ({seconds_expr} >= 0)"


# --- inference: per model -------------------------------------------------------------------


def requests_per_second(selector: str, labels: Sequence[str], window: str) -> str:
    return sum_by(labels, rate(schema.INFERENCE_TOTAL.name, selector, window))


def failures_per_second(selector: str, labels: Sequence[str], window: str) -> str:
    """Every failure, by reason (client errors included)."""
    return sum_by([*labels, "reason"], rate(schema.INFERENCE_FAILURES.name, selector, window))


def error_ratio(
    failures_selector: str, requests_selector: str, labels: Sequence[str], window: str
) -> str:
    """Failures per inference; ``failures_selector`` picks which failures count."""
    return ratio(
        sum_by(labels, rate(schema.INFERENCE_FAILURES.name, failures_selector, window)),
        requests_per_second(requests_selector, labels, window),
    )


def gauge_sum(family: schema.Family, selector: str, labels: Sequence[str]) -> str:
    return sum_by(labels, instant(family.name, selector))


def kv_cache_usage_max(selector: str, labels: Sequence[str]) -> str:
    """The fullest KV cache (0-1) of each group: a ratio does not add up across engines."""
    return f"max by ({by(labels)}) ({instant(schema.KV_CACHE_USAGE.name, selector)})"


def tokens_per_second(selector: str, labels: Sequence[str], window: str) -> str:
    return sum_by([*labels, "type"], rate(schema.TOKENS.name, selector, window))


def bucket_increase(family: schema.Family, selector: str, window: str) -> str:
    """A histogram's buckets as they are, for a heatmap."""
    return sum_by(["le"], increase(family.bucket, selector, window))


def mean(family: schema.Family, selector: str, labels: Sequence[str], window: str) -> str:
    """A histogram's mean observation: sum over count."""
    return ratio(
        sum_by(labels, rate(family.sum, selector, window)),
        sum_by(labels, rate(family.count, selector, window)),
    )


def demo_summary(window: str) -> dict[str, str]:
    """The figures ``inferwatch demo`` prints each interval, over the whole local stack."""
    sidecar = selector(eq("source", schema.SOURCE_SIDECAR))
    errors = selector(eq("source", schema.SOURCE_SIDECAR), eq("status", schema.STATUS_ERROR))
    return {
        "rps": total(rate(schema.INFERENCE_TOTAL.name, sidecar, window)),
        "p95_ms": f"1000 * {quantile(95, schema.INFERENCE_DURATION, sidecar, (), window)}",
        "queue": total(schema.QUEUE_LENGTH.name),
        "errors": total(rate(schema.INFERENCE_TOTAL.name, errors, window)),
    }


# --- model versions: side by side, and canary analysis ---------------------------------------

# Per model version, as the dashboards compare them (each layer apart, as everywhere else).
VERSION_LABELS = ("source", "model_name", "model_version")


def workload_pods(workload: str) -> str:
    """The pods of a Deployment or an Argo Rollout named ``workload`` (a name, or a template
    variable that becomes one), and of Flagger's copy of it, ``<workload>-primary``: their pods
    are named ``<workload>[-primary]-<pod-template-hash>-<suffix>``."""
    return matches("pod", f"{workload}(-primary)?-[a-z0-9]+-[a-z0-9]+")


def model_version(namespace: str, workload: str, model: str, version: str) -> str:
    """One version of one model, as the sidecars in ``workload``'s pods measured it; whichever
    pods serve it (a canary ReplicaSet of its own, or the same pods as the stable version)."""
    return selector(
        workload_pods(workload),
        source=schema.SOURCE_SIDECAR,
        namespace=namespace,
        model_name=model,
        model_version=version,
    )


def version_error_ratio(version: str, window: str) -> str:
    """One version's server-side failures per inference over ``window``: one element, 0 with
    no failures, NaN with no inference (0/0), nothing when the version has no series at all."""
    failures = total(rate(schema.INFERENCE_FAILURES.name, _with(version, SERVER_SIDE), window))
    requests = total(rate(schema.INFERENCE_TOTAL.name, version, window))
    return f"({failures} or vector(0))\n/\n{requests}"


def version_p95(version: str, window: str) -> str:
    """One version's p95 latency in seconds over ``window``: one element (NaN with no traffic)."""
    return quantile(95, schema.INFERENCE_DURATION, version, (), window)


def error_ratio_increase(canary: str, stable: str, window: str) -> str:
    """How much higher the canary's error ratio is than the stable version's (a fraction)."""
    return f"({version_error_ratio(canary, window)})\n-\n({version_error_ratio(stable, window)})"


def p95_ratio(canary: str, stable: str, window: str) -> str:
    """The canary's p95 latency as a multiple of the stable version's."""
    return f"{version_p95(canary, window)}\n/\n{version_p95(stable, window)}"


# --- the sidecar ----------------------------------------------------------------------------


def upstream_ready(selector: str) -> str:
    """Per pod: 1 while the sidecar's model server answers its readiness check."""
    return f"min by ({by(POD_LABELS)}) ({schema.UPSTREAM_UP.name}{selector})"


def upstream_scrape_errors(selector: str, window: str) -> str:
    """Per pod and reason; 0 for a sidecar without any, so that every sidecar shows."""
    errors = sum_by(
        [*POD_LABELS, "reason"], rate(schema.UPSTREAM_SCRAPE_ERRORS.name, selector, window)
    )
    return f"{errors} or on ({by(POD_LABELS)}) (0 * {upstream_ready(selector)})"


# --- GPUs -----------------------------------------------------------------------------------


def gpu_memory_used_ratio(selector: str) -> str:
    return ratio(
        instant(schema.GPU_MEMORY_USED.name, selector),
        instant(schema.GPU_MEMORY_TOTAL.name, selector),
    )


def gpus_throttled(selector: str) -> str:
    """How many GPUs have their clocks held down, per reason."""
    return gauge_sum(schema.GPU_THROTTLED, selector, ["reason"])


def gpu_errors(family: schema.Family, selector: str, labels: Sequence[str], window: str) -> str:
    """New errors of a counter family (ECC, PCIe replays) per interval."""
    return sum_by(labels, increase(family.name, selector, window))


def gpu_collector_errors(errors_selector: str, gpus_selector: str, window: str) -> str:
    """Per instance and reason; 0 for a collector without any, so that every collector shows."""
    errors = sum_by(
        ["instance", "reason"], rate(schema.GPU_COLLECTOR_ERRORS.name, errors_selector, window)
    )
    age = f"max by (instance) ({instant(schema.GPU_SAMPLE_AGE.name, gpus_selector)})"
    return f"{errors} or on (instance) (0 * {age})"


# --- autoscaling: what the HPA scales on ------------------------------------------------------

POD_QUEUE_LENGTH = f"namespace_pod:{schema.QUEUE_LENGTH.name}:sum"
POD_P95_SECONDS = f"namespace_pod:{schema.INFERENCE_DURATION.name}:p95_rate1m"
# The sidecar's latency buckets per pod (models summed): the p95 rule and KEDA's deployment p95
# read this record, so neither rates the raw histogram (pods x models x 33 series) again; at
# 10,000 pods the raw deployment p95 took seconds (benchmarks/bench_autoscaling_scale.py).
POD_LATENCY_BUCKETS = f"namespace_pod_le:{schema.INFERENCE_DURATION.bucket}:rate1m"


# Per workload (a Deployment or an Argo Rollout): what KEDA's triggers read, a few series per
# workload whatever its pod count (the per-pod records made a 1,000-pod Deployment's p95 take
# about 100 ms at 10,000 pods, benchmarks/bench_autoscaling_scale.py). The workload is the
# pod's name less the ReplicaSet's two generated parts, so it needs nothing but the `pod` label
# every scrape config adds: no kube-state-metrics join, no relabelling of one PodMonitor.
WORKLOAD_LABELS = ("namespace", "workload")
WORKLOAD_QUEUE_LENGTH = f"namespace_workload:{schema.QUEUE_LENGTH.name}:sum"
WORKLOAD_LATENCY_BUCKETS = f"namespace_workload_le:{schema.INFERENCE_DURATION.bucket}:rate1m"
WORKLOAD_KV_CACHE_USAGE = f"namespace_workload:{schema.KV_CACHE_USAGE.name}:sum"
# A Deployment's (or a Rollout's) pods are named <workload>-<pod-template-hash>-<suffix>: the
# hash is at most 10 characters, the suffix 5 (Kubernetes' generateName). A pod named otherwise
# (a StatefulSet's <name>-0, a bare pod) is its own workload: never summed into another's.
POD_NAME_WORKLOAD_RE = "(.+?)(?:-[a-z0-9]{1,10}-[a-z0-9]{5})?"
# Kubernetes cuts a generateName base at 58 characters before adding the 5: a Deployment named
# with 47-56 characters has 63-character pods, <workload>-<hash cut><suffix> with no dash
# between the hash and the suffix. One alternative a length (RE2 has no lookahead), each its own
# group: the replacement joins them, only the matching one is non-empty. No other pod name
# matches: the part after the last dash is 6-15 characters here, 5 in a whole one.
TRUNCATED_POD_LENGTHS = range(47, 57)
TRUNCATED_POD_NAME_RE = "|".join(f"(.{{{k}}})-[a-z0-9]{{{62 - k}}}" for k in TRUNCATED_POD_LENGTHS)
TRUNCATED_POD_WORKLOAD = "".join(f"${{{i + 1}}}" for i in range(len(TRUNCATED_POD_LENGTHS)))


def pod_workload(expr: str) -> str:
    """``expr`` (per pod) with a ``workload`` label: the Deployment its pod belongs to."""
    whole = f'label_replace({expr}, "workload", "$1", "pod", "{POD_NAME_WORKLOAD_RE}")'
    return (
        f'label_replace({whole}, "workload", "{TRUNCATED_POD_WORKLOAD}", "pod", '
        f'"{TRUNCATED_POD_NAME_RE}")'
    )


def workload(name: str) -> str:
    """The matcher of one workload's records (a Deployment or a Rollout named ``name``)."""
    return eq("workload", name)


def workload_queue_length_expr() -> str:
    """Per workload, from the per-pod record (evaluated after it in the same group)."""
    return sum_by(WORKLOAD_LABELS, pod_workload(POD_QUEUE_LENGTH))


def workload_latency_buckets_expr() -> str:
    """Per workload, from the per-pod bucket record: one series per bound, whatever the pods."""
    return sum_by([*WORKLOAD_LABELS, "le"], pod_workload(POD_LATENCY_BUCKETS))


def workload_kv_cache_usage_expr() -> str:
    """Per workload: each pod's fullest KV cache, summed (over the replicas, the pods' mean)."""
    return sum_by(WORKLOAD_LABELS, pod_workload(kv_cache_usage_max("", POD_LABELS)))


def pod_queue_length_expr() -> str:
    # Both layers' queues: requests waiting in the sidecar's admission queue plus those waiting
    # in the app's batcher are all work the pod has not started.
    return gauge_sum(schema.QUEUE_LENGTH, "", POD_LABELS)


def pod_latency_buckets_expr(window: str = "1m") -> str:
    # The sidecar measures at the pod boundary (queueing included): that is what callers feel.
    sidecar = selector(source=schema.SOURCE_SIDECAR)
    return sum_by([*POD_LABELS, "le"], rate(schema.INFERENCE_DURATION.bucket, sidecar, window))


def pod_p95_expr() -> str:
    """Per pod, from the recorded buckets (evaluated after them in the same group)."""
    return f"histogram_quantile(0.95, {POD_LATENCY_BUCKETS})"


def pod_queue_length(selector: str) -> str:
    return instant(POD_QUEUE_LENGTH, selector)


def pod_queue_length_by_source(selector: str) -> str:
    """Per pod and source: which queues feed the HPA's queue length (the sidecar's admission
    queue, the app's batcher, the model server's own waiting requests: source="server")."""
    return sum_by([*POD_LABELS, "source"], instant(schema.QUEUE_LENGTH.name, selector))


# The model server's KV-cache usage, 0-1 (vLLM's, as the sidecar normalises it): the llm
# autoscaling profile's second metric, read as it is (a gauge: no recording rule needed).
KV_CACHE_USAGE_RATIO = schema.KV_CACHE_USAGE.name


def pod_kv_cache_usage(selector: str) -> str:
    """Per pod: the fullest KV cache (one model server a pod; max if several report)."""
    return kv_cache_usage_max(selector, POD_LABELS)


def pod_p95_ms(selector: str) -> str:
    return ms_without_idle(instant(POD_P95_SECONDS, selector))


# prometheus-adapter's templates: <<.GroupBy>> inside the aggregation, or the pod label is lost;
# ">= 0" drops the NaN of a pod without traffic: the HPA then treats it as idle instead of
# failing the whole metric.
ADAPTER_SUM_QUERY = "sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})"
ADAPTER_MS_QUERY = "1000 * max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>} >= 0)"
ADAPTER_MAX_QUERY = "max by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})"
# An object metric on a Deployment (GroupBy: the workload label): the p95 of the workload's
# buckets, 0 while idle (an object without a value would fail the HPA's metric, not idle it).
ADAPTER_WORKLOAD_MS_QUERY = (
    "1000 * (histogram_quantile(0.95, sum by (<<.GroupBy>>, le) "
    "(<<.Series>>{<<.LabelMatchers>>})) >= 0) "
    'or 0 * sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>,le="+Inf"})'
)


def adapter_series(record: str, resource_label: str = "pod") -> str:
    """The adapter's discovery query: the recorded series of the objects (pods, workloads) it
    can serve."""
    return record + selector(ne("namespace", ""), ne(resource_label, ""))


def workload_total(record: str, matchers: Sequence[str]) -> str:
    """KEDA: a per-workload record (the queue, the KV-cache usage) summed over a workload's
    pods (``matchers`` pick the namespace and the workload); one element, 0 without pods."""
    return f"{total(instant(record, selector(*matchers)))} or vector(0)"


def deployment_p95_ms(matchers: Sequence[str]) -> str:
    """KEDA: a workload's p95 (ms) as the sidecars measure it, from the per-workload bucket
    record (``matchers`` pick the namespace and the workload); one element, 0 idle."""
    buckets = sum_by(["le"], instant(WORKLOAD_LATENCY_BUCKETS, selector(*matchers)))
    p95 = f"histogram_quantile(0.95, {buckets})"
    return f"{ms_without_idle(p95)} or vector(0)"


# kube-state-metrics' HPA series (not ours: the autoscaling dashboard and alert read them).
KSM_CURRENT_REPLICAS = "kube_horizontalpodautoscaler_status_current_replicas"
KSM_DESIRED_REPLICAS = "kube_horizontalpodautoscaler_status_desired_replicas"
KSM_MIN_REPLICAS = "kube_horizontalpodautoscaler_spec_min_replicas"
KSM_MAX_REPLICAS = "kube_horizontalpodautoscaler_spec_max_replicas"
KSM_METRICS = (KSM_CURRENT_REPLICAS, KSM_DESIRED_REPLICAS, KSM_MIN_REPLICAS, KSM_MAX_REPLICAS)


def hpa_at_max_replicas(selector: str) -> str:
    current, maximum = instant(KSM_CURRENT_REPLICAS, selector), instant(KSM_MAX_REPLICAS, selector)
    return f"{current}\n>=\n{maximum}"


# --- per-model recording rules: dashboards and SLOs --------------------------------------------


def requests_rule(window: str) -> str:
    return f"namespace_model:model_inference_requests:rate{window}"


def errors_rule(window: str) -> str:
    return f"namespace_model:model_inference_errors:rate{window}"


def error_ratio_rule(window: str) -> str:
    return f"namespace_model:model_inference_errors:ratio_rate{window}"


def slow_ratio_rule(window: str) -> str:
    return f"namespace_model:model_inference_slow:ratio_rate{window}"


def quantile_rule(q: int, window: str = "5m") -> str:
    return f"namespace_model:{schema.INFERENCE_DURATION.name}:p{q}_rate{window}"


def requests_expr(window: str) -> str:
    return requests_per_second("", MODEL_LABELS, window)


def errors_expr(window: str) -> str:
    # Only the serving side's failures spend the error budget: a client's 4xx or a caller that
    # hung up is not the model server's fault.
    return sum_by(MODEL_LABELS, rate(schema.INFERENCE_FAILURES.name, selector(SERVER_SIDE), window))


def error_ratio_expr(window: str) -> str:
    return ratio(errors_rule(window), requests_rule(window))


def slow_ratio_expr(
    window: str, threshold_seconds: float, family: schema.Family = schema.INFERENCE_DURATION
) -> str:
    """Fraction of observations of ``family`` (by default inferences) above the threshold."""
    fast = sum_by(MODEL_LABELS, rate(family.bucket, selector(le=le(threshold_seconds)), window))
    return f"1 - ({ratio(fast, sum_by(MODEL_LABELS, rate(family.count, '', window)))})"


def quantile_expr(q: int, window: str = "5m") -> str:
    return quantile(q, schema.INFERENCE_DURATION, "", MODEL_LABELS, window)


# --- LLM generations: time to first token, time per output token, finish reasons -----------


def slow_ttft_ratio_rule(window: str) -> str:
    return f"namespace_model:model_inference_ttft_slow:ratio_rate{window}"


def slow_tpot_ratio_rule(window: str) -> str:
    return f"namespace_model:model_inference_tpot_slow:ratio_rate{window}"


def slow_ttft_ratio_expr(window: str, threshold_seconds: float) -> str:
    """Fraction of generations whose first token came later than the threshold."""
    return slow_ratio_expr(window, threshold_seconds, schema.TIME_TO_FIRST_TOKEN)


def slow_tpot_ratio_expr(window: str, threshold_seconds: float) -> str:
    """Fraction of generations whose tokens came slower, on average, than the threshold."""
    return slow_ratio_expr(window, threshold_seconds, schema.TIME_PER_OUTPUT_TOKEN)


def finish_reasons_per_second(selector: str, labels: Sequence[str], window: str) -> str:
    """Generations ended per second, by finish reason."""
    return sum_by([*labels, "reason"], rate(schema.FINISH_REASONS_TOTAL.name, selector, window))


def _with(selector: str, matcher: str) -> str:
    """``selector`` with one more matcher ('' and '{}' alike)."""
    inner = selector.strip()[1:-1].strip() if selector.strip() else ""
    return "{" + ", ".join([m for m in (inner, matcher) if m]) + "}"


def truncation_ratio(selector: str, labels: Sequence[str], window: str) -> str:
    """Share of generations cut off at max_tokens (finish reason ``length``), per ``labels``;
    0, not "no data", while nothing was truncated (finish reasons appear on first use)."""
    family = schema.FINISH_REASONS_TOTAL.name
    truncated = _with(selector, eq("reason", schema.FINISH_LENGTH))
    generations = sum_by(labels, rate(family, selector, window))
    return ratio(
        f"({sum_by(labels, rate(family, truncated, window))} or 0 * {generations})", generations
    )


def generations_truncated(
    selector: str, window: str, threshold: float, min_generations: int
) -> str:
    """Per model: more than ``threshold`` of the generations over ``window`` were truncated,
    out of at least ``min_generations`` (so that two of three at night do not page)."""
    generations = sum_by(MODEL_LABELS, increase(schema.FINISH_REASONS_TOTAL.name, selector, window))
    return (
        f"{above(truncation_ratio(selector, MODEL_LABELS, window), threshold)}\n"
        f"and\n{generations} >= {min_generations}"
    )


# --- alert conditions -----------------------------------------------------------------------


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window, multi-burn-rate alert condition (the SRE workbook's table)."""

    long: str
    short: str
    factor: float
    severity: str
    for_: str


def burn_windows(scale: float = 1.0) -> tuple[BurnWindow, ...]:
    """The SRE workbook's four conditions; ``scale`` shrinks every window (tests only)."""

    def w(s: float) -> str:
        return duration(s * scale)

    return (
        BurnWindow(w(3600), w(300), 14.4, "critical", w(120)),
        BurnWindow(w(6 * 3600), w(1800), 6.0, "critical", w(900)),
        BurnWindow(w(86400), w(7200), 3.0, "warning", w(3600)),
        BurnWindow(w(3 * 86400), w(6 * 3600), 1.0, "warning", w(3 * 3600)),
    )


def rule_windows(scale: float = 1.0) -> tuple[str, ...]:
    """Every window the burn-rate alerts read, deduplicated, shortest first."""
    seen: dict[str, None] = {}
    for condition in burn_windows(scale):
        seen[condition.short] = None
        seen[condition.long] = None
    return tuple(sorted(seen, key=seconds))


def burning(
    ratio_rule: Callable[[str], str], condition: BurnWindow, selector: str, threshold: float
) -> str:
    """The bad-event ratio above ``threshold`` over both the long and the short window."""
    return (
        f"{ratio_rule(condition.long)}{selector} > {threshold:g}\n"
        f"and\n{ratio_rule(condition.short)}{selector} > {threshold:g}"
    )


def above(expr: str, threshold: float) -> str:
    return f"{expr} > {threshold if isinstance(threshold, int) else format(threshold, 'g')}"


def rejecting(window: str) -> str:
    """Per model: the sidecar's admission queue turned inferences away."""
    rejected = selector(reason=schema.REASON_REJECTED)
    return above(
        sum_by(("namespace", "model_name"), rate(schema.INFERENCE_FAILURES.name, rejected, window)),
        0,
    )


def stopped_serving(selector: str, quiet: str, served: str) -> str:
    """Per model: no inference over ``quiet``, though some over ``served``."""
    per_model = ("namespace", "model_name")
    total = schema.INFERENCE_TOTAL.name
    return (
        f"{sum_by(per_model, rate(total, selector, quiet))} == 0\n"
        f"and\n{above(sum_by(per_model, increase(total, selector, served)), 0)}"
    )


def upstream_down() -> str:
    return f"{schema.UPSTREAM_UP.name} == 0"


def gpu_power_capped(window: str) -> str:
    """The power-cap bit flickers under load: held down most of the time over ``window``."""
    capped = selector(one_of("reason", schema.POWER_THROTTLE_REASONS))
    return above(
        f"max without (reason) (avg_over_time({schema.GPU_THROTTLED.name}{capped}[{window}]))", 0.5
    )


def gpu_collector_failing(window: str) -> str:
    """NVML calls keep failing; a call a device does not support is not a failure."""
    failing = selector(ne("reason", schema.GPU_ERROR_NOT_SUPPORTED))
    return above(rate(schema.GPU_COLLECTOR_ERRORS.name, failing, window), 0)
