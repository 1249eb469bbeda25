"""Grafana dashboards and provisioning, generated from the metric schema with grafanalib.

Four dashboards, one module each: the inference overview (per model), LLM serving (per model:
tokens, time to first token, time per output token, finish reasons), GPUs (per device) and
autoscaling (per pod, exactly what the HPA reads). Their queries come from ``promql``, their
panels and layout from ``panels``.
"""

from __future__ import annotations

from typing import Any

from inferwatch.generate.dashboards.autoscaling import AUTOSCALING_UID, autoscaling
from inferwatch.generate.dashboards.gpus import GPU_UID, gpus
from inferwatch.generate.dashboards.llm import LLM_UID, llm
from inferwatch.generate.dashboards.overview import OVERVIEW_UID, overview
from inferwatch.generate.dashboards.panels import DATASOURCE, line
from inferwatch.generate.dashboards.provisioning import (
    DASHBOARDS_PATH,
    DATASOURCES_FILE,
    PROVIDERS_FILE,
    TRACE_ID_LABEL,
    provisioning,
)
from inferwatch.generate.options import GenerateOptions

__all__ = [
    "AUTOSCALING_UID",
    "DASHBOARDS_PATH",
    "DATASOURCE",
    "DATASOURCES_FILE",
    "GPU_UID",
    "LLM_UID",
    "OVERVIEW_UID",
    "PROVIDERS_FILE",
    "TRACE_ID_LABEL",
    "autoscaling",
    "dashboards",
    "gpus",
    "line",
    "llm",
    "overview",
    "panel_queries",
    "provisioning",
]


def dashboards(options: GenerateOptions) -> dict[str, dict[str, Any]]:
    """File name -> Grafana dashboard JSON, for ``dashboards/``."""
    return {
        f"{OVERVIEW_UID}.json": overview(options),
        f"{LLM_UID}.json": llm(options),
        f"{GPU_UID}.json": gpus(options),
        f"{AUTOSCALING_UID}.json": autoscaling(options),
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
