"""The admin port and the probes: health, readiness from the upstream, one merged /metrics."""

from __future__ import annotations

import json

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from support.fake_pynvml import FakeGpu, build, clear_visible_devices, install
from support.metrics import samples
from support.polling import poll
from support.ports import LOOPBACK
from support.prometheus import promtool_check_metrics
from support.sidecar import metric, running_sidecar
from support.upstreams import running_upstream, v2_body

from inferwatch.runtime import start_gpu
from inferwatch.sidecar.admin import scrape_timeout
from inferwatch.sidecar.config import SidecarConfig

JSON = {"Content-Type": "application/json"}


async def get(session: aiohttp.ClientSession, url: str, **kw: object) -> tuple[int, str, str]:
    async with session.get(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_health_and_ready_on_both_ports_follow_the_upstream() -> None:
    async with running_upstream() as up, running_sidecar(up.url, ready_interval=0.05) as sc:
        ports = (sc.proxy_port, sc.admin_port)
        async with aiohttp.ClientSession() as session:
            for port in ports:
                # The sidecar's own answers (the upstream's readiness path says "ok").
                assert (await get(session, f"http://{LOOPBACK}:{port}/health"))[::2] == (
                    200,
                    "ok\n",
                )
                assert (await get(session, f"http://{LOOPBACK}:{port}/ready"))[::2] == (
                    200,
                    "ready\n",
                )
            assert metric(sc, "inferwatch_upstream_up") == 1

            up.ready = False

            async def not_ready() -> bool:
                return metric(sc, "inferwatch_upstream_up") == 0

            await poll(not_ready, "the readiness check to notice")
            for port in ports:
                status, content_type, body = await get(session, f"http://{LOOPBACK}:{port}/ready")
                assert (status, content_type) == (503, "application/json")
                assert json.loads(body) == {
                    "error": "the upstream is not ready",
                    "reason": "not_ready",
                }
                # Liveness is about the sidecar itself: restarting it would not help.
                assert (await get(session, f"http://{LOOPBACK}:{port}/health"))[0] == 200

            up.ready = True

            async def ready_again() -> bool:
                return (await get(session, f"http://{LOOPBACK}:{sc.proxy_port}/ready"))[0] == 200

            await poll(ready_again, "readiness to come back")
            assert metric(sc, "inferwatch_upstream_up") == 1


async def test_probe_paths_can_be_handed_to_the_upstream() -> None:
    async with (
        running_upstream() as up,
        running_sidecar(up.url, health_path="", ready_path="/sidecar/ready") as sc,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://{LOOPBACK}:{sc.proxy_port}"
        assert (await get(session, base + "/sidecar/ready"))[0] == 200
        # /health is now the upstream's business (it has no such route: 404 from it).
        assert (await get(session, base + "/health"))[0] == 404


async def test_admin_metrics_merge_the_upstream_and_pass_promtool(promtool: str) -> None:
    async with (
        running_upstream() as up,
        running_sidecar(up.url) as sc,
        aiohttp.ClientSession() as session,
    ):
        proxy = f"http://{LOOPBACK}:{sc.proxy_port}"
        for query in ("", "?status=500", "?status=404"):
            async with session.post(
                f"{proxy}/v2/models/resnet/versions/1/infer{query}",
                data=v2_body(3),
                headers=JSON,
            ) as resp:
                await resp.read()
        async with session.post(
            f"{proxy}/v1/chat/completions",
            data=json.dumps({"model": "llama", "messages": []}),
            headers=JSON,
        ) as resp:
            await resp.read()
        status, content_type, text = await get(
            session, f"http://{LOOPBACK}:{sc.admin_port}/metrics"
        )
        assert status == 200
        assert content_type.startswith("text/plain")
        assert promtool_check_metrics(promtool, text) == ""
        values = samples(text)

        def value(name: str, **labels: str) -> float | None:
            return values.get((name, frozenset(labels.items())))

        labels = {"source": "sidecar", "model_name": "resnet", "model_version": "1"}
        assert value("model_inference_total", status="success", **labels) == 1
        assert value("model_inference_total", status="error", **labels) == 2
        assert value("model_inference_failures_total", reason="server_error", **labels) == 1
        assert value("model_inference_failures_total", reason="client_error", **labels) == 1
        assert value("model_batch_size_sum", source="sidecar", model_name="resnet") == 9
        tokens = {"source": "sidecar", "model_name": "llama"}
        assert value("model_inference_tokens_total", type="input", **tokens) == 11
        assert value("inferwatch_upstream_up") == 1
        # The upstream's own families, trailing comma (TorchServe) and all.
        assert value("nv_gpu_utilization", gpu_uuid="GPU-1") == 0.25
        assert value("ts_inference_requests_total", uuid="abc", model_name="bert") == 3
        assert "# TYPE ts_inference_requests_total counter" in text

        status, content_type, om = await get(
            session,
            f"http://{LOOPBACK}:{sc.admin_port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert status == 200
        assert content_type.startswith("application/openmetrics-text")
        assert om.endswith("# EOF\n")
        assert "ts_inference_requests" in om


def test_scrape_timeout_honours_prometheus_header() -> None:
    config = SidecarConfig(upstream="http://x", scrape_timeout=5.0)
    assert scrape_timeout(config, None) == 5.0
    assert scrape_timeout(config, "2.5") == 2.5
    assert scrape_timeout(config, "30") == 5.0
    assert scrape_timeout(config, "bogus") == 5.0
    assert scrape_timeout(config, "-1") == 5.0


async def test_gpu_metrics_join_the_admin_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_visible_devices(monkeypatch)
    install(monkeypatch, build([FakeGpu("GPU-abc", temperature=61)]))
    registry = CollectorRegistry()
    collector = start_gpu(registry, 60.0)
    try:
        async with (
            running_upstream() as up,
            running_sidecar(up.url, registry=registry) as sc,
            aiohttp.ClientSession() as session,
        ):

            async def sampled() -> bool:
                _, _, text = await get(session, f"http://{LOOPBACK}:{sc.admin_port}/metrics")
                return "gpu_temperature_celsius{" in text

            await poll(sampled, "the first GPU sample")
            _, _, text = await get(session, f"http://{LOOPBACK}:{sc.admin_port}/metrics")
            temps = [v for (n, _), v in samples(text).items() if n == "gpu_temperature_celsius"]
            assert temps == [61.0]
    finally:
        collector.close()
