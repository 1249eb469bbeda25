"""Serving /metrics: the standalone server and the aiohttp handler, checked by promtool."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import urllib.request

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from support.metrics import sample
from support.prometheus import promtool_check_metrics

from inferwatch import metrics_handler, monitor_inference, start_metrics_server, track_inference
from inferwatch._version import __version__


def exercise(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="resnet", model_version="3", registry=registry)
    def predict(images: list[int]) -> list[int]:
        if not images:
            raise ValueError("empty")
        return images

    predict([1, 2, 3, 4])
    with contextlib.suppress(ValueError):
        predict([])
    with track_inference("llm", registry=registry) as t:
        t.first_byte()
        t.add_tokens(input=12, output=40)


def test_metrics_server_output_passes_promtool(registry: CollectorRegistry, promtool: str) -> None:
    exercise(registry)
    server = start_metrics_server(0, "127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        # What a user runs: curl :PORT/metrics | promtool check metrics
        curl = shutil.which("curl")
        if curl is not None:
            text = subprocess.run([curl, "-sf", url], capture_output=True, text=True, check=True)
            body = text.stdout
        else:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode()
        assert promtool_check_metrics(promtool, body) == ""
        assert (
            sample(
                body,
                "model_inference_total",
                source="app",
                model_name="resnet",
                model_version="3",
                status="success",
            )
            == 1
        )
        assert sample(body, "inferwatch_build_info", version=__version__) == 1

        request = urllib.request.Request(
            url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().endswith("# EOF\n")
    finally:
        server.close()


async def test_aiohttp_handler(registry: CollectorRegistry, promtool: str) -> None:
    exercise(registry)
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        body = await response.text()
        assert promtool_check_metrics(promtool, body) == ""
        assert (
            sample(
                body,
                "model_inference_failures_total",
                source="app",
                model_name="resnet",
                model_version="3",
                reason="exception",
            )
            == 1
        )
        assert (
            sample(
                body, "model_inference_tokens_total", source="app", model_name="llm", type="output"
            )
            == 40
        )
