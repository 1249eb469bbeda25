"""Stage-1 gate: the h2 transport prototype vs the grpcio proxy, interleaved in one run.

Both sidecars run at once against one nginx upstream (bench_grpc's); rounds alternate between
them: latency at 500 RPC/s (added p50/p99 over direct, measured in the same round) and CPU
seconds per 1,000 RPCs at 1,000 RPC/s.

GATE_VARIANTS=1 adds two variants of the prototype: h2-nv (h2's inbound header validation off)
and h2-nv-stub (also hpack's per-header debug logging and hyperframe's eager frame repr patched
out of the libraries: a bound on what tuning the library could give, not something to ship).

    .venv/bin/python benchmarks/bench_grpc_h2_gate.py [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import ExitStack

from bench_grpc import check_calls, fixed_rate, grpc_files, upstream_conf
from bench_sidecar import LOOPBACK, REPO, free_port, nginx, sidecar


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with grpc_files() as files, ExitStack() as stack:
        up_port, up_http = free_port(), free_port()
        stack.enter_context(nginx(upstream_conf(files.tmp, up_http), up_port, check_calls))
        sidecars = {}
        variants = [("grpcio", ""), ("h2", "1")]
        if os.environ.get("GATE_VARIANTS"):
            variants = [("grpcio", ""), ("h2", "1"), ("h2-nv", "nv"), ("h2-nv-stub", "stub")]
        for name, flag in variants:
            port, grpc_port = free_port(), free_port()
            extra = ["--grpc-listen", f"{LOOPBACK}:{grpc_port}"]
            extra += ["--grpc-upstream", f"{LOOPBACK}:{up_port}"]
            os.environ["INFERWATCH_GRPC_H2"] = flag
            os.environ.pop("H2_NOVALIDATE", None)
            os.environ.pop("H2_STUBS", None)
            if flag in ("nv", "stub"):
                os.environ["H2_NOVALIDATE"] = "1"
            if flag == "stub":
                os.environ["H2_STUBS"] = "1"
            pid = stack.enter_context(sidecar(up_http, port, REPO, extra=extra))
            check_calls(grpc_port)
            sidecars[name] = (grpc_port, pid)
        os.environ.pop("INFERWATCH_GRPC_H2")
        for r in range(args.rounds):
            order = list(sidecars.items()) if r % 2 == 0 else list(sidecars.items())[::-1]
            for name, (port, pid) in order:
                direct = fixed_rate(up_port, args.seconds, None, "direct")
                lat = fixed_rate(port, args.seconds, pid, name)
                cpu = fixed_rate(port, args.seconds, pid, name, 1000)
                row = results.setdefault(name, {"p50": [], "p99": [], "cpu500": [], "cpu1000": []})
                row["p50"].append(lat.p50_ms - direct.p50_ms)
                row["p99"].append(lat.p99_ms - direct.p99_ms)
                row["cpu500"].append(lat.cpu_per_1000)
                row["cpu1000"].append(cpu.cpu_per_1000)
    print()
    print(
        f"{'transport':<10}{'+p50 ms':>10}{'+p99 ms':>10}{'CPU s/1k @500':>15}{'CPU s/1k @1000':>16}"
    )
    for name, row in results.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        print(
            f"{name:<10}{med['p50']:>10.3f}{med['p99']:>10.3f}{med['cpu500']:>15.3f}"
            f"{med['cpu1000']:>16.3f}   (all +p50: {', '.join(f'{x:.3f}' for x in row['p50'])};"
            f" CPU@1000: {', '.join(f'{x:.3f}' for x in row['cpu1000'])})"
        )
    ratio = statistics.median(results["h2"]["cpu1000"]) / statistics.median(
        results["grpcio"]["cpu1000"]
    )
    print(f"h2 / grpcio CPU per RPC at 1,000/s: {ratio:.2f} (gate <= 0.6)")


if __name__ == "__main__":
    main()
