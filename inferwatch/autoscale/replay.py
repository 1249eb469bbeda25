"""Replay an HPA over a time range of Prometheus data: what would it have done?

The metric queries come from the HPA and prometheus-adapter's rules (or a KEDA ScaledObject's
triggers); their values over the range are fetched with range queries at the controller's sync
period, and the HPA algorithm (``inferwatch.autoscale.hpa``) runs sync by sync.

The model of the world: the load is what was observed; the replay's replicas share it. A pods
metric with an AverageValue target (and an External or Object AverageValue: the queue summed
over the Deployment) is the observed total over the deployment's pods divided by the replay's
replicas; a CPU utilization is the observed CPU seconds over the replay's replicas' requests; a
Value target (a latency: KEDA's trigger, the Deployment's Object metric) is taken as observed.
New replicas are ready at the next sync.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from inferwatch.autoscale import hpa
from inferwatch.render import query_range

Query = Callable[[str, float, float, float], list[dict[str, Any]]]


@dataclass
class Source:
    """Where one HPA metric's values come from."""

    metric: hpa.Metric
    kind: str  # "pods" (a series per pod, summed), "total" (one number), "cpu"
    query: str = ""
    requests_query: str = ""  # cpu: the average CPU request per pod (cores)
    skipped: str = ""  # why it takes no part in the replay


@dataclass
class Plan:
    """An HPA to replay: its spec, where its metrics come from, which deployment."""

    spec: hpa.Spec
    sources: list[Source]
    namespace: str
    deployment: str
    origin: str  # "HPA" or "KEDA ScaledObject"

    @property
    def active(self) -> list[Source]:
        return [s for s in self.sources if not s.skipped]


def pod_matchers(namespace: str, deployment: str, pod_label: str = "pod") -> str:
    return f'namespace="{namespace}",{pod_label}=~"{deployment}-.*"'


def _series_name(series_query: str) -> str:
    match = re.match(r"\s*([A-Za-z_:][\w:]*)", series_query)
    if not match:
        raise ValueError(f"no metric name in the seriesQuery {series_query!r}")
    return match.group(1)


def _exposed_name(rule: Mapping[str, Any], series: str) -> str:
    """The name prometheus-adapter serves a series as (name.matches / name.as)."""
    naming = rule.get("name") or {}
    pattern = naming.get("matches") or "^(.*)$"
    replacement = naming.get("as") or ("$1" if re.compile(pattern).groups else "$0")
    python = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", replacement)
    match = re.search(pattern, series)
    return match.expand(python) if match else series


def _resource(name: str) -> str:
    """A resource as the adapter's overrides may spell it: "deployment", "deployments"."""
    return name.lower().removesuffix("s")


def _resource_labels(rule: Mapping[str, Any]) -> dict[str, str]:
    """Resource ("namespace", "pod", "deployment") -> the label an adapter rule maps to it; a
    rule without overrides is taken as using the usual namespace and pod labels."""
    overrides = (rule.get("resources") or {}).get("overrides") or {}
    if not overrides:
        return {"namespace": "namespace", "pod": "pod"}
    return {_resource(str(v.get("resource"))): str(k) for k, v in overrides.items()}


def render_adapter_query(
    rule: Mapping[str, Any], resource: str, namespace: str, match: str
) -> str | None:
    """``rule``'s metricsQuery as prometheus-adapter renders it for objects of ``resource`` in
    ``namespace``: <<.Series>> the rule's series, <<.LabelMatchers>> the namespace and the
    object label with ``match`` (``=~"a|b"``: the adapter lists the names), <<.GroupBy>> that
    label. None if the rule serves other resources."""
    labels = _resource_labels(rule)
    if resource not in labels:
        return None
    label, ns_label = labels[resource], labels.get("namespace", "namespace")
    query = str(rule.get("metricsQuery", "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"))
    return (
        query.replace("<<.Series>>", _series_name(str(rule["seriesQuery"])))
        .replace("<<.LabelMatchers>>", f'{ns_label}="{namespace}",{label}{match}')
        .replace("<<.GroupBy>>", label)
    )


def adapter_query(
    rules: Sequence[Mapping[str, Any]],
    name: str,
    namespace: str,
    deployment: str,
    resource: str = "pod",
) -> str | None:
    """The PromQL prometheus-adapter would run for the metric ``name`` of a deployment's pods
    (``resource`` "pod": the pods named after it) or of the Deployment itself ("deployment")."""
    match = f'=~"{deployment}-.*"' if resource == "pod" else f'="{deployment}"'
    for rule in rules:
        if _exposed_name(rule, _series_name(str(rule["seriesQuery"]))) != name:
            continue
        query = render_adapter_query(rule, resource, namespace, match)
        if query is not None:
            return query
    return None


def cpu_queries(namespace: str, deployment: str) -> tuple[str, str]:
    """cAdvisor's CPU seconds summed over the pods, and the pods' average CPU request
    (kube-state-metrics), both in cores."""
    pods = pod_matchers(namespace, deployment)
    usage = (
        f'sum(rate(container_cpu_usage_seconds_total{{{pods},container!="",container!="POD"}}[1m]))'
    )
    requests = f'avg(sum by (pod) (kube_pod_container_resource_requests{{{pods},resource="cpu"}}))'
    return usage, requests


def object_source(
    metric: hpa.Metric,
    body: Mapping[str, Any],
    adapter_rules: Sequence[Mapping[str, Any]],
    namespace: str,
) -> Source:
    """An Object metric of a Deployment: one number, the adapter's query for that object."""
    described = body.get("describedObject") or {}
    if described.get("kind") != "Deployment":
        return Source(metric, "total", skipped=f"Object {metric.name} of a {described.get('kind')}")
    query = adapter_query(
        adapter_rules, metric.name, namespace, str(described.get("name")), "deployment"
    )
    if query is None:
        return Source(metric, "total", skipped="no adapter rule serves it for deployments")
    return Source(metric, "total", query)


def hpa_plan(
    manifest: Mapping[str, Any],
    adapter_rules: Sequence[Mapping[str, Any]],
    namespace: str | None = None,
) -> Plan:
    spec = hpa.Spec.from_manifest(manifest)
    ns = namespace or str(manifest.get("metadata", {}).get("namespace") or "default")
    deployment = str(manifest["spec"]["scaleTargetRef"]["name"])
    sources = []
    for metric, doc in zip(spec.metrics, manifest["spec"].get("metrics", []), strict=True):
        if metric.source == "Pods":
            query = adapter_query(adapter_rules, metric.name, ns, deployment)
            if query is None:
                sources.append(Source(metric, "pods", skipped="no adapter rule serves it"))
            else:
                sources.append(Source(metric, "pods", query))
        elif metric.source == "Object":
            sources.append(object_source(metric, doc["object"], adapter_rules, ns))
        elif metric.source == "Resource" and metric.name == "cpu":
            usage, requests = cpu_queries(ns, deployment)
            sources.append(Source(metric, "cpu", usage, requests))
        else:
            sources.append(
                Source(metric, "total", skipped=f"{metric.source} {metric.name}: not replayed")
            )
    return Plan(spec, sources, ns, deployment, "HPA")


def keda_plan(manifest: Mapping[str, Any], namespace: str | None = None) -> Plan:
    """A ScaledObject as the HPA KEDA makes of it: prometheus triggers as External metrics,
    cpu triggers as the Resource metric, minReplicaCount at least 1 (below, KEDA's own
    activation decides, which the replay does not model)."""
    spec_doc = manifest["spec"]
    ns = namespace or str(manifest.get("metadata", {}).get("namespace") or "default")
    deployment = str(spec_doc["scaleTargetRef"]["name"])
    sources = []
    for index, trigger in enumerate(spec_doc.get("triggers", [])):
        kind = trigger.get("type")
        meta = trigger.get("metadata", {})
        name = str(trigger.get("name") or f"s{index}-{kind}")
        if kind == "prometheus":
            target_type = str(trigger.get("metricType") or "AverageValue")
            metric = hpa.Metric(
                "External", name, target_type, hpa.parse_quantity(meta["threshold"])
            )
            sources.append(Source(metric, "total", str(meta["query"])))
        elif kind == "cpu":
            metric = hpa.Metric("Resource", "cpu", "Utilization", float(meta["value"]))
            usage, requests = cpu_queries(ns, deployment)
            sources.append(Source(metric, "cpu", usage, requests))
        else:
            metric = hpa.Metric("External", name, "Value", 1.0)
            sources.append(Source(metric, "total", skipped=f"{kind} trigger: not replayed"))
    config = spec_doc.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
    spec = hpa.Spec(
        max(1, int(spec_doc.get("minReplicaCount", 0))),
        int(spec_doc.get("maxReplicaCount", 100)),
        tuple(s.metric for s in sources if not s.skipped),
        hpa.Behavior.from_spec(config.get("behavior")),
    )
    return Plan(spec, sources, ns, deployment, "KEDA ScaledObject")


# --- fetching ---------------------------------------------------------------------------------


def sync_times(start: float, end: float, period: float) -> list[float]:
    count = math.floor((end - start) / period) + 1
    return [start + i * period for i in range(max(count, 0))]


def _by_sync(
    results: list[dict[str, Any]], start: float, period: float
) -> tuple[dict[int, float], dict[int, int]]:
    """Series summed per sync (its index: Prometheus rounds timestamps to milliseconds), and
    how many series had a value there."""
    total: dict[int, float] = {}
    count: dict[int, int] = {}
    for result in results:
        for t, v in result["values"]:
            value = float(v)
            if math.isfinite(value):
                k = round((float(t) - start) / period)
                total[k] = total.get(k, 0.0) + value
                count[k] = count.get(k, 0) + 1
    return total, count


@dataclass
class Observed:
    """The fetched values at each sync (None where Prometheus had none)."""

    times: list[float]
    values: list[list[float | None]]  # per source: the total (pods, total) or CPU cores
    requests: list[list[float | None]]  # per source: cpu request per pod (cores)
    pods: list[list[int]]  # per source: pods reporting (pods sources)
    actual: list[int | None]  # kube_deployment_status_replicas


def fetch(
    prometheus: str,
    plan: Plan,
    start: float,
    end: float,
    period: float = hpa.SYNC_PERIOD,
    query: Query | None = None,
    advance: Callable[[], None] = lambda: None,
) -> Observed:
    """Range queries at the sync period; CPU sources without data are marked skipped."""

    def run(expr: str) -> list[dict[str, Any]]:
        if query is not None:
            return query(expr, start, end, period)
        return query_range(prometheus, expr, start, end, period, timeout=30.0)

    times = sync_times(start, end, period)
    values, requests, pods = [], [], []
    for source in plan.sources:
        column: list[float | None] = [None] * len(times)
        reqs: list[float | None] = [None] * len(times)
        counts = [0] * len(times)
        if not source.skipped:
            total, count = _by_sync(run(source.query), start, period)
            column = [total.get(k) for k in range(len(times))]
            counts = [count.get(k, 0) for k in range(len(times))]
            if source.kind == "cpu":
                req_total, _ = _by_sync(run(source.requests_query), start, period)
                reqs = [req_total.get(k) for k in range(len(times))]
                if not total:
                    source.skipped = "no container_cpu_usage_seconds_total for its pods"
                elif not req_total:
                    source.skipped = "no kube_pod_container_resource_requests (cpu) for its pods"
        values.append(column)
        requests.append(reqs)
        pods.append(counts)
        advance()
    replicas_expr = (
        f'max(kube_deployment_status_replicas{{namespace="{plan.namespace}",'
        f'deployment="{plan.deployment}"}})'
    )
    replicas, _ = _by_sync(run(replicas_expr), start, period)
    actual = [None if k not in replicas else int(replicas[k]) for k in range(len(times))]
    advance()
    return Observed(times, values, requests, pods, actual)


# --- the replay -------------------------------------------------------------------------------


@dataclass
class Step:
    at: float
    current: int  # the replay's replicas before this sync
    values: list[float | None]  # per active source, as the controller sees it now
    proposals: list[int | None]
    decision: hpa.Decision
    actual: int | None


@dataclass
class Replay:
    plan: Plan
    steps: list[Step] = field(default_factory=list)
    start_replicas: int = 0


def metric_proposal(
    source: Source,
    replicas: int,
    observed: float | None,
    request: float | None,
    tolerances: hpa.Tolerances,
) -> tuple[float | None, int | None]:
    """The value the controller would see at ``replicas`` replicas and its proposal."""
    metric = source.metric
    if observed is None or replicas <= 0:
        return None, None
    try:
        if source.kind == "pods":
            per_pod = observed / replicas
            return per_pod, hpa.plain_metric_replicas(
                replicas, [per_pod] * replicas, metric.target, tolerances=tolerances
            )
        if source.kind == "cpu":
            if not request:
                return None, None
            utilization = 100 * observed / (replicas * request)
            return utilization, hpa.resource_utilization_replicas(
                replicas,
                [observed / replicas] * replicas,
                [request] * replicas,
                metric.target,
                tolerances=tolerances,
            )
        if metric.target_type == "AverageValue":
            return observed / replicas, hpa.average_value_replicas(
                replicas, observed, metric.target, tolerances
            )
        return observed, hpa.value_replicas(replicas, replicas, observed, metric.target, tolerances)
    except (hpa.MetricUnavailable, ZeroDivisionError):
        return None, None


def start_replicas(plan: Plan, observed: Observed, replicas: int | None) -> int:
    """--replicas, else the observed replicas at the start (kube-state-metrics, else the pods
    reporting the first pods metric), else minReplicas."""
    if replicas is not None:
        return replicas
    for actual in observed.actual:
        if actual is not None:
            return actual
    for source, counts in zip(plan.sources, observed.pods, strict=True):
        if source.kind == "pods" and not source.skipped:
            for count in counts:
                if count:
                    return count
    return plan.spec.min_replicas


def replay(
    plan: Plan,
    observed: Observed,
    replicas: int | None = None,
    advance: Callable[[], None] = lambda: None,
) -> Replay:
    active = [i for i, s in enumerate(plan.sources) if not s.skipped]
    spec = hpa.Spec(
        plan.spec.min_replicas,
        plan.spec.max_replicas,
        tuple(plan.sources[i].metric for i in active),
        plan.spec.behavior,
    )
    controller = hpa.Controller(spec)
    tolerances = hpa.Tolerances.of(spec.behavior)
    current = start_replicas(plan, observed, replicas)
    result = Replay(plan, start_replicas=current)
    for k, at in enumerate(observed.times):
        values, proposals = [], []
        for i in active:
            value, proposal = metric_proposal(
                plan.sources[i],
                current,
                observed.values[i][k],
                observed.requests[i][k],
                tolerances,
            )
            values.append(value)
            proposals.append(proposal)
        decision = controller.sync(at, current, proposals)
        result.steps.append(Step(at, current, values, proposals, decision, observed.actual[k]))
        current = decision.replicas
        advance()
    return result


# --- output -----------------------------------------------------------------------------------


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _relation(metric: hpa.Metric) -> str:
    if metric.target_type == "Utilization":
        return f"{_number(metric.target)}%"
    if metric.target_type == "AverageValue":
        return f"avg {_number(metric.target)}"
    return _number(metric.target)


def table(result: Replay) -> Any:
    """The replay as a rich table: each metric as the controller saw it against its target
    (and its proposal), the largest proposal, the recommendation, the observed replicas."""
    from rich.table import Table

    plan = result.plan
    active = plan.active
    out = Table(
        title=f"HPA replay: {plan.namespace}/{plan.deployment} ({plan.origin}, "
        f"{plan.spec.min_replicas}-{plan.spec.max_replicas} replicas)",
        title_justify="left",
    )
    out.add_column("time")
    for source in active:
        out.add_column(f"{source.metric.label}\nvs {_relation(source.metric)}", justify="right")
    out.add_column("proposal", justify="right")
    out.add_column("recommended", justify="right")
    out.add_column("actual", justify="right")
    out.add_column("limited by")
    for step in result.steps:
        cells = [_clock(step.at)]
        for source, value, proposal in zip(active, step.values, step.proposals, strict=True):
            if value is None:
                cells.append("[dim]no data[/]")
                continue
            shown = f"{_number(value)}{'%' if source.metric.target_type == 'Utilization' else ''}"
            above = value > source.metric.target
            cells.append(f"{'[bold]' if above else ''}{shown}{'[/]' if above else ''} → {proposal}")
        decision = step.decision
        changed = decision.replicas != step.current
        cells.append("-" if decision.proposal is None else str(decision.proposal))
        cells.append(f"[bold]{decision.replicas}[/]" if changed else str(decision.replicas))
        cells.append("-" if step.actual is None else str(step.actual))
        cells.append("" if decision.reason == "DesiredWithinRange" else decision.reason)
        out.add_row(*cells)
    return out


def notes(result: Replay) -> list[str]:
    """What the replay left out, and why."""
    lines = [f"skipped {s.metric.label}: {s.skipped}" for s in result.plan.sources if s.skipped]
    if all(step.actual is None for step in result.steps):
        lines.append("no kube_deployment_status_replicas: no actual replicas to compare")
    return lines


PANEL_HEIGHT = 2.4  # inches per panel
WIDTH = 12.0  # inches
DPI = 80


def png_size(result: Replay) -> tuple[int, int]:
    """The PNG's (width, height) in pixels: a panel per replayed metric and one of replicas."""
    panels = len(result.plan.active) + 1
    return int(WIDTH * DPI), int(PANEL_HEIGHT * panels * DPI)


def draw(result: Replay, out: Path) -> Path:
    """Each metric against its target over time, then recommended vs actual replicas; in
    the dashboards' PNG style (render.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from inferwatch import render

    active = result.plan.active
    width, height = png_size(result)
    figure, axes_list = plt.subplots(
        len(active) + 1,
        1,
        figsize=(width / DPI, height / DPI),
        dpi=DPI,
        facecolor=render.BACKGROUND,
        squeeze=False,
    )
    times = [s.at for s in result.steps]
    start, end = (times[0], times[-1]) if times else (0.0, 1.0)
    if end <= start:
        end = start + 1.0
    for index, (source, axes) in enumerate(zip(active, axes_list[:, 0], strict=False)):
        render._style(axes)
        metric = source.metric
        unit = "%" if metric.target_type == "Utilization" else ""
        label = metric.label + (" per pod" if metric.target_type == "AverageValue" else "")
        axes.set_title(
            f"{label} (replayed replicas) vs target {_number(metric.target)}{unit}",
            fontsize=10,
            loc="left",
            color=render.TEXT,
            pad=4,
        )
        values = [s.values[index] for s in result.steps]
        axes.plot(
            times,
            [math.nan if v is None else v for v in values],
            color=render.PALETTE[index % len(render.PALETTE)],
            linewidth=1.4,
            marker=".",
            label=metric.label,
        )
        axes.axhline(
            metric.target, color=render.PALETTE[4], linestyle="--", linewidth=1, label="target"
        )
        axes.set_ylim(bottom=0)
        _legend(axes)
        render._clock(axes, start, end)
    axes = axes_list[-1, 0]
    render._style(axes)
    axes.set_title("replicas", fontsize=10, loc="left", color=render.TEXT, pad=4)
    axes.step(
        times,
        [s.decision.replicas for s in result.steps],
        where="post",
        color=render.PALETTE[2],
        linewidth=1.6,
        label="recommended (replay)",
    )
    if any(s.actual is not None for s in result.steps):
        axes.step(
            times,
            [math.nan if s.actual is None else s.actual for s in result.steps],
            where="post",
            color=render.PALETTE[3],
            linewidth=1.2,
            linestyle="--",
            label="actual",
        )
    spec = result.plan.spec
    axes.set_ylim(0, spec.max_replicas + 1)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(axes)
    render._clock(axes, start, end)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, facecolor=render.BACKGROUND)
    plt.close(figure)
    return out


def _legend(axes: Any) -> None:
    from inferwatch import render

    legend = axes.legend(fontsize=7, loc="upper left", labelcolor=render.TEXT)
    legend.get_frame().set_facecolor(render.PANEL)
    legend.get_frame().set_edgecolor(render.GRID)


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds, RFC 3339 / ISO 8601, "now", or "-15m" / "-2h" / "-90s" before now."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    relative = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhd])", text)
    if relative:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative.group(2)]
        return now - float(relative.group(1)) * unit
    try:
        return float(text)
    except ValueError:
        pass
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def replay_and_report(
    prometheus: str,
    plan: Plan,
    start: float,
    end: float,
    out: Path | None,
    replicas: int | None = None,
    console: Any = None,
    period: float = hpa.SYNC_PERIOD,
) -> tuple[Replay, Path | None]:
    """Fetch, replay (with a progress bar), print the table and notes, draw the PNG."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = console or Console()
    steps = len(sync_times(start, end, period))
    with Progress(
        TextColumn("{task.description:8}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as progress:
        fetching = progress.add_task("fetch", total=len(plan.sources) + 1)
        observed = fetch(
            prometheus,
            plan,
            start,
            end,
            period,
            advance=lambda: progress.advance(fetching),
        )
        task = progress.add_task("replay", total=steps)
        result = replay(plan, observed, replicas, advance=lambda: progress.advance(task))
    console.print(table(result))
    for line in notes(result):
        console.print(f"[yellow]{line}[/]")
    png = None
    if out is not None and result.steps:
        try:
            png = draw(result, out)
        except ImportError:
            console.print("no PNG: pip install 'inferwatch[render]' (matplotlib)")
    return result, png
