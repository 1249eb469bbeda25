"""The queue signal end to end: a model server that queues (vLLM's own metric names), the
sidecar that normalises its queue, a real Prometheus with the generated recording rules, and
the queries prometheus-adapter and KEDA send for the HPA: both see the server's queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from support.http import serving
from support.polling import poll
from support.ports import LOOPBACK
from support.prometheus import running_prometheus, sidecar_job
from support.sidecar import running_sidecar

from inferwatch import generate
from inferwatch.generate import autoscaling
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


async def instant(http: aiohttp.ClientSession, prom: str, expr: str) -> list[dict[str, Any]]:
    async with http.get(f"{prom}/api/v1/query", params={"query": expr}) as response:
        doc = await response.json()
    assert doc["status"] == "success", (expr, doc)
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def adapter_query(name: str) -> str:
    """The adapter rule's metricsQuery as prometheus-adapter renders it for our one pod."""
    (rule,) = (r for r in autoscaling.adapter_rules() if r["name"]["as"] == name)
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
        .replace("<<.GroupBy>>", "pod")
    )


async def test_adapter_and_keda_queries_see_the_model_servers_own_queue(
    tmp_path: Path, prometheus: str
) -> None:
    options = GenerateOptions(namespace=NAMESPACE, deployment="model-server")
    rules = tmp_path / Path(generate.RECORDING_RULES).name
    rules.write_text(generate.render(options)[generate.RECORDING_RULES])
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
            # KEDA's trigger, as the ScaledObject sends it for the deployment's pods.
            result = await instant(http, running.url, queue_trigger["metadata"]["query"])
            assert [float(r["value"][1]) for r in result] == [WAITING]
