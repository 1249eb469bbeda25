"""The sidecar: its model server (the upstream) not ready."""

from __future__ import annotations

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.alerts.alert import POD, Alert, AlertTest
from inferwatch.generate.options import GenerateOptions


def alerts(options: GenerateOptions) -> list[Alert]:
    return [upstream_down()]


def upstream_down() -> Alert:
    up = promql.series(schema.UPSTREAM_UP.name, **POD)
    return Alert(
        name="InferenceSidecarUpstreamDown",
        expr=promql.upstream_down(),
        for_="2m",
        severity="critical",
        summary="The model server behind {{ $labels.pod }} is not ready.",
        description=(
            "The inferwatch sidecar in {{ $labels.namespace }}/{{ $labels.pod }} has found "
            "its model server not ready for 2 minutes; the pod is out of its Service."
        ),
        runbook="""
The inferwatch sidecar's readiness check of its model server has failed for 2 minutes, so the
pod reports not ready and receives no traffic.

1. `kubectl logs <pod> -c <model server container>`: crash loop, out of memory, still loading?
2. Check the sidecar's `--upstream` address and readiness path match the model server.
3. GPU problems (XID errors, lost GPU) show on the GPU dashboard and in GPUCollectorFailing.
""",
        tests=(
            AlertTest("down", {up: "1x10 0x10"}, "15m", [POD]),
            AlertTest("up", {up: "1x20"}, "15m", []),
        ),
    )
