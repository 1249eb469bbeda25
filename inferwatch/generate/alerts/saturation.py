"""Saturation: inferences waiting in front of the model, and turned away when the queue is full."""

from __future__ import annotations

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.alerts.alert import MODEL, POD, Alert, AlertTest
from inferwatch.generate.options import GenerateOptions

QUEUE_RUNBOOK = """
Inferences wait before reaching the model: the sidecar's admission queue (max concurrency) or
the model server's batcher cannot keep up. Latency grows with the queue, and when the queue is
full the sidecar answers 503 with Retry-After.

1. Check the autoscaling dashboard: the HPA scales on this queue length; is it scaling, and is
   it at its maximum (InferenceAutoscalerAtMaxReplicas)?
2. Check whether new pods are pending (no free GPU) or slow to become ready (model loading).
3. Raise max replicas, or the sidecar's max concurrency if the model server has headroom.
"""


def alerts(options: GenerateOptions) -> list[Alert]:
    return [queue_backlog(options), requests_rejected()]


def queue_backlog(options: GenerateOptions) -> Alert:
    limit = options.queue_length_alert
    queue = promql.series(
        schema.QUEUE_LENGTH.name, source=schema.SOURCE_SIDECAR, model_name="resnet", **POD
    )
    return Alert(
        name="InferenceQueueBacklog",
        expr=promql.above(promql.POD_QUEUE_LENGTH, limit),
        for_="10m",
        severity="warning",
        summary="{{ $labels.pod }} has a standing inference queue.",
        description=(
            f"More than {limit} inferences have been waiting in "
            "{{ $labels.namespace }}/{{ $labels.pod }} for 10 minutes: the autoscaler is "
            "not keeping up, or is at its maximum."
        ),
        runbook=QUEUE_RUNBOOK,
        tests=(
            AlertTest("backlog", {queue: f"{limit + 10}x30"}, "20m", [POD]),
            AlertTest("short queue", {queue: f"{limit // 2}x30"}, "20m", []),
        ),
    )


def requests_rejected() -> Alert:
    rejected = promql.series(
        schema.INFERENCE_FAILURES.name,
        source=schema.SOURCE_SIDECAR,
        model_version="1",
        reason=schema.REASON_REJECTED,
        **MODEL,
    )
    return Alert(
        name="InferenceRequestsRejected",
        expr=promql.rejecting("5m"),
        for_="5m",
        severity="warning",
        summary="{{ $labels.model_name }} is turning inferences away.",
        description=(
            "The admission queue in front of {{ $labels.model_name }} in "
            "{{ $labels.namespace }} has been full for 5 minutes and callers get 503s."
        ),
        runbook=QUEUE_RUNBOOK,
        tests=(
            AlertTest("rejecting", {rejected: "0+10x20"}, "15m", [MODEL]),
            AlertTest("not rejecting", {rejected: "0x20"}, "15m", []),
        ),
    )
