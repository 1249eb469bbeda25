"""``inferwatch sidecar --workers 2``: one port, two processes, one set of numbers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import aiohttp
import pytest
from grpc import aio
from support.grpc_upstream import OIP, infer_request, running_grpc_upstream
from support.metrics import samples
from support.polling import poll
from support.ports import LOOPBACK, free_port
from support.processes import inferwatch_command
from support.sidecar import sidecar_process
from support.upstreams import running_upstream, v2_body

JSON = {"Content-Type": "application/json"}
REQUESTS = 200


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(p) for p in handle.read().split()]


async def test_two_workers_share_the_port_and_metrics_add_up() -> None:
    async with (
        running_upstream() as up,
        sidecar_process(
            up.url,
            *("--workers", "2", "--drain-quiet-period", "0", "--ready-interval", "0.1"),
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            ready_timeout=30,
        ) as sidecar,
    ):
        proc, port, admin_port = sidecar.process, sidecar.port, sidecar.admin_port
        # Both workers up: the proxy port answered /ready, and two children run.
        await poll(lambda: len(children(proc.pid)) == 2, "two workers", timeout=30)
        for i in range(REQUESTS):
            # A fresh connection each time, so the kernel spreads them over the workers.
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://{LOOPBACK}:{port}/v2/models/m{i % 2}/infer?status={200 + i % 2}",
                    data=v2_body(2),
                    headers=JSON,
                ) as resp,
            ):
                assert resp.status == 200 + i % 2
                await resp.read()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{LOOPBACK}:{admin_port}/metrics") as resp,
        ):
            text = await resp.text()
        values = samples(text)

        def value(name: str, **labels: str) -> float | None:
            return values.get((name, frozenset({"source": "sidecar", **labels}.items())))

        for model in ("m0", "m1"):
            labels = {"model_name": model, "model_version": ""}
            assert value("model_inference_total", status="success", **labels) == REQUESTS / 2
            assert value("model_inference_duration_seconds_count", **labels) == REQUESTS / 2
            assert value("model_batch_size_sum", model_name=model) == REQUESTS
            assert value("model_active_requests", model_name=model) == 0
        assert values[("inferwatch_upstream_up", frozenset())] == 1
        # Each worker wrote its own file: the numbers above are a sum over processes.
        assert len(children(proc.pid)) == 2

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_taken_port_stops_start_up_with_a_message(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = inferwatch_command(
            *("--log-level", "ERROR", "sidecar", "--upstream", f"http://{LOOPBACK}:{free_port()}"),
            *("--listen", f"{LOOPBACK}:{port}", "--admin", f"{LOOPBACK}:{free_port()}"),
            *("--workers", workers),
        )
        proc = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    message = stderr.decode().strip().splitlines()[-1]
    if workers == "1":
        assert message.startswith("inferwatch sidecar: cannot start: [Errno 98]")
    else:
        assert message.startswith("inferwatch sidecar: worker ")
        assert message.endswith("right after starting")


async def test_two_workers_share_the_grpc_port_and_metrics_add_up() -> None:
    grpc_port = free_port()
    async with (
        running_upstream() as up,
        running_grpc_upstream() as grpc_up,
        sidecar_process(
            up.url,
            *("--workers", "2", "--drain-quiet-period", "0", "--ready-interval", "0.1"),
            *("--grpc-listen", f"{LOOPBACK}:{grpc_port}", "--grpc-upstream", grpc_up.target),
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            ready_timeout=30,
        ) as sidecar,
    ):
        proc, admin_port = sidecar.process, sidecar.admin_port
        await poll(lambda: len(children(proc.pid)) == 2, "two workers", timeout=30)
        for _ in range(REQUESTS // 4):
            # A fresh channel (connection) each time, so the kernel spreads them.
            async with aio.insecure_channel(f"{LOOPBACK}:{grpc_port}") as channel:
                await channel.unary_unary(OIP + "ModelInfer")(infer_request("g", batch=2))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{LOOPBACK}:{admin_port}/metrics") as resp,
        ):
            values = samples(await resp.text())
        labels = {"source": "sidecar", "model_name": "g", "model_version": ""}
        success = frozenset({**labels, "status": "success"}.items())
        assert values[("model_inference_total", success)] == REQUESTS // 4
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_taken_grpc_port_stops_start_up_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = inferwatch_command(
            *("--log-level", "ERROR", "sidecar", "--upstream", f"http://{LOOPBACK}:{free_port()}"),
            *("--listen", f"{LOOPBACK}:{free_port()}", "--admin", f"{LOOPBACK}:{free_port()}"),
            *("--grpc-listen", f"{LOOPBACK}:{port}", "--grpc-upstream", f"{LOOPBACK}:1"),
        )
        proc = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    message = stderr.decode().strip().splitlines()[-1]
    expected = f"inferwatch sidecar: cannot start: cannot listen for gRPC on {LOOPBACK}:{port}"
    assert message.startswith(expected)
