"""The real Prometheus tools: promtool checking an exposition, and a Prometheus server run for
a test (its config written, started on a free loopback port, stopped at the end)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.http import wait_for_http
from support.ports import LOOPBACK, free_port
from support.processes import stop_process


def promtool_status(promtool: str, text: str) -> tuple[int, str]:
    """`promtool check metrics` on an exposition: its exit status (0 clean, 3 lint only,
    1 unparseable) and its complaints."""
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def promtool_check_metrics(promtool: str, text: str) -> str:
    """Run `promtool check metrics` on an exposition; returns its complaints ('' when clean)."""
    status, complaints = promtool_status(promtool, text)
    assert status == 0, complaints
    return complaints


def scrape_config(target: str, job: str = "pod") -> dict[str, Any]:
    """A Prometheus config scraping one ``host:port`` target as ``job`` every second."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }


def sidecar_job(target: str, namespace: str, pod: str) -> dict[str, Any]:
    """A scrape job for one sidecar's admin port, with the ``namespace`` and ``pod`` labels a
    PodMonitor's relabelling adds in Kubernetes (the generated rules aggregate by them)."""
    return {
        "job_name": "inferwatch-sidecar",
        "static_configs": [{"targets": [target], "labels": {"namespace": namespace, "pod": pod}}],
    }


@dataclass
class RunningPrometheus:
    """A Prometheus server started by ``running_prometheus``."""

    url: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def assert_running(self) -> None:
        """Fails the test with Prometheus's log if it has exited."""
        assert self.process.returncode is None, self.log.read_text()


@asynccontextmanager
async def running_prometheus(
    binary: str,
    config: Mapping[str, Any],
    directory: Path,
    *flags: str,
    ready_timeout: float = 60.0,
) -> AsyncIterator[RunningPrometheus]:
    """Prometheus (``binary``) with ``config`` written to DIRECTORY/prometheus.yml (so relative
    rule files are read from ``directory``), its TSDB in DIRECTORY/tsdb, its output in
    DIRECTORY/prometheus.log and ``flags`` added, on a free loopback port; yielded once /-/ready
    answers, stopped (SIGTERM, then SIGKILL) at the end."""
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(dict(config)))
    log_path = directory / "prometheus.log"
    url = f"http://{LOOPBACK}:{free_port()}"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            *flags,
            stdout=log,
            stderr=log,
        )
        try:
            try:
                await wait_for_http(f"{url}/-/ready", process, ready_timeout)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nPrometheus's log:\n{log_path.read_text()}") from None
            yield RunningPrometheus(url, process, log_path)
        finally:
            await stop_process(process)
