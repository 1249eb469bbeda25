"""Shared fixtures: real tools (promtool), fresh registries, metric readers."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry


@pytest.fixture(autouse=True)
def _created_series_setting() -> Iterator[None]:
    """Commands run in-process turn prometheus_client's _created series off for the whole
    process, as inferwatch's processes do; keep that from leaking into the next test."""
    saved = prometheus_client.metrics._use_created
    yield
    prometheus_client.metrics._use_created = saved


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `make test`, which installs it")
    return path


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released), for a server that must
    be told its port before it starts (Prometheus, Alertmanager) or for 'nothing there'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def promtool_check_metrics(promtool: str, text: str) -> str:
    """Run `promtool check metrics` on an exposition; returns its complaints ('' when clean)."""
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return (done.stdout + done.stderr).strip()
