"""The admin port: ``/metrics`` (ours merged with the upstream's), ``/health``, ``/ready`` and
``/wait-for-drain`` (for the model container's preStop hook)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.registry import Collector

from inferwatch.sidecar.config import SidecarConfig
from inferwatch.sidecar.errors import json_error
from inferwatch.sidecar.health import Readiness
from inferwatch.sidecar.scrape import UpstreamScraper

SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def scrape_timeout(config: SidecarConfig, header: str | None) -> float:
    """The scraper's time budget (Prometheus sends it in a header), at most our setting.

    UpstreamScraper keeps a margin of it for our own families.
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
    scraper: UpstreamScraper,
    readiness: Readiness,
    wait_for_drain: Callable[[], Awaitable[None]],
) -> web.Application:
    """``scraper`` adds the upstream's /metrics to ours; ``wait_for_drain()`` drains and
    returns."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        body, content_type = await scraper.exposition(
            collector,
            request.headers.get("Accept", ""),
            scrape_timeout(config, request.headers.get(SCRAPE_TIMEOUT_HEADER)),
        )
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def ready(request: web.Request) -> web.StreamResponse:
        not_ready = readiness.why_not()
        if not_ready is None:
            return web.Response(text="ready\n")
        return json_error(503, not_ready.message, not_ready.error)

    async def drain(request: web.Request) -> web.StreamResponse:
        await wait_for_drain()
        return web.json_response({"drained": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/wait-for-drain", drain)
    return app
