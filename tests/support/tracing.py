"""OTLP trace receivers for tests (gRPC and HTTP), decoding the real opentelemetry-proto messages,
and an in-memory tracing fixture."""

from __future__ import annotations

import gzip
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inferwatch import tracing
from support.http import serving
from support.polling import poll
from support.ports import LOOPBACK

SPAN_KIND_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    """One span as an OTLP receiver decoded it (ids in lowercase hex)."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name")),
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        status_code=span.status.code,
                    )
                )
    return spans


@dataclass
class Received:
    """What a receiver got, shared with the thread or task that receives."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, spans: list[ReceivedSpan], headers: dict[str, str]) -> None:
        with self.lock:
            self.spans.extend(spans)
            self.requests += 1
            self.headers.append(headers)

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0
    ) -> list[ReceivedSpan]:
        """Poll until ``predicate(spans)`` holds; the spans then."""

        def arrived() -> tuple[list[ReceivedSpan]] | None:
            spans = self.snapshot()
            return (spans,) if predicate(spans) else None  # a tuple: truthy even for []

        (spans,) = await poll(
            arrived, lambda: f"spans; got {self.snapshot()}", timeout=timeout, interval=0.02
        )
        return spans


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        headers = {k: v for k, v in context.invocation_metadata()}
        self.received.add(decode(request), headers)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC TraceService on loopback: (endpoint URL, what it received)."""
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(received), server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield f"http://{LOOPBACK}:{port}", received
    finally:
        server.stop(grace=None)


@asynccontextmanager
async def http_receiver() -> AsyncIterator[tuple[str, Received]]:
    """An OTLP/HTTP receiver (POST /v1/traces, application/x-protobuf): (base URL, received)."""
    received = Received()

    async def traces(request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        received.add(decode(message), dict(request.headers))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    async with serving(app) as url:
        yield url, received


@contextmanager
def in_memory_tracing(**settings: Any) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the block, spans kept in memory (flush before reading them)."""
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing(True, span_exporter=exporter, set_global=False, **settings)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


def finished(exporter: InMemorySpanExporter) -> list[Any]:
    tracing.force_flush()
    return list(exporter.get_finished_spans())


def hex_ids(span: Any) -> tuple[str, str]:
    """(trace id, span id) of an SDK span, in the exemplar's notation."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
