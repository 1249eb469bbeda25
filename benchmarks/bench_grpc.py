"""What the gRPC proxy costs: direct vs through inferwatch vs through nginx's grpc_pass, in one run.

The upstream is nginx (C, one worker) answering every POST on an HTTP/2 cleartext port with one
fixed, length-prefixed ``ModelInferResponse`` (a static file, ``content-type: application/grpc``,
``grpc-status: 0`` as a trailer): not a gRPC server, but real gRPC clients, inferwatch's proxy
and nginx's ``grpc_pass`` take its answers as successful ``ModelInfer`` calls, and it is fast
enough that the direct path measures the client and the proxies rather than a Python upstream.
The same nginx answers the sidecar's HTTP upstream port (bench_sidecar's JSON answer), which
the sidecar needs to start.

Three numbers per path:

- RPC/s at saturation: h2load (Debian's nghttp2-client, C) posting ``/inference.
  GRPCInferenceService/ModelInfer`` with ``content-type: application/grpc``, ``te: trailers``
  and a body holding one length-prefixed ``ModelInferRequest`` built with tritonclient's
  ``service_pb2`` (model ``resnet50``, one FP32 input of shape [4, 3], batch 4: 96 bytes);
  8 connections, 32 streams each, one thread; a request count sized from a short probe
  rather than a duration, so no RPC is cut off at the end and every one can be counted;
- latency at a fixed 500 RPC/s: a grpcio client in this process, one connection, calls
  started on an absolute schedule (one every 2 ms, never waiting for answers) after a
  half-second warm-up; p50/p99 of every call and what the proxy adds over direct. Not h2load:
  its ``--rps`` sends bursts (five every 10 ms here) and its timing scripts arm each timer
  from the last one's firing, so on this machine they ran at 430-460/s instead of 500. The
  Python client adds its own few hundred µs and jitter, the same on every path, so the added
  latency is the number to read;
- the proxy's CPU seconds per 1,000 RPCs over its process tree during that fixed-rate run
  (bench_sidecar's ``tree_cpu_seconds``; nginx's master and worker, the sidecar and its
  threads). Direct has none: the upstream's CPU is not what is measured.

Success: h2load sees HTTP status only, never the ``grpc-status`` trailer, so its runs must
have every RPC answered with 2xx; every call of the fixed-rate runs (and 20 more per path
before anything is measured) is a real grpcio call that must end OK with the exact answer;
and the sidecar's own ``model_inference_total{status="success"}`` for the model, read from its
admin ``/metrics``, must equal the number of RPCs sent through it.

``--compare-http`` also measures the sidecar's CPU per HTTP request with bench_sidecar's own
fixed-rate run (hey, 1,000 requests/s, against bench_sidecar's nginx upstream) and the gRPC
proxy's at the same 1,000/s (CPU per request falls as the rate rises, so the rates must match),
and prints the ratio (target: gRPC at most 2x HTTP). Needs nginx with the http_v2 and grpc
modules (Debian's nginx has both), h2load and, for ``--compare-http``, hey. Takes about 35 s
(45 s with ``--compare-http``).

    .venv/bin/python benchmarks/bench_grpc.py [--seconds 4] [--compare-http] [--no-nginx]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from time import perf_counter

import grpc
from bench_sidecar import (
    LOOPBACK,
    REPO,
    UPSTREAM_CONF,
    free_port,
    load_files,
    nginx,
    progress,
    sidecar,
    stop_on_sigterm,
    tree_cpu_seconds,
)
from bench_sidecar import fixed_rate as http_fixed_rate
from tritonclient.grpc import service_pb2  # type: ignore[import-untyped]

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL = "resnet50"
RATE = 500  # RPC/s of the latency and CPU run
CHECK_CALLS = 20  # real grpcio calls per path
SAT_CLIENTS, SAT_STREAMS = 8, 32
PROBE_RPCS = 2000


def messages() -> tuple[bytes, bytes]:
    """A small Triton ModelInfer request (batch 4) and the upstream's fixed answer, serialized."""
    request = service_pb2.ModelInferRequest(model_name=MODEL, model_version="1", id="bench")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[4, 3])
    tensor.contents.fp32_contents.extend(float(i) for i in range(12))
    request.outputs.add(name="output")
    response = service_pb2.ModelInferResponse(model_name=MODEL, model_version="1", id="bench")
    response.outputs.add(name="output", datatype="FP32", shape=[4, 1])
    response.raw_output_contents.append(array("f", [0.1, 0.2, 0.3, 0.4]).tobytes())
    return request.SerializeToString(), response.SerializeToString()


REQUEST, RESPONSE = messages()


def framed(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


def upstream_conf(directory: str, http_port: int) -> str:
    """The gRPC answer on PORT (HTTP/2 only) and bench_sidecar's JSON answer on http_port.

    POST to a static file is 405 in nginx; error_page turns it into a GET of the file. The
    mirror subrequest is there only to make nginx read the whole request before it answers, as
    a gRPC server does: answered early, the rest of the stream reaches nginx's grpc_pass as
    "upstream sent frame for unknown stream" and it drops the connection (502s)."""
    return f"""
server {{
    listen {LOOPBACK}:PORT http2;
    location = /read-body {{ internal; return 204; }}
    location / {{
        mirror /read-body;
        mirror_request_body on;
        root {directory};
        default_type application/grpc;
        add_trailer grpc-status 0;
        try_files /response.bin =404;
        error_page 405 =200 /response.bin;
    }}
}}
{UPSTREAM_CONF.replace("PORT", str(http_port))}
"""


def grpc_proxy_conf(upstream_port: int) -> str:
    return f"""
upstream model {{ server {LOOPBACK}:{upstream_port}; keepalive 64; }}
server {{
    listen {LOOPBACK}:PORT http2;
    location / {{ grpc_pass grpc://model; }}
}}
"""


def check_calls(port: int) -> None:
    """Real grpcio ModelInfer calls: status OK and the exact answer, which h2load cannot see."""
    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=15)
        # No serializers: raw bytes both ways.
        infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        for _ in range(CHECK_CALLS):
            answer, call = infer.with_call(REQUEST, timeout=5)
            if call.code() != grpc.StatusCode.OK or answer != RESPONSE:
                raise RuntimeError(f"port {port}: {call.code()}, {len(answer)} bytes")


@dataclass
class LoadFiles:
    """h2load's request body (one framed request) next to the upstream's answer."""

    tmp: str
    body: str


@contextmanager
def grpc_files() -> Iterator[LoadFiles]:
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        os.chmod(tmp, 0o755)  # nginx started as root serves the answer from a worker as nobody
        files = LoadFiles(tmp, os.path.join(tmp, "request.bin"))
        with open(files.body, "wb") as handle:
            handle.write(framed(REQUEST))
        with open(os.path.join(tmp, "response.bin"), "wb") as handle:
            handle.write(framed(RESPONSE))
        yield files


class H2load(list[str]):
    """h2load's gRPC command line for a port; run() checks every RPC was answered with 2xx."""

    def __init__(self, port: int, files: LoadFiles, *options: str) -> None:
        super().__init__(
            [
                "h2load",
                *options,
                "-d",
                files.body,
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{LOOPBACK}:{port}{METHOD}",
            ]
        )

    def run(self, expected: int) -> str:
        out = subprocess.run(self, capture_output=True, text=True, check=True).stdout
        counts = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
        ok = re.search(r"status codes: (\d+) 2xx", out)
        if counts is None or ok is None:
            raise RuntimeError(out[-2000:])
        total, succeeded, two_xx = int(counts[1]), int(counts[2]), int(ok[1])
        if not total == succeeded == two_xx == expected:
            raise RuntimeError(f"{expected} RPCs sent, h2load says:\n{out[-2000:]}")
        return out


@dataclass
class Saturation:
    rps: float
    sent: int


def saturation(port: int, seconds: float, files: LoadFiles, label: str) -> Saturation:
    """A probe sizes the count to about `seconds`; counted (not timed) so none is cut off."""
    options = ("-c", str(SAT_CLIENTS), "-m", str(SAT_STREAMS), "-n")
    probe = H2load(port, files, *options, str(PROBE_RPCS)).run(PROBE_RPCS)
    count = max(PROBE_RPCS, int(finished_rps(probe) * seconds))
    rps = finished_rps(H2load(port, files, *options, str(count)).run(count))
    progress(label, f"saturation {rps:,.0f} RPC/s")
    return Saturation(rps, PROBE_RPCS + count)


def finished_rps(out: str) -> float:
    found = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if found is None:
        raise RuntimeError(out[-2000:])
    return float(found[1])


@dataclass
class Fixed:
    rate: float  # achieved RPC/s
    p50_ms: float
    p99_ms: float
    cpu_per_1000: float
    sent: int


def paced(port: int, rate: float, count: int) -> tuple[list[float], float]:
    """count grpcio ModelInfer calls on one connection, started on an absolute schedule (one
    every 1/rate s, never waiting for answers, so a slow answer does not delay the next and
    lateness does not add up); each must end OK with the exact answer. Latencies in ms and the
    achieved rate."""
    latencies: list[float] = []
    failures: list[str] = []
    answered = threading.Semaphore(0)

    def finished(start: float, call: grpc.Future) -> None:
        latency = (perf_counter() - start) * 1000
        try:
            if call.result() == RESPONSE:
                latencies.append(latency)
            else:
                failures.append("a different answer")
        except grpc.RpcError as error:
            failures.append(f"{error.code()}: {error.details()}")
        finally:
            answered.release()

    with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=15)
        # No serializers: raw bytes both ways.
        infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        first = perf_counter()
        for index in range(count):
            delay = first + index / rate - perf_counter()
            if delay > 0:
                time.sleep(delay)
            start = perf_counter()
            infer.future(REQUEST, timeout=10).add_done_callback(partial(finished, start))
        achieved = (count - 1) / (start - first)
        for _ in range(count):
            if not answered.acquire(timeout=15):
                raise RuntimeError(f"port {port}: {count} calls, {len(latencies)} answered")
    if failures:
        raise RuntimeError(f"port {port}: {len(failures)} of {count} failed: {failures[0]}")
    return latencies, achieved


def fixed_rate(port: int, seconds: float, pid: int | None, label: str, rate: float = RATE) -> Fixed:
    """Evenly spaced calls at `rate` after a half-second warm-up: latency of every one, CPU
    of pid's tree (none: direct)."""
    warm = max(50, int(rate / 2))
    paced(port, rate, warm)
    count = int(rate * seconds)
    before = tree_cpu_seconds(pid) if pid else 0.0
    latencies, achieved = paced(port, rate, count)
    used = tree_cpu_seconds(pid) - before if pid else 0.0
    q = statistics.quantiles(latencies, n=100)
    fixed = Fixed(achieved, q[49], q[98], used / count * 1000, warm + count)
    progress(
        label,
        f"{fixed.rate:,.0f}/s: p50 {fixed.p50_ms:.3f} ms, p99 {fixed.p99_ms:.3f} ms"
        + (f", CPU {fixed.cpu_per_1000:.3f} s per 1,000 RPCs" if pid else ""),
    )
    return fixed


def sidecar_successes(admin: int) -> int:
    """The sidecar's own count of successful inferences of MODEL (its HTTP check uses another
    model name, so only gRPC calls are counted)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("model_inference_total{")
            and f'model_name="{MODEL}"' in line
            and 'status="success"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@dataclass
class Row:
    saturation: Saturation
    fixed: Fixed


def measure(port: int, seconds: float, pid: int | None, files: LoadFiles, label: str) -> Row:
    """Fixed rate first (CPU and latency of a fresh process), then saturation."""
    fixed = fixed_rate(port, seconds, pid, label)
    return Row(saturation(port, seconds, files, label), fixed)


def run(seconds: float, compare_http: bool, with_nginx: bool = True) -> None:
    """Direct, inferwatch and nginx grpc_pass against one upstream; optionally HTTP's CPU."""
    rows: dict[str, Row] = {}
    at_1000: Fixed | None = None
    with grpc_files() as files:
        up_port, up_http = free_port(), free_port()
        with nginx(upstream_conf(files.tmp, up_http), up_port, check_calls):
            rows["direct"] = measure(up_port, seconds, None, files, "direct")

            port, grpc_port, admin = free_port(), free_port(), free_port()
            extra = ["--grpc-listen", f"{LOOPBACK}:{grpc_port}"]
            extra += ["--grpc-upstream", f"{LOOPBACK}:{up_port}"]
            with sidecar(up_http, port, REPO, extra=extra, admin=admin) as pid:
                check_calls(grpc_port)
                sent = CHECK_CALLS
                row = measure(grpc_port, seconds, pid, files, "inferwatch")
                rows["inferwatch"] = row
                sent += row.fixed.sent + row.saturation.sent
                if compare_http:
                    at_1000 = fixed_rate(grpc_port, seconds, pid, "inferwatch", 1000)
                    sent += at_1000.sent
                counted = sidecar_successes(admin)
                if counted != sent:
                    raise RuntimeError(f"{sent} RPCs sent, the sidecar counted {counted} successes")
                progress("inferwatch", f"the sidecar counted {counted:,} successes = RPCs sent")

            if with_nginx:
                port = free_port()
                with nginx(grpc_proxy_conf(up_port), port, check_calls) as pid:
                    rows["nginx grpc_pass"] = measure(port, seconds, pid, files, "nginx grpc_pass")

    http_cpu = None
    if compare_http:
        with load_files() as http_files:
            up_port, port = free_port(), free_port()
            with nginx(UPSTREAM_CONF, up_port) as _, sidecar(up_port, port, REPO) as pid:
                http = http_fixed_rate(port, seconds, pid, http_files, "inferwatch HTTP")
                http_cpu = http.cpu_per_1000
    report(rows, at_1000, http_cpu)


def report(rows: dict[str, Row], at_1000: Fixed | None, http_cpu: float | None) -> None:
    direct = rows["direct"].fixed
    print()
    header = (
        f"{'path':<18}{'RPC/s (sat.)':>14}{'rate':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'+p50 ms':>9}{'+p99 ms':>9}{'CPU s/1k RPC':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        fixed, added = row.fixed, name != "direct"
        print(
            f"{name:<18}{row.saturation.rps:>14,.0f}{fixed.rate:>7.0f}"
            f"{fixed.p50_ms:>9.3f}{fixed.p99_ms:>9.3f}"
            + (
                f"{fixed.p50_ms - direct.p50_ms:>9.3f}{fixed.p99_ms - direct.p99_ms:>9.3f}"
                f"{fixed.cpu_per_1000:>14.3f}"
                if added
                else f"{'—':>9}{'—':>9}{'—':>14}"
            )
        )
    iw, ng = rows["inferwatch"], rows.get("nginx grpc_pass")
    added_p50, added_p99 = iw.fixed.p50_ms - direct.p50_ms, iw.fixed.p99_ms - direct.p99_ms
    print()
    if ng is not None:
        print(f"inferwatch / nginx saturation RPC/s:   {iw.saturation.rps / ng.saturation.rps:.2f}")
    print(
        f"inferwatch added p50 / p99 at {RATE}/s:   {added_p50:.3f} / {added_p99:.3f} ms "
        f"(targets <= 0.5 / 2.0: {'met' if added_p50 <= 0.5 and added_p99 <= 2.0 else 'NOT met'})"
    )
    if ng is not None:
        cpu_ratio = iw.fixed.cpu_per_1000 / ng.fixed.cpu_per_1000
        print(f"inferwatch / nginx CPU per RPC:        {cpu_ratio:.1f}")
    if at_1000 is not None and http_cpu is not None:
        ratio = at_1000.cpu_per_1000 / http_cpu
        print(
            f"inferwatch CPU per RPC / per HTTP request, both at 1,000/s: "
            f"{at_1000.cpu_per_1000:.3f} / {http_cpu:.3f} = {ratio:.2f} "
            f"(target <= 2: {'met' if ratio <= 2 else 'NOT met'})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument(
        "--compare-http",
        action="store_true",
        help="also the sidecar's CPU per HTTP request (bench_sidecar's run) and the ratio",
    )
    parser.add_argument(
        "--no-nginx",
        action="store_true",
        help="skip the nginx grpc_pass path (quicker A/B runs of the sidecar alone)",
    )
    args = parser.parse_args()
    tools = {"nginx": "nginx", "h2load": "nghttp2-client"}
    if args.compare_http:
        tools["hey"] = "hey"
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (Debian package '{package}')")
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start",
        flush=True,
    )
    try:
        run(args.seconds, args.compare_http, not args.no_nginx)
    except (RuntimeError, subprocess.CalledProcessError, grpc.RpcError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: processes stopped, temp dirs removed", file=sys.stderr)
        return 130
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
