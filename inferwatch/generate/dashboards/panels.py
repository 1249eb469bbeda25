"""The panels, variables and layout every inferwatch dashboard is made of, with grafanalib.

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

from inferwatch.generate.options import GenerateOptions

SCHEMA_VERSION = 39  # Grafana 10.4/11: no migration runs on load
TAG = "inferwatch"
# Every panel and query variable reads the data source picked in the `datasource` variable.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"  # follows the time range and the scrape interval
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


Thresholds = list[dict[str, Any]]


def steps(*colors: tuple[str, float | None]) -> Thresholds:
    return [{"color": color, "value": value} for color, value in colors]


BASE = steps(("green", None))


def red_above(value: float) -> Thresholds:
    """Green, then red from ``value``: a target, a budget or an alert threshold."""
    return steps(("green", None), ("red", value))


def timeseries(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    exemplar: bool = False,
    stacked: bool = False,
    maximum: int | None = None,
    thresholds: Thresholds | None = None,
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


def stat(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    thresholds: Thresholds | None = None,
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


def heatmap(title: str, description: str, expr: str) -> BucketHeatmap:
    return BucketHeatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets([Query(expr, "{{le}}")], fmt="heatmap"),
        maxDataPoints=None,
    )


# --- layout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """Panels side by side, one height; widths add up to at most 24 columns."""

    height: int
    cells: tuple[tuple[core.Panel, int], ...]


def line(height: int, *cells: tuple[core.Panel, int]) -> Line:
    if sum(width for _, width in cells) > 24:
        raise ValueError("a line of panels is wider than the 24 grid columns")
    return Line(height, cells)


Section = tuple[str, Sequence[Line]]  # a row's title and the lines of panels under it


def layout(sections: Sequence[Section]) -> list[core.Panel]:
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


# --- variables and the dashboard --------------------------------------------------------------


def datasource_variable(options: GenerateOptions) -> core.Template:
    return core.Template(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default=options.datasource_uid,
        regex="",
    )


def label_values(metric: str, label: str, selector: str = "") -> str:
    """Grafana's variable query: the values ``label`` takes on ``metric``."""
    return f"label_values({metric}{selector}, {label})"


def query_variable(name: str, label: str, query: str) -> QueryVariable:
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


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[core.Template],
    sections: Sequence[Section],
) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model, linked to the other inferwatch dashboards."""
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
        panels=layout(sections),
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
