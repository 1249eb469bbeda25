"""Grafana dashboards and provisioning, generated from the metric schema with grafanalib.

Three dashboards: inference overview (per model), GPU (per device) and autoscaling (per pod,
exactly what the HPA reads: the recording rules of promql.py against the targets of the
options). Every query is built from ``schema`` names, so a renamed family cannot leave a
dashboard behind.

grafanalib 0.7.1 predates a few things Grafana 10+ reads: a target's ``exemplar`` switch, the
``datasource`` object form (``{"type", "uid"}``), a variable's ``definition`` and an "All"
selection, and the heatmap panel that takes Prometheus buckets as they are. The small classes
below add exactly those and nothing else.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import attr
from grafanalib import core
from grafanalib._gen import DashboardEncoder

from inferwatch import schema
from inferwatch.generate import promql, yaml_text
from inferwatch.generate.options import GenerateOptions

SCHEMA_VERSION = 39  # Grafana 10.4/11: no migration runs on load
TAG = "inferwatch"
# Where the provider reads the JSON from: mount dashboards/*.json here.
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/inferwatch"
# Every panel and query variable reads the data source picked in the `datasource` variable.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Exemplars carry the OpenTelemetry trace id under this label; Grafana links it to the traces
# data source (Tempo, Jaeger) provisioned with options.traces_datasource_uid.
TRACE_ID_LABEL = "trace_id"

OVERVIEW_UID = "inferwatch-overview"
GPU_UID = "inferwatch-gpu"
AUTOSCALING_UID = "inferwatch-autoscaling"

RATE = "$__rate_interval"  # follows the time range and the scrape interval
QUANTILES = (50, 95, 99)
_ALL = ".*"  # "All" matches series without the label too (a local stack has no namespace)


# --- grafanalib, extended -------------------------------------------------------------------


class PromTarget(core.Target):
    """A Prometheus query as Grafana 10 stores it, with the ``exemplar`` switch."""

    def __init__(self, *, exemplar: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exemplar = exemplar

    def to_json_data(self) -> dict[str, Any]:
        return {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "exemplar": self.exemplar,
            "expr": self.expr,
            "format": self.format,
            "instant": self.instant,
            "interval": self.interval,
            "legendFormat": self.legendFormat,
            "range": not self.instant,
            "refId": self.refId,
        }


class QueryVariable(core.Template):
    """A label_values() variable; with ``includeAll`` it starts on "All"."""

    def to_json_data(self) -> dict[str, Any]:
        data: dict[str, Any] = super().to_json_data()
        data["definition"] = self.query
        if self.includeAll:
            data["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        return data


class BucketHeatmap(core.Panel):
    """Grafana's heatmap (v9+) over ready-made Prometheus buckets; grafanalib has the old one."""

    def to_json_data(self) -> dict[str, Any]:
        result: dict[str, Any] = self.panel_json(
            {
                "type": "heatmap",
                "fieldConfig": {
                    "defaults": {
                        "custom": {
                            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                            "scaleDistribution": {"type": "linear"},
                        }
                    },
                    "overrides": [],
                },
                "options": {
                    "calculate": False,  # the series are buckets already (format: heatmap)
                    "cellGap": 1,
                    "color": {
                        "exponent": 0.5,
                        "fill": "dark-orange",
                        "mode": "scheme",
                        "reverse": False,
                        "scale": "exponential",
                        "scheme": "Oranges",
                        "steps": 64,
                    },
                    "exemplars": {"color": "rgba(255,0,255,0.7)"},
                    "filterValues": {"le": 1e-9},
                    "legend": {"show": True},
                    "rowsFrame": {"layout": "auto"},
                    "showValue": "never",
                    "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": False},
                    "yAxis": {"axisPlacement": "left", "reverse": False, "unit": "short"},
                },
            }
        )
        return result


# --- panels ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def _targets(
    queries: Sequence[Query], *, exemplar: bool = False, fmt: str = "time_series"
) -> list[PromTarget]:
    return [
        PromTarget(
            expr=q.expr,
            legendFormat=q.legend,
            refId=chr(ord("A") + i),
            exemplar=exemplar,
            format=fmt,
        )
        for i, q in enumerate(queries)
    ]


def _steps(*steps: tuple[str, float | None]) -> list[dict[str, Any]]:
    return [{"color": color, "value": value} for color, value in steps]


BASE = _steps(("green", None))


def _timeseries(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    exemplar: bool = False,
    stacked: bool = False,
    maximum: int | None = None,
    thresholds: list[dict[str, Any]] | None = None,
    dashed: Sequence[int] = (),
) -> core.TimeSeries:
    """``dashed``: indexes of queries drawn as dashed red lines (targets, limits)."""
    targets = _targets(queries, exemplar=exemplar)
    overrides = [
        {
            "matcher": {"id": "byFrameRefID", "options": targets[i].refId},
            "properties": [
                {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
                {"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}},
                {"id": "custom.stacking", "value": {"group": "A", "mode": "none"}},
            ],
        }
        for i in dashed
    ]
    return core.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        valueMin=0,
        valueMax=maximum,
        fillOpacity=30 if stacked else 10,
        stacking={"group": "A", "mode": "normal"} if stacked else {"mode": "none"},
        legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        thresholds=thresholds or BASE,
        thresholdsStyleMode="dashed" if thresholds else "off",
        overrides=overrides,
        maxDataPoints=None,
    )


def _stat(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    thresholds: list[dict[str, Any]] | None = None,
) -> core.Stat:
    return core.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets(queries),
        format=unit,
        color={"mode": "thresholds"},
        reduceCalc="lastNotNull",
        textMode="value_and_name",
        noValue="-",
        thresholds=thresholds or BASE,
        maxDataPoints=None,
    )


def _heatmap(title: str, description: str, expr: str) -> BucketHeatmap:
    return BucketHeatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets([Query(expr, "{{le}}")], fmt="heatmap"),
        maxDataPoints=None,
    )


@dataclass(frozen=True)
class Line:
    """Panels side by side, one height; widths add up to at most 24 columns."""

    height: int
    cells: tuple[tuple[core.Panel, int], ...]


def line(height: int, *cells: tuple[core.Panel, int]) -> Line:
    if sum(width for _, width in cells) > 24:
        raise ValueError("a line of panels is wider than the 24 grid columns")
    return Line(height, cells)


def _layout(sections: Sequence[tuple[str, Sequence[Line]]]) -> list[core.Panel]:
    """Rows of panels, top to bottom; ids in reading order so they never change between runs."""
    ids = itertools.count(1)
    panels: list[core.Panel] = []
    y = 0
    for title, lines in sections:
        panels.append(
            core.RowPanel(title=title, id=next(ids), gridPos=core.GridPos(h=1, w=24, x=0, y=y))
        )
        y += 1
        for ln in lines:
            x = 0
            for panel, width in ln.cells:
                grid = core.GridPos(h=ln.height, w=width, x=x, y=y)
                panels.append(attr.evolve(panel, id=next(ids), gridPos=grid))
                x += width
            y += ln.height
    return panels


def _datasource_variable(options: GenerateOptions) -> core.Template:
    return core.Template(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default=options.datasource_uid,
        regex="",
    )


def _variable(name: str, label: str, query: str) -> QueryVariable:
    return QueryVariable(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=_ALL,
        regex="",
        refresh=2,  # on time range change: new models and pods appear
    )


def _dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[core.Template],
    sections: Sequence[tuple[str, Sequence[Line]]],
) -> dict[str, Any]:
    board = core.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=[TAG],
        editable=True,
        refresh="30s",
        schemaVersion=SCHEMA_VERSION,
        time=core.Time("now-1h", "now"),
        timezone="browser",
        graphTooltip=core.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        templating=core.Templating(list=list(variables)),
        panels=_layout(sections),
        links=[
            {
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "tags": [TAG],
                "title": "inferwatch",
                "type": "dashboards",
            }
        ],
    )
    # The encoder turns grafanalib's objects into plain JSON types; round-trip to a dict.
    data: dict[str, Any] = json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder))
    return data


def _match(*matchers: str, **labels: str) -> str:
    """A label selector; a Grafana variable's value is a regex (multi-value, "All")."""
    pairs = [f'{k}{"=~" if v.startswith("$") else "="}"{v}"' for k, v in labels.items()]
    return "{" + ", ".join([*pairs, *matchers]) + "}"


# --- the inference overview -----------------------------------------------------------------


def overview(options: GenerateOptions) -> dict[str, Any]:
    sel = _match(namespace="$namespace", model_name="$model")
    m = "source, model_name"

    def rate(name: str, selector: str = sel) -> str:
        return f"rate({name}{selector}[{RATE}])"

    def sel_with(**labels: str) -> str:
        return _match(namespace="$namespace", model_name="$model", **labels)

    total, failures = schema.INFERENCE_TOTAL.name, schema.INFERENCE_FAILURES.name
    server_side = _match(
        f'reason=~"{promql.SERVER_SIDE_REASONS_RE}"', namespace="$namespace", model_name="$model"
    )

    def error_ratio(by: str) -> str:
        return f"sum by ({by}) ({rate(failures, server_side)}) / sum by ({by}) ({rate(total)})"

    def quantiles(family: schema.Family, by: str, legend: str, selector: str = sel) -> list[Query]:
        return [
            Query(
                f"histogram_quantile({q / 100:g}, "
                f"sum by ({by}, le) ({rate(family.bucket, selector)}))",
                f"{legend} p{q}",
            )
            for q in QUANTILES
        ]

    pods = promql.by(promql.POD_LABELS)
    up = f"min by ({pods}) ({schema.UPSTREAM_UP.name}{_match(namespace='$namespace')})"
    budget = round(1 - options.availability_objective, 12)  # 0.001, not 0.0010000000000000009

    summary = line(
        4,
        (
            _stat(
                "Requests/s",
                "Inferences completed per second, as each layer measured them.",
                "reqps",
                [Query(f"sum by (source) ({rate(total)})", "{{source}}")],
            ),
            4,
        ),
        (
            _stat(
                "Error ratio",
                "Server-side failures (5xx, timeouts, rejections, unreachable upstream, "
                "exceptions) per inference: what the availability objective counts. Red "
                "above the error budget.",
                "percentunit",
                [Query(error_ratio("source"), "{{source}}")],
                _steps(("green", None), ("red", budget)),
            ),
            4,
        ),
        (
            _stat(
                "p95 latency",
                "Over all selected models. Red above the autoscaling target.",
                "s",
                [
                    Query(
                        f"histogram_quantile(0.95, sum by (source, le) "
                        f"({rate(schema.INFERENCE_DURATION.bucket)}))",
                        "{{source}}",
                    )
                ],
                _steps(("green", None), ("red", options.p95_latency_target_ms / 1000)),
            ),
            4,
        ),
        (
            _stat(
                "In flight",
                "Inferences running now.",
                "short",
                [Query(f"sum by (source) ({schema.ACTIVE_REQUESTS.name}{sel})", "{{source}}")],
            ),
            4,
        ),
        (
            _stat(
                "Queue length",
                "Inferences waiting: in the sidecar's admission queue, or for a batch in the app.",
                "short",
                [Query(f"sum by (source) ({schema.QUEUE_LENGTH.name}{sel})", "{{source}}")],
            ),
            4,
        ),
        (
            _stat(
                "Upstreams ready",
                "Sidecars whose model server answers its readiness check, of all sidecars.",
                "short",
                [Query(f"sum({up})", "ready"), Query(f"count({up})", "sidecars")],
            ),
            4,
        ),
    )
    traffic = line(
        8,
        (
            _timeseries(
                "Request rate per model",
                "Inferences completed per second, per model. The sidecar and the app measure the "
                "same traffic at two layers: compare them, never add them. The sidecar counts "
                "requests; an app that batches may count items (the reference server does), "
                "and then runs at the sidecar's rate times the items per request.",
                "reqps",
                [Query(f"sum by ({m}) ({rate(total)})", "{{model_name}} ({{source}})")],
            ),
            8,
        ),
        (
            _timeseries(
                "Error ratio per model",
                "Server-side failures per inference, per model (client errors and callers that "
                "hung up are left out). The dashed line is the error budget.",
                "percentunit",
                [Query(error_ratio(m), "{{model_name}} ({{source}})")],
                thresholds=_steps(("green", None), ("red", budget)),
            ),
            8,
        ),
        (
            _timeseries(
                "Failures by reason",
                "Every failed inference per second, by reason, client errors included.",
                "reqps",
                [
                    Query(
                        f"sum by ({m}, reason) ({rate(failures)})",
                        "{{model_name}} {{reason}} ({{source}})",
                    )
                ],
                stacked=True,
            ),
            8,
        ),
    )
    latency_help = (
        "p50, p95 and p99 per model{}. Dashed: the p95 autoscaling target. Exemplars link a "
        "slow request to its trace."
    )
    latency = [
        line(
            9,
            (
                _timeseries(
                    "Latency: sidecar",
                    latency_help.format(
                        ", measured by the sidecar at the pod boundary (what callers feel, "
                        "admission queueing included)"
                    ),
                    "s",
                    quantiles(
                        schema.INFERENCE_DURATION,
                        "model_name",
                        "{{model_name}}",
                        sel_with(source=schema.SOURCE_SIDECAR),
                    ),
                    exemplar=True,
                    thresholds=_steps(
                        ("green", None), ("red", options.p95_latency_target_ms / 1000)
                    ),
                ),
                12,
            ),
            (
                _timeseries(
                    "Latency: app",
                    latency_help.format(
                        ", measured in-process by the decorators (model code only); the gap "
                        "to the sidecar is transport, parsing and queueing"
                    ),
                    "s",
                    quantiles(
                        schema.INFERENCE_DURATION,
                        "model_name",
                        "{{model_name}}",
                        sel_with(source=schema.SOURCE_APP),
                    ),
                    exemplar=True,
                    thresholds=_steps(
                        ("green", None), ("red", options.p95_latency_target_ms / 1000)
                    ),
                ),
                12,
            ),
        ),
        line(
            8,
            (
                _timeseries(
                    "Time to first byte",
                    "Streamed answers (SSE, chunked): time to the first chunk, the first token "
                    "of an LLM.",
                    "s",
                    quantiles(schema.TIME_TO_FIRST_BYTE, m, "{{model_name}} ({{source}})"),
                    exemplar=True,
                ),
                12,
            ),
            (
                _timeseries(
                    "Queue wait",
                    "Time waiting for admission (sidecar) or for a batch to run (app).",
                    "s",
                    quantiles(schema.QUEUE_DURATION, m, "{{model_name}} ({{source}})"),
                    exemplar=True,
                ),
                12,
            ),
        ),
    ]
    batch = schema.BATCH_SIZE
    load = [
        line(
            8,
            (
                _timeseries(
                    "Active requests per model",
                    "Inferences in flight, per model.",
                    "short",
                    [
                        Query(
                            f"sum by ({m}) ({schema.ACTIVE_REQUESTS.name}{sel})",
                            "{{model_name}} ({{source}})",
                        )
                    ],
                ),
                8,
            ),
            (
                _timeseries(
                    "Queue length per model",
                    "Inferences waiting, per model. The HPA scales on the per-pod sum "
                    "(Autoscaling dashboard).",
                    "short",
                    [
                        Query(
                            f"sum by ({m}) ({schema.QUEUE_LENGTH.name}{sel})",
                            "{{model_name}} ({{source}})",
                        )
                    ],
                ),
                8,
            ),
            (
                _timeseries(
                    "Tokens/s per model",
                    "Tokens per second from OpenAI-style usage reports, input and output.",
                    "short",
                    [
                        Query(
                            f"sum by ({m}, type) ({rate(schema.TOKENS.name)})",
                            "{{model_name}} {{type}} ({{source}})",
                        )
                    ],
                ),
                8,
            ),
        ),
        line(
            8,
            (
                _heatmap(
                    "Items per request (sidecar)",
                    "How many items callers put in one request.",
                    f"sum by (le) (increase({batch.bucket}"
                    f"{sel_with(source=schema.SOURCE_SIDECAR)}[{RATE}]))",
                ),
                8,
            ),
            (
                _heatmap(
                    "Executed batch size (app)",
                    "How many items ran together in one batch (dynamic batching works when this "
                    "sits above the items per request).",
                    f"sum by (le) (increase({batch.bucket}"
                    f"{sel_with(source=schema.SOURCE_APP)}[{RATE}]))",
                ),
                8,
            ),
            (
                _timeseries(
                    "Mean batch size",
                    "Items per request (sidecar) and per executed batch (app).",
                    "short",
                    [
                        Query(
                            f"sum by ({m}) ({rate(batch.sum)}) "
                            f"/ sum by ({m}) ({rate(batch.count)})",
                            "{{model_name}} ({{source}})",
                        )
                    ],
                ),
                8,
            ),
        ),
    ]
    errors = schema.UPSTREAM_SCRAPE_ERRORS.name
    sidecar = [
        line(
            7,
            (
                _timeseries(
                    "Upstream ready",
                    "1 while the sidecar's model server answers its readiness check.",
                    "short",
                    [Query(up, "{{namespace}}/{{pod}}")],
                    maximum=1,
                ),
                12,
            ),
            (
                _timeseries(
                    "Upstream /metrics scrape errors",
                    "Scrapes of the model server's own /metrics that the sidecar had to leave "
                    "out, by reason (0 for a sidecar without any).",
                    "short",
                    [
                        Query(
                            f"sum by ({pods}, reason) "
                            f"(rate({errors}{_match(namespace='$namespace')}[{RATE}])) "
                            f"or on ({pods}) (0 * {up})",
                            "{{namespace}}/{{pod}} {{reason}}",
                        )
                    ],
                ),
                12,
            ),
        )
    ]
    return _dashboard(
        OVERVIEW_UID,
        "inferwatch / Inference",
        "Per-model inference traffic, errors, latency and load, from the sidecar and the app.",
        [
            _datasource_variable(options),
            _variable("namespace", "Namespace", f"label_values({total}, namespace)"),
            _variable(
                "model",
                "Model",
                f"label_values({total}{_match(namespace='$namespace')}, model_name)",
            ),
        ],
        [
            ("Summary", [summary]),
            ("Traffic", [traffic]),
            ("Latency", latency),
            ("Load", load),
            ("Sidecar", sidecar),
        ],
    )


# --- GPUs -----------------------------------------------------------------------------------


def gpus(options: GenerateOptions) -> dict[str, Any]:
    sel = _match(instance="$instance", gpu="$gpu")
    dev = "{{instance}} GPU {{gpu}}"
    by_dev = "instance, gpu"

    def gauge(family: schema.Family, legend: str = dev) -> Query:
        return Query(f"{family.name}{sel}", legend)

    used, total = schema.GPU_MEMORY_USED.name, schema.GPU_MEMORY_TOTAL.name
    age = schema.GPU_SAMPLE_AGE.name
    utilization = line(
        8,
        (
            _timeseries(
                "GPU utilization",
                "Fraction of time a kernel was running.",
                "percentunit",
                [gauge(schema.GPU_UTILIZATION)],
                maximum=1,
            ),
            12,
        ),
        (
            _timeseries(
                "Memory bandwidth utilization",
                "Fraction of time device memory was being read or written.",
                "percentunit",
                [gauge(schema.GPU_MEMORY_COPY_UTILIZATION)],
                maximum=1,
            ),
            12,
        ),
    )
    memory = line(
        8,
        (
            _timeseries(
                "Memory used",
                "Device memory in use; dashed: installed.",
                "bytes",
                [gauge(schema.GPU_MEMORY_USED), gauge(schema.GPU_MEMORY_TOTAL, f"{dev} total")],
                dashed=[1],
            ),
            8,
        ),
        (
            _timeseries(
                "Memory used ratio",
                "Used over installed; dashed: the alert threshold.",
                "percentunit",
                [Query(f"{used}{sel} / {total}{sel}", dev)],
                maximum=1,
                thresholds=_steps(("green", None), ("red", options.gpu_memory_alert_ratio)),
            ),
            8,
        ),
        (
            _timeseries(
                "Memory per process",
                "Device memory per process (pid); processes beyond the per-GPU limit are summed "
                'into pid="other".',
                "bytes",
                [gauge(schema.GPU_PROCESS_MEMORY, f"{dev} pid {{{{pid}}}}")],
                stacked=True,
            ),
            8,
        ),
    )
    thermals = line(
        8,
        (
            _timeseries(
                "Temperature",
                "Core temperature; dashed: the alert threshold.",
                "celsius",
                [gauge(schema.GPU_TEMPERATURE)],
                thresholds=_steps(("green", None), ("red", options.gpu_temperature_alert_celsius)),
            ),
            8,
        ),
        (
            _timeseries(
                "Power",
                "Power draw; dashed: the power management limit.",
                "watt",
                [gauge(schema.GPU_POWER_USAGE), gauge(schema.GPU_POWER_LIMIT, f"{dev} limit")],
                dashed=[1],
            ),
            8,
        ),
        (
            _timeseries(
                "Clocks",
                "Streaming multiprocessor and memory clocks.",
                "hertz",
                [
                    gauge(schema.GPU_SM_CLOCK, f"{dev} SM"),
                    gauge(schema.GPU_MEMORY_CLOCK, f"{dev} memory"),
                ],
            ),
            8,
        ),
    )
    health = line(
        8,
        (
            _timeseries(
                "Clock throttle reasons",
                "GPUs whose clocks are held down, by reason (gpu_idle is normal when idle).",
                "short",
                [Query(f"sum by (reason) ({schema.GPU_THROTTLED.name}{sel})", "{{reason}}")],
            ),
            6,
        ),
        (
            _timeseries(
                "ECC errors and PCIe replays",
                "New errors per interval.",
                "short",
                [
                    Query(
                        f"sum by ({by_dev}, type) "
                        f"(increase({schema.GPU_ECC_ERRORS.name}{sel}[{RATE}]))",
                        f"{dev} ECC {{{{type}}}}",
                    ),
                    Query(
                        f"sum by ({by_dev}) (increase({schema.GPU_PCIE_REPLAY.name}{sel}[{RATE}]))",
                        f"{dev} PCIe replays",
                    ),
                ],
            ),
            6,
        ),
        (
            _timeseries(
                "NVML sample age",
                "Seconds since the values were read from NVML: a growing age means a stuck "
                "collector.",
                "s",
                [gauge(schema.GPU_SAMPLE_AGE)],
            ),
            6,
        ),
        (
            _timeseries(
                "NVML errors",
                "Failed NVML calls per second, by reason (0 for a collector without any).",
                "short",
                [
                    Query(
                        f"sum by (instance, reason) (rate({schema.GPU_COLLECTOR_ERRORS.name}"
                        f"{_match(instance='$instance')}[{RATE}])) "
                        f"or on (instance) (0 * max by (instance) ({age}{sel}))",
                        "{{instance}} {{reason}}",
                    )
                ],
            ),
            6,
        ),
    )
    return _dashboard(
        GPU_UID,
        "inferwatch / GPUs",
        "NVML readings per GPU: utilization, memory, temperature, power, clocks, processes.",
        [
            _datasource_variable(options),
            _variable("instance", "Instance", f"label_values({total}, instance)"),
            _variable("gpu", "GPU", f"label_values({total}{_match(instance='$instance')}, gpu)"),
        ],
        [
            ("Utilization", [utilization]),
            ("Memory", [memory]),
            ("Thermals and power", [thermals]),
            ("Health", [health]),
        ],
    )


# --- autoscaling ----------------------------------------------------------------------------


def autoscaling(options: GenerateOptions) -> dict[str, Any]:
    ns = _match(namespace="$namespace")
    queue = f"{promql.POD_QUEUE_LENGTH}{ns}"
    # As the adapter serves it: in ms, a pod without traffic (NaN) left out.
    p95_ms = f"1000 * ({promql.POD_P95_SECONDS}{ns} >= 0)"
    queue_target, p95_target = options.queue_length_target, options.p95_latency_target_ms
    hpa = _match(namespace="$namespace", horizontalpodautoscaler="$hpa")
    pods = promql.by(promql.POD_LABELS)
    sidecar = _match(namespace="$namespace", source=schema.SOURCE_SIDECAR)

    metrics = line(
        9,
        (
            _timeseries(
                "Queue length per pod (inference_queue_length)",
                "Requests waiting per pod, the HPA's first metric; it scales to keep the average "
                "over pods at the dashed target.",
                "short",
                [
                    Query(queue, "{{namespace}}/{{pod}}"),
                    Query(f"avg by (namespace) ({queue})", "{{namespace}} average"),
                    Query(f"vector({queue_target})", f"target {queue_target}"),
                ],
                dashed=[2],
            ),
            12,
        ),
        (
            _timeseries(
                "p95 latency per pod (p95_latency_ms)",
                "The sidecar's p95 over 1 minute per pod, the HPA's second metric; it scales to "
                "keep the average over pods at the dashed target.",
                "ms",
                [
                    Query(p95_ms, "{{namespace}}/{{pod}}"),
                    Query(f"avg by (namespace) ({p95_ms})", "{{namespace}} average"),
                    Query(f"vector({p95_target})", f"target {p95_target} ms"),
                ],
                dashed=[2],
            ),
            12,
        ),
    )
    scaling = line(
        8,
        (
            _timeseries(
                "Replicas",
                "From kube-state-metrics: current and desired replicas of each HPA, and its "
                "bounds (dashed).",
                "short",
                [
                    Query(
                        f"{promql.KSM_CURRENT_REPLICAS}{hpa}", "{{horizontalpodautoscaler}} current"
                    ),
                    Query(
                        f"{promql.KSM_DESIRED_REPLICAS}{hpa}", "{{horizontalpodautoscaler}} desired"
                    ),
                    Query(
                        f"{promql.KSM_MAX_REPLICAS}{hpa}",
                        "{{horizontalpodautoscaler}} max",
                    ),
                    Query(
                        f"{promql.KSM_MIN_REPLICAS}{hpa}",
                        "{{horizontalpodautoscaler}} min",
                    ),
                ],
                dashed=[2, 3],
            ),
            8,
        ),
        (
            _timeseries(
                "Scaling pressure",
                "Average over pods divided by the target: above 100% the HPA adds replicas "
                "(desired = current x the larger ratio), well below it removes them.",
                "percentunit",
                [
                    Query(
                        f"avg by (namespace) ({queue}) / {queue_target}",
                        "{{namespace}} queue length",
                    ),
                    Query(
                        f"avg by (namespace) ({p95_ms}) / {p95_target}", "{{namespace}} p95 latency"
                    ),
                ],
                thresholds=_steps(("green", None), ("red", 1)),
            ),
            8,
        ),
        (
            _timeseries(
                "Requests per pod",
                "Inferences per second each pod's sidecar completed: how evenly the Service "
                "spreads load.",
                "reqps",
                [
                    Query(
                        f"sum by ({pods}) (rate({schema.INFERENCE_TOTAL.name}{sidecar}[{RATE}]))",
                        "{{namespace}}/{{pod}}",
                    )
                ],
            ),
            8,
        ),
    )
    return _dashboard(
        AUTOSCALING_UID,
        "inferwatch / Autoscaling",
        "The HPA's two pods metrics (recording rules) against their targets, and replicas.",
        [
            _datasource_variable(options),
            _variable(
                "namespace", "Namespace", f"label_values({schema.QUEUE_LENGTH.name}, namespace)"
            ),
            _variable(
                "hpa",
                "HPA",
                f"label_values({promql.KSM_MAX_REPLICAS}{ns}, horizontalpodautoscaler)",
            ),
        ],
        [("HPA metrics", [metrics]), ("Scaling", [scaling])],
    )


# --- public API -----------------------------------------------------------------------------


def dashboards(options: GenerateOptions) -> dict[str, dict[str, Any]]:
    """File name -> Grafana dashboard JSON, for ``dashboards/``."""
    return {
        f"{OVERVIEW_UID}.json": overview(options),
        f"{GPU_UID}.json": gpus(options),
        f"{AUTOSCALING_UID}.json": autoscaling(options),
    }


DATASOURCES_FILE = "provisioning/datasources/inferwatch.yaml"
PROVIDERS_FILE = "provisioning/dashboards/inferwatch.yaml"


def provisioning(options: GenerateOptions) -> dict[str, str]:
    """Path under ``dashboards/`` -> YAML for Grafana's provisioning folders."""
    datasources = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": options.datasource_uid,
                "type": "prometheus",
                "access": "proxy",
                "url": options.prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "httpMethod": "POST",
                    # Prometheus' scrape interval: $__rate_interval is at least 4 of them.
                    "timeInterval": options.scrape_interval,
                    "exemplarTraceIdDestinations": [
                        {"name": TRACE_ID_LABEL, "datasourceUid": options.traces_datasource_uid}
                    ],
                },
            }
        ],
    }
    providers = {
        "apiVersion": 1,
        "providers": [
            {
                "name": TAG,
                "orgId": 1,
                "folder": TAG,
                "folderUid": TAG,
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": DASHBOARDS_PATH, "foldersFromFilesStructure": False},
            }
        ],
    }
    return {
        DATASOURCES_FILE: yaml_text.generated(datasources),
        PROVIDERS_FILE: yaml_text.generated(providers),
    }


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, rows' nested panels included."""
    out = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets") or ():
                if target.get("expr"):
                    out.append((panel["title"], target["expr"]))
            visit(panel.get("panels") or [])

    visit(dashboard.get("panels") or [])
    return out
