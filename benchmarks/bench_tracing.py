"""What tracing costs: the decorator and the sidecar with tracing off, on at 1 %, on at 100 %.

Decorator (in this process): µs per call of ``@monitor_inference`` on a no-op, against the same
records by hand with prometheus_client (the ratio the decorator benchmark holds to 1.3x), with
tracing off, on with ``parentbased_traceidratio`` 0.01, and on at 100 % (spans through the
``BatchSpanProcessor`` to an exporter that drops them, so the span's own cost is measured).

Sidecar (a subprocess in front of nginx, as in bench_sidecar.py): saturation requests/s (wrk,
1 thread, 32 connections) and the sidecar's CPU µs per request, with tracing off, on at 1 % and
on at 100 %, exporting over OTLP/gRPC to a receiver in this process that decodes and drops.
Needs nginx and wrk. About a minute.

    .venv/bin/python benchmarks/bench_tracing.py [--seconds 4] [--calls 20000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from bench_sidecar import (
    LOOPBACK,
    UPSTREAM_CONF,
    free_port,
    load_files,
    nginx,
    post,
    saturation,
    tree_cpu_seconds,
    wait_listening,
)

BATCH = [1, 2, 3, 4]
MODES = {
    "off": None,
    "on, 1 %": ("parentbased_traceidratio", 0.01),
    "on, 100 %": ("parentbased_always_on", 1.0),
}


def best_of(repeats: int, calls: int, fn: Callable[[list[int]], Any]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = perf_counter()
        for _ in range(calls):
            fn(BATCH)
        best = min(best, (perf_counter() - start) / calls)
    return best


class DropExporter:
    """A SpanExporter that accepts and drops every span (the export itself is not measured)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def decorator_rows(calls: int, repeats: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    from inferwatch import monitor_inference, schema, tracing
    from inferwatch.metrics import InferenceMetrics

    def bare(batch: list[int]) -> list[int]:
        return batch

    decorated = monitor_inference(model_name="bench", registry=CollectorRegistry())(bare)
    m = InferenceMetrics(CollectorRegistry()).model(schema.SOURCE_APP, "hand", "")
    active, duration, success, batch_size = m.active, m.duration, m.success, m.batch_size

    def by_hand(batch: list[int]) -> list[int]:
        batch_size.observe(len(batch))
        active.inc()
        start = perf_counter()
        result = bare(batch)
        duration.observe(perf_counter() - start)
        active.dec()
        success.inc()
        return result

    rows = {
        "bare": best_of(repeats, calls, bare),
        "by hand": best_of(repeats, calls, by_hand),
    }
    for mode, sampler in MODES.items():
        if sampler is not None:
            tracing.setup_tracing(
                True,
                sampler=sampler[0],
                sampler_arg=sampler[1],
                span_exporter=DropExporter(),  # type: ignore[arg-type]
                set_global=False,
            )
        try:
            rows[f"decorator, tracing {mode}"] = best_of(repeats, calls, decorated)
        finally:
            tracing.shutdown_tracing()
    return rows


@contextmanager
def otlp_receiver() -> Iterator[str]:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop(grace=None)


@contextmanager
def traced_sidecar(
    upstream_port: int, port: int, sampler: tuple[str, float] | None, endpoint: str
) -> Iterator[int]:
    """The sidecar's pid, once it has recorded a request."""
    admin = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    flags = ["--no-tracing"]
    if sampler is not None:
        flags = ["--tracing"]
        env.update(
            OTEL_TRACES_SAMPLER=sampler[0],
            OTEL_TRACES_SAMPLER_ARG=str(sampler[1]),
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_BSP_MAX_QUEUE_SIZE="65536",
        )
    cmd = [
        *(sys.executable, "-m", "inferwatch", "--log-level", "WARNING", "sidecar"),
        *("--upstream", f"http://{LOOPBACK}:{upstream_port}", "--listen", f"{LOOPBACK}:{port}"),
        *("--admin", f"{LOOPBACK}:{admin}", "--upstream-metrics-url", "none"),
        *("--drain-quiet-period", "0", *flags),
    ]
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_listening(port, proc)
        wait_listening(admin, proc)
        post(port)
        with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:
            if 'model_name="resnet"' not in resp.read().decode():
                raise RuntimeError("the sidecar did not record the request")
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def sidecar_rows(seconds: float) -> dict[str, tuple[float, float]]:
    rows: dict[str, tuple[float, float]] = {}
    up_port = free_port()
    with load_files() as files, otlp_receiver() as endpoint, nginx(UPSTREAM_CONF, up_port):
        post(up_port)
        for mode, sampler in MODES.items():
            port = free_port()
            with traced_sidecar(up_port, port, sampler, endpoint) as pid:
                before = tree_cpu_seconds(pid)
                rps = saturation(port, seconds, files, f"tracing {mode}")
                used = tree_cpu_seconds(pid) - before
                rows[mode] = (rps, used / (rps * seconds) * 1e6)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per sidecar measurement")
    parser.add_argument("--calls", type=int, default=20000, help="per decorator repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-sidecar", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")

    rows = decorator_rows(args.calls, args.repeats)
    bare, hand = rows["bare"], rows["by hand"]
    print("\n@monitor_inference (sync no-op), best of", args.repeats)
    print(f"{'':28}{'µs/call':>9}{'overhead µs':>13}{'vs by hand':>12}")
    for name, seconds in rows.items():
        overhead = seconds - bare
        ratio = "" if name == "bare" else f"{overhead / (hand - bare):>11.2f}x"
        print(f"{name:28}{seconds * 1e6:>9.3f}{overhead * 1e6:>13.3f}{ratio:>12}")
    off = rows["decorator, tracing off"] - bare
    print(f"tracing off: decorator / by hand overhead {off / (hand - bare):.2f}x (target <= 1.3)")

    if args.skip_sidecar:
        return 0
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"\n{', '.join(missing)} needed for the sidecar rows (Debian packages)")
        return 1
    side = sidecar_rows(args.seconds)
    base_rps, base_cpu = side["off"]
    print(f"\nsidecar (wrk -t1 -c32, {args.seconds:g} s each; OTLP/gRPC to a local receiver)")
    print(f"{'tracing':12}{'rps':>9}{'CPU µs/req':>12}{'rps ratio':>11}{'CPU ratio':>11}")
    for mode, (rps, cpu) in side.items():
        print(f"{mode:12}{rps:>9.0f}{cpu:>12.1f}{rps / base_rps:>11.2f}{cpu / base_cpu:>11.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
