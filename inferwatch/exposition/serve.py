"""Serving ``/metrics``: a standalone HTTP server, or a handler for an existing aiohttp app.

Both are multiprocess-aware: when ``PROMETHEUS_MULTIPROC_DIR`` is set, every scrape
aggregates the files of all worker processes, as prometheus_client's multiprocess mode asks.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on, else ``None``."""
    return os.environ.get(MULTIPROC_ENV) or None


def scrape_registry(registry: CollectorRegistry | None = None) -> Collector:
    """What a scrape should collect: ``registry``, or every process's files in multiprocess mode."""
    if registry is not None:
        return registry
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    aggregated = CollectorRegistry()
    MultiProcessCollector(aggregated, path=path)
    return aggregated


@dataclass
class MetricsServer:
    """A running ``/metrics`` server; ``port`` is the bound port (useful with port 0)."""

    port: int
    _server: Any
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int = 9464, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``/metrics`` on a daemon thread (text or OpenMetrics, as the scraper asks)."""
    server, thread = start_http_server(port, addr, registry=scrape_registry(registry))
    return MetricsServer(server.server_port, server, thread)


def metrics_handler(registry: CollectorRegistry | None = None) -> Any:
    """An aiohttp handler: ``app.router.add_get("/metrics", metrics_handler())``."""
    from prometheus_client.aiohttp import make_aiohttp_handler  # imports aiohttp: only if used

    return make_aiohttp_handler(scrape_registry(registry))
