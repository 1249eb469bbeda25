"""Where a proxied request's CPU goes, in counts that do not depend on the machine's load.

CPU seconds on a shared 2-core machine move by 10-20% between runs, which hides the gains of
one small change. Two counts do not move: the Python bytecodes the sidecar executes per
request (by function, traced with ``sys.settrace`` opcode events) and the machine instructions
it executes in user space per request (``valgrind --tool=callgrind``, when valgrind is
installed; kernel time is not in it). Both are counted over the same requests as
``bench_sidecar.py`` sends (``POST /v2/models/resnet/infer`` to an nginx upstream, one at a
time), after a warm-up, with every metric on.

    .venv/bin/python benchmarks/profile_sidecar.py [--baseline REF] [--requests 500] [--top 25]
        [--callgrind-out FILE]

With ``--baseline REF`` the git ref REF is counted too (unpacked as bench_sidecar.py does) and
the per-request totals are printed side by side with their ratio. ``--callgrind-out FILE``
keeps the working tree's callgrind profile, by C function (the interpreter's, the compiled
modules', the libraries'): ``callgrind_annotate --inclusive=yes FILE`` lists where the
instructions go.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sidecar as bench

# Runs the sidecar with an opcode counter; SIGUSR1 starts counting, the next one writes the
# counts (per file:function) to the path in argv[2] and stops.
TRACED = (
    bench.IMPORT_CHECK
    + """
import collections, json, os, signal, threading
out = sys.argv.pop(1)
counts = collections.Counter()
on = [False]
def tracer(frame, event, arg):
    frame.f_trace_opcodes = True
    key = frame.f_code.co_filename.rsplit("/", 2)[-1] + ":" + frame.f_code.co_name
    def local(frame, event, arg):
        if on[0] and event == "opcode":
            counts[key] += 1
        return local
    return local
def toggle(signum, frame):
    if on[0]:
        on[0] = False
        with open(out + ".part", "w") as handle:
            json.dump(counts, handle)
        os.replace(out + ".part", out)  # whole when it appears: the reader polls for it
    else:
        counts.clear()
        on[0] = True
signal.signal(signal.SIGUSR1, toggle)
sys.settrace(tracer)
threading.settrace(tracer)
import runpy
sys.argv[0] = "inferwatch"
runpy.run_module("inferwatch", run_name="__main__", alter_sys=True)
"""
)
WARM_UP = 100


def sidecar_args(upstream: int, port: int) -> list[str]:
    return [
        "--log-level",
        "WARNING",
        "sidecar",
        "--upstream",
        f"http://{bench.LOOPBACK}:{upstream}",
        "--listen",
        f"{bench.LOOPBACK}:{port}",
        "--admin",
        f"{bench.LOOPBACK}:{bench.free_port()}",
        "--upstream-metrics-url",
        "none",
        "--drain-quiet-period",
        "0",
    ]


def send(port: int, files: bench.LoadFiles, count: int) -> None:
    """``count`` requests, one after another (hey, one connection)."""
    url = f"http://{bench.LOOPBACK}:{port}{bench.PATH}"
    hey = ["hey", "-n", str(count), "-c", "1", "-m", "POST", "-T", "application/json"]
    subprocess.run([*hey, "-D", files.body, url], capture_output=True, check=True)


@contextmanager
def started(cmd: list[str], root: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = bench.source_env(root)
    with bench.running(cmd, env=env, cwd=root, stderr=subprocess.DEVNULL) as proc:
        bench.wait_listening(port, proc, timeout=120)
        yield proc


def bytecodes(root: Path, upstream: int, files: bench.LoadFiles, requests: int) -> dict[str, float]:
    """Bytecodes per request, by file:function."""
    port = bench.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "counts.json")
        cmd = [sys.executable, "-c", TRACED, str(root), out, *sidecar_args(upstream, port)]
        with started(cmd, root, port) as proc:
            send(port, files, WARM_UP)
            proc.send_signal(signal.SIGUSR1)
            send(port, files, requests)
            proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 30
            while not os.path.exists(out) and time.monotonic() < deadline:
                time.sleep(0.1)
            with open(out) as handle:
                counts = json.load(handle)
    return {name: n / requests for name, n in counts.items()}


def instructions(
    root: Path, upstream: int, files: bench.LoadFiles, requests: int, keep: Path | None = None
) -> float:
    """User-space machine instructions per request, counted by callgrind; ``keep`` gets a
    copy of callgrind's profile, by function, for ``callgrind_annotate``."""
    port = bench.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        cmd = [*valgrind, sys.executable, "-c", bench.LAUNCHER, str(root)]
        with started([*cmd, *sidecar_args(upstream, port)], root, port) as proc:
            send(port, files, WARM_UP)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
            send(port, files, requests)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
            dumps = [p for p in Path(tmp).iterdir() if re.search(r"\.\d+$", p.name)]
            text = min(dumps).read_text()
            if keep is not None:
                keep.write_text(text)
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if found is None:
            raise RuntimeError("callgrind wrote no totals")
        return int(found.group(1)) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a git ref to count too")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument(
        "--callgrind-out",
        type=Path,
        metavar="FILE",
        help="keep the working tree's callgrind profile (by C function, including the "
        "interpreter's and the compiled modules'); read it with callgrind_annotate FILE",
    )
    args = parser.parse_args()
    for tool in ("nginx", "hey"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (Debian: apt-get install {tool})")
    sides = [("current", bench.REPO)]
    with tempfile.TemporaryDirectory(prefix="profile-baseline-") as tmp:
        if args.baseline:
            sha = bench.resolve_ref(args.baseline)
            bench.extract(sha, Path(tmp))
            sides.insert(0, (f"baseline {sha[:10]}", Path(tmp)))
        with bench.load_files() as files:
            return report(sides, files, args)


def report(sides: list[tuple[str, Path]], files: bench.LoadFiles, args: argparse.Namespace) -> int:
    upstream = bench.free_port()
    totals: dict[str, tuple[float, float | None]] = {}
    with bench.nginx(bench.UPSTREAM_CONF, upstream):
        for name, root in sides:
            counts = bytecodes(root, upstream, files, args.requests)
            total = sum(counts.values())
            print(f"\n{name}: {total:,.0f} bytecodes per request; the top {args.top}:")
            for function, n in sorted(counts.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"  {n:8.1f}  {100 * n / total:4.1f}%  {function}")
            machine = None
            if shutil.which("valgrind"):
                keep = args.callgrind_out if name == "current" else None
                machine = instructions(root, upstream, files, min(args.requests, 1000), keep)
                print(f"{name}: {machine / 1000:,.1f}k instructions per request (user space)")
            totals[name] = (total, machine)
    if len(totals) == 2:
        (_, (b_codes, b_instr)), (_, (c_codes, c_instr)) = totals.items()
        print(f"\nbytecodes per request: current/baseline {c_codes / b_codes:.2f}x")
        if b_instr and c_instr:
            print(f"instructions per request: current/baseline {c_instr / b_instr:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
