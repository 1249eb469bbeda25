"""A real model server on loopback that speaks every protocol the sidecar knows, with switches
that make it misbehave (status codes, held or slow answers, streams released by the test)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from support.http import serving

UPSTREAM_METRICS = (
    "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0).\n"
    "# TYPE nv_gpu_utilization gauge\n"
    'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.25\n'
    "# HELP ts_inference_requests_total Total number of inference requests.\n"
    "# TYPE ts_inference_requests_total counter\n"
    'ts_inference_requests_total{uuid="abc",model_name="bert",} 3.0\n'
)


@dataclass
class Upstream:
    """Knobs and observations shared with the upstream's handlers."""

    url: str = ""
    ready: bool = True
    requests: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    seen_bodies: list[bytes] = field(default_factory=list)
    release_stream: asyncio.Event = field(default_factory=asyncio.Event)
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # set: ?hold=1 requests answer
    started: int = 0  # requests that reached a ?hold or ?sleep wait
    cancelled: int = 0  # of those, how many saw the proxy drop the connection


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(doc, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers={"X-Upstream": "yes"},
    )


def upstream_app(state: Upstream) -> web.Application:
    """One server that speaks every protocol of DESIGN.md's table, plus failure switches."""

    async def record(request: web.Request) -> bytes:
        state.requests += 1
        body = await request.read()
        state.seen_headers.append(dict(request.headers))
        state.seen_bodies.append(body)
        return body

    async def v2_infer(request: web.Request) -> web.StreamResponse:
        """Open Inference Protocol; ``?status=N``, ``?hold=1`` and ``?sleep=S`` misbehave."""
        body = await record(request)
        query = request.query
        if "hold" in query or "sleep" in query:
            state.started += 1
            try:
                if "hold" in query:
                    await state.hold.wait()
                else:
                    await asyncio.sleep(float(query["sleep"]))
            except asyncio.CancelledError:
                state.cancelled += 1
                raise
        if "status" in query:
            code = int(query["status"])
            return _json({"error": f"status {code}"}, status=code)
        model = request.match_info["model"]
        version = request.match_info.get("version", "")
        header_len = request.headers.get("Inference-Header-Content-Length")
        doc = json.loads(body[: int(header_len)] if header_len else body)
        shape = doc["inputs"][0]["shape"]
        return _json(
            {
                "model_name": model,
                "model_version": version,
                "outputs": [{"name": "out", "shape": shape, "datatype": "FP32", "data": [0.5]}],
            }
        )

    async def v1_predict(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        doc = json.loads(body)
        rows = doc.get("instances") or doc.get("inputs") or doc.get("examples") or []
        return _json({"predictions": [[1.0] for _ in rows]})

    async def torchserve(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.Response(body=b"cat", content_type="text/plain")

    async def mlflow(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        if request.content_type == "text/csv":
            rows = len(body.decode().strip().splitlines()) - 1
        else:
            rows = len(json.loads(body)["dataframe_split"]["data"])
        return _json({"predictions": [0] * rows})

    async def seldon(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        rows = json.loads(body)["data"]["ndarray"]
        return _json({"data": {"ndarray": [[0.1] for _ in rows]}})

    async def openai_chat(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        doc = json.loads(body)
        if not doc.get("stream"):
            return _json(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": doc["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "c1", "model": doc["model"], "choices": [{"delta": {"content": "hi"}}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await state.release_stream.wait()  # the test checks the first chunk arrived by now
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def chunked(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        await resp.write(b"first;")
        await state.release_stream.wait()
        await resp.write(b"second;")
        await resp.write_eof()
        return resp

    async def cut(request: web.Request) -> web.StreamResponse:
        """Half an answer, then the connection drops: an upstream that crashed mid-stream."""
        await record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        await resp.write(b"first;")
        await state.release_stream.wait()
        assert request.transport is not None
        request.transport.close()
        return resp

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await record(request)
        return web.Response(body=body, content_type="application/octet-stream")

    async def ready(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok" if state.ready else "no", status=200 if state.ready else 503)

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(text=UPSTREAM_METRICS, content_type="text/plain")

    app = web.Application(client_max_size=64 * 1024 * 1024, handler_args={"auto_decompress": False})
    app.router.add_post("/v2/models/{model}/infer", v2_infer)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", v2_infer)
    app.router.add_post("/v1/models/{model}:predict", v1_predict)
    app.router.add_post("/v1/models/{model}/versions/{version}:predict", v1_predict)
    app.router.add_post("/predictions/{model}", torchserve)
    app.router.add_post("/predictions/{model}/{version}", torchserve)
    app.router.add_post("/invocations", mlflow)
    app.router.add_post("/api/v1.0/predictions", seldon)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/cut", cut)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def running_upstream() -> AsyncIterator[Upstream]:
    """The upstream on an ephemeral port (``state.url``); held requests are let go at the end."""
    state = Upstream()
    app = upstream_app(state)
    async with serving(app, shutdown_timeout=0.5, handler_cancellation=True) as url:
        state.url = url
        try:
            yield state
        finally:
            state.hold.set()
            state.release_stream.set()


def v2_body(batch: int) -> bytes:
    """An Open Inference Protocol request body with ``batch`` rows."""
    doc = {"inputs": [{"name": "x", "shape": [batch, 2], "datatype": "FP32", "data": [0] * batch}]}
    return json.dumps(doc).encode()
