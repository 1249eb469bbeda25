"""What the sidecar costs: direct vs through inferwatch vs through nginx, in one run.

The upstream is nginx answering a fixed Open Inference Protocol body (one worker), so the
proxies are what is measured. Three numbers per path:

- requests/s at saturation (wrk, 1 thread, 32 connections, POST /v2/models/resnet/infer);
- latency at a fixed 1,000 requests/s (hey, one connection paced at 1 ms, so arrivals are
  evenly spaced rather than in bursts; per-request CSV, 0.1 ms resolution): p50/p99 and what
  the proxy adds over the direct path;
- the proxy's CPU seconds per 1,000 requests, read from /proc/<pid>/stat around the fixed-rate
  run (CPU seconds per 1,000 requests = cores used per 1,000 requests/s).

A last row runs ``--workers N`` at saturation. Needs nginx, wrk and hey on PATH (Debian's
packages). Takes about a minute and a half.

    .venv/bin/python benchmarks/bench_sidecar.py [--seconds 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
PATH = "/v2/models/resnet/infer"
REQUEST = (
    b'{"inputs":[{"name":"input","shape":[4,3],"datatype":"FP32",'
    b'"data":[1,2,3,4,5,6,7,8,9,10,11,12]}]}'
)
RESPONSE = (
    '{"model_name":"resnet","model_version":"1","outputs":[{"name":"out","shape":[4,1],'
    '"datatype":"FP32","data":[0.1,0.2,0.3,0.4]}]}'
)
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


@contextmanager
def nginx(conf_body: str, port: int) -> Iterator[list[int]]:
    """nginx as the current user, one worker, everything under a temp prefix."""
    prefix = tempfile.mkdtemp(prefix="bench-nginx-")
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as handle:
        handle.write(
            f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    {conf_body.replace("PORT", str(port))}
}}
"""
        )
    proc = subprocess.Popen(["nginx", "-p", prefix, "-c", conf], stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield [proc.pid, *children(proc.pid)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(prefix, ignore_errors=True)


UPSTREAM_CONF = f"""
server {{
    listen {LOOPBACK}:PORT;
    location / {{
        default_type application/json;
        return 200 '{RESPONSE}';
    }}
}}
"""


def proxy_conf(upstream_port: int) -> str:
    return f"""
upstream model {{ server {LOOPBACK}:{upstream_port}; keepalive 64; }}
server {{
    listen {LOOPBACK}:PORT;
    location / {{
        proxy_pass http://model;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
    }}
}}
"""


@contextmanager
def sidecar(upstream_port: int, port: int, workers: int = 1) -> Iterator[list[int]]:
    admin = free_port()
    cmd = [
        sys.executable,
        "-m",
        "inferwatch",
        "--log-level",
        "WARNING",
        "sidecar",
        "--upstream",
        f"http://{LOOPBACK}:{upstream_port}",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--admin",
        f"{LOOPBACK}:{admin}",
        "--upstream-metrics-url",
        "none",
        "--drain-quiet-period",
        "0",
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd)
    try:
        wait_listening(port)
        wait_listening(admin)
        if workers > 1:  # every worker must be listening before we measure
            deadline = time.monotonic() + 15
            while len(children(proc.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
        # Check it really measures: one request, then the counter on the admin port.
        post(port)
        with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        if 'model_name="resnet"' not in text:
            raise RuntimeError("the sidecar did not record the request")
        yield [proc.pid, *children(proc.pid)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(port: int) -> None:
    req = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{PATH}",
        data=REQUEST,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.read().decode() == RESPONSE


def saturation(port: int, seconds: float, lua: str) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds:g}s", "-s", lua, f"http://{LOOPBACK}:{port}{PATH}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if found is None or errors is not None:
        raise RuntimeError(out)
    return float(found.group(1))


@dataclass
class Fixed:
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_per_1000: float


def fixed_rate(port: int, seconds: float, pids: list[int], body_file: str) -> Fixed:
    """1,000 requests/s, evenly spaced, latency of every request."""
    before = cpu_seconds(pids)
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds:g}s",
            "-c",
            "1",
            "-q",
            "1000",
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            body_file,
            "-o",
            "csv",
            f"http://{LOOPBACK}:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_seconds(pids) - before
    latencies = []
    for line in out.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) >= 7 and fields[6] == "200":
            latencies.append(float(fields[0]) * 1000)
    if not latencies:
        raise RuntimeError(out[:2000])
    q = statistics.quantiles(latencies, n=100)
    return Fixed(q[49], q[98], len(latencies), used / len(latencies) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=2, help="for the --workers row")
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "hey"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (Debian package '{tool}')", file=sys.stderr)
            return 1
    tmp = tempfile.mkdtemp(prefix="bench-sidecar-")
    lua = os.path.join(tmp, "post.lua")
    body_file = os.path.join(tmp, "body.json")
    with open(body_file, "wb") as handle:
        handle.write(REQUEST)
    with open(lua, "w") as handle:
        handle.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{REQUEST.decode()}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    up_port = free_port()
    rows: dict[str, tuple[float, Fixed | None]] = {}
    with nginx(UPSTREAM_CONF, up_port) as up_pids:
        post(up_port)
        rows["direct"] = (saturation(up_port, args.seconds, lua), None)
        direct = fixed_rate(up_port, args.seconds, up_pids, body_file)
        rows["direct"] = (rows["direct"][0], direct)

        port = free_port()
        with sidecar(up_port, port) as pids:
            fixed = fixed_rate(port, args.seconds, pids, body_file)
            rows["inferwatch"] = (saturation(port, args.seconds, lua), fixed)

        port = free_port()
        with nginx(proxy_conf(up_port), port) as pids:
            post(port)
            fixed = fixed_rate(port, args.seconds, pids, body_file)
            rows["nginx proxy"] = (saturation(port, args.seconds, lua), fixed)

        port = free_port()
        with sidecar(up_port, port, workers=args.workers):
            workers_rps = saturation(port, args.seconds, lua)

    print()
    header = (
        f"{'path':<24}{'rps (sat.)':>12}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'+p50 ms':>9}{'+p99 ms':>9}{'CPU s/1k req':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, (rps, fixed) in rows.items():
        assert fixed is not None
        added = name != "direct"
        print(
            f"{name:<24}{rps:>12.0f}{fixed.p50_ms:>9.3f}{fixed.p99_ms:>9.3f}"
            f"{(fixed.p50_ms - direct.p50_ms) if added else 0:>9.3f}"
            f"{(fixed.p99_ms - direct.p99_ms) if added else 0:>9.3f}"
            f"{fixed.cpu_per_1000 if added else 0:>14.3f}"
        )
    print(f"{f'inferwatch --workers {args.workers}':<24}{workers_rps:>12.0f}")
    iw, ng = rows["inferwatch"], rows["nginx proxy"]
    assert iw[1] is not None and ng[1] is not None
    print()
    print(f"inferwatch / nginx saturation rps:       {iw[0] / ng[0]:.2f}  (target >= 0.25)")
    print(f"inferwatch cores per 1,000 req/s:        {iw[1].cpu_per_1000:.3f} (target <= 0.10)")
    print(
        f"inferwatch added p50 / p99 at 1,000/s:   {iw[1].p50_ms - direct.p50_ms:.3f} / "
        f"{iw[1].p99_ms - direct.p99_ms:.3f} ms (targets <= 0.3 / 1.0)"
    )
    print(f"inferwatch / nginx CPU per request:      {iw[1].cpu_per_1000 / ng[1].cpu_per_1000:.1f}")
    print(f"--workers {args.workers} / 1 saturation rps:          {workers_rps / iw[0]:.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
