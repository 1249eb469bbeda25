"""What dynamic batching buys the reference model server: batching on vs off, in one run.

Starts ``inferwatch serve`` three times on 127.0.0.1 as a subprocess, same model, same
device: ``--max-batch-size 1`` (batching off), ``--max-batch-size 32`` with the default 5 ms
batch window (on), and ``--max-batch-size 32`` with no window (on, 0 ms: a batch takes what
queued while the previous one ran). For each server and
each concurrency (1, 4, 16, 64, 256 by default) a closed-loop client keeps that many requests
in flight against the text classifier (``POST /predict``) for a few seconds after a short
warm-up, and records throughput, p50 and p99 latency, errors, and the average executed batch
size read from the server's own ``model_batch_size`` histogram (and GPU utilization from its
``gpu_utilization_ratio`` gauge when the device is CUDA and inferwatch's GPU collector runs).
Prints one table and the batching gain (throughput on / off) per concurrency.

The client is ``hey`` when it is on PATH (Go; little CPU per request), else an aiohttp loop
in this process. Client and server share the machine: on a 2-core box both modes pay the
same client cost, so the ratios are what to read. About 80 s with the defaults.

    .venv/bin/python benchmarks/bench_server.py [--device cpu|cuda|auto] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
TEXT_MODEL = "text-classifier"
BODY = {"text": "The match went to penalties after a goalless second half at the stadium."}


@dataclass
class Level:
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    avg_batch: float
    gpu_utilization: float | None


@contextmanager
def model_server(
    args: argparse.Namespace, max_batch_size: int, max_queue_delay_ms: float
) -> Iterator[str]:
    command = [
        sys.executable,
        "-m",
        "inferwatch",
        "--log-level",
        "WARNING",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        "0",
        "--device",
        args.device,
        "--model-size",
        args.model_size,
        "--max-batch-size",
        str(max_batch_size),
        "--max-queue-delay-ms",
        str(max_queue_delay_ms),
        "--max-queue-size",
        "4096",
        "--gpu-metrics-interval",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"listening on (http://\S+) \(device (\S+)\)", line)
        if not found:
            raise RuntimeError(f"server did not start: {line!r}")
        url = found.group(1)
        deadline = time.monotonic() + 120
        while not _ready(url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("server never became ready")
            time.sleep(0.05)
        print(
            f"  server up: max_batch_size={max_batch_size}, max_queue_delay_ms="
            f"{max_queue_delay_ms:g}, device {found.group(2)}",
            flush=True,
        )
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def scrape(url: str) -> tuple[float, float, float | None]:
    """(batch size sum, batch count, GPU utilization or None) from the server's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = count = 0.0
    gpu: list[float] = []
    for line in text.splitlines():
        if line.startswith("model_batch_size_sum{") and f'model_name="{TEXT_MODEL}"' in line:
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("model_batch_size_count{") and f'model_name="{TEXT_MODEL}"' in line:
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("gpu_utilization_ratio{"):
            gpu.append(float(line.rsplit(" ", 1)[1]))
    return total, count, (max(gpu) if gpu else None)


# --- load generators: (requests/s, p50 s, p99 s, errors) ------------------------------------


def load_hey(
    url: str, concurrency: int, seconds: float, body_file: str
) -> tuple[float, float, float, int]:
    done = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            str(concurrency),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            body_file,
            url + "/predict",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    # hey prints a broken 99% line below 100 responses: the slowest is the p99 then.
    p99 = re.search(r"99%+ in ([\d.]+) secs", out) or re.search(r"Slowest:\s+([\d.]+) secs", out)
    if not (rate and p50 and p99):
        raise RuntimeError(f"cannot read hey's output:\n{out}\n{done.stderr}")
    statuses = re.findall(r"\[(\d+)\]\s+(\d+) responses", out)
    errors = sum(int(n) for code, n in statuses if code != "200")
    if "Error distribution:" in out:  # connection errors, timeouts
        section = out.split("Error distribution:", 1)[1]
        errors += sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", section, re.M))
    return float(rate.group(1)), float(p50.group(1)), float(p99.group(1)), errors


async def _load_python(
    url: str, concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    payload = json.dumps(BODY).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                start = time.perf_counter()
                async with session.post(
                    url + "/predict", data=payload, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return len(latencies) / elapsed, p50, p99, errors


def run_level(args: argparse.Namespace, url: str, concurrency: int, body_file: str) -> Level:
    def load(seconds: float) -> tuple[float, float, float, int]:
        if args.client == "hey":
            return load_hey(url, concurrency, seconds, body_file)
        return asyncio.run(_load_python(url, concurrency, seconds))

    load(args.warmup)
    before = scrape(url)
    rate, p50, p99, errors = load(args.seconds)
    after = scrape(url)
    batches = after[1] - before[1]
    avg_batch = (after[0] - before[0]) / batches if batches else 0.0
    return Level(concurrency, rate, p50 * 1e3, p99 * 1e3, errors, avg_batch, after[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--model-size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,4,16,64,256")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds per level")
    parser.add_argument("--client", choices=["auto", "hey", "python"], default="auto")
    args = parser.parse_args()
    if args.client == "auto":
        args.client = "hey" if shutil.which("hey") else "python"
    levels = [int(c) for c in args.concurrency.split(",")]
    print(
        f"bench_server: model {TEXT_MODEL} ({args.model_size}), device {args.device}, "
        f"client {args.client}, {args.seconds:g} s per level, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    # (label, max batch size, batch window in ms): the window trades latency at low load for
    # fuller batches; 0 ms batches only what queued while the previous batch ran.
    modes = [
        ("off", 1, 0.0),
        ("on", args.max_batch_size, args.max_queue_delay_ms),
        ("on0", args.max_batch_size, 0.0),
    ]
    results: dict[str, list[Level]] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body_file:
        json.dump(BODY, body_file)
        body_file.flush()
        for mode, size, delay in modes:
            with model_server(args, size, delay) as url:
                results[mode] = []
                for concurrency in levels:
                    level = run_level(args, url, concurrency, body_file.name)
                    results[mode].append(level)
                    print(
                        f"    {mode:3} c={concurrency:<4} {level.requests_per_s:8.0f} req/s "
                        f"p50 {level.p50_ms:7.1f} ms p99 {level.p99_ms:7.1f} ms "
                        f"batch {level.avg_batch:5.1f} errors {level.errors}",
                        flush=True,
                    )
    print_table(args, results)
    return 0


def print_table(args: argparse.Namespace, results: dict[str, list[Level]]) -> None:
    gpu = any(lv.gpu_utilization is not None for lv in results["on"] + results["on0"])
    window = f"{args.max_queue_delay_ms:g} ms"
    columns = ["concurrency", "off: req/s", "off: p50 / p99 ms"]
    for name in (f"on {window}", "on 0 ms"):
        columns += [f"{name}: req/s", f"{name}: p50 / p99 ms", f"{name}: avg batch"]
        if gpu:
            columns.append(f"{name}: GPU util")
    columns += [f"gain on {window}", "gain on 0 ms"]
    print(
        f"\nbatching off: --max-batch-size 1; on: --max-batch-size {args.max_batch_size} with "
        f"a {window} window, and with none (0 ms)\n"
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for off, on, on0 in zip(results["off"], results["on"], results["on0"], strict=True):
        cells = [str(off.concurrency), f"{off.requests_per_s:.0f}", latency(off)]
        for level in (on, on0):
            cells += [f"{level.requests_per_s:.0f}", latency(level), f"{level.avg_batch:.1f}"]
            if gpu:
                util = level.gpu_utilization
                cells.append("-" if util is None else f"{util:.0%}")
        cells += [
            f"{on.requests_per_s / off.requests_per_s:.2f}x",
            f"{on0.requests_per_s / off.requests_per_s:.2f}x",
        ]
        print("| " + " | ".join(cells) + " |")
    errors = sum(level.errors for levels in results.values() for level in levels)
    peak = {mode: max(level.requests_per_s for level in levels) for mode, levels in results.items()}
    print(
        f"\nPeak throughput: off {peak['off']:.0f} req/s; on ({window}) {peak['on']:.0f} req/s, "
        f"{peak['on'] / peak['off']:.2f}x; on (0 ms) {peak['on0']:.0f} req/s, "
        f"{peak['on0'] / peak['off']:.2f}x. Errors: {errors}. "
        f"Load average {os.getloadavg()[0]:.2f} at end."
    )


def latency(level: Level) -> str:
    return f"{level.p50_ms:.1f} / {level.p99_ms:.1f}"


if __name__ == "__main__":
    sys.exit(main())
