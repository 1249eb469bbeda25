"""What a long-running inferwatch process sets up around its servers: the event loop, tracing,
GPU metrics, the OTLP metrics push, HTTP client sessions and the shutdown grace.

``inferwatch sidecar`` (each of its worker processes too) and ``inferwatch serve`` start the
same way; this module is the one place that says how.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import aiohttp
    from prometheus_client import CollectorRegistry

T = TypeVar("T")

# Seconds a stopping server gives a handler still writing (a drain already waited for them).
SHUTDOWN_GRACE = 5.0


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (a large share of a proxy's CPU is the loop)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def check_tracing(setting: bool | None) -> None:
    """Fail at start on ``OTEL_*`` values tracing could not use (raises ValueError)."""
    from inferwatch import tracing

    if setting is not False:
        tracing.resolve_settings()


def start_tracing(setting: bool | None, service_name: str) -> bool:
    """Tracing for this process; call it in the process that serves, never before a fork."""
    from inferwatch import tracing

    return tracing.setup_tracing(setting, default_service_name=service_name)


def start_gpu(registry: CollectorRegistry, interval: float, command: str = "inferwatch") -> Any:
    """GPU metrics on ``registry`` from NVML, imported only when asked for; the collector
    stops by itself at exit."""
    try:
        from inferwatch.gpu import start_gpu_metrics
    except ImportError as exc:
        raise SystemExit(f"{command}: GPU metrics are not available: {exc}") from None
    return start_gpu_metrics(registry=registry, interval=interval)


def check_otlp_metrics(enabled: bool) -> None:
    """Fail at start on ``OTEL_*`` values the OTLP metrics push could not use (ValueError)."""
    if enabled:
        from inferwatch.otlp_metrics import otlp_metrics_settings

        otlp_metrics_settings()


@contextmanager
def otlp_metrics_push(registry: CollectorRegistry | None, enabled: bool) -> Iterator[None]:
    """Push ``registry`` over OTLP while the block runs, with a last push of the final counts."""
    if not enabled:
        yield
        return
    from inferwatch.otlp_metrics import start_otlp_metrics

    pusher = start_otlp_metrics(registry)
    try:
        yield
    finally:
        pusher.close()


def client_session(connect_timeout: float) -> aiohttp.ClientSession:
    """A client for readiness checks and scrapes: no cookies, no proxies from the environment,
    bodies as they come (compressed expositions are passed on compressed)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout),
    )


def cannot_start(command: str, exc: OSError) -> int:
    """A port taken, an address not ours: one line, and the exit status for it."""
    print(f"{command}: cannot start: {exc}", file=sys.stderr)
    return 1
