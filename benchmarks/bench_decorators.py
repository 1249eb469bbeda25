"""Per-call overhead of @monitor_inference, against the same by hand and against OpenTelemetry.

Overhead = time per call of the instrumented no-op minus time per call of the bare no-op.
Compared in one run:
  decorator  @monitor_inference (counter, duration histogram, active gauge, batch histogram)
  by hand    the same four records with prometheus_client and label children cached
  otel       the OpenTelemetry SDK recording the equivalent counter, histograms, up-down counter
Single process, then prometheus_client multiprocess mode (a subprocess, since the mode is
chosen when prometheus_client is imported). Best of several repeats; prints µs/call and ratios.

    python benchmarks/bench_decorators.py [--calls 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

BATCH = [1, 2, 3, 4]


def best_of(repeats: int, calls: int, run: Callable[[int], None]) -> float:
    """Best seconds per call over ``repeats`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(calls)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def sync_loop(fn: Callable[[list[int]], Any]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn(BATCH)

    return run


def async_loop(fn: Callable[[list[int]], Awaitable[Any]]) -> Callable[[int], None]:
    def run(n: int) -> None:
        async def body() -> None:
            for _ in range(n):
                await fn(BATCH)

        asyncio.run(body())

    return run


def prometheus_variants() -> dict[str, tuple[Callable[..., Any], Callable[..., Any]]]:
    from prometheus_client import CollectorRegistry

    from inferwatch import monitor_inference, schema
    from inferwatch.metrics import InferenceMetrics

    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    registry = None if multiprocess else CollectorRegistry()

    def bare(batch: list[int]) -> list[int]:
        return batch

    async def abare(batch: list[int]) -> list[int]:
        return batch

    decorated = monitor_inference(model_name="bench", model_version="1", registry=registry)(bare)
    adecorated = monitor_inference(model_name="bench", model_version="1", registry=registry)(abare)

    # The same records by hand, children cached: the best prometheus_client can do.
    hand_registry = None if multiprocess else CollectorRegistry()
    m = InferenceMetrics(hand_registry).model(schema.SOURCE_APP, "bench_hand", "1")
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

    async def aby_hand(batch: list[int]) -> list[int]:
        batch_size.observe(len(batch))
        active.inc()
        start = perf_counter()
        result = await abare(batch)
        duration.observe(perf_counter() - start)
        active.dec()
        success.inc()
        return result

    return {
        "bare": (bare, abare),
        "decorator": (decorated, adecorated),
        "by hand": (by_hand, aby_hand),
    }


def otel_variant() -> tuple[Callable[..., Any], Callable[..., Any]]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from inferwatch import schema

    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    counter = meter.create_counter(schema.INFERENCE_TOTAL.name)
    histogram = meter.create_histogram(
        schema.INFERENCE_DURATION.name,
        unit="s",
        explicit_bucket_boundaries_advisory=list(schema.LATENCY_BUCKETS),
    )
    batches = meter.create_histogram(
        schema.BATCH_SIZE.name,
        explicit_bucket_boundaries_advisory=list(schema.BATCH_SIZE_BUCKETS),
    )
    active = meter.create_up_down_counter(schema.ACTIVE_REQUESTS.name)
    per_model = {"source": "app", "model_name": "bench"}
    per_version = {**per_model, "model_version": "1"}
    ok = {**per_version, "status": "success"}

    def bare(batch: list[int]) -> list[int]:
        return batch

    def otel(batch: list[int]) -> list[int]:
        batches.record(len(batch), per_model)
        active.add(1, per_model)
        start = perf_counter()
        result = bare(batch)
        histogram.record(perf_counter() - start, per_version)
        active.add(-1, per_model)
        counter.add(1, ok)
        return result

    async def aotel(batch: list[int]) -> list[int]:
        return otel(batch)

    return otel, aotel


def measure(calls: int, repeats: int, with_otel: bool) -> dict[str, dict[str, float]]:
    variants = prometheus_variants()
    if with_otel:
        variants["otel"] = otel_variant()
    out: dict[str, dict[str, float]] = {}
    for name, (sync_fn, async_fn) in variants.items():
        out[name] = {
            "sync": best_of(repeats, calls, sync_loop(sync_fn)) * 1e6,
            "async": best_of(repeats, max(calls // 2, 1), async_loop(async_fn)) * 1e6,
        }
    return out


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'':12} {'sync µs/call':>14} {'overhead':>9} {'async µs/call':>14} {'overhead':>9}")
    for name, row in results.items():
        cells = []
        for kind in ("sync", "async"):
            overhead = row[kind] - results["bare"][kind]
            cells.append(f"{row[kind]:14.3f} {overhead if name != 'bare' else 0:9.3f}")
        print(f"{name:12} " + " ".join(cells))
    for kind in ("sync", "async"):
        base = results["bare"][kind]
        deco = results["decorator"][kind] - base
        hand = results["by hand"][kind] - base
        line = f"{kind:5}: decorator / by hand = {deco / hand:.2f}x (target <= 1.3x)"
        if "otel" in results:
            otel = results["otel"][kind] - base
            line += f"; otel / decorator = {otel / deco:.2f}x (target >= 2x)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # multiprocess mode: report back as JSON
        print(json.dumps(measure(args.calls, args.repeats, with_otel=False)))
        return

    print_table("single process", measure(args.calls, args.repeats, with_otel=True))
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        child = [sys.executable, __file__, "--child", "--calls", str(args.calls)]
        child += ["--repeats", str(args.repeats)]
        done = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
    print_table("multiprocess mode (PROMETHEUS_MULTIPROC_DIR)", json.loads(done.stdout))


if __name__ == "__main__":
    main()
