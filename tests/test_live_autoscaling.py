"""The queue signal end to end: a model server that queues (vLLM's own metric names), the
sidecar that normalises its queue, a real Prometheus with the generated recording rules, and
the queries prometheus-adapter and KEDA send for the HPA: both see the server's queue. And
KEDA's queue and p95 on the per-workload records: the same values as on the per-pod ones, for
the deployment's pods only."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.http import serving
from support.polling import poll
from support.ports import LOOPBACK
from support.prometheus import running_prometheus, sidecar_job
from support.sidecar import running_sidecar

from inferwatch import generate
from inferwatch.autoscale.replay import render_adapter_query
from inferwatch.generate import autoscaling, promql
from inferwatch.generate.options import GenerateOptions

NAMESPACE = "serving"
POD = "model-server-7d9f8-abcde"
WAITING = 7


def vllm_like() -> web.Application:
    """vLLM's /metrics as it exposes them: requests waiting and running, KV cache usage."""
    text = (
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="llama"}} {WAITING}\n'
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="llama"} 2\n'
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{model_name="llama"} 0.5\n'
    )

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def instant(
    http: aiohttp.ClientSession, prom: str, expr: str, at: float | None = None
) -> list[dict[str, Any]]:
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    async with http.get(f"{prom}/api/v1/query", params=params) as response:
        doc = await response.json()
    assert doc["status"] == "success", (expr, doc)
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def adapter_query(name: str, resource: str = "pod") -> str:
    """The adapter rule's metricsQuery as prometheus-adapter renders it for our one pod, or
    for its Deployment (an Object metric)."""
    match = f'=~"{POD}"' if resource == "pod" else '="model-server"'
    (query,) = [
        query
        for rule in autoscaling.adapter_rules()
        if rule["name"]["as"] == name
        and (query := render_adapter_query(rule, resource, NAMESPACE, match))
    ]
    return query


def recording_rules(folder: Path, options: GenerateOptions) -> Path:
    """The generated recording rules, written into ``folder`` for Prometheus to load."""
    rules = folder / Path(generate.RECORDING_RULES).name
    rules.write_text(generate.render(options)[generate.RECORDING_RULES])
    return rules


async def test_adapter_and_keda_queries_see_the_model_servers_own_queue(
    tmp_path: Path, prometheus: str
) -> None:
    options = GenerateOptions(namespace=NAMESPACE, deployment="model-server")
    rules = recording_rules(tmp_path, options)
    keda = autoscaling.keda_scaled_object(options)
    (queue_trigger,) = (
        t
        for t in keda["spec"]["triggers"]
        if t["type"] == "prometheus" and "queue_length" in t["metadata"]["query"]
    )
    async with (
        serving(vllm_like()) as upstream,
        running_sidecar(upstream, upstream_ready_path="") as sidecar,
    ):
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules.name],
            "scrape_configs": [sidecar_job(f"{LOOPBACK}:{sidecar.admin_port}", NAMESPACE, POD)],
        }
        async with (
            running_prometheus(prometheus, config, tmp_path) as running,
            aiohttp.ClientSession() as http,
        ):

            async def adapter_queue() -> float | None:
                result = await instant(http, running.url, adapter_query("inference_queue_length"))
                return float(result[0]["value"][1]) if result else None

            await poll(
                lambda: adapter_queue(),
                "the adapter's inference_queue_length for the pod",
                timeout=60,
            )
            # The server's waiting requests, per pod, through the recording rule.
            assert await adapter_queue() == WAITING
            (series,) = await instant(http, running.url, adapter_query("inference_queue_length"))
            assert series["metric"] == {"pod": POD}
            kv = await instant(http, running.url, adapter_query("kv_cache_usage_ratio"))
            assert [float(r["value"][1]) for r in kv] == [0.5]
            # The same as metrics of the Deployment (hpa_metric_type Object): one value each,
            # from the per-workload records.
            queue = adapter_query("inference_queue_length", "deployment")
            await poll(
                lambda: instant(http, running.url, queue),
                "the adapter's inference_queue_length for the Deployment",
                timeout=60,
            )
            (series,) = await instant(http, running.url, queue)
            assert series["metric"] == {"workload": "model-server"}
            assert float(series["value"][1]) == WAITING
            kv = await instant(
                http, running.url, adapter_query("kv_cache_usage_ratio", "deployment")
            )
            assert [float(r["value"][1]) for r in kv] == [0.5]
            keda_kv = autoscaling.keda_queries(options)["kv_cache_usage_ratio"]
            assert [float(r["value"][1]) for r in await instant(http, running.url, keda_kv)] == [
                0.5
            ]
            # KEDA's trigger, as the ScaledObject sends it for the deployment's pods.
            result = await instant(http, running.url, queue_trigger["metadata"]["query"])
            assert [float(r["value"][1]) for r in result] == [WAITING]


def model_server(delay: float) -> web.Application:
    """A model server answering every inference after ``delay`` seconds, with vLLM's queue."""

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay)
        return web.json_response({"outputs": []})

    app = vllm_like()
    app.router.add_post("/v2/models/{model}/infer", infer)
    return app


# Two pods of the Deployment `model-server` (a fast one and a slow one) and one of another
# Deployment whose name starts the same way, which KEDA's queries must leave out.
PODS = {
    "model-server-7d9f8c6b5-abcde": 0.02,
    "model-server-7d9f8c6b5-fghij": 0.08,
    "model-server-canary-5c4b3a2d1-klmno": 0.3,
}


async def test_keda_queries_on_the_workload_records_agree_with_the_per_pod_ones(
    tmp_path: Path, prometheus: str
) -> None:
    options = GenerateOptions(namespace=NAMESPACE, deployment="model-server")
    rules = recording_rules(tmp_path, options)
    keda = autoscaling.keda_queries(options)
    # What KEDA sent before the per-workload records: the per-pod records of the deployment's
    # pods (its pattern then, "model-server-.*", also took the canary's).
    per_pod = f'namespace="{NAMESPACE}",pod=~"model-server-7d9f8c6b5-.*"'
    buckets = f"sum by (le) ({promql.POD_LATENCY_BUCKETS}{{{per_pod}}})"
    before = {
        autoscaling.QUEUE_METRIC: f"sum({promql.POD_QUEUE_LENGTH}{{{per_pod}}}) or vector(0)",
        autoscaling.P95_METRIC: (f"1000 * (histogram_quantile(0.95, {buckets}) >= 0) or vector(0)"),
    }
    async with contextlib.AsyncExitStack() as stack:
        proxies, targets = [], []
        for pod, delay in PODS.items():
            upstream = await stack.enter_async_context(serving(model_server(delay)))
            sidecar = await stack.enter_async_context(
                running_sidecar(upstream, upstream_ready_path="")
            )
            proxies.append(f"http://{LOOPBACK}:{sidecar.proxy_port}")
            (target,) = sidecar_job(f"{LOOPBACK}:{sidecar.admin_port}", NAMESPACE, pod)[
                "static_configs"
            ]
            targets.append(target)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules.name],
            "scrape_configs": [{"job_name": "inferwatch-sidecar", "static_configs": targets}],
        }
        running = await stack.enter_async_context(running_prometheus(prometheus, config, tmp_path))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        await stack.enter_async_context(load(http, proxies))

        async def settled_p95() -> float | None:
            """A time every rule evaluation up to it had finished (both queries then read the
            same evaluation), once every pod has a p95 there."""
            at = time.time() - 2
            pods = await instant(http, running.url, f"{promql.POD_P95_SECONDS} >= 0", at)
            return at if len(pods) == len(PODS) else None

        at = await poll(settled_p95, "a p95 of every pod", timeout=60, interval=0.5)
        # Each workload's queue: the two pods of model-server, the canary's one pod.
        workloads = await instant(http, running.url, promql.WORKLOAD_QUEUE_LENGTH)
        assert {r["metric"]["workload"]: float(r["value"][1]) for r in workloads} == {
            "model-server": 2 * WAITING,
            "model-server-canary": WAITING,
        }
        for metric in (autoscaling.QUEUE_METRIC, autoscaling.P95_METRIC):
            (now,) = await instant(http, running.url, keda[metric], at)
            (then,) = await instant(http, running.url, before[metric], at)
            assert float(now["value"][1]) == pytest.approx(float(then["value"][1]), rel=1e-9)
        (p95,) = await instant(http, running.url, keda[autoscaling.P95_METRIC], at)
        # A fifth of the deployment's inferences take 80 ms (the slow pod): its p95.
        assert 50 < float(p95["value"][1]) < 300


@contextlib.asynccontextmanager
async def load(http: aiohttp.ClientSession, proxies: list[str]) -> AsyncIterator[None]:
    """Inferences sent through every sidecar, a few at a time, until the block ends."""

    async def one(proxy: str) -> None:
        while True:
            body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32"}]}
            async with http.post(f"{proxy}/v2/models/resnet/infer", json=body) as response:
                await response.read()
                assert response.status == 200

    tasks = [asyncio.create_task(one(proxy)) for proxy in proxies for _ in range(2)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
