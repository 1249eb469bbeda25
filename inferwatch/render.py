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


def render_dashboard(
    dashboard: dict[str, Any],
    prometheus: str,
    out: Path,
    minutes: float = 15.0,
    end: float | None = None,
    rate_interval: str = RATE_INTERVAL,
) -> Path:
    """Query every panel over the last ``minutes`` and write the dashboard as a PNG.

    ``rate_interval`` stands for Grafana's ``$__rate_interval``: four scrape intervals at least.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 240)
    placed = list(panels(dashboard))
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in placed), default=1)
    scale = 0.42  # inches per grid unit of height
    figure = plt.figure(figsize=(20, max(4.0, rows * scale)), dpi=80)
    figure.suptitle(dashboard.get("title", "dashboard"), fontsize=16, x=0.01, ha="left")
    for panel in placed:
        pos = panel["gridPos"]
        left = pos["x"] / GRID_COLUMNS
        width = pos["w"] / GRID_COLUMNS
        top = pos["y"] / rows
        height = pos["h"] / rows
        axes = figure.add_axes((left + 0.01, 1 - top - height + 0.03, width - 0.02, height - 0.06))
        axes.set_title(panel.get("title", ""), fontsize=10, loc="left")
        series = panel_series(prometheus, panel, start, end, step, rate_interval)
        if not series:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", color="grey")
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        if panel.get("type") in ("stat", "gauge"):
            latest = series[0].values[-1]
            axes.text(0.5, 0.5, f"{latest:.3g}", ha="center", va="center", fontsize=22)
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        for s in series[:8]:
            axes.plot([t - end for t in s.times], s.values, label=s.label, linewidth=1.2)
        axes.tick_params(labelsize=7)
        axes.set_xlabel("seconds before now", fontsize=7)
        axes.legend(fontsize=6, loc="upper left")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
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
        choices=["overview", "gpu", "autoscaling"],
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
