"""What each model version costs: fp32 eager (1), int8 dynamic quantization (2), ONNX Runtime
(3), at the same offered load, through the same dynamic batcher, in one run.

Starts one ``inferwatch serve`` (all three versions of the text classifier, each with its own
batcher) on 127.0.0.1 as a subprocess, waits until every version is warmed up, then for each
version in turn and each offered load sends the same text to
``POST /v1/models/text-classifier/versions/<v>:predict``:

- ``rate N``: an open loop at N requests/s in all, evenly spaced (an aiohttp client in this
  process: ``hey -q`` fires its workers in lockstep, which would offer bursts): the same
  offered load for every version, so p95 compares how long each takes to serve it (a version
  that cannot keep up shows it in its throughput);
- ``c=N``: a closed loop of N requests in flight (``hey`` when on PATH): each version's peak
  throughput.

The average executed batch size comes from the server's ``model_batch_size`` histogram (the
versions run one after another, so the difference over a run is that version's). Prints one
table and each version's ratios to version 1 (these machines are noisy: read the ratios).

    .venv/bin/python benchmarks/bench_versions.py [--model-size small] [--rate 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import TEXT_MODEL, model_server, scrape

VERSIONS = {"1": "fp32 eager", "2": "int8 dynamic", "3": "ONNX Runtime"}
TEXT = "The match went to penalties after a goalless second half at the stadium."


@dataclass
class Run:
    version: str
    load: str
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    errors: int
    avg_batch: float


def path_of(version: str) -> str:
    return f"/v1/models/{TEXT_MODEL}/versions/{version}:predict"


def load_hey(
    url: str, concurrency: int, seconds: float, body: str
) -> tuple[float, float, float, int]:
    """(requests/s, p50 s, p95 s, errors) from ``hey``, a closed loop."""
    command = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST"]
    command += ["-T", "application/json", "-D", body, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    found = [
        re.search(r"Requests/sec:\s+([\d.]+)", out),
        re.search(r"50%+ in ([\d.]+) secs", out),
        re.search(r"95%+ in ([\d.]+) secs", out),
    ]
    if not all(found):
        raise RuntimeError(f"cannot read hey's output:\n{out}\n{done.stderr}")
    rate_, p50, p95 = (float(m.group(1)) for m in found if m)
    errors = sum(
        int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out) if code != "200"
    )
    if "Error distribution:" in out:
        section = out.split("Error distribution:", 1)[1]
        errors += sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", section, re.M))
    return rate_, p50, p95, errors


async def _load_python(
    url: str, concurrency: int, rate: float | None, seconds: float
) -> tuple[float, float, float, int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    payload = json.dumps({"instances": [TEXT]}).encode()
    interval = concurrency / rate if rate else 0.0  # each worker's spacing
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        end = began + seconds

        async def worker(offset: float) -> None:
            nonlocal errors
            due = began + offset
            while due < end:
                if interval:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                start = time.perf_counter()
                async with session.post(
                    url, data=payload, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    errors += response.status != 200
                latencies.append(time.perf_counter() - start)
                due = max(due + interval, time.perf_counter()) if interval else time.perf_counter()

        spread = interval / concurrency if interval else 0.0
        await asyncio.gather(*(worker(i * spread) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return len(latencies) / elapsed, quantile(0.5), quantile(0.95), errors


def measure(args: argparse.Namespace, url: str, version: str, load: str, body: str) -> Run:
    concurrency = args.rate_clients if load == "rate" else args.concurrency
    rate = args.rate if load == "rate" else None
    target = url + path_of(version)

    def run(seconds: float) -> tuple[float, float, float, int]:
        if args.client == "hey" and rate is None:
            return load_hey(target, concurrency, seconds, body)
        return asyncio.run(_load_python(target, concurrency, rate, seconds))

    run(args.warmup)
    before = scrape(url)
    requests_per_s, p50, p95, errors = run(args.seconds)
    after = scrape(url)
    batches = after[1] - before[1]
    avg_batch = (after[0] - before[0]) / batches if batches else 0.0
    label = f"rate {args.rate:g}/s" if load == "rate" else f"c={concurrency}"
    return Run(version, label, requests_per_s, p50 * 1e3, p95 * 1e3, errors, avg_batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--model-size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests/s (open loop)")
    parser.add_argument("--rate-clients", type=int, default=20, help="workers sharing --rate")
    parser.add_argument("--concurrency", type=int, default=32, help="closed loop: in flight")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    parser.add_argument("--client", choices=["auto", "hey", "python"], default="auto")
    args = parser.parse_args()
    if args.client == "auto":
        args.client = "hey" if shutil.which("hey") else "python"
    print(
        f"bench_versions: model {TEXT_MODEL} ({args.model_size}), device {args.device}, client "
        f"{args.client}, {args.seconds:g} s per run, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    runs: list[Run] = []
    body = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_versions_{os.getpid()}.json"
    body.write_text(json.dumps({"instances": [TEXT]}))
    try:
        # bench_server's server: every version by default, 32-item batches, a 5 ms window.
        with model_server(args, 32, 5.0) as url:
            for load in ("rate", "closed"):
                for version in VERSIONS:
                    run = measure(args, url, version, load, str(body))
                    runs.append(run)
                    print(
                        f"    v{version} {run.load:>11} {run.requests_per_s:7.0f} req/s p50 "
                        f"{run.p50_ms:6.1f} ms p95 {run.p95_ms:6.1f} ms batch "
                        f"{run.avg_batch:4.1f} errors {run.errors}",
                        flush=True,
                    )
    finally:
        body.unlink(missing_ok=True)
    print_table(args, runs)
    return 0


def print_table(args: argparse.Namespace, runs: list[Run]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"text-classifier ({args.model_size}) versions on {args.device}, "
        "max batch 32, 5 ms window",
        box=box.MARKDOWN,
    )
    for column in (
        "load",
        "version",
        "req/s",
        "p50 ms",
        "p95 ms",
        "avg batch",
        "errors",
        "req/s vs v1",
        "p95 vs v1",
    ):
        table.add_column(column, justify="left" if column in ("load", "version") else "right")
    base = {run.load: run for run in runs if run.version == "1"}
    for run in runs:
        ref = base[run.load]
        table.add_row(
            run.load,
            f"{run.version} {VERSIONS[run.version]}",
            f"{run.requests_per_s:.0f}",
            f"{run.p50_ms:.1f}",
            f"{run.p95_ms:.1f}",
            f"{run.avg_batch:.1f}",
            str(run.errors),
            f"{run.requests_per_s / ref.requests_per_s:.2f}x",
            f"{run.p95_ms / ref.p95_ms:.2f}x",
        )
    console = Console(width=140)
    console.print()
    console.print(table)
    console.print(f"Load average {os.getloadavg()[0]:.2f} at end.")


if __name__ == "__main__":
    sys.exit(main())
