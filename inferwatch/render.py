"""Draw a dashboard's panels as one PNG from a live Prometheus.

For a look at a dashboard where no Grafana runs (a laptop demo, a CI artifact, a README): each
panel's queries run as range queries and are drawn with matplotlib in the dashboard's own grid.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GRID_COLUMNS = 24  # Grafana's grid width
RATE_INTERVAL = "1m"


@dataclass
class Series:
    label: str
    times: list[float]
    values: list[float]


def substitute(expr: str, rate_interval: str = RATE_INTERVAL) -> str:
    """Fill Grafana's variables in as "everything" and its intervals with ``rate_interval``."""
    for name in ("$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}"):
        expr = expr.replace(name, rate_interval)
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{[A-Za-z_]\w*(:\w+)?\}|\$[A-Za-z_]\w*", ".*", expr)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Panels with a position, rows' children included."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels({"panels": panel.get("panels", [])})
        elif "gridPos" in panel:
            yield panel


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float, timeout: float = 10.0
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    url = f"{prometheus.rstrip('/')}/api/v1/query_range?{params}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        doc = json.load(response)
    if doc.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {doc.get('error')}")
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def _legend(template: str, labels: dict[str, str]) -> str:
    if template:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    shown = {k: v for k, v in labels.items() if k not in ("__name__", "instance", "job")}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "value"


def panel_series(
    prometheus: str,
    panel: dict[str, Any],
    start: float,
    end: float,
    step: float,
    rate_interval: str = RATE_INTERVAL,
) -> list[Series]:
    out = []
    for target in panel.get("targets", []):
        expr = target.get("expr")
        if not expr or target.get("hide"):
            continue
        for result in query_range(prometheus, substitute(expr, rate_interval), start, end, step):
            points = [(float(t), float(v)) for t, v in result["values"]]
            points = [(t, v) for t, v in points if math.isfinite(v)]
            if points:
                times, values = zip(*points, strict=True)
                label = _legend(target.get("legendFormat", ""), result["metric"])
                out.append(Series(label, list(times), list(values)))
    return out


# Grafana's dark theme and its classic series palette, so the picture reads like the real thing.
BACKGROUND = "#111217"
PANEL = "#181b1f"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
GRID = "#2c3235"
PALETTE = (
    "#73bf69",
    "#f2cc0c",
    "#8ab8ff",
    "#ff780a",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#705da0",
    "#37872d",
    "#fade2a",
)
MAX_SERIES = 10  # per panel; the legend says how many more there were

_BINARY = (("Ti", 2.0**40), ("Gi", 2.0**30), ("Mi", 2.0**20), ("Ki", 2.0**10))
_SI = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def _number(value: float) -> str:
    """Three significant digits, no trailing zeros (37.4, 0.25, 112)."""
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _scaled(value: float, steps: tuple[tuple[str, float], ...], unit: str) -> str:
    """1.41e9 Hz -> '1.41 GHz'; without a unit, 15000 -> '15k'."""
    prefix = ""
    for name, size in steps:
        if abs(value) >= size:
            value, prefix = value / size, name
            break
    return f"{_number(value)} {prefix}{unit}" if unit else f"{_number(value)}{prefix}"


def format_value(value: float, unit: str | None) -> str:
    """A value as Grafana shows it for the panel's unit (the units our dashboards use)."""
    if not math.isfinite(value):
        return str(value)
    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1e-3:
            return f"{_number(value * 1e6)} µs"
        if abs(value) < 1:
            return f"{_number(value * 1e3)} ms"
        return f"{_number(value)} s"
    if unit == "ms":
        return format_value(value / 1000, "s")
    if unit == "percentunit":
        return f"{_number(value * 100)}%"
    if unit == "percent":
        return f"{_number(value)}%"
    if unit == "reqps":
        return _scaled(value, _SI, "req/s")
    if unit == "bytes":
        return _scaled(value, _BINARY, "B")
    if unit == "hertz":
        return _scaled(value, _SI, "Hz")
    if unit == "watt":
        return _scaled(value, _SI, "W")
    if unit == "celsius":
        return f"{_number(value)} °C"
    return _scaled(value, _SI, "")


def _unit(panel: dict[str, Any]) -> str | None:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    return str(unit) if unit else None


def _bound(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        return math.inf


def _style(axes: Any) -> None:
    axes.set_facecolor(PANEL)
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.tick_params(colors=MUTED, labelsize=7, length=0)
    axes.grid(color=GRID, linewidth=0.6)
    axes.set_axisbelow(True)


def _clock(axes: Any, start: float, end: float) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axes.set_xlim(start, end)
    axes.xaxis.set_major_locator(MaxNLocator(6))
    axes.xaxis.set_major_formatter(
        FuncFormatter(lambda t, _: time.strftime("%H:%M:%S", time.localtime(t)))
    )


def _draw_stat(axes: Any, panel: dict[str, Any], series: list[Series]) -> None:
    s = series[0]
    axes.fill_between(s.times, s.values, color=PALETTE[0], alpha=0.18, linewidth=0)
    axes.plot(s.times, s.values, color=PALETTE[0], alpha=0.6, linewidth=1)
    low, high = min(s.values), max(s.values)
    axes.set_ylim(min(0.0, low), high * 1.6 if high > 0 else 1.0)  # the value over the line
    axes.text(
        0.5,
        0.55,
        format_value(s.values[-1], _unit(panel)),
        transform=axes.transAxes,
        ha="center",
        va="center",
        fontsize=24,
        color=PALETTE[0],
        weight="bold",
    )
    axes.set_xticks([])
    axes.set_yticks([])
    axes.grid(False)


def _draw_heatmap(axes: Any, series: list[Series], start: float, end: float) -> None:
    """Prometheus buckets are cumulative; a heatmap cell is one bucket's own count."""
    import numpy as np

    ordered = sorted(series, key=lambda s: _bound(s.label))
    times = sorted({t for s in ordered for t in s.times})
    index = {t: i for i, t in enumerate(times)}
    cumulative = np.zeros((len(ordered), len(times)))
    for row, s in enumerate(ordered):
        for t, v in zip(s.times, s.values, strict=True):
            cumulative[row, index[t]] = v
    counts = np.diff(cumulative, axis=0, prepend=0.0).clip(min=0.0)
    axes.imshow(
        np.ma.masked_equal(counts, 0.0),  # empty buckets show the panel, as in Grafana
        aspect="auto",
        origin="lower",
        cmap="Oranges",
        interpolation="nearest",
        extent=(times[0], times[-1], -0.5, len(ordered) - 0.5),
        norm="symlog" if counts.max() > 0 else None,
    )
    labels = [s.label if s.label == "+Inf" else _number(_bound(s.label)) for s in ordered]
    step = max(1, len(labels) // 8)
    axes.set_yticks(range(0, len(labels), step), labels[::step])
    axes.grid(False)
    _clock(axes, start, end)


def _draw_timeseries(
    axes: Any, panel: dict[str, Any], series: list[Series], start: float, end: float
) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    unit = _unit(panel)
    for colour, s in zip(PALETTE, series[:MAX_SERIES], strict=False):
        axes.plot(s.times, s.values, label=s.label, linewidth=1.3, color=colour)
    axes.yaxis.set_major_locator(MaxNLocator(5))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    _clock(axes, start, end)
    handles, labels = axes.get_legend_handles_labels()
    if len(series) > MAX_SERIES:
        labels[-1] += f"  (+{len(series) - MAX_SERIES} more)"
    legend = axes.legend(
        handles, labels, fontsize=6, loc="upper left", frameon=True, labelcolor=TEXT, ncol=1
    )
    legend.get_frame().set_facecolor(PANEL)
    legend.get_frame().set_edgecolor(GRID)
    legend.get_frame().set_alpha(0.8)


def render_dashboard(
    dashboard: dict[str, Any],
    prometheus: str,
    out: Path,
    minutes: float = 15.0,
    end: float | None = None,
    rate_interval: str = RATE_INTERVAL,
) -> Path:
    """Query every panel over the last ``minutes`` and write the dashboard as a PNG, in
    Grafana's grid, dark theme and units; rows as section titles, heatmaps as heatmaps.

    ``rate_interval`` stands for Grafana's ``$__rate_interval``: four scrape intervals at least.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 240)
    placed = list(panels(dashboard))
    titles = [p for p in dashboard.get("panels", []) if p.get("type") == "row" and "gridPos" in p]
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in placed + titles), default=1)
    rows += 1  # the dashboard's title above the grid
    scale = 0.42  # inches per grid unit of height
    figure = plt.figure(figsize=(20, max(4.0, rows * scale)), dpi=80, facecolor=BACKGROUND)
    figure.text(
        0.01,
        1 - 0.5 / rows,
        dashboard.get("title", "dashboard"),
        fontsize=16,
        color=TEXT,
        va="center",
    )
    for row in titles:
        y = 1 - (row["gridPos"]["y"] + 1.6) / rows
        figure.text(0.01, y, row.get("title", ""), fontsize=12, color=TEXT, weight="bold")
    for panel in placed:
        pos = panel["gridPos"]
        left = pos["x"] / GRID_COLUMNS
        width = pos["w"] / GRID_COLUMNS
        top = (pos["y"] + 1) / rows
        height = pos["h"] / rows
        # Inside the cell, as in Grafana: the title above the axes, the value labels left of
        # them and the time labels below them.
        title_room, time_room = 0.6 / rows, 0.45 / rows
        label_room = 0.0 if panel.get("type") in ("stat", "gauge") else 0.034
        axes = figure.add_axes(
            (
                left + 0.004 + label_room,
                1 - top - height + time_room,
                width - 0.008 - label_room,
                height - title_room - time_room,
            )
        )
        _style(axes)
        axes.set_title(panel.get("title", ""), fontsize=10, loc="left", color=TEXT, pad=4)
        series = panel_series(prometheus, panel, start, end, step, rate_interval)
        kind = panel.get("type")
        if not series:
            axes.text(
                0.5, 0.5, "No data", ha="center", va="center", color=MUTED, transform=axes.transAxes
            )
            axes.set_xticks([])
            axes.set_yticks([])
        elif kind in ("stat", "gauge"):
            _draw_stat(axes, panel, series)
        elif kind == "heatmap":
            _draw_heatmap(axes, series, start, end)
        else:
            _draw_timeseries(axes, panel, series, start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, facecolor=BACKGROUND)
    plt.close(figure)
    return out


# --- the command: inferwatch dashboards render ----------------------------------------------------


def add_arguments(parser: Any) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    render = sub.add_parser("render", help="draw a dashboard's panels from Prometheus as a PNG")
    render.add_argument("--prometheus", default="http://127.0.0.1:9090", help="%(default)s")
    render.add_argument(
        "--dashboard",
        default="overview",
        choices=["overview", "llm", "gpu", "autoscaling"],
        help="which generated dashboard (default: %(default)s)",
    )
    render.add_argument("--minutes", type=float, default=15.0, help="time range (default 15)")
    render.add_argument("--out", type=Path, default=Path("dashboard.png"))
    render.add_argument(
        "--rate-interval", default=RATE_INTERVAL, help="for $__rate_interval (default: 1m)"
    )


def run(args: Any) -> int:
    import sys

    from inferwatch.generate import dashboards
    from inferwatch.generate.options import GenerateOptions

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("rendering needs matplotlib: pip install 'inferwatch[render]'", file=sys.stderr)
        return 1
    dashboard = dashboards.dashboards(GenerateOptions())[f"inferwatch-{args.dashboard}.json"]
    try:
        written = render_dashboard(
            dashboard, args.prometheus, args.out, args.minutes, rate_interval=args.rate_interval
        )
    except (OSError, RuntimeError) as exc:
        print(f"inferwatch dashboards render: {exc}", file=sys.stderr)
        return 1
    print(written)
    return 0
