"""Run the sidecar: a reverse proxy in front of a model server that measures every inference.

Flags override INFERWATCH_SIDECAR_* environment variables, which override the YAML file given
with --config, which overrides the defaults. Example:

    inferwatch sidecar --upstream http://127.0.0.1:8000 --listen :8080 --admin :9464
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from inferwatch.sidecar import config as config_module

log = logging.getLogger("inferwatch.sidecar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"YAML file of settings [env {config_module.ENV_PREFIX}CONFIG]",
    )
    config_module.add_arguments(parser)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (a large share of the proxy's CPU is the loop)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("run", "command", "log_level")}
    try:
        config = config_module.load_config(flags)
    except config_module.ConfigError as exc:
        print(f"inferwatch sidecar: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        check_tracing(config)
    except ValueError as exc:
        print(f"inferwatch sidecar: bad tracing configuration: {exc}", file=sys.stderr)
        return 2
    if config.otlp_metrics:
        from inferwatch.otlp_metrics import otlp_metrics_settings

        try:
            otlp_metrics_settings()
        except ValueError as exc:
            print(f"inferwatch sidecar: bad OTLP metrics configuration: {exc}", file=sys.stderr)
            return 2
    if config.workers > 1:
        from inferwatch.sidecar.workers import run_workers

        return run_workers(config)

    from inferwatch.sidecar.server import Sidecar

    start_tracing(config)

    async def main() -> None:
        sidecar = Sidecar(config, _default_registry())
        if config.gpu_metrics:
            start_gpu(sidecar.registry, config.gpu_interval)
        await sidecar.run()

    pusher = None
    if config.otlp_metrics:
        from inferwatch.otlp_metrics import start_otlp_metrics

        pusher = start_otlp_metrics(_default_registry())
    try:
        run_loop(main())
    except OSError as exc:
        print(f"inferwatch sidecar: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        if pusher is not None:
            pusher.close()  # a last push with the final counts
    return 0


def check_tracing(config: config_module.SidecarConfig) -> None:
    """Fail at start on OTEL_* values that tracing could not use (raises ValueError)."""
    from inferwatch import tracing

    if config.tracing is not False:
        tracing.resolve_settings()


def start_tracing(config: config_module.SidecarConfig) -> bool:
    """Tracing for this process (each worker calls it once it runs: never before a fork)."""
    from inferwatch import tracing

    return tracing.setup_tracing(config.tracing, default_service_name="inferwatch-sidecar")


def _default_registry() -> Any:
    from prometheus_client import REGISTRY

    return REGISTRY


def start_gpu(registry: Any, interval: float) -> Any:
    """GPU metrics on the admin port, from NVML (imported only when asked for); the collector
    stops by itself at exit."""
    try:
        from inferwatch.gpu import start_gpu_metrics
    except ImportError as exc:
        raise SystemExit(f"inferwatch sidecar: --gpu-metrics is not available: {exc}") from None
    return start_gpu_metrics(registry=registry, interval=interval)
