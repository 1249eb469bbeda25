"""The admin port: ``/metrics`` (ours merged with the upstream's), ``/health``, ``/ready`` and
``/wait-for-drain`` (for the model container's preStop hook)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client.registry import Collector

from inferwatch.sidecar.app import ERR_DRAINING, ERR_NOT_READY, json_error
from inferwatch.sidecar.config import SidecarConfig
from inferwatch.sidecar.merge import merged_metrics

SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def scrape_timeout(config: SidecarConfig, header: str | None) -> float:
    """The scraper's time budget (Prometheus sends it in a header), at most our setting.

    merged_metrics keeps a margin of it for our own families.
    """
    timeout = config.scrape_timeout
    if header:
        try:
            offered = float(header)
        except ValueError:
            return timeout
        if offered > 0:
            timeout = min(timeout, offered)
    return timeout


def admin_app(
    config: SidecarConfig,
    collector: Collector,
    session: aiohttp.ClientSession,
    is_ready: Callable[[], tuple[bool, str]],
    wait_for_drain: Callable[[], Awaitable[None]],
) -> web.Application:
    """``is_ready()`` answers (ready, why-not); ``wait_for_drain()`` drains and returns."""
    upstream_metrics = config.metrics_url

    async def metrics(request: web.Request) -> web.StreamResponse:
        body, content_type = await merged_metrics(
            collector,
            session,
            upstream_metrics,
            request.headers.get("Accept", ""),
            scrape_timeout(config, request.headers.get(SCRAPE_TIMEOUT_HEADER)),
        )
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def ready(request: web.Request) -> web.StreamResponse:
        ok, why = is_ready()
        if ok:
            return web.Response(text="ready\n")
        if why == ERR_DRAINING:
            return json_error(503, "the sidecar is draining", ERR_DRAINING)
        return json_error(503, "the upstream is not ready", ERR_NOT_READY)

    async def drain(request: web.Request) -> web.StreamResponse:
        await wait_for_drain()
        return web.json_response({"drained": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/wait-for-drain", drain)
    return app
