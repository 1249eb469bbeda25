"""Readiness of the upstream, and the graceful drain on SIGTERM.

The upstream is checked in the background every ``interval`` seconds, so ``/ready`` answers
from the cached result and ``inferwatch_upstream_up`` is fresh between scrapes.

The drain follows Knative's queue-proxy: readiness fails at once (the endpoints controller
stops sending new traffic), requests keep being served until a quiet period passes with no
new request (each request restarts it), then in-flight requests finish, then we stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import aiohttp

from inferwatch.sidecar.config import SidecarConfig
from inferwatch.sidecar.errors import ERR_DRAINING, ERR_NOT_READY

log = logging.getLogger(__name__)


class UpstreamHealth:
    """Polls the upstream's readiness path; ``up`` is the last answer (2xx = ready)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str | None,
        interval: float,
        timeout: float,
        gauge: Any = None,
    ) -> None:
        self._session = session
        self.url = url
        self.interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._gauge = gauge
        self.up = url is None
        self.checked = url is None
        self._task: asyncio.Task[None] | None = None
        self._set_gauge()

    @classmethod
    def of(
        cls, config: SidecarConfig, session: aiohttp.ClientSession, gauge: Any = None
    ) -> UpstreamHealth:
        """The check a sidecar's configuration asks for."""
        return cls(session, config.ready_url, config.ready_interval, config.ready_timeout, gauge)

    def _set_gauge(self) -> None:
        if self._gauge is not None:
            self._gauge.set(1 if self.up else 0)

    async def check(self) -> bool:
        """Ask the upstream once and remember the answer."""
        if self.url is None:
            return True
        try:
            async with self._session.get(self.url, timeout=self._timeout) as resp:
                await resp.read()
                up = 200 <= resp.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            up = False
        if up != self.up or not self.checked:
            log.info("upstream %s is %s", self.url, "ready" if up else "not ready")
        self.up, self.checked = up, True
        self._set_gauge()
        return up

    async def _loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.url is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class NotReady(NamedTuple):
    """Why ``/ready`` fails: the JSON error's text and code."""

    message: str
    error: str


DRAINING = NotReady("the sidecar is draining", ERR_DRAINING)
UPSTREAM_NOT_READY = NotReady("the upstream is not ready", ERR_NOT_READY)


class Readiness:
    """The one readiness decision, read by the proxy port's and the admin port's ``/ready``
    and by the worker supervisor: draining first, then the upstream's last answer."""

    __slots__ = ("_draining", "health")

    def __init__(self, health: UpstreamHealth, draining: Callable[[], bool]) -> None:
        self.health = health
        self._draining = draining

    def why_not(self) -> NotReady | None:
        """``None`` when ready."""
        if self._draining():
            return DRAINING
        if not self.health.up:
            return UPSTREAM_NOT_READY
        return None


class Drainer:
    """Counts requests in flight and runs the drain sequence once."""

    def __init__(self, quiet_period: float, timeout: float) -> None:
        self.quiet_period = quiet_period
        self.timeout = timeout
        self.in_flight = 0
        self.draining = False
        self.last_request = 0.0
        self._idle = asyncio.Event()
        self._drained = asyncio.Event()
        self.begun = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Called once the quiet period is over, with the seconds left for in-flight requests
        # (the gRPC server sends GOAWAY then: new calls go to other pods from there on).
        self.quiet: list[Callable[[float], None]] = []

    # The proxy calls these two around every request: keep them tiny.
    def started(self) -> None:
        self.in_flight += 1
        if self.draining:
            self.last_request = time.monotonic()

    def finished(self) -> None:
        self.in_flight -= 1
        if self.draining and self.in_flight == 0:
            self._idle.set()

    @property
    def drained(self) -> bool:
        return self._drained.is_set()

    def begin(self) -> asyncio.Task[None]:
        """Start draining (idempotent); the task ends when nothing is in flight."""
        if self._task is None:
            self.draining = True
            self.last_request = time.monotonic()
            self.begun.set()
            log.info("draining: readiness now fails; quiet period %.1fs", self.quiet_period)
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return self._task

    async def wait(self) -> None:
        """Begin the drain if needed and wait until it is complete."""
        await asyncio.shield(self.begin())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = self.last_request + self.quiet_period - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, max(deadline - time.monotonic(), 0.0)))
            if time.monotonic() >= deadline:
                break
        for listener in self.quiet:
            listener(max(deadline - time.monotonic(), 0.0))
        if self.in_flight > 0:
            self._idle.clear()
            if self.in_flight > 0:
                try:
                    await asyncio.wait_for(self._idle.wait(), max(deadline - time.monotonic(), 0))
                except asyncio.TimeoutError:
                    log.warning("drain timeout: %d requests still in flight", self.in_flight)
        log.info("drained")
        self._drained.set()
