"""Graceful drain: readiness fails first, in-flight requests finish, nothing is dropped."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
from support.http import status_of
from support.polling import poll
from support.ports import LOOPBACK
from support.sidecar import running_sidecar, sidecar_process
from support.upstreams import running_upstream, v2_body

JSON = {"Content-Type": "application/json"}


async def test_wait_for_drain_returns_once_in_flight_requests_are_done() -> None:
    async with running_upstream() as up, running_sidecar(up.url, drain_quiet_period=0.05) as sc:
        proxy = f"http://{LOOPBACK}:{sc.proxy_port}"
        admin = f"http://{LOOPBACK}:{sc.admin_port}"
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, proxy + "/ready") == 200
            assert await status_of(session, admin + "/ready") == 200

            async def held() -> tuple[int, bytes]:
                target = proxy + "/v2/models/resnet/infer?hold=1"
                async with session.post(target, data=v2_body(1), headers=JSON) as resp:
                    return resp.status, await resp.read()

            request = asyncio.create_task(held())

            async def reached() -> bool:
                return up.started == 1

            await poll(reached, "the request to reach the upstream", timeout=20.0)

            async def drain() -> tuple[int, object]:
                async with session.get(admin + "/wait-for-drain") as resp:
                    return resp.status, await resp.json()

            waiting = asyncio.create_task(drain())

            async def not_ready() -> bool:
                return await status_of(session, proxy + "/ready") == 503

            await poll(not_ready, "readiness to fail", timeout=20.0)
            async with session.get(admin + "/ready") as resp:
                assert resp.status == 503
                assert await resp.json() == {
                    "error": "the sidecar is draining",
                    "reason": "draining",
                }
            # Still serving while draining (the load balancer may not know yet).
            async with session.post(
                proxy + "/v2/models/resnet/infer", data=v2_body(2), headers=JSON
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Connection"] == "close"  # move clients to other pods
            assert not waiting.done()  # one request is still in flight
            assert sc.drainer is not None and sc.drainer.in_flight == 1
            up.hold.set()
            assert (await request)[0] == 200
            assert await waiting == (200, {"drained": True})


SIDECAR_UNDER_LOAD_SECONDS = 0.15  # each request's time in the model


async def test_sigterm_under_load_drops_no_request() -> None:
    """A real ``inferwatch sidecar`` process gets SIGTERM while requests are in flight."""
    async with (
        running_upstream() as up,
        sidecar_process(
            up.url,
            *("--drain-quiet-period", "0.3", "--ready-interval", "0.1"),
            env={**os.environ, "INFERWATCH_SIDECAR_UPSTREAM_TIMEOUT": "30"},
        ) as sidecar,
    ):
        proxy, admin = sidecar.proxy_url, sidecar.admin_url
        results: list[int] = []
        stop = asyncio.Event()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def ready() -> bool:
                return await status_of(session, admin + "/ready") == 200

            await poll(ready, "the sidecar to be ready", timeout=20.0)

            async def client() -> None:
                # Like a load balancer's client: new requests stop once readiness fails.
                while not stop.is_set():
                    target = f"{proxy}/v2/models/resnet/infer?sleep={SIDECAR_UNDER_LOAD_SECONDS}"
                    async with session.post(target, data=v2_body(1), headers=JSON) as resp:
                        body = await resp.read()
                        results.append(resp.status)
                        assert json.loads(body)["model_name"] == "resnet"

            clients = [asyncio.create_task(client()) for _ in range(30)]

            async def busy() -> bool:
                # Requests done, and others at the model right now.
                return len(results) >= 60 and up.started > len(results)

            await poll(busy, "load to build up", timeout=20.0)
            sidecar.process.send_signal(signal.SIGTERM)
            in_flight_at_signal = up.started - len(results)

            async def draining() -> bool:
                return await status_of(session, admin + "/ready") in (503, -1)

            await poll(draining, "readiness to fail after SIGTERM", timeout=20.0)
            stop.set()
            await asyncio.gather(*clients)  # raises if any request failed
        assert await asyncio.wait_for(sidecar.process.wait(), 30) == 0
    assert in_flight_at_signal > 0
    assert len(results) == up.requests
    assert results == [200] * len(results)
