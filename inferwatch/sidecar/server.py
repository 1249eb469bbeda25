"""One sidecar process: the proxy server, the admin server, readiness and the drain.

:class:`Sidecar` is what ``inferwatch sidecar`` runs (one per worker process) and what tests
start in-process on ephemeral ports.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from inferwatch import schema
from inferwatch.metrics import InferenceMetrics, inference_metrics
from inferwatch.sidecar.admin import admin_app
from inferwatch.sidecar.app import ERR_DRAINING, ERR_NOT_READY, Proxy
from inferwatch.sidecar.config import SidecarConfig
from inferwatch.sidecar.health import Drainer, UpstreamHealth
from inferwatch.sidecar.httpserver import ProxyServer

log = logging.getLogger(__name__)

# Seconds a stopping server gives a handler still writing (the drain already waited for them).
SHUTDOWN_GRACE = 5.0


def client_session(config: SidecarConfig) -> aiohttp.ClientSession:
    """The client for readiness checks and the upstream's /metrics (proxied requests go
    through :class:`~inferwatch.sidecar.upstream.UpstreamPool`): no cookies, no proxies
    from the environment, bodies as they come."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=config.connect_timeout),
    )


def _bound_port(runner: web.BaseRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])


class Sidecar:
    """The proxy (and, unless ``admin`` is False, the admin port) of one process."""

    def __init__(
        self,
        config: SidecarConfig,
        registry: CollectorRegistry | None = None,
        *,
        admin: bool = True,
        collector: Collector | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.registry = CollectorRegistry() if registry is None else registry
        self.metrics: InferenceMetrics = inference_metrics(self.registry)
        self._collector = self.registry if collector is None else collector
        self._serve_admin = admin
        self._reuse_port = reuse_port
        self._upstream_up: Any = schema.UPSTREAM_UP.create(self.registry) if admin else None
        self.proxy_port = 0
        self.admin_port = 0
        self.session: aiohttp.ClientSession | None = None
        self.drainer: Drainer | None = None
        self.health: UpstreamHealth | None = None
        self.proxy: Proxy | None = None
        self._runners: list[web.BaseRunner] = []
        self._proxy_server: ProxyServer | None = None

    async def start(self) -> None:
        config = self.config
        self.session = client_session(config)
        ready_url = (
            config.upstream.rstrip("/") + config.upstream_ready_path
            if config.upstream_ready_path
            else None
        )
        self.health = UpstreamHealth(
            self.session, ready_url, config.ready_interval, config.ready_timeout, self._upstream_up
        )
        self.drainer = Drainer(config.drain_quiet_period, config.drain_timeout)
        self.proxy = Proxy(config, self.metrics, self.drainer, self.health)
        await self.health.check()
        self.health.start()

        self._proxy_server = ProxyServer(self.proxy)
        self.proxy_port = await self._proxy_server.listen(
            config.listen.bind_host, config.listen.port, self._reuse_port
        )

        if self._serve_admin:
            app = admin_app(config, self._collector, self.session, self.is_ready, self.drainer.wait)
            admin_runner = web.AppRunner(
                app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE
            )
            await admin_runner.setup()
            self._runners.append(admin_runner)
            await web.TCPSite(
                admin_runner, config.admin.bind_host, config.admin.port, backlog=128
            ).start()
            self.admin_port = _bound_port(admin_runner)
        log.info(
            "sidecar: proxy on %s -> %s%s",
            config.listen,
            config.upstream,
            f", admin on {config.admin}" if self._serve_admin else "",
        )

    def is_ready(self) -> tuple[bool, str]:
        assert self.drainer is not None and self.health is not None
        if self.drainer.draining:
            return False, ERR_DRAINING
        if not self.health.up:
            return False, ERR_NOT_READY
        return True, ""

    async def drain(self) -> None:
        """The whole drain: readiness fails, quiet period, in-flight requests finish."""
        assert self.drainer is not None
        await self.drainer.wait()

    async def stop(self) -> None:
        if self._proxy_server is not None:
            await self._proxy_server.close(SHUTDOWN_GRACE)
            self._proxy_server = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.health is not None:
            await self.health.stop()
        if self.proxy is not None:
            self.proxy.pool.close()
        if self.session is not None:
            await self.session.close()

    async def run(self) -> None:
        """Start (cleaning up whatever did start if that fails), then serve until signalled."""
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        await self.serve_until_signalled()

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM/SIGINT (or a drain asked for on the admin port), drain, stop."""
        loop = asyncio.get_running_loop()
        assert self.drainer is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drainer.begin)
        try:
            await self.drainer.begun.wait()
            await self.drain()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
