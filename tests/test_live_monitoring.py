"""The generated configs against the real thing.

A real Prometheus scrapes a real sidecar (with GPU metrics from a fake NVML) in front of a real
upstream whose own decorated metrics the sidecar merges, under generated load. Then every
dashboard panel's query returns data, the prometheus-adapter queries rendered for one pod return
that pod's queue length and p95 in ms, and a real Alertmanager delivers the error-burn alert to
a test webhook. Rule windows are shrunk (GenerateOptions.window_scale) so it takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from support.fake_pynvml import FakeGpu, build, clear_visible_devices, install
from support.http import serving
from support.polling import poll
from support.ports import LOOPBACK, free_port
from support.processes import end_process
from support.prometheus import running_prometheus, sidecar_job
from support.sidecar import running_sidecar

from inferwatch import generate, monitor_inference
from inferwatch.autoscale.replay import render_adapter_query
from inferwatch.generate import autoscaling, dashboards
from inferwatch.generate.options import GenerateOptions
from inferwatch.gpu import start_gpu_metrics
from inferwatch.render import substitute

NAMESPACE = "serving"
POD = "model-server-0"
SCALE = 1 / 60  # burn-rate windows: 1h -> 1m, 5m -> 5s; `for` 2m -> 2s
RATE_INTERVAL = "15s"  # what Grafana would use for $__rate_interval with a 1 s scrape

KSM_METRICS = (
    "# TYPE kube_horizontalpodautoscaler_status_current_replicas gauge\n"
    f'kube_horizontalpodautoscaler_status_current_replicas{{namespace="{NAMESPACE}",'
    'horizontalpodautoscaler="model-server"} 2\n'
    "# TYPE kube_horizontalpodautoscaler_status_desired_replicas gauge\n"
    f'kube_horizontalpodautoscaler_status_desired_replicas{{namespace="{NAMESPACE}",'
    'horizontalpodautoscaler="model-server"} 3\n'
    "# TYPE kube_horizontalpodautoscaler_spec_max_replicas gauge\n"
    f'kube_horizontalpodautoscaler_spec_max_replicas{{namespace="{NAMESPACE}",'
    'horizontalpodautoscaler="model-server"} 10\n'
    "# TYPE kube_horizontalpodautoscaler_spec_min_replicas gauge\n"
    f'kube_horizontalpodautoscaler_spec_min_replicas{{namespace="{NAMESPACE}",'
    'horizontalpodautoscaler="model-server"} 1\n'
)


def model_server() -> web.Application:
    """A model server instrumented with the decorators (source="app"), serving its /metrics,
    which also carry an LLM engine's state under vLLM's names (read as source="server")."""
    registry = CollectorRegistry()
    for name, value in (
        ("vllm:num_requests_waiting", 0.0),
        ("vllm:num_requests_running", 1.0),
        ("vllm:kv_cache_usage_perc", 0.4),
    ):
        Gauge(name, name, ["model_name"], registry=registry).labels("llama").set(value)

    @monitor_inference(model_name="resnet", model_version="1", registry=registry)
    async def classify(images: list[list[float]], fail: bool) -> list[int]:
        await asyncio.sleep(0.002 * len(images))
        if fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [0 for _ in images]

    @monitor_inference(
        model_name="llama",
        registry=registry,
        batch_size=1,
        tokens=True,
        finish_reason=lambda word: "stop",
    )
    async def generate_tokens(prompt: str) -> AsyncIterator[str]:
        for word in prompt.split():
            await asyncio.sleep(0.001)
            yield word

    async def infer(request: web.Request) -> web.Response:
        doc = await request.json()
        batch = doc["inputs"][0]["shape"][0]
        try:
            await classify([[0.0]] * batch, fail="fail" in request.query)
        except RuntimeError as exc:
            return web.json_response({"error": str(exc)}, status=500)
        return web.json_response(
            {"model_name": "resnet", "model_version": "1", "outputs": [{"data": [0] * batch}]}
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for word in generate_tokens(doc["messages"][0]["content"]):
            chunk = {"model": doc["model"], "choices": [{"delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        finish = {"model": doc["model"], "choices": [{"delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(finish)}\n\n".encode())
        usage = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_post("/v2/models/resnet/infer", infer)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app


class Webhook:
    """Alertmanager's receiver, and a stand-in for kube-state-metrics' HPA series."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            self.alerts.extend((await request.json())["alerts"])
            return web.Response(text="ok")

        async def ksm(request: web.Request) -> web.Response:
            return web.Response(text=KSM_METRICS, content_type="text/plain")

        app = web.Application()
        app.router.add_post("/alerts", receive)
        app.router.add_get("/metrics", ksm)
        return app


async def query(http: aiohttp.ClientSession, prom: str, expr: str) -> list[dict[str, Any]]:
    async with http.get(f"{prom}/api/v1/query", params={"query": expr}) as response:
        doc = await response.json()
    assert doc["status"] == "success", (expr, doc)
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


@asynccontextmanager
async def process(argv: list[str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            end_process(proc, timeout=10)


@pytest.mark.timeout(240)
async def test_dashboards_rules_adapter_and_alerts_live(
    tmp_path: Path,
    prometheus: str,
    alertmanager: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    webhook = Webhook()
    clear_visible_devices(monkeypatch)
    install(
        monkeypatch,
        build(
            [
                FakeGpu(
                    "GPU-0a1b2c3d",
                    utilization=(87, 40),
                    memory=(30 * 2**30, 80 * 2**30, 50 * 2**30),
                    temperature=64,
                    power_mw=550_000,
                    energy_mj=5_000_000,
                    sm_mhz=1980,
                    throttle=0x4,
                    processes=[(os.getpid(), 28 * 2**30)],
                )
            ]
        ),
    )

    async with (
        serving(webhook.app(), shutdown_timeout=0.5) as webhook_url,
        serving(model_server(), shutdown_timeout=0.5) as upstream_url,
        running_sidecar(upstream_url, max_concurrency=4, queue_timeout=5.0) as sidecar,
    ):
        gpus = start_gpu_metrics(registry=sidecar.registry, interval=0.2)
        options = GenerateOptions(
            namespace=NAMESPACE,
            window_scale=SCALE,
            alert_webhook_url=f"{webhook_url}/alerts",
        )
        files = generate.render(options)
        for name in (generate.RECORDING_RULES, generate.ALERTING_RULES, generate.ALERTMANAGER):
            (tmp_path / Path(name).name).write_text(files[name])
        am_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [Path(generate.RECORDING_RULES).name, Path(generate.ALERTING_RULES).name],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"{LOOPBACK}:{am_port}"]}]}]
            },
            "scrape_configs": [
                sidecar_job(f"{LOOPBACK}:{sidecar.admin_port}", NAMESPACE, POD),
                {
                    "job_name": "kube-state-metrics",
                    "static_configs": [{"targets": [webhook_url.removeprefix("http://")]}],
                },
            ],
        }
        async with (
            process(
                [
                    alertmanager,
                    f"--config.file={tmp_path / Path(generate.ALERTMANAGER).name}",
                    f"--storage.path={tmp_path / 'am'}",
                    f"--web.listen-address={LOOPBACK}:{am_port}",
                    "--cluster.listen-address=",
                ],
                tmp_path / "alertmanager.log",
            ),
            running_prometheus(prometheus, config, tmp_path, ready_timeout=30) as running,
            aiohttp.ClientSession() as http,
        ):
            prom = running.url
            proxy = f"http://{LOOPBACK}:{sidecar.proxy_port}"

            async def infer(batch: int, fail: bool = False) -> int:
                body = {"inputs": [{"name": "x", "shape": [batch, 1], "datatype": "FP32"}]}
                url = f"{proxy}/v2/models/resnet/infer" + ("?fail=1" if fail else "")
                async with http.post(url, json=body) as response:
                    await response.read()
                    return response.status

            async def chat() -> int:
                body = {
                    "model": "llama",
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "four words of prompt"}],
                }
                async with http.post(f"{proxy}/v1/chat/completions", json=body) as response:
                    await response.read()
                    return response.status

            async def load(seconds: float, fail_every: int) -> list[int]:
                statuses: list[int] = []
                deadline = time.monotonic() + seconds
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    batch = [
                        infer(1 + j % 8, fail=fail_every > 0 and j % fail_every == 0)
                        for j in range(i, i + 8)
                    ]
                    statuses += await asyncio.gather(*batch, chat())
                    await asyncio.sleep(0.02)
                return statuses

            # Healthy traffic first, so every rule and panel has something to show ...
            statuses = await load(6, fail_every=0)
            assert set(statuses) == {200}

            # ... then every panel of every dashboard returns data.
            async def panels_without_data() -> list[str]:
                missing = []
                for name, dashboard in dashboards.dashboards(options).items():
                    for title, expr in dashboards.panel_queries(dashboard):
                        if not finite(await query(http, prom, substitute(expr, RATE_INTERVAL))):
                            missing.append(f"{name}: {title}: {substitute(expr, RATE_INTERVAL)}")
                return missing

            async def all_panels_have_data() -> bool:
                return not await panels_without_data()

            try:
                await poll(
                    all_panels_have_data, "every panel to have data", timeout=60, interval=0.25
                )
            except AssertionError:
                pytest.fail("panels without data:\n" + "\n".join(await panels_without_data()))

            # prometheus-adapter's queries, rendered as it renders them for this one pod and
            # for its workload (a pod named like a StatefulSet's is its own workload).
            values, workload_values = {}, {}
            for rule in autoscaling.adapter_rules():
                for resource, label, found in (
                    ("pod", "pod", values),
                    ("deployment", "workload", workload_values),
                ):
                    expr = render_adapter_query(rule, resource, NAMESPACE, f'=~"{POD}"')
                    if expr is None:
                        continue
                    result = await query(http, prom, expr)
                    assert [r["metric"] for r in result] == [{label: POD}], expr
                    found[rule["name"]["as"]] = float(result[0]["value"][1])
            # One pod: its workload's queue and KV cache are its own.
            assert workload_values["inference_queue_length"] == values["inference_queue_length"]
            assert workload_values["kv_cache_usage_ratio"] == values["kv_cache_usage_ratio"]
            assert workload_values["p95_latency_ms"] == pytest.approx(
                values["p95_latency_ms"], rel=0.25
            )
            assert values["inference_queue_length"] >= 0
            # the sidecar's own p95 in ms, as Prometheus computes it from the same buckets
            p95 = await query(
                http,
                prom,
                "1000 * histogram_quantile(0.95, sum by (le) (rate("
                'model_inference_duration_seconds_bucket{source="sidecar"}[1m])))',
            )
            # (the rule was evaluated up to a second earlier, over a slightly different window)
            assert values["p95_latency_ms"] == pytest.approx(float(p95[0]["value"][1]), rel=0.25)
            assert 0 < values["p95_latency_ms"] < 1000

            # An error burst, kept up until the fastest burn-rate page reaches the webhook
            # through Alertmanager (it waits group_wait before the first notification).
            burst = asyncio.create_task(load(120, fail_every=2))

            async def delivered() -> list[dict[str, Any]]:
                return [
                    a
                    for a in webhook.alerts
                    if a["labels"]["alertname"] == "InferenceErrorBudgetBurn"
                    and a["labels"]["severity"] == "critical"
                    and a["status"] == "firing"
                ]

            try:
                alerts = await poll(
                    delivered, "the error-burn alert at the webhook", timeout=60, interval=0.25
                )
            except AssertionError:
                ratios = await query(http, prom, '{__name__=~".*errors:ratio_rate(1m|5s)"}')
                firing = await query(http, prom, "ALERTS")
                pytest.fail(f"no alert delivered; ratios: {ratios}; ALERTS: {firing}")
            finally:
                burst.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await burst
            labels = alerts[0]["labels"]
            assert (labels["namespace"], labels["model_name"], labels["source"]) == (
                NAMESPACE,
                "resnet",
                "sidecar",
            )
            assert alerts[0]["annotations"]["runbook_url"].endswith("#inferenceerrorbudgetburn")
        gpus.close()
