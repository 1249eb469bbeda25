"""The proxy against real upstreams on loopback: every protocol, byte for byte, with labels."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar
from support.tracing import finished, in_memory_tracing
from support.upstreams import running_upstream, v2_body

JSON = {"Content-Type": "application/json"}


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str, body: bytes | None, headers: dict
) -> tuple[int, dict[str, str], bytes]:
    async with session.request(method, url, data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# (method, path, body, headers, model, version, batch size)
PROTOCOL_CASES = [
    pytest.param(
        "POST", "/v2/models/resnet/versions/3/infer", v2_body(4), JSON, "resnet", "3", 4, id="v2"
    ),
    pytest.param(
        "POST",
        "/v1/models/iris:predict",
        json.dumps({"instances": [[1, 2], [3, 4], [5, 6]]}).encode(),
        JSON,
        "iris",
        "",
        3,
        id="kserve-v1",
    ),
    pytest.param(
        "POST",
        "/v1/models/iris/versions/2:predict",
        json.dumps({"inputs": {"a": [[1], [2]], "b": [[3], [4]]}}).encode(),
        JSON,
        "iris",
        "2",
        2,
        id="tf-serving-columnar",
    ),
    pytest.param(
        "POST",
        "/predictions/densenet/1.0",
        b"\x89PNG raw image bytes",
        {"Content-Type": "application/octet-stream"},
        "densenet",
        "1.0",
        1,
        id="torchserve",
    ),
    pytest.param(
        "POST",
        "/invocations",
        json.dumps(
            {"dataframe_split": {"columns": ["a"], "data": [[1], [2], [3], [4], [5]]}}
        ).encode(),
        JSON,
        "unknown",
        "",
        5,
        id="mlflow-json",
    ),
    pytest.param(
        "POST",
        "/invocations",
        b"a,b\n1,2\n3,4\n",
        {"Content-Type": "text/csv"},
        "unknown",
        "",
        2,
        id="mlflow-csv",
    ),
    pytest.param(
        "POST",
        "/api/v1.0/predictions",
        json.dumps({"data": {"ndarray": [[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]}}).encode(),
        JSON,
        "unknown",
        "",
        6,
        id="seldon-v1",
    ),
    pytest.param(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "llama-3", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        JSON,
        "llama-3",
        "",
        1,
        id="openai",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "model", "version", "batch"), PROTOCOL_CASES
)
async def test_each_protocol_is_forwarded_byte_for_byte_and_labelled(
    method: str, path: str, body: bytes, headers: dict, model: str, version: str, batch: int
) -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            direct = await fetch(session, method, up.url + path, body, headers)
            proxied = await fetch(
                session, method, f"http://{LOOPBACK}:{sc.proxy_port}{path}", body, headers
            )
        assert proxied[0] == direct[0] == 200
        assert proxied[2] == direct[2]
        # Same headers, the same values (Date aside: the two answers are moments apart).
        proxied[1].pop("Date"), direct[1].pop("Date")
        assert proxied[1] == direct[1]
        # The upstream got the same body both times.
        assert up.seen_bodies[0] == up.seen_bodies[1] == body

        labels = {"model_name": model, "model_version": version}
        assert metric(sc, "model_inference_total", status="success", **labels) == 1
        assert metric(sc, "model_inference_total", status="error", **labels) == 0
        assert metric(sc, "model_inference_duration_seconds_count", **labels) == 1
        assert metric(sc, "model_batch_size_count", model_name=model) == 1
        assert metric(sc, "model_batch_size_sum", model_name=model) == batch
        assert metric(sc, "model_active_requests", model_name=model) == 0


async def test_openai_usage_tokens_from_a_json_answer() -> None:
    body = json.dumps({"model": "llama-3", "messages": []}).encode()
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            status, _, answer = await fetch(
                session,
                "POST",
                f"http://{LOOPBACK}:{sc.proxy_port}/v1/chat/completions",
                body,
                JSON,
            )
        assert status == 200
        assert json.loads(answer)["usage"]["prompt_tokens"] == 11
        assert metric(sc, "model_inference_tokens_total", model_name="llama-3", type="input") == 11
        assert metric(sc, "model_inference_tokens_total", model_name="llama-3", type="output") == 5
        # A buffered answer has no first byte to speak of.
        assert (
            metric(
                sc,
                "model_inference_time_to_first_byte_seconds_count",
                model_name="llama-3",
                model_version="",
            )
            == 0
        )


async def test_sse_stream_arrives_incrementally_with_ttfb_and_usage() -> None:
    body = json.dumps({"model": "llama-3", "stream": True, "messages": []}).encode()
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            url = f"http://{LOOPBACK}:{sc.proxy_port}/v1/chat/completions"
            async with session.post(url, data=body, headers=JSON) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/event-stream"
                # The upstream holds the rest of the stream until we release it: this chunk
                # can only have come through while the upstream was still answering.
                first = await resp.content.readuntil(b"\n\n")
                assert first.startswith(b"data: {")
                assert json.loads(first[6:])["choices"][0]["delta"]["content"] == "hi"
                assert not up.release_stream.is_set()
                assert metric(sc, "model_active_requests", model_name="llama-3") == 1
                up.release_stream.set()
                rest = await resp.read()
            async with session.post(
                up.url + "/v1/chat/completions", data=body, headers=JSON
            ) as direct:
                assert first + rest == await direct.read()
        labels = {"model_name": "llama-3", "model_version": ""}
        assert metric(sc, "model_inference_time_to_first_byte_seconds_count", **labels) == 1
        assert metric(sc, "model_inference_total", status="success", **labels) == 1
        assert metric(sc, "model_inference_tokens_total", model_name="llama-3", type="input") == 7
        assert metric(sc, "model_inference_tokens_total", model_name="llama-3", type="output") == 3
        assert metric(sc, "model_active_requests", model_name="llama-3") == 0


async def test_chunked_answer_is_relayed_chunk_by_chunk() -> None:
    async with running_upstream() as up, running_sidecar(up.url, default_model="gen") as sc:
        async with aiohttp.ClientSession() as session:
            url = f"http://{LOOPBACK}:{sc.proxy_port}/chunked"
            async with session.post(url, data=b"{}") as resp:
                assert resp.headers["Transfer-Encoding"] == "chunked"
                assert await resp.content.readexactly(6) == b"first;"
                assert not up.release_stream.is_set()
                up.release_stream.set()
                assert await resp.read() == b"second;"
        assert (
            metric(
                sc,
                "model_inference_time_to_first_byte_seconds_count",
                model_name="gen",
                model_version="",
            )
            == 1
        )
        assert (
            metric(
                sc, "model_inference_total", model_name="gen", model_version="", status="success"
            )
            == 1
        )


async def test_large_body_is_streamed_upstream_unchanged_and_still_parsed() -> None:
    # 3 MB Triton-style request: the JSON header is in the peeked prefix, raw bytes follow.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [16, 3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 3_000_000},
                }
            ]
        }
    ).encode()
    body = header + bytes(range(256)) * (3_000_000 // 256) + b"tail"
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            status, _, _ = await fetch(
                session,
                "POST",
                f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/bert/infer",
                body,
                headers,
            )
        assert status == 200
        assert up.seen_bodies[0] == body
        assert up.seen_headers[0]["Content-Length"] == str(len(body))
        assert metric(sc, "model_batch_size_sum", model_name="bert") == 16


async def test_chunked_request_body_is_forwarded() -> None:
    async def parts():  # type: ignore[no-untyped-def]
        for i in range(50):
            yield f"part {i};".encode() * 1000

    expected = b"".join(f"part {i};".encode() * 1000 for i in range(50))
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            url = f"http://{LOOPBACK}:{sc.proxy_port}/echo"
            async with session.post(url, data=parts()) as resp:
                assert resp.status == 200
                assert await resp.read() == expected
        assert up.seen_bodies[0] == expected


async def test_headers_hop_by_hop_stripped_and_forwarded_headers_added() -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        async with aiohttp.ClientSession() as session:
            url = f"http://{LOOPBACK}:{sc.proxy_port}/echo?a=1&b=%2F"
            headers = {
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "do not forward",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "X-Custom": "kept",
                "Authorization": "Bearer kept",
            }
            async with session.post(url, data=b"x", headers=headers) as resp:
                assert resp.status == 200
        seen = up.seen_headers[0]
        for gone in ("X-Secret-Hop", "Keep-Alive", "Proxy-Authorization"):
            assert gone not in seen
        assert seen["X-Custom"] == "kept"
        assert seen["Authorization"] == "Bearer kept"
        assert seen["X-Forwarded-For"] == LOOPBACK
        assert seen["X-Forwarded-Proto"] == "http"
        assert seen["X-Forwarded-Host"] == f"{LOOPBACK}:{sc.proxy_port}"
        assert "User-Agent" in seen  # the client's own, not one added by the proxy
        assert seen["User-Agent"].startswith("Python/")


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://169.254.169.254/latest/meta-data HTTP/1.1",
        b"CONNECT internal.example:443 HTTP/1.1",
    ],
    ids=["absolute-form", "connect"],
)
async def test_never_forwards_anywhere_else(request_line: bytes) -> None:
    async with running_upstream() as up, running_sidecar(up.url) as sc:
        raw = request_line + b"\r\nHost: internal.example\r\nConnection: close\r\n\r\n"
        answer = await asyncio.to_thread(raw_http, sc.proxy_port, raw)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        assert json.loads(body)["reason"] == "bad_request"
        assert up.requests == 0


async def test_body_over_the_limit_gets_413() -> None:
    async with running_upstream() as up, running_sidecar(up.url, max_body_bytes=1000) as sc:
        url = f"http://{LOOPBACK}:{sc.proxy_port}/v2/models/resnet/infer"
        async with aiohttp.ClientSession() as session:
            status, headers, body = await fetch(session, "POST", url, b"x" * 1001, JSON)
            assert status == 413
            assert headers["Content-Type"] == "application/json"
            assert json.loads(body) == {
                "error": "request body over 1000 bytes",
                "reason": "body_too_large",
            }

            async def chunks():  # type: ignore[no-untyped-def]
                for _ in range(5):
                    yield b"y" * 400

            async with session.post(url, data=chunks()) as resp:  # no Content-Length
                assert resp.status == 413
                assert json.loads(await resp.read())["reason"] == "body_too_large"
            status, _, _ = await fetch(session, "POST", url, v2_body(2), JSON)
            assert status == 200
        labels = {"model_name": "resnet", "model_version": ""}
        assert metric(sc, "model_inference_failures_total", reason="client_error", **labels) == 2
        assert metric(sc, "model_inference_total", status="success", **labels) == 1
        assert up.requests == 1


async def test_ten_thousand_model_names_keep_series_bounded() -> None:
    async with running_upstream() as up, running_sidecar(up.url, max_models=20) as sc:
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as session:
            base = f"http://{LOOPBACK}:{sc.proxy_port}"

            async def one(i: int) -> int:
                # TorchServe paths: no body to parse, so this exercises labels, not parsing.
                async with session.post(f"{base}/predictions/model-{i}", data=b"x") as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one(i) for i in range(10_000)))
        assert statuses == [200] * 10_000
        names = {
            s.labels["model_name"]
            for family in sc.registry.collect()
            if family.name == "model_inference"
            for s in family.samples
        }
        assert len(names) == 21
        assert "other" in names
        total = metric(
            sc, "model_inference_total", model_name="other", model_version="", status="success"
        )
        assert total == 10_000 - 20


async def test_default_version_labels_unversioned_inferences_and_a_named_version_wins() -> None:
    # max_versions=1: the named versions fill the bound, the default is still kept.
    async with (
        running_upstream() as up,
        running_sidecar(up.url, default_version="2", max_versions=1) as sc,
    ):
        base = f"http://{LOOPBACK}:{sc.proxy_port}"
        async with aiohttp.ClientSession() as session:
            for path in (
                "/v2/models/resnet/versions/3/infer",
                "/v2/models/resnet/versions/4/infer",
                "/v2/models/resnet/infer",
                "/v2/models/resnet/infer",
            ):
                status, _, _ = await fetch(session, "POST", base + path, v2_body(2), JSON)
                assert status == 200
            status, _, _ = await fetch(
                session, "POST", base + "/v1/models/iris:predict", b'{"instances": [1]}', JSON
            )
            assert status == 200

        def total(model: str, version: str) -> float:
            return metric(
                sc,
                "model_inference_total",
                model_name=model,
                model_version=version,
                status="success",
            )

        assert total("resnet", "2") == 2
        assert total("resnet", "3") == 1
        assert total("resnet", "other") == 1  # over max_versions
        assert total("iris", "2") == 1  # every protocol, every model
        assert total("resnet", "") == total("iris", "") == 0
        labels = {"model_name": "resnet", "model_version": "2"}
        assert metric(sc, "model_inference_duration_seconds_count", **labels) == 2


async def test_a_traced_unversioned_inference_carries_the_default_version() -> None:
    with in_memory_tracing() as exporter:
        async with running_upstream() as up, running_sidecar(up.url, default_version="2") as sc:
            base = f"http://{LOOPBACK}:{sc.proxy_port}"
            async with aiohttp.ClientSession() as session:
                for path in ("/v2/models/resnet/infer", "/v2/models/resnet/versions/3/infer"):
                    status, _, _ = await fetch(session, "POST", base + path, v2_body(1), JSON)
                    assert status == 200
        spans = finished(exporter)
    versions = sorted(span.attributes["model.version"] for span in spans)
    assert versions == ["2", "3"]
