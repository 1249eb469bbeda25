"""Traffic: a model that served inferences and stopped receiving them."""

from __future__ import annotations

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.alerts.alert import MODEL, Alert, AlertTest
from inferwatch.generate.options import GenerateOptions


def alerts(options: GenerateOptions) -> list[Alert]:
    return [no_traffic(options)]


def no_traffic(options: GenerateOptions) -> Alert:
    served = promql.series(
        schema.INFERENCE_TOTAL.name,
        source=options.slo_source,
        model_version="1",
        status=schema.STATUS_SUCCESS,
        **MODEL,
    )
    return Alert(
        name="InferenceNoTraffic",
        expr=promql.stopped_serving(promql.selector(source=options.slo_source), "10m", "1d"),
        for_="5m",
        severity="warning",
        summary="{{ $labels.model_name }} stopped receiving inferences.",
        description=(
            "{{ $labels.model_name }} in {{ $labels.namespace }} served traffic in the last "
            "day but none in the last 15 minutes. Check the callers, the Service and the "
            "ingress in front of it."
        ),
        runbook="""
A model that served inferences in the last day has received none for 15 minutes. Usually
something in front of it broke: the Service selector, an ingress or gateway route, a client
deployment, or DNS.

1. Check that the pods are Ready and in the Service's endpoints.
2. Send a test inference through the Service and through the ingress.
3. If the model was retired on purpose, this resolves by itself after a day.
""",
        tests=(
            AlertTest("traffic stopped", {served: "0+100x60 6000x60"}, "90m", [MODEL]),
            AlertTest("still serving", {served: "0+100x120"}, "90m", []),
            AlertTest("never served", {served: "0x120"}, "90m", []),
        ),
    )
