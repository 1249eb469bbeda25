"""The LLM dashboard against the real thing.

A real Prometheus scrapes a real sidecar in front of an upstream that streams OpenAI-style chat
completions (server-sent events: content deltas, a finish reason, a usage report), whose own
metrics (source="app") the sidecar merges: a generator instrumented with
``@monitor_inference(tokens=..., finish_reason=...)`` whose answers are cut at max_tokens every
third time, and the reference server's tiny causal LM (``inferwatch serve``). Under streamed
load, every panel of the inferwatch-llm dashboard returns data, and the recorded TTFT and TPOT
slow ratios the burn-rate alerts read are there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from support.http import serving
from support.polling import poll
from support.prometheus import running_prometheus, sidecar_job
from support.sidecar import running_sidecar

from inferwatch import generate, monitor_inference, schema
from inferwatch.generate import dashboards, promql
from inferwatch.generate.options import GenerateOptions
from inferwatch.render import substitute

MODEL = "tiny-chat"
NAMESPACE = "serving"
POD = "llm-server-0"
SCALE = 1 / 60  # burn-rate windows: 1h -> 1m, 5m -> 5s
RATE_INTERVAL = "15s"  # what Grafana would use for $__rate_interval with a 1 s scrape
TOKEN_DELAY = 0.003  # seconds between two generated tokens
PROMPT_TOKENS = 9

Chunk = tuple[str, str | None]  # (token text, finish reason of the last chunk)


def llm_server() -> web.Application:
    """A streaming chat model, instrumented in-process (source="app"), serving its /metrics,
    which also carry an engine's state under vLLM's names (the sidecar reads them as
    source="server": waiting, running, KV-cache usage)."""
    registry = CollectorRegistry()
    engine_state(registry)

    @monitor_inference(
        model_name=MODEL,
        model_version="1",
        registry=registry,
        batch_size=1,
        tokens=True,
        finish_reason=lambda chunk: chunk[1],
    )
    async def generate_tokens(max_tokens: int, answer_tokens: int) -> AsyncIterator[Chunk]:
        # An answer of answer_tokens tokens, cut off at max_tokens ("length") if longer.
        await asyncio.sleep(0.01)  # prefill
        produced = min(max_tokens, answer_tokens)
        for i in range(produced):
            last = i == produced - 1
            reason = None
            if last:
                reason = schema.FINISH_LENGTH if answer_tokens > max_tokens else schema.FINISH_STOP
            yield f"w{i} ", reason
            if not last:
                await asyncio.sleep(TOKEN_DELAY)

    def event(doc: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(doc)}\n\n".encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": doc["model"]}
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        await response.write(event({**base, "choices": [role]}))
        completion = 0
        answer_tokens = int(doc["messages"][-1]["content"].split()[0])
        async for text, reason in generate_tokens(doc["max_tokens"], answer_tokens):
            completion += 1
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": reason}
            await response.write(event({**base, "choices": [choice]}))
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
        }
        await response.write(event({**base, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", ready)
    app.router.add_get("/metrics", metrics)
    return app


def engine_state(registry: CollectorRegistry) -> None:
    """vLLM's engine gauges, with the label shape vLLM gives them."""
    for name, value in (
        ("vllm:num_requests_waiting", 0.0),
        ("vllm:num_requests_running", 1.0),
        ("vllm:kv_cache_usage_perc", 0.4),
    ):
        Gauge(name, name, ["model_name"], registry=registry).labels(MODEL).set(value)


@asynccontextmanager
async def llm_upstream(kind: str) -> AsyncIterator[tuple[str, str, str]]:
    """(url, model name, readiness path) of the upstream: the streaming chat above ("fake"),
    or the reference server's tiny causal LM (``inferwatch serve``'s app, in-process)."""
    if kind == "fake":
        async with serving(llm_server(), shutdown_timeout=0.5) as url:
            yield url, MODEL, "/health"
        return
    try:
        from support.model_server import LLM_MODEL, start_server, tiny_config
    except ImportError:
        pytest.skip("the reference server has no language model (inferwatch serve's tiny LLM)")
    served = await start_server(CollectorRegistry(), tiny_config())
    try:
        yield served.url, LLM_MODEL, "/v2/health/ready"
    finally:
        await served.stop()


async def query(http: aiohttp.ClientSession, prom: str, expr: str) -> list[dict[str, Any]]:
    async with http.get(f"{prom}/api/v1/query", params={"query": expr}) as response:
        doc = await response.json()
    assert doc["status"] == "success", (expr, doc)
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("upstream", ["fake", "server"])
async def test_every_llm_panel_has_data_under_streamed_load(
    tmp_path: Path, prometheus: str, upstream: str
) -> None:
    options = GenerateOptions(namespace=NAMESPACE, window_scale=SCALE)
    files = generate.render(options)
    (tmp_path / "recording.yaml").write_text(files[generate.RECORDING_RULES])
    async with (
        llm_upstream(upstream) as (upstream_url, model, ready_path),
        running_sidecar(
            upstream_url,
            upstream_ready_path=ready_path,
            max_concurrency=8,
            queue_timeout=5.0,
        ) as sidecar,
    ):
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["recording.yaml"],
            "scrape_configs": [sidecar_job(f"127.0.0.1:{sidecar.admin_port}", NAMESPACE, POD)],
        }
        async with (
            running_prometheus(prometheus, config, tmp_path, ready_timeout=30) as running,
            aiohttp.ClientSession() as http,
        ):
            prom = running.url
            url = f"http://127.0.0.1:{sidecar.proxy_port}/v1/chat/completions"

            async def chat(i: int) -> tuple[int, bytes]:
                # Every third answer is longer than max_tokens: truncated ("length").
                body = {
                    "model": model,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"{6 if i % 3 else 12} words"}],
                }
                async with http.post(url, json=body) as response:
                    return response.status, await response.read()

            async def load(seconds: float) -> list[int]:
                statuses: list[int] = []
                deadline = time.monotonic() + seconds
                i = 0
                while time.monotonic() < deadline:
                    answers = await asyncio.gather(*(chat(i + j) for j in range(6)))
                    statuses += [status for status, _ in answers]
                    i += 6
                    await asyncio.sleep(0.02)
                return statuses

            first = await load(4)
            assert set(first) == {200}
            # Streamed load goes on while the panels are checked: every rate has traffic.
            background = asyncio.create_task(load(120))
            board = dashboards.dashboards(options)[f"{dashboards.LLM_UID}.json"]

            # The reference server's tiny LLM keeps no KV cache: nothing to show there.
            no_data_expected = {"KV cache usage"} if upstream == "server" else set()

            async def panels_without_data() -> list[str]:
                missing = []
                for title, expr in dashboards.panel_queries(board):
                    if title in no_data_expected:
                        continue
                    filled = substitute(expr, RATE_INTERVAL)
                    if not finite(await query(http, prom, filled)):
                        missing.append(f"{title}: {filled}")
                return missing

            async def all_panels_have_data() -> bool:
                return not await panels_without_data()

            try:
                try:
                    await poll(
                        all_panels_have_data,
                        "every LLM panel to have data",
                        timeout=60,
                        interval=0.5,
                    )
                except AssertionError:
                    missing = "\n".join(await panels_without_data())
                    pytest.fail(f"panels without data:\n{missing}")
                # Both layers measured both latencies and the finish reasons.
                for family in (schema.TIME_TO_FIRST_TOKEN, schema.TIME_PER_OUTPUT_TOKEN):
                    result = await query(http, prom, f"sum by (source) ({family.count})")
                    sources = {r["metric"]["source"] for r in result}
                    assert sources == {"sidecar", "app"}, (family.name, result)
                if upstream == "fake":
                    ratio = await query(
                        http,
                        prom,
                        promql.truncation_ratio(
                            promql.selector(source="sidecar"), ("model_name",), "1m"
                        ),
                    )
                    # a third of the generations were truncated
                    assert float(ratio[0]["value"][1]) == pytest.approx(1 / 3, abs=0.1)
                # The recorded slow ratios the burn-rate alerts read (nothing slow in the fake;
                # how fast a real model runs on a shared CPU is its business).
                for rule in (promql.slow_ttft_ratio_rule, promql.slow_tpot_ratio_rule):
                    name = rule(promql.rule_windows(SCALE)[0])

                    async def recorded(name: str = name) -> list[dict[str, Any]]:
                        return [r for r in await query(http, prom, name) if finite([r])]

                    result = await poll(recorded, f"{name} recorded", timeout=30, interval=0.5)
                    assert {r["metric"]["model_name"] for r in result} == {model}
                    values = [float(r["value"][1]) for r in result]
                    if upstream == "fake":
                        assert values == [0.0] * len(values), result
                    assert all(0 <= v <= 1 for v in values), result
            finally:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
