"""Shared fixtures: real tools (promtool, Prometheus, Alertmanager), fresh registries.

Helpers the tests import live in tests/support/.
"""

from __future__ import annotations

import shutil
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


def installed(*names: str) -> str:
    """The path of the first of ``names`` on PATH; fails the test (not skips) when none is,
    since `make test` installs them and a skipped check would pass unnoticed."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(f"{names[0]} is not installed: run `make test`, which installs it")


@pytest.fixture(scope="session")
def promtool() -> str:
    return installed("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return installed("amtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return installed("prometheus")


@pytest.fixture(scope="session")
def alertmanager() -> str:
    return installed("prometheus-alertmanager", "alertmanager")
