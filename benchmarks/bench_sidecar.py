"""What the sidecar costs: direct vs through inferwatch vs through nginx, in one run.

The upstream is nginx answering a fixed Open Inference Protocol body (one worker), so the
proxies are what is measured. Three numbers per path:

- requests/s at saturation (wrk, 1 thread, 32 connections, POST /v2/models/resnet/infer);
- latency at a fixed 1,000 requests/s (hey, one connection paced at 1 ms, so arrivals are
  evenly spaced rather than in bursts; per-request CSV, 0.1 ms resolution): p50/p99 and what
  the proxy adds over the direct path;
- the proxy's CPU seconds per 1,000 requests, read from /proc/<pid>/stat around the fixed-rate
  run for the proxy and all its descendants (CPU seconds per 1,000 requests = cores used per
  1,000 requests/s).

A last row runs ``--workers N`` at saturation. Needs nginx, wrk and hey on PATH (Debian's
packages). Takes about a minute and a half.

    .venv/bin/python benchmarks/bench_sidecar.py [--seconds 4] [--workers 2]

Code against code: ``--baseline REF`` measures the git ref REF (branch, tag, sha, HEAD~3) and
the working tree in one run, against one nginx upstream, with the same flags, load and
ephemeral ports, and prints for each metric the median over ``--rounds`` (and its min and max), the
ratio current/baseline and a one-line verdict. The nginx proxy rows are left out (they measure
nginx, not the change); ``--workers`` (default 1) is then the sidecar's worker count on both
sides, its workers' CPU included. ``--only saturation,latency,cpu`` picks the measurements.
Rounds alternate ABBA (baseline first in odd rounds, current first in even ones) so a steady
drift in the machine's load does not favour one side. Added latency is the side's value minus
the direct path's in the same round; hey's 0.1 ms resolution makes the p50/p99 ratios coarse,
the added mean is finer. The defaults (3 rounds of 4 s) take about a minute and a half too.

    .venv/bin/python benchmarks/bench_sidecar.py --baseline main [--rounds 3] [--seconds 4]

How each side runs its own code: REF's tree is written to a temp dir with ``git archive | tar
-x`` (read-only for the repository: no worktree metadata to prune if the run is killed, no lock
shared with other git commands) and removed when the run ends, also on Ctrl-C or SIGTERM. Both
sides use this interpreter, the sidecar started by a small ``-c`` launcher with the side's
source tree as cwd and PYTHONPATH and first on sys.path; the venv's editable install of the
working tree only appends its finder to sys.meta_path, so it is reached only when the path
search fails. The launcher checks ``inferwatch.__file__`` inside the sidecar process itself and
exits if the package came from elsewhere; before anything starts the same check runs alone
(and prints where each side imports from), and ``--workers`` children, which inherit the
environment, are checked for the side's cwd and PYTHONPATH through /proc.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

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
REPO = Path(__file__).resolve().parents[1]

# Run as `python -c IMPORT_CHECK ROOT ...`: imports inferwatch with ROOT first on sys.path and
# exits unless the package really came from ROOT/inferwatch.
IMPORT_CHECK = """
import os, sys
root = sys.argv.pop(1)
sys.path.insert(0, root)
import inferwatch
where = os.path.dirname(os.path.realpath(inferwatch.__file__))
if where != os.path.join(os.path.realpath(root), "inferwatch"):
    sys.exit(f"inferwatch was imported from {where}, not from {root}")
"""
LAUNCHER = (
    IMPORT_CHECK
    + """
import runpy
sys.argv[0] = "inferwatch"
runpy.run_module("inferwatch", run_name="__main__", alter_sys=True)
"""
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Fail at once, with the exit code, when the process dies instead of listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"pid {proc.pid} exited with {proc.returncode}, not listening on {port}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def process_tree(pid: int) -> list[int]:
    return [pid, *(p for child in children(pid) for p in process_tree(child))]


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its descendants, reaped ones included (through cutime/cstime), so
    a worker that exits during a measurement still counts once."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:  # gone between listing and reading: its parent accounts for it
            continue
        total += sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
    return total / TICKS


@contextmanager
def running(
    cmd: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stderr: int | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is stopped however the block ends (error, Ctrl-C, SIGTERM)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stderr=stderr)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def nginx(conf_body: str, port: int, check: Callable[[int], None] | None = None) -> Iterator[int]:
    """nginx as the current user, one worker, everything under a temp prefix; yields its pid.

    check(port) proves it answers before anything is measured (default: one JSON POST)."""
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as prefix:
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
        cmd = ["nginx", "-p", prefix, "-c", conf]
        with running(cmd, stderr=subprocess.DEVNULL) as proc:
            wait_listening(port, proc)
            (check or post)(port)
            yield proc.pid


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


def source_env(root: Path) -> dict[str, str]:
    """The environment that makes a Python process (and its children) import from root."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONNOUSERSITE")}
    env["PYTHONPATH"] = str(root)
    return env


def imported_from(root: Path) -> str:
    """Where this interpreter imports inferwatch from with root's environment; fails if not
    root."""
    found = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK + "print(where)", str(root)],
        env=source_env(root),
        cwd=root,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise RuntimeError(f"importing inferwatch from {root}: {found.stderr.strip()}")
    return found.stdout.strip()


def check_runs_from(pid: int, root: Path) -> None:
    """A worker re-imports inferwatch from its cwd and PYTHONPATH: both must be root's."""
    cwd = os.readlink(f"/proc/{pid}/cwd")
    with open(f"/proc/{pid}/environ", "rb") as handle:
        environ = dict(
            item.decode().partition("=")[::2] for item in handle.read().split(b"\0") if item
        )
    if cwd != str(root) or environ.get("PYTHONPATH") != str(root):
        raise RuntimeError(f"sidecar process {pid} runs in {cwd}, not from {root}")


@contextmanager
def sidecar(
    upstream_port: int,
    port: int,
    root: Path,
    workers: int = 1,
    extra: Sequence[str] = (),
    admin: int | None = None,
) -> Iterator[int]:
    """The sidecar on root's source tree, checked to record requests; yields its pid. extra:
    more sidecar flags (bench_grpc's --grpc-listen and --grpc-upstream); admin: its admin port
    when the caller reads its /metrics (default: a free one)."""
    admin = admin or free_port()
    cmd = [
        sys.executable,
        "-c",
        LAUNCHER,
        str(root),
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
        *extra,
    ]
    with running(cmd, env=source_env(root), cwd=root) as proc:
        wait_listening(port, proc)
        wait_listening(admin, proc)
        if workers > 1:  # every worker must be listening before we measure
            deadline = time.monotonic() + 15
            while len(children(proc.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
        for pid in process_tree(proc.pid):
            check_runs_from(pid, root)
        # Check it really measures: one request, then the counter on the admin port.
        post(port)
        with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        if 'model_name="resnet"' not in text:
            raise RuntimeError("the sidecar did not record the request")
        yield proc.pid


def post(port: int) -> None:
    req = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{PATH}",
        data=REQUEST,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.read().decode() == RESPONSE


def progress(label: str, text: str) -> None:
    """One stderr line per measurement, so a long run shows it is alive."""
    print(f"  {label}: {text}", file=sys.stderr, flush=True)


@dataclass
class LoadFiles:
    """The request body as wrk's Lua script and as hey's body file."""

    lua: str
    body: str


@contextmanager
def load_files() -> Iterator[LoadFiles]:
    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp:
        files = LoadFiles(os.path.join(tmp, "post.lua"), os.path.join(tmp, "body.json"))
        with open(files.body, "wb") as handle:
            handle.write(REQUEST)
        with open(files.lua, "w") as handle:
            handle.write(
                'wrk.method = "POST"\n'
                f"wrk.body = '{REQUEST.decode()}'\n"
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
        yield files


def saturation(port: int, seconds: float, files: LoadFiles, label: str) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            "-c32",
            f"-d{seconds:g}s",
            "-s",
            files.lua,
            f"http://{LOOPBACK}:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if found is None or errors is not None:
        raise RuntimeError(out)
    rps = float(found.group(1))
    progress(label, f"saturation {rps:,.0f} requests/s")
    return rps


@dataclass
class Fixed:
    p50_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    cpu_per_1000: float


def fixed_rate(port: int, seconds: float, pid: int, files: LoadFiles, label: str) -> Fixed:
    """1,000 requests/s, evenly spaced, latency of every request, CPU of pid's tree."""
    before = tree_cpu_seconds(pid)
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
            files.body,
            "-o",
            "csv",
            f"http://{LOOPBACK}:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = tree_cpu_seconds(pid) - before
    latencies = []
    for line in out.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) >= 7 and fields[6] == "200":
            latencies.append(float(fields[0]) * 1000)
    if not latencies:
        raise RuntimeError(out[:2000])
    q = statistics.quantiles(latencies, n=100)
    fixed = Fixed(
        q[49], q[98], statistics.fmean(latencies), len(latencies), used / len(latencies) * 1000
    )
    progress(
        label,
        f"1,000/s: p50 {fixed.p50_ms:.3f} ms, p99 {fixed.p99_ms:.3f} ms, "
        f"CPU {fixed.cpu_per_1000:.3f} s per 1,000 requests",
    )
    return fixed


def run_plain(seconds: float, workers: int, files: LoadFiles) -> None:
    """Direct, inferwatch, nginx proxy and inferwatch --workers N: what the sidecar costs."""
    rows: dict[str, tuple[float, Fixed]] = {}
    up_port = free_port()
    with nginx(UPSTREAM_CONF, up_port) as up_pid:
        direct = fixed_rate(up_port, seconds, up_pid, files, "direct")
        rows["direct"] = (saturation(up_port, seconds, files, "direct"), direct)

        port = free_port()
        with sidecar(up_port, port, REPO) as pid:
            fixed = fixed_rate(port, seconds, pid, files, "inferwatch")
            rows["inferwatch"] = (saturation(port, seconds, files, "inferwatch"), fixed)

        port = free_port()
        with nginx(proxy_conf(up_port), port) as pid:
            fixed = fixed_rate(port, seconds, pid, files, "nginx proxy")
            rows["nginx proxy"] = (saturation(port, seconds, files, "nginx proxy"), fixed)

        port = free_port()
        workers_label = f"inferwatch --workers {workers}"
        with sidecar(up_port, port, REPO, workers=workers):
            workers_rps = saturation(port, seconds, files, workers_label)

    print()
    header = (
        f"{'path':<24}{'rps (sat.)':>12}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'+p50 ms':>9}{'+p99 ms':>9}{'CPU s/1k req':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, (rps, fixed) in rows.items():
        added = name != "direct"
        print(
            f"{name:<24}{rps:>12.0f}{fixed.p50_ms:>9.3f}{fixed.p99_ms:>9.3f}"
            f"{(fixed.p50_ms - direct.p50_ms) if added else 0:>9.3f}"
            f"{(fixed.p99_ms - direct.p99_ms) if added else 0:>9.3f}"
            f"{fixed.cpu_per_1000 if added else 0:>14.3f}"
        )
    print(f"{workers_label:<24}{workers_rps:>12.0f}")
    iw, ng = rows["inferwatch"], rows["nginx proxy"]
    print()
    print(f"inferwatch / nginx saturation rps:       {iw[0] / ng[0]:.2f}  (target >= 0.25)")
    print(f"inferwatch cores per 1,000 req/s:        {iw[1].cpu_per_1000:.3f} (target <= 0.10)")
    print(
        f"inferwatch added p50 / p99 at 1,000/s:   {iw[1].p50_ms - direct.p50_ms:.3f} / "
        f"{iw[1].p99_ms - direct.p99_ms:.3f} ms (targets <= 0.3 / 1.0)"
    )
    print(f"inferwatch / nginx CPU per request:      {iw[1].cpu_per_1000 / ng[1].cpu_per_1000:.1f}")
    print(f"--workers {workers} / 1 saturation rps:          {workers_rps / iw[0]:.2f}")


class Metric(NamedTuple):
    group: str  # what --only names it by
    higher_is_better: bool
    decimals: int


METRICS = {
    "saturation rps": Metric("saturation", True, 0),
    "added p50 ms at 1,000/s": Metric("latency", False, 3),
    "added p99 ms at 1,000/s": Metric("latency", False, 3),
    "added mean ms at 1,000/s": Metric("latency", False, 3),
    "CPU s per 1,000 requests": Metric("cpu", False, 3),
}
GROUPS = ("saturation", "latency", "cpu")


@dataclass
class Side:
    """One code tree under test and what was measured for it, per metric, one value a round."""

    name: str
    root: Path
    samples: dict[str, list[float]] = field(default_factory=dict)


def resolve_ref(ref: str) -> str:
    """The commit REF names, or an error that says why, before anything starts."""
    if ref.startswith("-"):
        raise ValueError(f"--baseline {ref!r} is not a git ref")
    found = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise ValueError(f"--baseline {ref!r} names no commit in {REPO}")
    sha = found.stdout.strip()
    entry = f"{sha}:inferwatch/__main__.py"
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", entry]).returncode != 0:
        raise ValueError(f"--baseline {ref!r} ({sha[:10]}) has no inferwatch/__main__.py")
    return sha


def extract(sha: str, dest: Path) -> None:
    """The commit's tree as plain files; git archive only reads the repository."""
    with subprocess.Popen(["git", "-C", str(REPO), "archive", sha], stdout=subprocess.PIPE) as git:
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=git.stdout, check=True)
    if git.returncode != 0:
        raise RuntimeError(f"git archive {sha} failed with {git.returncode}")


def working_tree_state() -> str:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "inferwatch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return f"working tree (HEAD {head}, {len(changed)} uncommitted paths under inferwatch/)"


def measure_side(
    side: Side,
    upstream_port: int,
    direct: Fixed | None,
    groups: set[str],
    seconds: float,
    workers: int,
    files: LoadFiles,
    label: str,
) -> None:
    """One round of one side, in a fresh sidecar: fixed rate first, then saturation."""
    found: dict[str, float] = {}
    port = free_port()
    with sidecar(upstream_port, port, side.root, workers) as pid:
        if groups & {"latency", "cpu"}:
            fixed = fixed_rate(port, seconds, pid, files, label)
            if direct is not None:
                found["added p50 ms at 1,000/s"] = fixed.p50_ms - direct.p50_ms
                found["added p99 ms at 1,000/s"] = fixed.p99_ms - direct.p99_ms
                found["added mean ms at 1,000/s"] = fixed.mean_ms - direct.mean_ms
            if "cpu" in groups:
                found["CPU s per 1,000 requests"] = fixed.cpu_per_1000
        if "saturation" in groups:
            found["saturation rps"] = saturation(port, seconds, files, label)
    for name, value in found.items():
        side.samples.setdefault(name, []).append(value)


def spread(values: list[float], decimals: int) -> str:
    median = statistics.median(values)
    return f"{median:,.{decimals}f} [{min(values):,.{decimals}f}, {max(values):,.{decimals}f}]"


def ratio(baseline: list[float], current: list[float]) -> float | None:
    """current/baseline of the medians; none when the baseline's median is not positive."""
    base = statistics.median(baseline)
    return statistics.median(current) / base if base > 0 else None


def verdict(name: str, metric: Metric, baseline: list[float], current: list[float]) -> str:
    found = ratio(baseline, current)
    if found is None:
        return f"{name}: no ratio (baseline median {statistics.median(baseline):.3f})"
    if len(baseline) < 2:
        judgement = "one round: no spread to judge by"
    elif min(current) <= max(baseline) and min(baseline) <= max(current):
        judgement = "no clear change: the ranges overlap"
    else:
        higher = min(current) > max(baseline)
        judgement = "better" if higher == metric.higher_is_better else "worse"
        judgement += ": the ranges do not overlap"
    better = "higher" if metric.higher_is_better else "lower"
    return f"{name}: {found:.2f}x baseline, {judgement} ({better} is better)"


def report(baseline: Side, current: Side) -> None:
    header = (
        f"{'metric':<26}{'baseline: median [min, max]':>30}"
        f"{'current: median [min, max]':>30}{'current/baseline':>18}"
    )
    print()
    print(header)
    print("-" * len(header))
    measured = [(name, metric) for name, metric in METRICS.items() if name in baseline.samples]
    for name, metric in measured:
        base, cur = baseline.samples[name], current.samples[name]
        found = ratio(base, cur)
        print(
            f"{name:<26}{spread(base, metric.decimals):>30}{spread(cur, metric.decimals):>30}"
            f"{'n/a' if found is None else f'{found:.2f}x':>18}"
        )
    print()
    for name, metric in measured:
        print(verdict(name, metric, baseline.samples[name], current.samples[name]))


def run_baseline(
    sha: str,
    ref: str,
    rounds: int,
    groups: set[str],
    seconds: float,
    workers: int,
    files: LoadFiles,
) -> None:
    """REF against the working tree, alternating ABBA, one upstream for the whole run."""
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        baseline = Side("baseline", Path(tmp).resolve())
        current = Side("current", REPO)
        extract(sha, baseline.root)
        print(f"baseline: {ref} = {sha[:10]}, inferwatch from {imported_from(baseline.root)}")
        print(f"current:  {working_tree_state()}, inferwatch from {imported_from(current.root)}")
        print(
            f"rounds: {rounds}; measurements: {', '.join(g for g in GROUPS if g in groups)}; "
            f"{seconds:g} s each"
        )
        up_port = free_port()
        with nginx(UPSTREAM_CONF, up_port) as up_pid:
            for index in range(rounds):
                round_label = f"round {index + 1}/{rounds}"
                direct = None
                if "latency" in groups:
                    direct = fixed_rate(up_port, seconds, up_pid, files, f"{round_label} direct")
                order = (baseline, current) if index % 2 == 0 else (current, baseline)
                for side in order:
                    label = f"{round_label} {side.name}"
                    measure_side(side, up_port, direct, groups, seconds, workers, files, label)
        report(baseline, current)


def metric_groups(text: str) -> set[str]:
    groups = {group.strip() for group in text.split(",") if group.strip()}
    unknown = groups - set(GROUPS)
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(GROUPS)}")
    return groups


def stop_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so processes stop and temp dirs go."""
    sys.exit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument(
        "--workers",
        type=int,
        help="the --workers row's worker count (default 2); with --baseline, the sidecar's on "
        "both sides (default 1)",
    )
    parser.add_argument(
        "--baseline", metavar="REF", help="compare the working tree with this git ref"
    )
    parser.add_argument("--rounds", type=int, help="with --baseline: rounds per side (default 3)")
    parser.add_argument(
        "--only",
        type=metric_groups,
        help=f"with --baseline: comma-separated measurements out of {','.join(GROUPS)}",
    )
    args = parser.parse_args()
    if args.baseline is None and (args.rounds is not None or args.only is not None):
        parser.error("--rounds and --only go with --baseline")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for tool in ("nginx", "wrk", "hey"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (Debian package '{tool}')")
    sha = None
    if args.baseline is not None:
        try:
            sha = resolve_ref(args.baseline)
        except ValueError as error:
            parser.error(str(error))
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    try:
        with load_files() as files:
            if sha is None:
                run_plain(args.seconds, args.workers or 2, files)
            else:
                groups = args.only or set(GROUPS)
                run_baseline(
                    sha,
                    args.baseline,
                    args.rounds or 3,
                    groups,
                    args.seconds,
                    args.workers or 1,
                    files,
                )
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: processes stopped, temp dirs removed", file=sys.stderr)
        return 130
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
