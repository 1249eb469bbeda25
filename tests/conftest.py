"""Shared fixtures: real tools (promtool), fresh registries, metric readers."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `make test`, which installs it")
    return path


def promtool_check_metrics(promtool: str, text: str) -> str:
    """Run `promtool check metrics` on an exposition; returns its complaints ('' when clean)."""
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return (done.stdout + done.stderr).strip()
