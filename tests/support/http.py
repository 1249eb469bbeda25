"""Serving an aiohttp app on loopback, and waiting for a URL to answer."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from support.polling import poll
from support.ports import LOOPBACK


@asynccontextmanager
async def serving(app: web.Application, **runner_settings: object) -> AsyncIterator[str]:
    """Run ``app`` on an ephemeral loopback port; yields its base URL (``http://host:port``)."""
    runner = web.AppRunner(app, access_log=None, **runner_settings)  # type: ignore[arg-type]
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    try:
        yield f"http://{LOOPBACK}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def port_of(url: str) -> int:
    """The port of a ``http://host:port`` base URL."""
    return int(url.rsplit(":", 1)[1])


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    """The status of a GET, or -1 when nothing answers (refused, reset, cut)."""
    try:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientError:
        return -1


async def wait_for_http(
    url: str, process: asyncio.subprocess.Process | None = None, timeout: float = 30.0
) -> None:
    """Poll until a GET of ``url`` answers 200; fails at once if ``process`` has exited."""
    async with aiohttp.ClientSession() as session:

        async def answers() -> bool:
            if process is not None:
                assert process.returncode is None, (
                    f"the process exited with {process.returncode} before {url} answered"
                )
            return await status_of(session, url) == 200

        await poll(answers, f"{url} to answer 200", timeout=timeout, interval=0.05)


def answers_200(url: str) -> bool:
    """Whether ``url`` answers 200 now (a blocking check, for polling a server process that a
    test started by hand)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
