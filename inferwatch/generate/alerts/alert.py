"""What an alert is: its rule, its runbook and the promtool cases that show it fire and stay quiet.

Alerts follow the monitoring-mixin conventions: CamelCase names, ``severity`` critical (pages) or
warning (a ticket), ``summary``/``description``/``runbook_url`` annotations. Annotations use
labels only, never ``$value``, so the promtool tests can state them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inferwatch.generate.options import GenerateOptions

# The labels of the test series: one model, the pod serving it, a GPU of that pod.
MODEL = {"namespace": "serving", "model_name": "resnet"}
POD = {"namespace": "serving", "pod": "model-server-0"}
GPU = {"gpu": "0", "uuid": "GPU-8f6c1c43", "name": "NVIDIA H100 80GB HBM3", **POD}


@dataclass(frozen=True)
class AlertTest:
    """One promtool case: input series, when to look, and the alerts expected then."""

    name: str
    series: dict[str, str]  # series selector -> promtool values notation
    eval_time: str
    firing: list[dict[str, str]]  # labels of each expected alert (beyond the rule's own)


@dataclass(frozen=True)
class Alert:
    """One alerting rule. Variants of one alert (windows, problems) share its name, its
    runbook and the names of its test cases."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str  # what it means and what to do, for docs/runbooks.md
    labels: dict[str, str] = field(default_factory=dict)
    tests: tuple[AlertTest, ...] = ()

    def rule(self, options: GenerateOptions) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{options.runbook_url}#{self.name.lower()}",
            },
        }
