"""``--workers N``: N proxy processes on one port (SO_REUSEPORT), one admin port.

Python serves one core per process; pods with more cores run several workers. The kernel
spreads connections across them. Metrics go through prometheus_client's multiprocess mode
(one mmap file per process, summed at scrape time, in-flight gauges as live sums), so the
admin ``/metrics`` shows one set of numbers for the pod. The supervisor process answers the
admin port, checks the upstream's readiness, and on SIGTERM (or ``/wait-for-drain``) drains
every worker and exits once they all have.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from inferwatch import runtime, schema
from inferwatch.exposition import MULTIPROC_ENV
from inferwatch.metrics import BoundedLabel
from inferwatch.sidecar.admin import admin_app
from inferwatch.sidecar.config import SidecarConfig, from_dict
from inferwatch.sidecar.health import Readiness, UpstreamHealth
from inferwatch.sidecar.scrape import UpstreamScraper
from inferwatch.sidecar.server_metrics import signal_for

log = logging.getLogger("inferwatch.sidecar.workers")  # also when run as __main__

WORKER_START_SECONDS = 5.0
COMMAND = "inferwatch sidecar"


class Supervisor:
    def __init__(self, config: SidecarConfig, multiproc_dir: str) -> None:
        self.config = config
        self.dir = multiproc_dir
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=multiproc_dir)
        self.upstream_up = schema.UPSTREAM_UP.create(self.registry)
        self.procs: list[asyncio.subprocess.Process] = []
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.failed: str | None = None  # why the supervisor gave up, if it did

    async def spawn(self) -> asyncio.subprocess.Process:
        env = dict(os.environ, **{MULTIPROC_ENV: self.dir})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "inferwatch.sidecar.workers",
            json.dumps(self.config.to_dict()),
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            env=env,
        )
        log.info("worker %d started", proc.pid)
        return proc

    async def watch(self, index: int) -> None:
        """Restart a worker that dies on its own; stop watching once draining. A worker that
        dies within seconds of starting (the port is taken, say) stops the whole sidecar."""
        loop = asyncio.get_running_loop()
        while True:
            proc = self.procs[index]
            started = loop.time()
            code = await proc.wait()
            mark_process_dead(proc.pid, self.dir)
            if self.draining:
                return
            if loop.time() - started < WORKER_START_SECONDS:
                self.failed = f"worker {proc.pid} exited with {code} right after starting"
                log.error("%s; stopping", self.failed)
                self.begin_drain()
                return
            log.error("worker %d exited with %s; restarting", proc.pid, code)
            self.procs[index] = await self.spawn()

    def begin_drain(self) -> asyncio.Task[None]:
        if self._drain_task is None:
            self.draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return self._drain_task

    async def _drain(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(proc.wait() for proc in self.procs))
        self._stopped.set()

    async def wait_for_drain(self) -> None:
        await asyncio.shield(self.begin_drain())

    async def run(self) -> None:
        config = self.config
        session = runtime.client_session(config.connect_timeout)
        health = UpstreamHealth.of(config, session, self.upstream_up)
        readiness = Readiness(health, lambda: self.draining)
        bound = BoundedLabel(config.max_models, set(config.allow_models))
        server_signal = signal_for(config, session, bound)
        scraper = UpstreamScraper(session, config.metrics_url, server_signal)
        app = admin_app(config, self.registry, scraper, readiness, self.wait_for_drain)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=runtime.SHUTDOWN_GRACE
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, config.admin.bind_host, config.admin.port).start()
        except OSError:
            await runner.cleanup()
            await session.close()
            raise
        await health.check()
        health.start()
        if server_signal.management is not None:
            server_signal.management.start()
        self.procs = [await self.spawn() for _ in range(config.workers)]
        watchers = [asyncio.create_task(self.watch(i)) for i in range(config.workers)]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_drain)
        try:
            await self._stopped.wait()
        finally:
            for task in watchers:
                task.cancel()
            await runner.cleanup()
            await health.stop()
            if server_signal.management is not None:
                await server_signal.management.stop()
            await session.close()


def run_workers(config: SidecarConfig) -> int:
    """``inferwatch sidecar --workers N``: the supervisor, until the workers have drained."""
    multiproc_dir = tempfile.mkdtemp(prefix="inferwatch-sidecar-")
    try:
        supervisor = Supervisor(config, multiproc_dir)
        if config.gpu_metrics:
            runtime.start_gpu(supervisor.registry, config.gpu_interval, COMMAND)
        with runtime.otlp_metrics_push(supervisor.registry, config.otlp_metrics):
            runtime.run_loop(supervisor.run())
    except OSError as exc:
        return runtime.cannot_start(COMMAND, exc)
    finally:
        shutil.rmtree(multiproc_dir, ignore_errors=True)
    if supervisor.failed:
        print(f"{COMMAND}: {supervisor.failed}", file=sys.stderr)
        return 1
    return 0


def _worker_main(raw_config: str, log_level: str) -> None:
    """One proxy process (started by the supervisor, with the multiprocess directory set)."""
    from prometheus_client import disable_created_metrics

    from inferwatch.sidecar.process import Sidecar

    disable_created_metrics()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = from_dict(json.loads(raw_config))
    runtime.start_tracing(config.tracing, "inferwatch-sidecar")

    async def main() -> None:
        sidecar = Sidecar(config, CollectorRegistry(), admin=False, reuse_port=True)
        await sidecar.run()

    try:
        runtime.run_loop(main())
    except OSError as exc:
        log.error("worker %d cannot start: %s", os.getpid(), exc)
        raise SystemExit(1) from None


def _main(argv: list[str]) -> Any:
    if len(argv) != 3:
        return "usage: python -m inferwatch.sidecar.workers CONFIG_JSON LOG_LEVEL"
    _worker_main(argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
