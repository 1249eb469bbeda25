"""`inferwatch demo --duration 80`: the whole stack as processes, checked afterwards; and its
live view in an emulated terminal (pty + pyte): it stays in place while its table changes size
and log lines (from the loop and from another thread) arrive."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pyte
import pytest
from support.ports import free_port
from support.processes import inferwatch_command

from inferwatch import stack
from inferwatch.stack import PHASES

PORTS = ("server", "sidecar", "admin", "prometheus", "alertmanager", "webhook")


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
    return result


@pytest.mark.timeout(400)
def test_demo_runs_the_stack_and_cleans_up(tmp_path: Path, prometheus: str) -> None:
    workdir = tmp_path / "demo"
    ports = [arg for name in PORTS for arg in (f"--{name}-port", "0")]
    command = inferwatch_command("demo", "--duration", "80")
    done = subprocess.run(
        [*command, "--workdir", str(workdir), *ports],
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "alerts delivered to the webhook: " in done.stdout

    # Every process it started has ended.
    pids = dict(line.split() for line in (workdir / "logs" / "pids").read_text().splitlines())
    assert set(pids) == {"server", "sidecar", "alertmanager", "prometheus"}
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
            pytest.fail(f"{name} ({pid}) is still running")

    # The error-burn alert went through Alertmanager to the webhook.
    delivered = workdir / "alerts-received.jsonl"
    received = (
        [json.loads(line) for line in delivered.read_text().splitlines()]
        if delivered.exists()
        else []
    )
    assert any(
        a["labels"]["alertname"] == "InferenceErrorBudgetBurn" and a["status"] == "firing"
        for a in received
    ), f"received: {received}\n{done.stdout[-4000:]}\n" + "\n".join(
        f"--- {log.name}\n{log.read_text()[-2000:]}" for log in (workdir / "logs").glob("*.log")
    )

    # The PNG previews exist and are not blank: the overview, and the LLM dashboard once the
    # generator has one.
    import matplotlib.image

    from inferwatch.generate import dashboards
    from inferwatch.generate.options import GenerateOptions

    names = ["overview.png"]
    if "inferwatch-llm.json" in dashboards.dashboards(GenerateOptions()):
        names.append("llm.png")
    for name in names:
        pixels = matplotlib.image.imread(workdir / name)[:, :, :3]
        assert pixels.shape[0] > 500 and pixels.shape[1] > 1000
        assert pixels.std() > 0.05  # a page without data is nearly uniform (tests/test_render.py)

    # Prometheus' data (reopened from the demo's storage): sidecar and app series, both models.
    port = free_port()
    config = tmp_path / "empty.yml"
    config.write_text("global: {}\n")
    with subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as reopened:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    found = query(
                        port,
                        "count by (source, model_name) "
                        "(last_over_time(model_inference_total[15m]))",
                    )
                    break
                except OSError:
                    assert time.monotonic() < deadline, "Prometheus did not reopen the data"
                    time.sleep(0.2)
            seen = {(r["metric"]["source"], r["metric"]["model_name"]) for r in found}
            assert {
                ("sidecar", "text-classifier"),
                ("sidecar", "image-classifier"),
                ("app", "text-classifier"),
                ("app", "image-classifier"),
                ("app", "tiny-llm"),  # the streamed chat load
            } <= seen
            # The load spreads over every version, and the sidecar labels the unversioned
            # requests with the server's default version: no classifier series without one.
            found = query(
                port,
                "count by (model_name, model_version) "
                '(last_over_time(model_inference_total{source="sidecar"}[15m]))',
            )
            versions: dict[str, set[str]] = {}
            for r in found:
                versions.setdefault(r["metric"]["model_name"], set()).add(
                    r["metric"]["model_version"]
                )
            for model in stack.CLASSIFIERS:
                assert versions.get(model) == {"1", "2", "3"}, versions
            ttft = query(
                port,
                "sum(last_over_time(model_inference_time_to_first_token_seconds_count"
                '{source="app", model_name="tiny-llm"}[15m]))',
            )
            assert ttft and float(ttft[0]["value"][1]) > 0
        finally:
            reopened.terminate()
            reopened.wait(timeout=30)


def test_the_load_names_each_served_version_for_its_share() -> None:
    no_session: Any = None  # version() sends nothing
    load = stack.Load(no_session, "", stack.ClientStats(), {stack.TEXT_MODEL: ["1", "2", "3"]})
    picks = [load.version(stack.TEXT_MODEL) for _ in range(20_000)]
    for version, share in stack.VERSION_SHARES.items():
        assert abs(picks.count(version) / len(picks) - share) < 0.02
    assert picks.count(None) > len(picks) / 2  # most stay unversioned: the default version
    # A version the server does not serve (or a model it did not list) is not named.
    load = stack.Load(no_session, "", stack.ClientStats(), {stack.TEXT_MODEL: ["1", "3"]})
    assert "2" not in {load.version(stack.TEXT_MODEL) for _ in range(2_000)}
    assert {load.version(stack.IMAGE_MODEL) for _ in range(2_000)} == {None}
    assert stack.infer_path("m") == "/v2/models/m/infer"
    assert stack.infer_path("m", "2") == "/v2/models/m/versions/2/infer"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_everything(tmp_path: Path, stop_signal: signal.Signals) -> None:
    workdir = tmp_path / "demo"
    ports = [arg for name in PORTS for arg in (f"--{name}-port", "0")]
    command = inferwatch_command("demo", "--no-render")
    with subprocess.Popen(
        [*command, "--workdir", str(workdir), *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        assert demo.stdout is not None
        for line in demo.stdout:  # until the stack is up and the load has begun
            if "inferwatch demo is running" in line:
                break
        else:
            pytest.fail("the demo ended before it was running")
        demo.send_signal(stop_signal)
        output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, output[-3000:]
    assert output.rstrip().endswith("stopped")
    pids = dict(line.split() for line in (workdir / "logs" / "pids").read_text().splitlines())
    assert set(pids) == {"server", "sidecar", "alertmanager", "prometheus"}
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
            pytest.fail(f"{name} ({pid}) is still running")


# --- the live view ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

# Frames whose table grows and shrinks in width and height, with log lines between them, as
# `inferwatch demo` makes them; logging configured as the CLI does, before the view starts.
CHILD = r"""
import logging, sys, threading, time
from rich.console import Console
from inferwatch import stack
logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("inferwatch.stack")
console = Console()
console.print("inferwatch demo is running:\n  sidecar (proxy)  http://127.0.0.1:8080\n")
frames = int(sys.argv[1])
stats = stack.ClientStats()
with stack.LiveView(console, total=frames) as view:
    for i in range(frames):
        phase = stack.PHASES[i * len(stack.PHASES) // frames]
        view.phase(phase)
        stats.add([200, 503, 504, 0, 429, 500][i % 6], 0.01)
        firing = [f"InferenceAlertNumber{j} (critical)" for j in range(i % 7)]
        summary = stack.Summary(
            rps=10.0 * i, p95_ms=12.0 * i, queue=float(i), errors=0.1 * i, firing=firing
        )
        view.show(phase, summary, stats, "Prometheus, last 10 s", completed=i)
        if i % 3 == 1:
            log.info("alert firing: Alert%d (warning) for text-classifier", i)
        if i % 4 == 2:
            threading.Thread(target=log.warning, args=("from a thread %d" % i,)).start()
        time.sleep(0.06)
print("view closed")
"""


def run_in_terminal(argv: list[str], columns: int, rows: int, timeout: float = 60) -> pyte.Screen:
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the pty
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": ""}
        env.pop("COLUMNS")
        os.execve(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not data:
                break
            stream.feed(data)
        else:
            pytest.fail(f"{argv} did not end within {timeout} s")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, "\n".join(screen.display)
    return screen


@pytest.mark.parametrize(("columns", "rows"), [(100, 40), (80, 24)])
def test_the_live_view_stays_in_place(columns: int, rows: int) -> None:
    frames = 24
    screen = run_in_terminal([sys.executable, "-c", CHILD, str(frames)], columns, rows)
    lines = [line.rstrip() for line in screen.display]
    shown = "\n".join(f"{i:2}|{line}" for i, line in enumerate(lines))
    phase_lines = [i for i, line in enumerate(lines) if "phase:" in line]
    headers = [i for i, line in enumerate(lines) if "req/s" in line]
    assert len(phase_lines) == 1, shown
    assert len(headers) == 1, shown
    names = tuple(phase.name for phase in PHASES)
    progress = [i for i, line in enumerate(lines) if line.startswith(names) and "━" in line]
    assert len(progress) <= 1, shown
    # The last frame is the one shown (calm), and the log lines are above it, in order.
    assert "phase: calm" in lines[phase_lines[0]], shown
    logs = [i for i, line in enumerate(lines) if " INFO inferwatch.stack: alert firing" in line]
    assert logs, shown
    assert max(logs) < phase_lines[0], shown
    assert "Alert22 (warning)" in lines[max(logs)], shown  # the last one, not overwritten
    assert any("WARNING" in line and "from a thread 22" in line for line in lines), shown
    assert lines.index("view closed") > headers[0], shown


def test_log_handlers_are_restored_after_the_view() -> None:
    import logging

    from rich.console import Console

    from inferwatch import stack

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        with stack.LiveView(Console(file=io.StringIO()), total=1):
            assert handler not in root.handlers
            assert any(isinstance(h, stack._ConsoleLogHandler) for h in root.handlers)
        assert handler in root.handlers
        assert not any(isinstance(h, stack._ConsoleLogHandler) for h in root.handlers)
    finally:
        root.removeHandler(handler)
