"""Cost of the NVML collector: one sample per GPU, and a scrape with it registered.

Runs against the fake NVML of the tests (tests/fake_pynvml.py), so the sample cost measured
is inferwatch's own work per GPU (about 20 NVML calls, error handling, unit conversion,
bookkeeping) on top of the binding calls themselves, compared with making the same calls
bare. On real hardware each NVML call also costs a driver round trip, which this cannot
show; that cost is paid on the polling thread, never by a scrape.

Scrape: generate_latest() of a registry holding a sidecar's inference series for a few
models, with and without the GPU collector registered. Best of several repeats; prints µs
and ratios measured in this one run.

    python benchmarks/bench_gpu.py [--gpus 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_pynvml import FakeGpu, build, mig
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest

from inferwatch import schema
from inferwatch.gpu import GpuCollector
from inferwatch.metrics import InferenceMetrics

GiB = 2**30


def best_of(repeats: int, calls: int, run: Callable[[], Any]) -> float:
    """Best seconds per call over ``repeats`` rounds of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def busy_gpu(index: int) -> FakeGpu:
    return FakeGpu(
        f"GPU-{index:08x}-0000-0000-0000-000000000000",
        utilization=(90, 40),
        memory=(60 * GiB, 80 * GiB, 20 * GiB),
        temperature=70,
        power_mw=650_000,
        energy_mj=10**9,
        throttle=0x4,
        processes=[(os.getpid(), 50 * GiB), (os.getppid(), 10 * GiB)],
    )


def bare_calls(module: Any) -> Callable[[], None]:
    """The NVML calls one poll of every GPU makes, with nothing around them."""
    handles = [module.nvmlDeviceGetHandleByIndex(i) for i in range(module.nvmlDeviceGetCount())]

    def run() -> None:
        for h in handles:
            module.nvmlDeviceGetMemoryInfo(h)
            module.nvmlDeviceGetUtilizationRates(h)
            module.nvmlDeviceGetComputeRunningProcesses(h)
            module.nvmlDeviceGetTemperature(h, module.NVML_TEMPERATURE_GPU)
            module.nvmlDeviceGetPowerUsage(h)
            module.nvmlDeviceGetEnforcedPowerLimit(h)
            module.nvmlDeviceGetClockInfo(h, module.NVML_CLOCK_SM)
            module.nvmlDeviceGetClockInfo(h, module.NVML_CLOCK_MEM)
            module.nvmlDeviceGetTotalEnergyConsumption(h)
            module.nvmlDeviceGetPcieReplayCounter(h)
            module.nvmlDeviceGetTotalEccErrors(h, 0, module.NVML_VOLATILE_ECC)
            module.nvmlDeviceGetTotalEccErrors(h, 1, module.NVML_VOLATILE_ECC)
            module.nvmlDeviceGetCurrentClocksEventReasons(h)
        module.calls.clear()

    return run


def inference_registry(models: int) -> CollectorRegistry:
    """A registry with what a sidecar exposes for ``models`` models, each used once."""
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    for i in range(models):
        model = metrics.model(schema.SOURCE_SIDECAR, f"model-{i}", "1")
        model.success.inc()
        model.duration.observe(0.1)
        model.batch_size.observe(4)
        model.ttfb.observe(0.05)
        model.queue_duration.observe(0.001)
    return registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs on the fake machine")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", type=int, default=4, help="models in the scraped registry")
    args = parser.parse_args()
    disable_created_metrics()

    print(f"one sample (poll) against the fake NVML, best of {args.repeats}")
    print(f"{'machine':30} {'µs/poll':>9} {'µs/device':>10} {'bare µs/poll':>14} {'ratio':>6}")
    machines = {
        "1 GPU": [busy_gpu(0)],
        f"{args.gpus} GPUs": [busy_gpu(i) for i in range(args.gpus)],
        "1 GPU split in 7 MIG devices": [
            FakeGpu(
                "GPU-mig",
                mig_mode=1,
                mig_slots=[mig(f"MIG-{i}", "MIG 1g.10gb", GiB, 10 * GiB) for i in range(7)],
            )
        ],
    }
    for label, gpus in machines.items():
        module = build(gpus)
        sys.modules["pynvml"] = module
        collector = GpuCollector(process_filter=lambda pid: True)
        collector.poll()  # initialise NVML, enumerate

        def poll(collector: GpuCollector = collector, module: Any = module) -> None:
            collector.poll()
            module.calls.clear()

        per_poll = best_of(args.repeats, 2000, poll)
        per_device = per_poll / len(collector.devices)
        if any(g.mig_mode for g in gpus):  # MIG devices make other calls: no bare baseline
            bare_cells = f"{'-':>14} {'-':>6}"
        else:
            bare = best_of(args.repeats, 2000, bare_calls(module))
            bare_cells = f"{bare * 1e6:14.1f} {per_poll / bare:6.2f}"
        print(f"{label:30} {per_poll * 1e6:9.1f} {per_device * 1e6:10.1f} {bare_cells}")
        collector.close()

    print(
        f"\nscrape: generate_latest(), {args.models} models of inference series, best of "
        f"{args.repeats}"
    )
    print(f"{'registry':40} {'µs/scrape':>10} {'series':>7} {'ratio':>6}")
    base_registry = inference_registry(args.models)
    base = best_of(args.repeats, 500, lambda: generate_latest(base_registry))
    base_series = _series(generate_latest(base_registry))
    print(f"{'inference only':40} {base * 1e6:10.1f} {base_series:7d} {1.0:6.2f}")
    for count in (1, args.gpus):
        sys.modules["pynvml"] = build([busy_gpu(i) for i in range(count)])
        registry = inference_registry(args.models)
        collector = GpuCollector(process_filter=lambda pid: True)
        collector.register(registry)
        collector.poll()
        with_gpu = best_of(args.repeats, 500, lambda r=registry: generate_latest(r))
        series = _series(generate_latest(registry))
        label = f"inference + GPU collector, {count} GPU{'s' if count > 1 else ''}"
        print(f"{label:40} {with_gpu * 1e6:10.1f} {series:7d} {with_gpu / base:6.2f}")
        collector.close()


def _series(text: bytes) -> int:
    return sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))


if __name__ == "__main__":
    main()
