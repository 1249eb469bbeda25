"""Run the reference model server: a text and an image classifier behind dynamic batching, and
a tiny byte-level language model (tiny-llm) batched per decoding step.

Speaks Open Inference Protocol v2 (/v2/...), KServe V1 / TF Serving (/v1/models/<m>:predict)
and a simple JSON API, /predict and /batch_predict, for the classifiers; OpenAI's
/v1/chat/completions and /v1/completions (streamed or not) and /v1/models for the language
model; /metrics on the same port. SIGTERM or
SIGINT stops accepting, finishes queued batches and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 4,8,16, got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def _versions(text: str) -> tuple[str, ...]:
    versions = ("1", "2", "3")  # inferwatch.server.versions.VERSIONS, without importing torch
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in parts if part not in versions]
    if not parts or unknown or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(
            f"expected distinct versions among {','.join(versions)}, like 1,3; got {text!r}"
        )
    return tuple(v for v in versions if v in parts)


def _weights(text: str) -> tuple[str, str]:
    model, sep, path = text.partition("=")
    if not sep or not model or not path:
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH, got {text!r}")
    return model, path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when a GPU is usable, else CPU), cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port for inference and /metrics (0: any free port)"
    )
    parser.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=32,
        help="items per executed batch at most; 1 turns batching off (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-delay-ms",
        type=_non_negative_float,
        default=5.0,
        help="longest an item waits for its batch to fill, in ms (default: %(default)s)",
    )
    parser.add_argument(
        "--preferred-batch-sizes",
        type=_sizes,
        default=(),
        metavar="N,N,...",
        help="batch sizes to prefer when the delay ends (and to warm up), e.g. 8,16,32",
    )
    parser.add_argument(
        "--max-queue-size",
        type=_positive_int,
        default=1024,
        help="items waiting per model before requests get 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-items",
        type=_positive_int,
        default=256,
        help="items one request may carry; larger requests get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--model-size",
        choices=["tiny", "small", "base"],
        default="small",
        help="size of every model (default: %(default)s)",
    )
    parser.add_argument(
        "--llm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the language model tiny-llm on /v1/chat/completions and /v1/completions "
        "(default: on)",
    )
    parser.add_argument(
        "--versions",
        type=_versions,
        default=("1", "2", "3"),
        metavar="V,V,...",
        help="versions of each classifier to serve, each with its own batcher: 1 fp32 eager, "
        "2 int8 dynamic quantization (CPU), 3 ONNX Runtime (default: 1,2,3)",
    )
    parser.add_argument(
        "--default-version",
        choices=["1", "2", "3"],
        default="1",
        help="the version unversioned paths and /predict, /batch_predict use "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--onnx-cache-dir",
        default=None,
        metavar="DIR",
        help="where version 3's ONNX exports are kept, keyed by a hash of the weights "
        "(default: $INFERWATCH_ONNX_CACHE_DIR, else ~/.cache/inferwatch/onnx)",
    )
    parser.add_argument(
        "--weights",
        type=_weights,
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="load a state dict for a model (text-classifier, image-classifier or tiny-llm); "
        "repeatable",
    )
    parser.add_argument(
        "--gpu-metrics-interval",
        type=_non_negative_float,
        default=5.0,
        help="seconds between NVML reads for the gpu_* families, on CUDA (default: %(default)s)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (aiohttp's access log; off by default: it costs throughput)",
    )
    parser.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenTelemetry traces, exported as the OTEL_* variables say (default: on when "
        "OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set)",
    )
    parser.add_argument(
        "--otlp-metrics",
        action="store_true",
        help="also push the inference metrics over OTLP (OTEL_EXPORTER_OTLP_[METRICS_]* and "
        "OTEL_METRIC_EXPORT_INTERVAL configure it)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=30.0,
        help="seconds to wait for in-flight requests on SIGTERM (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from inferwatch.server.app import ServerConfig, build_llm, build_runners

    if args.max_request_items > args.max_queue_size:
        print(
            "inferwatch serve: error: --max-request-items must not exceed --max-queue-size",
            file=sys.stderr,
        )
        return 2
    config = ServerConfig(
        device=args.device,
        model_size=args.model_size,
        max_batch_size=args.max_batch_size,
        max_queue_delay=args.max_queue_delay_ms / 1000.0,
        preferred_batch_sizes=args.preferred_batch_sizes,
        max_queue_size=args.max_queue_size,
        max_request_items=args.max_request_items,
        weights=dict(args.weights),
        gpu_metrics_interval=args.gpu_metrics_interval,
        llm=args.llm,
        versions=args.versions,
        default_version=args.default_version,
        onnx_cache_dir=args.onnx_cache_dir,
    )
    try:
        if any(size > config.max_batch_size for size in config.preferred_batch_sizes):
            raise ValueError("--preferred-batch-sizes must not exceed --max-batch-size")
        runners = build_runners(config)
        llm = build_llm(config)
    except ValueError as exc:
        print(f"inferwatch serve: error: {exc}", file=sys.stderr)
        return 2
    from inferwatch import runtime, tracing

    try:
        runtime.start_tracing(args.tracing, "inferwatch-server")
    except tracing.TracingConfigError as exc:
        print(f"inferwatch serve: bad tracing configuration: {exc}", file=sys.stderr)
        return 2
    try:
        runtime.check_otlp_metrics(args.otlp_metrics)
    except ValueError as exc:  # a bad OTEL_* value
        print(f"inferwatch serve: bad OTLP metrics configuration: {exc}", file=sys.stderr)
        return 2
    # The server's families live on prometheus_client's default registry.
    with runtime.otlp_metrics_push(None, args.otlp_metrics):
        return runtime.run_loop(
            _serve(
                config, runners, llm, args.host, args.port, args.shutdown_timeout, args.access_log
            )
        )


async def _serve(
    config: Any,
    runners: Any,
    llm: Any,
    host: str,
    port: int,
    shutdown_timeout: float,
    access_log: bool,
) -> int:
    from aiohttp import web

    from inferwatch.server.app import create_app

    app = create_app(config, runners=runners, llm=llm)
    # handler_cancellation: a client that hangs up cancels its request, which drops its items
    # from the batch queue instead of computing answers nobody reads.
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    device = runners[0].device if runners else "-"
    print(f"inferwatch serve: listening on http://{host}:{bound} (device {device})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing queued batches")
    await runner.cleanup()
    log.info("stopped")
    return 0
