"""prometheus_client multiprocess mode: real worker processes, one aggregated scrape."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead
from support.metrics import sample
from support.prometheus import promtool_check_metrics

WORKER = """
import sys
from inferwatch import monitor_inference

@monitor_inference(model_name="mp", model_version="1")
def predict(batch):
    if batch and batch[0] < 0:
        raise ValueError("negative")
    return batch

calls, failing = int(sys.argv[1]), int(sys.argv[2])
for i in range(calls):
    try:
        predict([-1] if i < failing else [i] * (i % 4 + 1))
    except ValueError:
        pass

@monitor_inference(model_name="mp", model_version="1")
def held(batch):
    print("holding", flush=True)
    sys.stdin.readline()  # in flight until the test says so

held([0])
"""

SERVER = """
import sys
import inferwatch
server = inferwatch.start_metrics_server(0, "127.0.0.1")
print(server.port, flush=True)
sys.stdin.readline()
server.close()
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_workers_aggregate_into_one_scrape(tmp_path: Path, promtool: str) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    plan = [(20, 2), (35, 0), (10, 10)]  # (calls, of which failing) per worker
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(calls), str(failing)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for calls, failing in plan
    ]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "holding"

        text = scrape(port)
        labels = {"source": "app", "model_name": "mp", "model_version": "1"}
        successes = sum(calls - failing for calls, failing in plan)
        errors = sum(failing for _, failing in plan)
        assert sample(text, "model_inference_total", status="success", **labels) == successes
        assert sample(text, "model_inference_total", status="error", **labels) == errors
        assert (
            sample(text, "model_inference_failures_total", reason="exception", **labels) == errors
        )
        # livesum: one held call per live worker
        assert sample(text, "model_active_requests", source="app", model_name="mp") == 3
        expected_items = (
            sum(i % 4 + 1 for calls, failing in plan for i in range(failing, calls)) + errors + 3
        )
        assert sample(text, "model_batch_size_sum", source="app", model_name="mp") == (
            expected_items
        )
        assert promtool_check_metrics(promtool, text) == ""

        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("\n")
            worker.stdin.flush()
            assert worker.wait(timeout=30) == 0
            mark_process_dead(worker.pid, str(tmp_path))

        text = scrape(port)
        # livesum counts live processes only: with every worker gone, nothing is in flight
        assert sample(text, "model_active_requests", source="app", model_name="mp") is None
        # counters survive their processes
        assert sample(text, "model_inference_total", status="success", **labels) == successes + 3
    finally:
        for proc in [*workers, server]:
            proc.kill()
            proc.wait()
