"""Every failure reason, produced for real: status code, JSON error, counter, gauges at 0."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from support.polling import poll
from support.ports import LOOPBACK, free_port
from support.sidecar import metric, running_sidecar
from support.upstreams import running_upstream, v2_body

from inferwatch.sidecar.process import Sidecar

JSON = {"Content-Type": "application/json"}
M = {"model_name": "resnet", "model_version": ""}
REASONS = (
    "client_error",
    "server_error",
    "timeout",
    "rejected",
    "cancelled",
    "upstream_unavailable",
)


def url(sc: Sidecar, query: str = "") -> str:
    return f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/resnet/infer{query}"


def assert_only_failure(sc: Sidecar, reason: str, count: int = 1) -> None:
    for other in REASONS:
        expected = count if other == reason else 0
        assert metric(sc, "model_inference_failures_total", reason=other, **M) == expected, other
    assert metric(sc, "model_inference_total", status="error", **M) == count
    assert metric(sc, "model_active_requests", model_name="resnet") == 0
    assert metric(sc, "model_inference_queue_length", model_name="resnet") == 0


async def post(session: aiohttp.ClientSession, target: str) -> tuple[int, dict, bytes]:
    async with session.post(target, data=v2_body(1), headers=JSON) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_upstream_down_is_502_upstream_unavailable() -> None:
    down = f"http://{LOOPBACK}:{free_port()}"
    async with running_sidecar(down) as sc, aiohttp.ClientSession() as session:
        status, headers, body = await post(session, url(sc))
        assert status == 502
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {
            "error": "cannot connect to the upstream",
            "reason": "upstream_unavailable",
        }
        assert_only_failure(sc, "upstream_unavailable")
        assert metric(sc, "inferwatch_upstream_up") == 0


async def test_upstream_5xx_passes_through_as_server_error() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            status, _, body = await post(session, url(sc, "?status=503"))
        assert status == 503
        assert json.loads(body) == {"error": "status 503"}  # the upstream's own, unchanged
        assert_only_failure(sc, "server_error")


async def test_upstream_4xx_passes_through_as_client_error() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            status, _, body = await post(session, url(sc, "?status=422"))
        assert status == 422
        assert json.loads(body) == {"error": "status 422"}
        assert_only_failure(sc, "client_error")


async def test_slow_upstream_is_504_timeout() -> None:
    async with running_upstream() as up, running_sidecar(up.url, upstream_timeout=0.2) as sc:
        async with aiohttp.ClientSession() as session:
            status, _, body = await post(session, url(sc, "?hold=1"))
        assert status == 504
        assert json.loads(body)["reason"] == "upstream_timeout"
        assert_only_failure(sc, "timeout")
        # The proxy hung up on the slow upstream rather than leave it working for nobody.
        await poll(lambda: up.cancelled == 1, "the upstream to see the hang-up")


async def test_the_upstream_timeout_holds_for_each_request_on_a_kept_alive_connection() -> None:
    """One timer serves a connection's requests in turn: answers slower than nothing but
    quicker than the timeout pass however many follow each other, and a request that gets
    no answer times out after the timeout, not before, whatever went before it."""
    timeout = 0.3
    async with running_upstream() as up, running_sidecar(up.url, upstream_timeout=timeout) as sc:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # 0.6 s in all on one upstream connection, each under 0.3 s
                status, _, _ = await post(session, url(sc, "?sleep=0.2"))
                assert status == 200
            for _ in range(5):
                status, _, _ = await post(session, url(sc))
                assert status == 200
            started = asyncio.get_running_loop().time()
            status, _, body = await post(session, url(sc, "?hold=1"))
            waited = asyncio.get_running_loop().time() - started
            assert status == 504
            assert json.loads(body)["reason"] == "upstream_timeout"
            assert waited >= timeout
            status, _, _ = await post(session, url(sc))
            assert status == 200
        assert metric(sc, "model_inference_total", status="success", **M) == 9
        assert metric(sc, "model_inference_failures_total", reason="timeout", **M) == 1


async def test_client_disconnect_is_cancelled_and_reaches_the_upstream() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(post(session, url(sc, "?hold=1")))
            await poll(lambda: up.started == 1, "the request to reach the upstream")
            assert metric(sc, "model_active_requests", model_name="resnet") == 1
            task.cancel()  # the client gives up: its connection closes
        await poll(
            lambda: metric(sc, "model_inference_failures_total", reason="cancelled", **M) == 1,
            "the cancellation to be counted",
        )
        assert_only_failure(sc, "cancelled")
        await poll(lambda: up.cancelled == 1, "the upstream to see the hang-up")


async def test_queue_overflow_and_queue_timeout_are_503_rejected() -> None:
    async with (
        running_upstream() as up,
        running_sidecar(
            up.url, max_concurrency=1, max_queue=1, queue_timeout=60, retry_after=7
        ) as sc,
    ):
        async with aiohttp.ClientSession() as session:
            holding = asyncio.create_task(post(session, url(sc, "?hold=1")))
            await poll(lambda: up.started == 1, "the first request to hold the only slot")
            queued = asyncio.create_task(post(session, url(sc)))
            await poll(
                lambda: metric(sc, "model_inference_queue_length", model_name="resnet") == 1,
                "the second request to queue",
            )
            status, headers, body = await post(session, url(sc))  # the queue is full
            assert status == 503
            assert headers["Retry-After"] == "7"
            assert json.loads(body) == {
                "error": "overloaded: admission queue is full",
                "reason": "overloaded",
            }
            up.hold.set()
            assert (await holding)[0] == 200
            assert (await queued)[0] == 200
        assert_only_failure(sc, "rejected")
        assert metric(sc, "model_inference_total", status="success", **M) == 2
        # Everything admitted was measured in the queue histogram: one at once, one waited.
        assert metric(sc, "model_inference_queue_duration_seconds_count", model_name="resnet") == 2

    async with (
        running_upstream() as up,
        running_sidecar(up.url, max_concurrency=1, max_queue=5, queue_timeout=0.05) as sc,
    ):
        async with aiohttp.ClientSession() as session:
            holding = asyncio.create_task(post(session, url(sc, "?hold=1")))
            await poll(lambda: up.started == 1, "the first request to hold the only slot")
            status, headers, body = await post(session, url(sc))  # waits, then gives up
            assert status == 503
            assert json.loads(body)["error"] == "overloaded: timed out in the admission queue"
            assert headers["Retry-After"] == "1"
            up.hold.set()
            assert (await holding)[0] == 200
        assert_only_failure(sc, "rejected")


async def test_upstream_dying_mid_stream_cuts_the_client_and_counts_server_error() -> None:
    async with running_upstream() as up, running_sidecar(up.url, default_model="gen") as sc:
        async with aiohttp.ClientSession() as session:
            target = f"http://{LOOPBACK}:{sc.proxy_port}/cut"
            async with session.post(target, data=b"{}") as resp:
                assert await resp.content.readexactly(6) == b"first;"
                up.release_stream.set()  # the upstream now drops the connection
                try:
                    await resp.read()
                    raise AssertionError("a cut answer must not look complete")
                except aiohttp.ClientPayloadError:
                    pass
        labels = {"model_name": "gen", "model_version": ""}
        assert metric(sc, "model_inference_failures_total", reason="server_error", **labels) == 1
        assert metric(sc, "model_active_requests", model_name="gen") == 0


async def test_upstream_that_stops_reading_an_upload_is_504_timeout() -> None:
    """A streamed upload to an upstream that never reads it: the proxy cannot write more, and
    gives up after the upstream timeout as it would for an answer that never comes."""
    heads: list[bytes] = []

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read(0)  # and never again: the socket buffers fill up
        try:
            await asyncio.sleep(3600)
        finally:
            writer.close()

    server = await asyncio.start_server(deaf, LOOPBACK, 0)
    upstream = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    try:
        async with (
            running_sidecar(upstream, upstream_timeout=0.3, upstream_ready_path="") as sc,
            aiohttp.ClientSession() as session,
        ):

            async def upload():  # type: ignore[no-untyped-def]
                for _ in range(64):  # far more than the socket buffers hold
                    yield b"0" * (1 << 20)

            async with session.post(url(sc), data=upload(), headers=JSON) as resp:
                assert resp.status == 504
                assert (await resp.json())["reason"] == "upstream_timeout"
            assert len(heads) == 1
            assert_only_failure(sc, "timeout")
    finally:
        server.close()
        await server.wait_closed()
