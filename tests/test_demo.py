"""`inferwatch demo --duration 80`: the whole stack as processes, checked afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.ports import free_port
from support.processes import inferwatch_command

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

    # The PNG preview exists and is not blank.
    import matplotlib.image

    png = workdir / "overview.png"
    pixels = matplotlib.image.imread(png)[:, :, :3]
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
            } <= seen
        finally:
            reopened.terminate()
            reopened.wait(timeout=30)


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
