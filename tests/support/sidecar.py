"""A sidecar in front of a test upstream: in-process (``running_sidecar``) or as a real
``inferwatch sidecar`` process (``sidecar_process``), and reading its metrics back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry

from inferwatch import schema
from inferwatch.metrics import InferenceMetrics
from inferwatch.sidecar.config import Address, SidecarConfig
from inferwatch.sidecar.process import Sidecar
from support.http import wait_for_http
from support.ports import LOOPBACK, free_port
from support.processes import inferwatch_command, stop_process


def sidecar_config(upstream: str, **overrides: Any) -> SidecarConfig:
    """Loopback ports picked by the kernel, no drain wait, quick readiness checks."""
    base = SidecarConfig(
        upstream=upstream,
        listen=Address(LOOPBACK, 0),
        admin=Address(LOOPBACK, 0),
        drain_quiet_period=0.0,
        ready_interval=0.2,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running_sidecar(
    upstream: str, registry: CollectorRegistry | None = None, **overrides: Any
) -> AsyncIterator[Sidecar]:
    """A sidecar started on this event loop (``sidecar_config`` with ``overrides``)."""
    sidecar = Sidecar(sidecar_config(upstream, **overrides), registry or CollectorRegistry())
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()


def metric(sidecar: Sidecar, name: str, **labels: str) -> float:
    """One sample of the sidecar's registry (``source="sidecar"`` added); 0.0 when absent."""
    if name != "inferwatch_upstream_up":
        labels = {"source": "sidecar", **labels}
    found = sidecar.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def own_registry() -> CollectorRegistry:
    """The sidecar's side of a merge: inference families with one recorded request, and
    inferwatch_upstream_up."""
    registry = CollectorRegistry()
    model = InferenceMetrics(registry).model(schema.SOURCE_SIDECAR, "resnet50", "1")
    model.success.inc()
    model.duration.observe(0.12)
    schema.UPSTREAM_UP.create(registry).set(1)  # type: ignore[union-attr]
    return registry


@dataclass
class SidecarProcess:
    """A running ``inferwatch sidecar`` process and where it listens."""

    process: asyncio.subprocess.Process
    port: int
    admin_port: int
    grpc_port: int = 0  # with grpc_upstream: the gRPC proxy's port

    @property
    def proxy_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"


@asynccontextmanager
async def sidecar_process(
    upstream: str,
    *flags: str,
    env: Mapping[str, str] | None = None,
    log_level: str = "WARNING",
    ready_timeout: float = 60.0,
    grpc_upstream: str | None = None,
) -> AsyncIterator[SidecarProcess]:
    """``inferwatch sidecar --upstream UPSTREAM FLAGS`` on free loopback ports, yielded once its
    proxy port answers /ready; stopped (SIGTERM, then SIGKILL) at the end if still running.

    Its output goes to the test's, so a failing test shows the sidecar's log. With
    ``grpc_upstream`` it also proxies gRPC, on a free port (``grpc_port``).
    """
    port, admin_port = free_port(), free_port()
    grpc_port = free_port() if grpc_upstream is not None else 0
    grpc_flags = (
        ("--grpc-listen", f"{LOOPBACK}:{grpc_port}", "--grpc-upstream", grpc_upstream)
        if grpc_upstream is not None
        else ()
    )
    command = inferwatch_command(
        *("--log-level", log_level, "sidecar", "--upstream", upstream),
        *("--listen", f"{LOOPBACK}:{port}", "--admin", f"{LOOPBACK}:{admin_port}"),
        *grpc_flags,
        *flags,
    )
    process = await asyncio.create_subprocess_exec(*command, env=env)
    try:
        sidecar = SidecarProcess(process, port, admin_port, grpc_port)
        await wait_for_http(sidecar.proxy_url + "/ready", process, ready_timeout)
        yield sidecar
    finally:
        await stop_process(process)
