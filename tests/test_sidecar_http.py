"""HTTP/1.1 on the wire, both sides of the proxy: keep-alive, pipelining, HTTP/1.0, 100-continue,
HEAD and bodiless statuses, malformed requests, and the upstream connection pool."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from support.http import serving
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar
from support.upstreams import running_upstream, v2_body


async def exchange(port: int, data: bytes, until_close: bool = True) -> bytes:
    """Send raw bytes; read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return answer


def infer_request(model: str, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    body = v2_body(2)
    return (
        b"POST /v2/models/" + model.encode() + b"/infer " + version + b"\r\n"
        b"Host: model\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        data = (
            infer_request("a") + infer_request("b") + infer_request("c", b"Connection: close\r\n")
        )
        answer = await exchange(sc.proxy_port, data)
        assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
        names = [
            json.loads(
                part.split(b"\r\n\r\n", 1)[1][: part.split(b"\r\n\r\n", 1)[1].index(b"}]}") + 3]
            )["model_name"]
            for part in answer.split(b"HTTP/1.1 200 OK\r\n")[1:]
        ]
        assert names == ["a", "b", "c"]
        assert answer.split(b"HTTP/1.1 200 OK\r\n")[3].count(b"Connection: close") == 1
        for model in "abc":
            labels = {"model_name": model, "model_version": ""}
            assert metric(sc, "model_inference_total", status="success", **labels) == 1


async def test_http10_client_gets_its_answer_and_the_connection_closes() -> None:
    async with running_upstream() as up, running_sidecar(up.url, default_model="gen") as sc:
        # A length-delimited answer...
        answer = await exchange(sc.proxy_port, infer_request("m", version=b"HTTP/1.0"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert json.loads(body)["model_name"] == "m"
        # ... and a streamed one, which HTTP/1.0 cannot chunk: it ends when the connection does.
        up.release_stream.set()
        answer = await exchange(
            sc.proxy_port, b"POST /chunked HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}"
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in head
        assert b"Connection: close" in head
        assert body == b"first;second;"


async def test_expect_100_continue_is_answered_by_the_sidecar() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        reader, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
        body = v2_body(3)
        writer.write(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(body)
        answer = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert "Expect" not in up.seen_headers[0]
        assert up.seen_bodies[0] == body


async def test_head_and_bodiless_statuses_keep_their_headers() -> None:
    async with (
        running_upstream() as up,
        running_sidecar(up.url) as sc,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://{LOOPBACK}:{sc.proxy_port}"
        async with session.head(up.url + "/metrics") as direct:
            length = direct.headers["Content-Length"]
        assert int(length) > 0
        async with session.head(base + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == length  # the GET's, with no body
            assert await resp.read() == b""
        async with session.post(base + "/v2/models/m/infer?status=204", data=v2_body(1)) as resp:
            assert resp.status == 204
            assert await resp.read() == b""
        # The connection survived both: the next request on it works.
        async with session.post(base + "/v2/models/m/infer", data=v2_body(1)) as resp:
            assert resp.status == 200


async def test_malformed_request_gets_400_and_never_reaches_the_upstream() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        answer = await exchange(
            sc.proxy_port, b"POST /v2/models/m/infer HTTP/1.1\r\nBad Header\r\n\r\n"
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request")
        assert json.loads(body)["reason"] == "bad_request"
        answer = await exchange(
            sc.proxy_port,
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 400")
        assert up.requests == 0


async def test_upstream_connections_are_reused_and_a_closed_one_is_replaced() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        assert sc.proxy is not None
        pool = sc.proxy.pool
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.post(
                    f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/m/infer", data=v2_body(1)
                ) as resp:
                    assert resp.status == 200
            assert pool.opened == 1
            # The upstream drops its idle connection (a restart, an idle timeout) ...
            for proto in list(pool._idle):
                assert proto.transport is not None
                proto.transport.close()
            # ... and the next request still goes through, on a new one.
            async with session.post(
                f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/m/infer", data=v2_body(1)
            ) as resp:
                assert resp.status == 200
            assert pool.opened == 2


async def test_upstream_that_closes_after_each_answer_is_not_reused() -> None:
    async def closing(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.Response(body=b"{}", content_type="application/json")
        resp.force_close()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", closing)
    async with serving(app) as url, running_sidecar(url, upstream_ready_path="") as sc:
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.post(
                    f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/m/infer", data=v2_body(1)
                ) as resp:
                    assert resp.status == 200
                    assert "Connection" not in resp.headers  # hop-by-hop: not relayed
        assert sc.proxy is not None and sc.proxy.pool.opened == 5
        labels = {"model_name": "m", "model_version": ""}
        assert metric(sc, "model_inference_total", status="success", **labels) == 5


async def test_client_leaving_mid_upload_disturbs_nothing() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        for path in (b"/v2/models/m/infer", b"/predictions/m"):  # read whole / streamed
            _, writer = await asyncio.open_connection(LOOPBACK, sc.proxy_port)
            writer.write(
                b"POST "
                + path
                + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n"
                + b"x" * 1000
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        async def idle() -> bool:
            return sc.drainer is not None and sc.drainer.in_flight == 0

        while not await idle():
            await asyncio.sleep(0.01)
        # Only the streamed upload can have reached the upstream (and been cut there).
        assert up.requests <= 1
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/m/infer", data=v2_body(1)
            ) as resp,
        ):
            assert resp.status == 200
        assert metric(sc, "model_active_requests", model_name="m") == 0


async def test_informational_answers_from_the_upstream_are_skipped() -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(early_hints, LOOPBACK, 0)
    url = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    try:
        async with (
            running_sidecar(url, upstream_ready_path="") as sc,
            aiohttp.ClientSession() as session,
            session.get(f"http://{LOOPBACK}:{sc.proxy_port}/v2/models") as resp,
        ):
            assert resp.status == 200
            assert await resp.read() == b"{}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_keep_alive_connection_closed_under_a_request_is_retried_once() -> None:
    """The upstream closes a kept-alive connection just as a request goes out on it (an idle
    timeout racing the request): a request whose body is in hand is sent again on a new
    connection; a streamed upload cannot be, and fails with a 502."""
    seen: list[tuple[int, bytes]] = []  # (connection number, request head) in arrival order
    connections = 0

    async def racing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"Transfer-Encoding: chunked" in head:
                    await reader.readuntil(b"0\r\n\r\n")
                else:
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                seen.append((number, head))
                if len(seen) in (2, 4):  # the 2nd and 4th requests: gone without an answer
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(racing, LOOPBACK, 0)
    url = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    labels = {"model_name": "m", "model_version": ""}
    try:
        async with (
            running_sidecar(url, upstream_ready_path="") as sc,
            aiohttp.ClientSession() as session,
        ):
            assert sc.proxy is not None
            infer = f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/m/infer"
            for _ in range(2):  # the second one meets the closing connection
                async with session.post(infer, data=v2_body(1)) as resp:
                    assert resp.status == 200
                    assert await resp.read() == b"{}"
            assert [number for number, _ in seen] == [1, 1, 2]  # sent again, on a new one
            assert sc.proxy.pool.opened == 2
            assert metric(sc, "model_inference_total", status="success", **labels) == 2

            async def upload() -> Any:  # no Content-Length: streamed, chunked upstream
                yield v2_body(1)

            async with session.post(infer, data=upload()) as resp:
                assert resp.status == 502
                assert (await resp.json())["reason"] == "upstream_failed"
            assert [number for number, _ in seen] == [1, 1, 2, 2]  # not sent again
            assert metric(sc, "model_inference_total", status="error", **labels) == 1
            failures = {"reason": "server_error", **labels}
            assert metric(sc, "model_inference_failures_total", **failures) == 1
            assert metric(sc, "model_active_requests", model_name="m") == 0
    finally:
        server.close()
        await server.wait_closed()
