"""OTLP metrics export of the inference families, received by a real OTLP/gRPC MetricsService."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from prometheus_client import CollectorRegistry
from support.http import wait_for_http
from support.polling import poll
from support.ports import LOOPBACK, free_port
from support.processes import inferwatch_command, stop_process
from support.upstreams import running_upstream, v2_body

from inferwatch import monitor_inference, schema
from inferwatch.otlp_metrics import (
    GEN_AI_DURATION_BUCKETS,
    GEN_AI_TPOT_BUCKETS,
    GEN_AI_TTFT_BUCKETS,
    rebucket,
    start_otlp_metrics,
)
from inferwatch.server.app import TEXT_MODEL


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        with self.lock:
            self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextmanager
def metrics_receiver() -> Iterator[tuple[str, _MetricsService]]:
    service = _MetricsService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.stop(grace=None)


def _attributes(point: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in point.attributes}


def test_the_inference_families_arrive_as_otlp_metrics(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="2", registry=registry)
    def predict(items: list[int]) -> list[int]:
        return items

    for _ in range(3):
        predict([1, 2])
    with metrics_receiver() as (endpoint, service):
        exporter = start_otlp_metrics(registry, protocol="grpc", endpoint=endpoint, interval=3600)
        try:
            assert exporter.export_now()
        finally:
            exporter.close()  # pushes once more
    assert len(service.requests) == 2
    (resource_metrics,) = service.requests[0].resource_metrics
    (scope,) = resource_metrics.scope_metrics
    metrics = {m.name: m for m in scope.metrics}
    assert set(metrics) == {f.name.removesuffix("_total") for f in schema.INFERENCE_FAMILIES}
    labels = {"source": "app", "model_name": "m", "model_version": "2"}

    total = metrics["model_inference"]
    assert total.sum.is_monotonic
    assert total.sum.aggregation_temporality == 2  # CUMULATIVE
    values = {tuple(sorted(_attributes(p).items())): p.as_double for p in total.sum.data_points}
    assert values[tuple(sorted({**labels, "status": "success"}.items()))] == 3.0

    duration = metrics[schema.INFERENCE_DURATION.name]
    assert duration.unit == "s"
    (point,) = duration.histogram.data_points
    assert _attributes(point) == labels
    assert point.count == 3
    assert list(point.explicit_bounds) == list(schema.INFERENCE_DURATION.buckets or ())
    assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
    assert sum(point.bucket_counts) == 3
    assert not point.HasField("min")

    (batch,) = metrics[schema.BATCH_SIZE.name].histogram.data_points
    assert (batch.count, batch.sum) == (3, 6.0)
    (active,) = metrics[schema.ACTIVE_REQUESTS.name].gauge.data_points
    assert active.as_double == 0.0


def test_a_bad_protocol_or_interval_is_a_clear_error(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match=r"^protocol must be grpc or http/protobuf, got 'udp'$"):
        start_otlp_metrics(registry, protocol="udp")
    with pytest.raises(ValueError, match=r"^interval must be > 0 seconds, got 0\.0$"):
        start_otlp_metrics(registry, interval=0.0)


def _otlp_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="grpc",
        OTEL_METRIC_EXPORT_INTERVAL="100",
    )
    return env


def _pushed_successes(service: _MetricsService, model: str) -> float:
    """The newest pushed model_inference{status="success"} of ``model`` (0 before any)."""
    with service.lock:
        requests = list(service.requests)
    for request in reversed(requests):
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != "model_inference":
                        continue
                    for p in m.sum.data_points:
                        attributes = _attributes(p)
                        if attributes.get("status") == "success" and (
                            attributes.get("model_name") == model
                        ):
                            return float(p.as_double)
    return 0.0


async def _push_after_one_request(
    command: list[str], ready: str, infer: str, body: bytes, model: str
) -> None:
    """Start ``command`` with OTLP metrics pointed at a receiver, wait until ``ready`` answers
    200, send one inference, and wait for its success count to be pushed; it must then stop
    cleanly on SIGTERM."""
    with metrics_receiver() as (endpoint, service):
        proc = await asyncio.create_subprocess_exec(
            *command,
            env=_otlp_env(endpoint),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_for_http(ready, proc, timeout=60)
            async with (
                aiohttp.ClientSession() as session,
                session.post(infer, data=body) as response,
            ):
                assert response.status == 200
            await poll(
                lambda: _pushed_successes(service, model) == 1.0,
                "a pushed success count",
                timeout=60,
                interval=0.05,
            )
        finally:
            assert await stop_process(proc) == 0


async def test_the_sidecar_pushes_its_metrics_when_asked() -> None:
    async with running_upstream() as upstream:
        port = free_port()
        command = inferwatch_command(
            *("sidecar", "--upstream", upstream.url),
            *("--listen", f"{LOOPBACK}:{port}", "--admin", f"{LOOPBACK}:{free_port()}"),
            *("--otlp-metrics", "--drain-quiet-period", "0"),
        )
        base = f"http://127.0.0.1:{port}"
        await _push_after_one_request(
            command, f"{base}/ready", f"{base}/v2/models/resnet/infer", v2_body(4), "resnet"
        )


async def test_the_model_server_pushes_its_metrics_when_asked() -> None:
    port = free_port()
    command = inferwatch_command(
        *("serve", "--model-size", "tiny"),
        *("--host", LOOPBACK, "--port", str(port), "--otlp-metrics"),
    )
    base = f"http://127.0.0.1:{port}"
    body = json.dumps({"text": "hello"}).encode()
    await _push_after_one_request(
        command, f"{base}/v2/health/ready", f"{base}/predict", body, TEXT_MODEL
    )


@pytest.mark.parametrize("command", ["sidecar", "serve"])
def test_a_bad_otlp_setting_stops_the_command_with_its_name(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "soon"
    flags = ["--upstream", "http://127.0.0.1:1"] if command == "sidecar" else []
    done = subprocess.run(
        inferwatch_command(command, *flags, "--otlp-metrics"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().endswith(
        "bad OTLP metrics configuration: "
        "OTEL_METRIC_EXPORT_INTERVAL must be milliseconds, got 'soon'"
    ), done.stderr


# --- GenAI semantic conventions -------------------------------------------------------------------


def test_token_streams_also_arrive_as_gen_ai_server_metrics(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="llm", model_version="7", registry=registry, tokens=True)
    def generate(n: int) -> Iterator[str]:
        yield from ["w"] * n

    @monitor_inference(model_name="resnet", registry=registry)
    def classify(items: list[int]) -> list[int]:
        return items

    for n in (3, 4):
        assert len(list(generate(n))) == n
    classify([1])
    with metrics_receiver() as (endpoint, service):
        exporter = start_otlp_metrics(
            registry, protocol="grpc", endpoint=endpoint, interval=3600, gen_ai_provider="acme"
        )
        try:
            assert exporter.export_now()
        finally:
            exporter.close()
    (resource_metrics,) = service.requests[0].resource_metrics
    (scope,) = resource_metrics.scope_metrics
    metrics = {m.name: m for m in scope.metrics}
    expected = {
        "gen_ai.server.time_to_first_token": (GEN_AI_TTFT_BUCKETS, schema.TIME_TO_FIRST_TOKEN),
        "gen_ai.server.time_per_output_token": (GEN_AI_TPOT_BUCKETS, schema.TIME_PER_OUTPUT_TOKEN),
        "gen_ai.server.request.duration": (GEN_AI_DURATION_BUCKETS, schema.INFERENCE_DURATION),
    }
    assert GEN_AI_TTFT_BUCKETS == (
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
    )  # fmt: skip
    assert GEN_AI_TPOT_BUCKETS == (
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5
    )  # fmt: skip
    assert GEN_AI_DURATION_BUCKETS == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
    )  # fmt: skip
    assert set(expected) <= set(metrics)
    assert not any(
        name.startswith("gen_ai.") and name not in expected for name in metrics
    )  # no token usage: see docs/tracing.md
    for name, (bounds, family) in expected.items():
        metric = metrics[name]
        assert metric.unit == "s", name
        assert metric.histogram.aggregation_temporality == 2  # CUMULATIVE
        (point,) = metric.histogram.data_points  # the LLM only: resnet generated no token
        assert _attributes(point) == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "acme",
            "gen_ai.request.model": "llm",
            "inference.source": "app",
            "model.version": "7",
        }, name
        assert list(point.explicit_bounds) == list(bounds), name
        assert len(point.bucket_counts) == len(bounds) + 1
        own = registry.get_sample_value(
            family.count, {"source": "app", "model_name": "llm", "model_version": "7"}
        )
        assert point.count == sum(point.bucket_counts) == own == 2, name
        own_sum = registry.get_sample_value(
            family.sum, {"source": "app", "model_name": "llm", "model_version": "7"}
        )
        assert point.sum == own_sum, name


def test_gen_ai_metrics_can_be_turned_off(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="llm", registry=registry, tokens=True)
    def generate() -> Iterator[str]:
        yield from "ab"

    list(generate())
    with metrics_receiver() as (endpoint, service):
        exporter = start_otlp_metrics(
            registry, protocol="grpc", endpoint=endpoint, interval=3600, gen_ai=False
        )
        exporter.close()
    names = {m.name for r in service.requests for rm in r.resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}  # fmt: skip
    assert names and not any(name.startswith("gen_ai.") for name in names)


@pytest.mark.parametrize(
    ("bounds", "counts", "target", "expected"),
    [
        # Shared boundaries are exact.
        ([0.1, 0.2, 0.5], [1, 2, 3, 4], [0.1, 0.5], [1, 5, 4]),
        # Inside one of ours: linear interpolation (half of (0.2, 0.4]'s 4 below 0.3).
        ([0.2, 0.4], [2, 4, 1], [0.3], [4, 3]),
        # Below our first boundary: interpolated from 0.
        ([0.01, 0.1], [10, 0, 0], [0.001, 0.005], [1, 4, 5]),
        # Above our last finite boundary: +Inf's count stays above.
        ([1.0], [3, 2], [0.5, 1.0, 2.5], [2, 1, 0, 2]),
        ([], [5], [1.0], [0, 5]),
    ],
)
def test_rebucket(
    bounds: list[float], counts: list[int], target: list[float], expected: list[int]
) -> None:
    assert rebucket(bounds, counts, target) == expected


def test_rebucketing_our_families_keeps_cumulative_counts_monotonic() -> None:
    import random

    rng = random.Random(7)
    for family, target in (
        (schema.TIME_TO_FIRST_TOKEN, GEN_AI_TTFT_BUCKETS),
        (schema.TIME_PER_OUTPUT_TOKEN, GEN_AI_TPOT_BUCKETS),
        (schema.INFERENCE_DURATION, GEN_AI_DURATION_BUCKETS),
    ):
        bounds = list(family.buckets or ())
        counts = [0] * (len(bounds) + 1)
        previous = [0] * (len(target) + 1)
        for _ in range(50):
            counts[rng.randrange(len(counts))] += rng.randrange(1, 5)
            out = rebucket(bounds, counts, target)
            assert sum(out) == sum(counts)
            cumulative = [sum(out[: i + 1]) for i in range(len(out))]
            assert all(c >= p for c, p in zip(cumulative, previous, strict=True)), family.name
            previous = cumulative
