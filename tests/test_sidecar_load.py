"""Exact accounting under load: the counters equal what the clients saw, request for request."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import aiohttp
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar
from support.upstreams import running_upstream, v2_body

JSON = {"Content-Type": "application/json"}
MODELS = ("resnet", "bert", "yolo")
REQUESTS = 3000


async def test_counters_equal_what_clients_observed_under_concurrent_mixed_load() -> None:
    rng = random.Random(42)
    plan = [
        (rng.choice(MODELS), rng.choice(("", "", "?status=404", "?status=500")), rng.randint(1, 9))
        for _ in range(REQUESTS)
    ]
    async with (
        running_upstream() as up,
        running_sidecar(up.url, max_concurrency=16, max_queue=48, queue_timeout=30) as sc,
    ):
        # 400 connections for 16 slots and 48 queue places: many are turned away at the door.
        connector = aiohttp.TCPConnector(limit=400)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(model: str, query: str, batch: int) -> tuple[str, str, int]:
                target = f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/{model}/infer{query}"
                async with session.post(target, data=v2_body(batch), headers=JSON) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        return model, "success", batch
                    if resp.status == 503 and json.loads(body).get("reason") == "overloaded":
                        return model, "rejected", batch
                    assert resp.status in (404, 500), resp.status
                    return model, "client_error" if resp.status == 404 else "server_error", batch

            outcomes = await asyncio.gather(*(one(*p) for p in plan))

    seen = Counter((model, outcome) for model, outcome, _ in outcomes)
    assert seen[("resnet", "rejected")] + seen[("bert", "rejected")] > 0  # the queue did overflow
    assert sum(seen.values()) == REQUESTS
    for model in MODELS:
        labels = {"model_name": model, "model_version": ""}
        failures = 0
        for reason in ("client_error", "server_error", "rejected"):
            got = metric(sc, "model_inference_failures_total", reason=reason, **labels)
            assert got == seen[(model, reason)], (model, reason)
            failures += seen[(model, reason)]
        for reason in ("timeout", "cancelled", "upstream_unavailable"):
            assert metric(sc, "model_inference_failures_total", reason=reason, **labels) == 0
        assert (
            metric(sc, "model_inference_total", status="success", **labels)
            == seen[(model, "success")]
        )
        assert metric(sc, "model_inference_total", status="error", **labels) == failures
        requests = sum(1 for m, _, _ in outcomes if m == model)
        assert metric(sc, "model_inference_duration_seconds_count", **labels) == requests
        # The batch size of every request, whatever became of it, parsed from its body.
        assert metric(sc, "model_batch_size_count", model_name=model) == requests
        assert metric(sc, "model_batch_size_sum", model_name=model) == sum(
            b for m, _, b in outcomes if m == model
        )
        # Admitted requests were measured in the queue; the turned-away ones never got in.
        admitted = requests - seen[(model, "rejected")]
        assert metric(sc, "model_inference_queue_duration_seconds_count", model_name=model) == (
            admitted
        )
        assert metric(sc, "model_active_requests", model_name=model) == 0
        assert metric(sc, "model_inference_queue_length", model_name=model) == 0
    assert up.requests == REQUESTS - sum(v for (_, o), v in seen.items() if o == "rejected")
