"""One sidecar process: the proxy port, the admin port, readiness and the drain.

:class:`Sidecar` is what ``inferwatch sidecar`` runs (one per worker process, see
:mod:`~inferwatch.sidecar.workers`) and what tests start in-process on ephemeral ports.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.registry import Collector

from inferwatch import _compiled, runtime, schema, tracing
from inferwatch.metrics import BoundedLabel, InferenceMetrics, inference_metrics
from inferwatch.sidecar.admin import admin_app
from inferwatch.sidecar.admission import Admission
from inferwatch.sidecar.config import SidecarConfig
from inferwatch.sidecar.exchange import Exchanges
from inferwatch.sidecar.health import Drainer, Readiness, UpstreamHealth
from inferwatch.sidecar.http1 import HTTP1Server
from inferwatch.sidecar.proxy import ProxyHandler
from inferwatch.sidecar.scrape import UpstreamScraper
from inferwatch.sidecar.server_metrics import signal_for

if TYPE_CHECKING:
    from inferwatch.sidecar.grpc_proxy import GrpcProxy, GrpcServer

log = logging.getLogger(__name__)

COMMAND = "inferwatch sidecar"


def _bound_port(runner: web.BaseRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])


def open_exchanges(config: SidecarConfig, metrics: InferenceMetrics) -> Exchanges:
    """The exchanges every transport of this process opens, traced or not: chosen once, so
    with tracing off the request path is exactly the untraced one."""
    exchanges_class: type[Exchanges] = Exchanges
    if tracing.enabled:
        from inferwatch.sidecar.traced import TracedExchanges

        exchanges_class = TracedExchanges
    return exchanges_class(
        metrics,
        schema.SOURCE_SIDECAR,
        config.default_model,
        BoundedLabel(config.max_models, set(config.allow_models)),
        # The configured default version is the operator's, not a request's: always kept.
        BoundedLabel(config.max_versions, {config.default_version} - {""}),
        config.default_version,
    )


def proxy_handler_class() -> type[ProxyHandler]:
    if tracing.enabled:
        from inferwatch.sidecar.traced import TracedProxyHandler

        return TracedProxyHandler
    return ProxyHandler


def grpc_proxy_class() -> type[GrpcProxy]:
    if tracing.enabled:
        from inferwatch.sidecar.grpc_traced import TracedGrpcProxy

        return TracedGrpcProxy
    from inferwatch.sidecar.grpc_proxy import GrpcProxy

    return GrpcProxy


def admission_for(config: SidecarConfig) -> Admission | None:
    """One admission for every transport: the limit is the upstream's, however it is called."""
    if config.max_concurrency <= 0:
        return None
    return Admission(config.max_concurrency, config.queue_limit, config.queue_timeout)


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
        self.scraper: UpstreamScraper | None = None
        self.drainer: Drainer | None = None
        self.health: UpstreamHealth | None = None
        self.readiness: Readiness | None = None
        self.proxy: ProxyHandler | None = None
        self._runners: list[web.BaseRunner] = []
        self._proxy_server: HTTP1Server | None = None
        self._grpc_server: GrpcServer | None = None
        self.grpc_proxy: GrpcProxy | None = None
        self.grpc_port = 0

    async def start(self) -> None:
        config = self.config
        self.session = runtime.client_session(config.connect_timeout)
        self.health = UpstreamHealth.of(config, self.session, self._upstream_up)
        self.drainer = drainer = Drainer(config.drain_quiet_period, config.drain_timeout)
        self.readiness = Readiness(self.health, lambda: drainer.draining)
        exchanges = open_exchanges(config, self.metrics)
        admission = admission_for(config)
        self.proxy = proxy_handler_class()(config, exchanges, admission, drainer, self.readiness)
        await self.health.check()
        self.health.start()

        self._proxy_server = HTTP1Server(self.proxy)
        self.proxy_port = await self._proxy_server.listen(
            config.listen.bind_host, config.listen.port, self._reuse_port
        )
        if config.grpc_listen is not None:
            from inferwatch.sidecar.grpc_proxy import GrpcServer

            self._grpc_server = GrpcServer(config, self.readiness, self._reuse_port)
            self.grpc_proxy = grpc_proxy_class()(
                config, exchanges, admission, drainer, self._grpc_server.channel
            )
            self._grpc_server.add_proxy(self.grpc_proxy)
            drainer.quiet.append(self._grpc_server.goaway)
            self.grpc_port = await self._grpc_server.listen(config.grpc_listen)

        if self._serve_admin:
            bound = BoundedLabel(config.max_models, set(config.allow_models))
            signal = signal_for(config, self.session, bound)
            self.scraper = UpstreamScraper(self.session, config.metrics_url, signal)
            if signal.management is not None:
                signal.management.start()
            app = admin_app(config, self._collector, self.scraper, self.readiness, drainer.wait)
            admin_runner = web.AppRunner(
                app, handle_signals=False, access_log=None, shutdown_timeout=runtime.SHUTDOWN_GRACE
            )
            await admin_runner.setup()
            self._runners.append(admin_runner)
            await web.TCPSite(
                admin_runner, config.admin.bind_host, config.admin.port, backlog=128
            ).start()
            self.admin_port = _bound_port(admin_runner)
        log.info(
            "sidecar: proxy on %s -> %s%s%s",
            config.listen,
            config.upstream,
            f", gRPC on {config.grpc_listen} -> {config.grpc_upstream}" if self.grpc_port else "",
            f", admin on {config.admin}" if self._serve_admin else "",
        )
        log.info("sidecar: hot path %s", _compiled.describe())

    async def drain(self) -> None:
        """The whole drain: readiness fails, quiet period, in-flight requests finish."""
        assert self.drainer is not None
        await self.drainer.wait()

    async def stop(self) -> None:
        if self._proxy_server is not None:
            await self._proxy_server.close(runtime.SHUTDOWN_GRACE)
            self._proxy_server = None
        if self._grpc_server is not None:
            await self._grpc_server.stop(runtime.SHUTDOWN_GRACE)
            self._grpc_server = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.health is not None:
            await self.health.stop()
        if self.scraper is not None and self.scraper.signal.management is not None:
            await self.scraper.signal.management.stop()
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


def run_sidecar(config: SidecarConfig) -> int:
    """``inferwatch sidecar`` as one process, its metrics on prometheus_client's registry."""
    runtime.start_tracing(config.tracing, "inferwatch-sidecar")

    async def main() -> None:
        sidecar = Sidecar(config, REGISTRY)
        if config.gpu_metrics:
            runtime.start_gpu(sidecar.registry, config.gpu_interval, COMMAND)
        await sidecar.run()

    try:
        with runtime.otlp_metrics_push(REGISTRY, config.otlp_metrics):
            runtime.run_loop(main())
    except OSError as exc:
        return runtime.cannot_start(COMMAND, exc)
    return 0
