"""Every alert, by area, each defined once with its rule, its runbook and its promtool cases.

An area is a module with ``alerts(options)``; those whose alerts read recorded series also
define the recording rules next to them.
"""

from __future__ import annotations

from inferwatch.generate.alerts import (
    autoscaling,
    availability,
    gpu,
    latency,
    llm,
    saturation,
    sidecar,
    traffic,
)
from inferwatch.generate.alerts.alert import Alert, AlertTest
from inferwatch.generate.options import GenerateOptions

__all__ = ["AREAS", "Alert", "AlertTest", "alerts"]

# In the order of the rule file, the promtool cases and the runbooks.
AREAS = (availability, latency, llm, saturation, traffic, sidecar, gpu, autoscaling)


def alerts(options: GenerateOptions) -> list[Alert]:
    """Every alert, each with the promtool cases that show it fires and stays silent."""
    return [alert for area in AREAS for alert in area.alerts(options)]
