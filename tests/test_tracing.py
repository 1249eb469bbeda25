"""OpenTelemetry: settings from OTEL_*, spans of the decorators and the batcher, exemplars on
latency, and one trace through client -> sidecar -> reference server -> batch, received by
OTLP receivers (gRPC and HTTP) that decode the real protobufs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest as om_generate
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from support.http import serving
from support.model_server import TEXT_MODEL, start_server
from support.ports import LOOPBACK, free_port
from support.processes import serve_process
from support.prometheus import running_prometheus, scrape_config
from support.sidecar import running_sidecar, sidecar_process
from support.tracing import (
    SPAN_KIND_SERVER,
    ReceivedSpan,
    finished,
    grpc_receiver,
    hex_ids,
    http_receiver,
    in_memory_tracing,
)
from support.upstreams import running_upstream, v2_body

from inferwatch import cli, monitor_inference, schema, tracing, track_inference
from inferwatch.batching import DynamicBatcher, Overloaded
from inferwatch.exposition.render import CONTENT_TYPE_OPENMETRICS
from inferwatch.sidecar.config import ConfigError, load_config
from inferwatch.sidecar.exchange import Exchanges
from inferwatch.sidecar.proxy import ProxyHandler
from inferwatch.sidecar.scrape import UPSTREAM_ACCEPT, UPSTREAM_ACCEPT_OPENMETRICS, UpstreamScraper

OM_ACCEPT = "application/openmetrics-text;version=1.0.0"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
V2_ROUTE = "/v2/models/{model}/infer"
TEXTS = ["a fine day", "the market fell"]
V2_BODY = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS}]}


@pytest.fixture(autouse=True)
def _tracing_off_after() -> Any:
    yield
    tracing.shutdown_tracing()
    assert not tracing.enabled


def exemplars(text: str, family: str, **labels: str) -> list[dict[str, str]]:
    """The exemplars' labels on the buckets of ``family`` whose labels include ``labels``."""
    found = []
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if (
                sample.name == family + "_bucket"
                and sample.exemplar is not None
                and all(sample.labels.get(k) == v for k, v in labels.items())
            ):
                found.append(dict(sample.exemplar.labels))
    return found


# --- settings -----------------------------------------------------------------------------------


def test_settings_come_from_the_standard_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    settings = tracing.resolve_settings(env=env)
    assert (settings.exporter, settings.protocol) == ("otlp", "http/protobuf")  # TRACES_ wins
    assert (settings.sampler, settings.sampler_arg) == ("parentbased_traceidratio", 0.01)
    explicit = tracing.resolve_settings(env=env, protocol="grpc", sampler="always_on")
    assert (explicit.protocol, explicit.sampler) == ("grpc", "always_on")
    assert tracing.resolve_settings(env={}).sampler == "parentbased_always_on"
    assert tracing.resolve_settings(env={}).protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER / sampler: must be one of always_on, always_off, traceidratio, "
            "parentbased_always_on, parentbased_always_off, parentbased_traceidratio, "
            "got 'sometimes'",
        ),
        (
            {"OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG: must be in [0, 1], got '1.5'",
        ),
        (
            {"OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG: must be a number in [0, 1], got 'half'",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL / protocol: must be grpc or http/protobuf, "
            "got 'http/json'",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER / exporter: must be otlp, console or none, got 'zipkin'",
        ),
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(tracing.TracingConfigError) as caught:
        tracing.resolve_settings(env=env)
    assert str(caught.value) == message


def test_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    assert tracing.setup_tracing(None) is False
    assert (tracing.enabled, tracing.exemplars) == (False, False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.setup_tracing(None) is False
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.setup_tracing(True) is False
    assert not tracing.enabled


def test_tracing_off_makes_no_spans_and_no_exemplars(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", registry=registry)
    def predict(items: list[int]) -> list[int]:
        return items

    provider_spans: list[Any] = []
    with trace.get_tracer("test").start_as_current_span("outer") as outer:
        predict([1, 2])
        provider_spans.append(outer)
    text = om_generate(registry).decode()
    assert exemplars(text, schema.INFERENCE_DURATION.name) == []
    assert "# {" not in text
    assert tracing.current_exemplar() is None


# --- decorators ---------------------------------------------------------------------------------


def test_monitor_inference_spans_are_children_and_carry_exemplars(
    registry: CollectorRegistry,
) -> None:
    @monitor_inference(model_name="m", model_version="3", registry=registry)
    def predict(items: list[int]) -> list[int]:
        return items

    @monitor_inference(model_name="broken", registry=registry)
    def broken(items: list[int]) -> list[int]:
        raise KeyError("x")

    with in_memory_tracing() as exporter:
        tracer = tracing.tracer()
        with tracer.start_as_current_span("handler") as handler:
            predict([1, 2, 3])
            with pytest.raises(KeyError):
                broken([1])
        spans = {s.name: s for s in finished(exporter)}
    assert set(spans) == {"handler", "inference m", "inference broken"}
    child, failed = spans["inference m"], spans["inference broken"]
    assert child.parent.span_id == handler.get_span_context().span_id
    assert child.context.trace_id == handler.get_span_context().trace_id
    assert dict(child.attributes) == {
        "inference.source": "app",
        "model.name": "m",
        "model.version": "3",
        "inference.batch_size": 3,
    }
    assert failed.attributes["error.type"] == "KeyError"
    assert failed.status.status_code == trace.StatusCode.ERROR
    trace_id, span_id = hex_ids(child)
    text = om_generate(registry).decode()
    duration = schema.INFERENCE_DURATION.name
    assert exemplars(text, duration, model_name="m") == [{"trace_id": trace_id, "span_id": span_id}]
    assert exemplars(text, duration, model_name="broken") == [
        {"trace_id": trace_id, "span_id": hex_ids(failed)[1]}
    ]


async def test_coroutines_generators_and_blocks_get_spans(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="coro", registry=registry)
    async def coro(items: list[int]) -> int:
        await asyncio.sleep(0)
        return len(items)

    @monitor_inference(model_name="gen", registry=registry, batch_size=False)
    def gen(n: int) -> Any:
        yield from range(n)

    @monitor_inference(model_name="agen", registry=registry, batch_size=False)
    async def agen(n: int) -> Any:
        for i in range(n):
            yield i

    with in_memory_tracing() as exporter:
        assert await coro([1, 2]) == 2
        assert list(gen(3)) == [0, 1, 2]
        assert [i async for i in agen(2)] == [0, 1]
        with track_inference("block", registry=registry) as t:
            t.batch_size = 4
            t.first_byte()
        spans = {s.name: s for s in finished(exporter)}
    assert set(spans) == {"inference coro", "inference gen", "inference agen", "inference block"}
    assert spans["inference coro"].attributes["inference.batch_size"] == 2
    assert spans["inference block"].attributes["inference.batch_size"] == 4
    text = om_generate(registry).decode()
    for name in ("coro", "gen", "agen", "block"):
        trace_id, span_id = hex_ids(spans[f"inference {name}"])
        expected = [{"trace_id": trace_id, "span_id": span_id}]
        assert exemplars(text, schema.INFERENCE_DURATION.name, model_name=name) == expected
    for name in ("gen", "agen", "block"):  # streamed: time to first byte has one too
        trace_id, span_id = hex_ids(spans[f"inference {name}"])
        expected = [{"trace_id": trace_id, "span_id": span_id}]
        assert exemplars(text, schema.TIME_TO_FIRST_BYTE.name, model_name=name) == expected


def test_a_stream_closed_early_marks_its_span_cancelled(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="gen", registry=registry)
    def gen(items: list[int]) -> Any:
        yield from items

    with in_memory_tracing() as exporter:
        stream = gen([1, 2, 3])
        assert next(stream) == 1
        stream.close()
        (span,) = finished(exporter)
    assert span.attributes["inference.batch_size"] == 3
    assert span.attributes["error.type"] == "cancelled"
    assert span.status.status_code == trace.StatusCode.ERROR


def test_unsampled_spans_give_no_exemplars(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", registry=registry)
    def predict(items: list[int]) -> list[int]:
        return items

    with in_memory_tracing(sampler="always_off") as exporter:
        predict([1])
        assert finished(exporter) == []
    assert exemplars(om_generate(registry).decode(), schema.INFERENCE_DURATION.name) == []


def test_multiprocess_mode_attaches_no_exemplars(
    registry: CollectorRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    @monitor_inference(model_name="m", registry=registry)
    def predict(items: list[int]) -> list[int]:
        return items

    with in_memory_tracing() as exporter:
        assert (tracing.enabled, tracing.exemplars) == (True, False)
        predict([1])
        assert [s.name for s in finished(exporter)] == ["inference m"]
    assert exemplars(om_generate(registry).decode(), schema.INFERENCE_DURATION.name) == []


def test_a_forked_child_builds_its_own_provider() -> None:
    with in_memory_tracing():
        parent_tracer = tracing.tracer()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running pytest's teardown
            try:
                fresh = tracing.provider._tracer is None
                rebuilt = tracing.tracer()
                built = tracing.provider._provider is not None
                ok = fresh and rebuilt is not parent_tracer and built
                os.write(write, b"ok" if ok else b"no")
            finally:
                os._exit(0)
        os.close(write)
        answer = os.read(read, 2)
        os.close(read)
        os.waitpid(pid, 0)
        assert answer == b"ok"
        assert tracing.tracer() is parent_tracer


# --- the batcher --------------------------------------------------------------------------------


async def test_a_batch_span_links_the_requests_it_ran(registry: CollectorRegistry) -> None:
    with in_memory_tracing() as exporter:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            lambda items: [i * 2 for i in items],
            model_name="double",
            max_batch_size=8,
            max_queue_delay=0.05,
            max_queue_size=3,
            registry=registry,
        )
        async with batcher:
            results = await asyncio.gather(batcher.submit(1), batcher.submit_many([2, 3]))
            assert results == [2, [4, 6]]
            with pytest.raises(Overloaded):
                await batcher.submit_many([1, 2, 3, 4])
        spans = finished(exporter)
    requests = [s for s in spans if s.name == "inference double"]
    (batch,) = [s for s in spans if s.name == "batch double"]
    assert sorted(s.attributes["inference.batch_size"] for s in requests) == [1, 2, 4]
    rejected = [s for s in requests if s.attributes["inference.batch_size"] == 4]
    assert rejected[0].attributes["error.type"] == "rejected"
    ran = [s for s in requests if s.attributes["inference.batch_size"] != 4]
    assert batch.parent is None
    assert {(link.context.trace_id, link.context.span_id) for link in batch.links} == {
        (s.context.trace_id, s.context.span_id) for s in ran
    }
    assert batch.attributes["inference.batch_size"] == 3
    assert batch.attributes["inference.batch.requests"] == 2
    text = om_generate(registry).decode()
    expected = [{"trace_id": hex_ids(s)[0], "span_id": hex_ids(s)[1]} for s in ran]
    for family in (schema.INFERENCE_DURATION.name, schema.QUEUE_DURATION.name):
        # A bucket keeps its latest exemplar: one per bucket the two requests fell in.
        found = exemplars(text, family, model_name="double")
        assert found, family
        assert all(exemplar in expected for exemplar in found), (family, found)


# --- the merge keeps the app's exemplars --------------------------------------------------------


def _metrics_app(body: bytes, content_type: str, accepts: list[str]) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        accepts.append(request.headers.get("Accept", ""))
        wants_om = "openmetrics" in request.headers.get("Accept", "")
        return web.Response(body=body if wants_om else b"", headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def test_the_merge_keeps_the_apps_exemplars() -> None:
    app = CollectorRegistry()
    Histogram("app_latency_seconds", "h", registry=app, buckets=[1.0]).observe(
        0.5, {"trace_id": CLIENT_TRACE, "span_id": CLIENT_SPAN}
    )
    accepts: list[str] = []
    async with (
        serving(_metrics_app(om_generate(app), CONTENT_TYPE_OPENMETRICS, accepts)) as base,
        aiohttp.ClientSession() as session,
    ):
        scraper = UpstreamScraper(session, base + "/metrics")
        body, _ = await scraper.exposition(CollectorRegistry(), OM_ACCEPT, 5)
    assert accepts == [UPSTREAM_ACCEPT_OPENMETRICS]
    assert exemplars(body.decode(), "app_latency_seconds") == [
        {"trace_id": CLIENT_TRACE, "span_id": CLIENT_SPAN}
    ]


async def test_an_upstream_that_mangles_colon_names_is_asked_for_text() -> None:
    vllm = CollectorRegistry()
    Counter("vllm:requests", "c", registry=vllm).inc()
    accepts: list[str] = []

    async def metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        accepts.append(accept)
        if accept.startswith("application/openmetrics-text"):
            return web.Response(
                body=om_generate(vllm), headers={"Content-Type": CONTENT_TYPE_OPENMETRICS}
            )
        return web.Response(text="# TYPE vllm:requests_total counter\nvllm:requests_total 1\n")

    server = web.Application()
    server.router.add_get("/metrics", metrics)
    async with serving(server) as base, aiohttp.ClientSession() as session:
        scraper = UpstreamScraper(session, base + "/metrics")
        for _ in range(2):
            body, _ = await scraper.exposition(CollectorRegistry(), OM_ACCEPT, 5)
            assert "vllm:requests_total 1.0" in body.decode().splitlines()
    # The first scrape tried OpenMetrics, then text; the next went straight to text.
    assert accepts == [
        UPSTREAM_ACCEPT_OPENMETRICS,
        UPSTREAM_ACCEPT,
        UPSTREAM_ACCEPT,
    ]


# --- the sidecar --------------------------------------------------------------------------------


async def test_with_tracing_off_the_sidecar_runs_the_untraced_path() -> None:
    served = await start_server(CollectorRegistry())
    try:
        async with running_sidecar(served.url) as sidecar:
            assert type(sidecar.proxy) is ProxyHandler
            assert type(sidecar.proxy.exchanges) is Exchanges
    finally:
        await served.stop()


def _by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans}


def _chain_complete(spans: list[ReceivedSpan]) -> bool:
    names = {s.name for s in spans}
    return {
        f"POST {V2_ROUTE}",
        f"inference {TEXT_MODEL}",
        f"batch {TEXT_MODEL}",
    } <= names and sum(s.kind == SPAN_KIND_SERVER for s in spans) >= 2


def _check_chain(spans: list[ReceivedSpan], trace_id: str, parent_of_sidecar: str) -> ReceivedSpan:
    """The sidecar -> server -> request -> batch structure; returns the request span."""
    server_spans = [s for s in spans if s.kind == SPAN_KIND_SERVER]
    (sidecar,) = [s for s in server_spans if "model.name" in s.attributes]
    (handler,) = [s for s in server_spans if "model.name" not in s.attributes]
    request = _by_name(spans)[f"inference {TEXT_MODEL}"]
    batch = _by_name(spans)[f"batch {TEXT_MODEL}"]
    assert sidecar.name == handler.name == f"POST {V2_ROUTE}"
    assert {sidecar.trace_id, handler.trace_id, request.trace_id} == {trace_id}
    assert sidecar.parent_span_id == parent_of_sidecar
    assert handler.parent_span_id == sidecar.span_id
    assert request.parent_span_id == handler.span_id
    assert batch.parent_span_id == ""
    assert (trace_id, request.span_id) in batch.links
    path = f"/v2/models/{TEXT_MODEL}/infer"
    assert sidecar.attributes == {
        "http.request.method": "POST",
        "url.path": path,
        "http.route": V2_ROUTE,
        "inference.source": "sidecar",
        "model.name": TEXT_MODEL,
        "inference.batch_size": 2,
        "http.response.status_code": 200,
    }
    assert handler.attributes == {
        "http.request.method": "POST",
        "url.path": path,
        "http.route": V2_ROUTE,
        "http.response.status_code": 200,
    }
    assert request.attributes == {
        "inference.source": "app",
        "model.name": TEXT_MODEL,
        "model.version": "1",
        "inference.batch_size": 2,
    }
    assert batch.attributes["inference.batch_size"] == 2
    assert batch.attributes["inference.batch.requests"] == 1
    return request


async def test_one_trace_through_sidecar_server_and_batch_over_grpc() -> None:
    with grpc_receiver() as (endpoint, received):
        assert tracing.setup_tracing(
            True, protocol="grpc", endpoint=endpoint, service_name="chain", set_global=False
        )
        served = await start_server(CollectorRegistry())
        try:
            async with (
                running_sidecar(served.url) as sidecar,
                aiohttp.ClientSession() as session,
            ):
                proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
                headers = {
                    "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                    "tracestate": "vendor=abc",
                }
                async with session.post(
                    f"{proxy}/v2/models/{TEXT_MODEL}/infer", json=V2_BODY, headers=headers
                ) as response:
                    assert response.status == 200
                admin = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
                async with session.get(admin, headers={"Accept": OM_ACCEPT}) as response:
                    text = await response.text()
                tracing.force_flush()
                spans = await received.wait_for(_chain_complete)
        finally:
            await served.stop()
    assert {s.service for s in spans} == {"chain"}
    request = _check_chain(spans, CLIENT_TRACE, CLIENT_SPAN)
    (sidecar_span,) = [s for s in spans if "model.name" in s.attributes and s.kind == 2]
    duration = schema.INFERENCE_DURATION.name
    assert exemplars(text, duration, source="sidecar") == [
        {"trace_id": CLIENT_TRACE, "span_id": sidecar_span.span_id}
    ]
    # The app's exemplars came through the sidecar's merge of the server's /metrics.
    expected_app = [{"trace_id": CLIENT_TRACE, "span_id": request.span_id}]
    assert exemplars(text, duration, source="app", model_name=TEXT_MODEL) == expected_app
    queue = schema.QUEUE_DURATION.name
    assert exemplars(text, queue, source="app", model_name=TEXT_MODEL) == expected_app


# --- processes configured by OTEL_* alone, and a real Prometheus ---------------------------------


async def test_processes_export_by_otel_env_and_prometheus_stores_the_exemplars(
    tmp_path: Path, prometheus: str
) -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base_env["OTEL_BSP_SCHEDULE_DELAY"] = "50"  # export within 50 ms, not 5 s
    async with http_receiver() as (http_url, server_received), aiohttp.ClientSession() as session:
        with grpc_receiver() as (grpc_url, sidecar_received):
            server_env = {
                **base_env,
                "OTEL_EXPORTER_OTLP_ENDPOINT": http_url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_SERVICE_NAME": "model-server",
            }
            sidecar_env = {
                **base_env,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": grpc_url,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "1",
            }
            async with (
                serve_process("--model-size", "tiny", "--device", "cpu", env=server_env) as server,
                sidecar_process(server.url, "--tracing", env=sidecar_env) as sidecar,
            ):
                async with session.post(
                    f"{sidecar.proxy_url}/v2/models/{TEXT_MODEL}/infer", json=V2_BODY
                ) as response:
                    assert response.status == 200
                sidecar_spans = await sidecar_received.wait_for(lambda s: len(s) >= 1)
                server_spans = await server_received.wait_for(
                    lambda s: (
                        {f"inference {TEXT_MODEL}", f"batch {TEXT_MODEL}"} <= {x.name for x in s}
                    )
                )
                (root,) = sidecar_spans
                assert root.service == "inferwatch-sidecar"
                assert {s.service for s in server_spans} == {"model-server"}
                request = _check_chain(sidecar_spans + server_spans, root.trace_id, "")
                await _prometheus_returns_exemplars(
                    prometheus, tmp_path, session, sidecar.admin_port, root, request
                )


async def _prometheus_returns_exemplars(
    prometheus: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    admin_port: int,
    sidecar_span: ReceivedSpan,
    request_span: ReceivedSpan,
) -> None:
    config = scrape_config(f"{LOOPBACK}:{admin_port}")
    query = f'{schema.INFERENCE_DURATION.name}_bucket{{model_name="{TEXT_MODEL}"}}'
    async with running_prometheus(
        prometheus, config, tmp_path, "--enable-feature=exemplar-storage"
    ) as prom:
        url = prom.api + "/query_exemplars"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        found: dict[str, list[dict[str, str]]] = {}
        while len(found) < 2:
            prom.assert_running()
            assert loop.time() < deadline, f"no exemplars in Prometheus; got {found}"
            await asyncio.sleep(0.2)
            params = {"query": query, "start": str(loop.time() - 3600), "end": "9999999999"}
            params["start"] = "0"
            try:
                async with session.get(url, params=params) as response:
                    if response.status != 200:
                        continue
                    data = (await response.json())["data"]
            except aiohttp.ClientError:
                continue
            found = {
                series["seriesLabels"]["source"]: [e["labels"] for e in series["exemplars"]]
                for series in data
            }
        assert found == {
            "sidecar": [{"trace_id": sidecar_span.trace_id, "span_id": sidecar_span.span_id}],
            "app": [{"trace_id": request_span.trace_id, "span_id": request_span.span_id}],
        }


# --- sampling decisions without the SDK, and the sidecar's unsampled path ------------------------


def test_the_fast_decision_agrees_with_the_sdk_samplers() -> None:
    from opentelemetry.sdk.trace import sampling

    ids = [i * 0x9E3779B97F4A7C15_9E3779B97F4A7C15 % (1 << 128) or 1 for i in range(1, 400)]
    for ratio in (0.0, 0.01, 0.5, 1.0):
        sdk = sampling.TraceIdRatioBased(ratio)
        with in_memory_tracing(sampler="traceidratio", sampler_arg=ratio):
            for trace_id in ids:
                incoming = f"00-{trace_id:032x}-{CLIENT_SPAN}-01"
                sdk_sampled = sdk.should_sample(None, trace_id, "x").decision.is_sampled()
                outgoing = tracing.unsampled_traceparent(incoming)
                assert (outgoing is None) == sdk_sampled, (ratio, trace_id)
                if outgoing is not None:
                    assert outgoing.startswith(f"00-{trace_id:032x}-")
                    assert outgoing.endswith("-00") and outgoing[36:52] != CLIENT_SPAN


def test_parent_based_sampling_follows_the_callers_flag() -> None:
    with in_memory_tracing(sampler="parentbased_traceidratio", sampler_arg=0.0):
        assert tracing.unsampled_traceparent(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01") is None
        out = tracing.unsampled_traceparent(f" 00-{CLIENT_TRACE}-{CLIENT_SPAN}-00 ")
        assert out is not None and out[:36] == f"00-{CLIENT_TRACE}-" and out.endswith("-00")
        # No (or a malformed) parent: a new trace, drawn at the root ratio (0 here).
        for bad in (None, "", "garbage", f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01"):
            fresh = tracing.unsampled_traceparent(bad)
            assert fresh is not None and fresh[3:35] != CLIENT_TRACE and fresh.endswith("-00")
    with in_memory_tracing(sampler="parentbased_always_on") as exporter:
        assert tracing.unsampled_traceparent(None) is None
        span = tracing.start_sampled_root("root", otel_context.Context())
        span.end()
        assert [s.name for s in finished(exporter)] == ["root"]


def test_a_root_drawn_as_sampled_is_not_drawn_again() -> None:
    with in_memory_tracing(sampler="traceidratio", sampler_arg=0.0) as exporter:
        span = tracing.start_sampled_root("forced", otel_context.Context())
        span.end()
        unforced = tracing.tracer().start_span("drawn")
        unforced.end()
        assert [s.name for s in finished(exporter)] == ["forced"]


async def test_an_unsampled_request_propagates_without_a_span() -> None:
    with in_memory_tracing(sampler="parentbased_always_on") as exporter:
        async with (
            running_upstream() as upstream,
            running_sidecar(upstream.url) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            headers = {
                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00",
                "tracestate": "vendor=abc",
            }
            proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
            async with session.post(
                f"{proxy}/v2/models/m/infer", data=v2_body(3), headers=headers
            ) as response:
                assert response.status == 200
            admin = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
            async with session.get(admin, headers={"Accept": OM_ACCEPT}) as response:
                text = await response.text()
        assert finished(exporter) == []
    sent = upstream.seen_headers[-1]
    assert sent["traceparent"][:36] == f"00-{CLIENT_TRACE}-"
    assert sent["traceparent"][36:52] != CLIENT_SPAN and sent["traceparent"].endswith("-00")
    assert sent["tracestate"] == "vendor=abc"
    assert exemplars(text, schema.INFERENCE_DURATION.name, source="sidecar") == []


async def test_a_failed_proxied_request_records_its_reason_as_error_type() -> None:
    with in_memory_tracing() as exporter:
        async with (
            running_sidecar(f"http://127.0.0.1:{free_port()}", upstream_ready_path="") as sc,
            aiohttp.ClientSession() as session,
        ):
            proxy = f"http://127.0.0.1:{sc.proxy_port}"
            async with session.post(f"{proxy}/v2/models/m/infer", data=v2_body(2)) as response:
                assert response.status == 502
        (span,) = finished(exporter)
    assert span.name == f"POST {V2_ROUTE}"
    assert span.attributes["error.type"] == "upstream_unavailable"
    assert span.attributes["http.response.status_code"] == 502
    assert span.attributes["inference.batch_size"] == 2
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.parent is None


async def test_the_server_middleware_skips_probes_and_marks_5xx() -> None:
    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[tracing.aiohttp_middleware])
    app.router.add_get("/metrics", ok)
    app.router.add_get("/v2/health/ready", ok)
    app.router.add_post("/things/{name}", boom)
    async with serving(app) as url:
        with in_memory_tracing() as exporter:
            async with aiohttp.ClientSession() as session:
                for path in ("/metrics", "/v2/health/ready"):
                    async with session.get(url + path) as response:
                        assert response.status == 200
                async with session.post(url + "/things/a") as response:
                    assert response.status == 503
            (span,) = finished(exporter)
    assert span.name == "POST /things/{name}"
    assert dict(span.attributes) == {
        "http.request.method": "POST",
        "url.path": "/things/a",
        "http.route": "/things/{name}",
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert span.kind == trace.SpanKind.SERVER


async def test_unsampled_requests_make_no_batch_span(registry: CollectorRegistry) -> None:
    with in_memory_tracing(sampler="parentbased_traceidratio", sampler_arg=0.0) as exporter:
        outer = tracing.start_span("outer")
        assert not outer.is_recording()
        async with DynamicBatcher(
            lambda items: items, model_name="echo", max_queue_delay=0.0, registry=registry
        ) as batcher:
            with trace.use_span(outer, end_on_exit=True):
                assert await batcher.submit_many([1, 2]) == [1, 2]
        assert finished(exporter) == []
    assert exemplars(om_generate(registry).decode(), schema.INFERENCE_DURATION.name) == []


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("off", False), ("auto", None), ("", False)]
)
def test_the_sidecar_tracing_setting(raw: str, expected: bool | None) -> None:
    env = {"INFERWATCH_SIDECAR_UPSTREAM": "http://127.0.0.1:1", "INFERWATCH_SIDECAR_TRACING": raw}
    assert load_config({}, env).tracing is expected
    assert load_config({}, {"INFERWATCH_SIDECAR_UPSTREAM": "http://127.0.0.1:1"}).tracing is None


def test_bad_tracing_settings_stop_the_sidecar_and_the_server_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            {}, {"INFERWATCH_SIDECAR_UPSTREAM": "http://a:1", "INFERWATCH_SIDECAR_TRACING": "2"}
        )
    assert str(caught.value) == (
        "tracing (environment, INFERWATCH_SIDECAR_TRACING): must be true, false or auto"
    )
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "often")
    assert cli.main(["sidecar", "--upstream", "http://127.0.0.1:1", "--tracing"]) == 2
    assert capsys.readouterr().err.startswith(
        "inferwatch sidecar: bad tracing configuration: OTEL_TRACES_SAMPLER / sampler: "
    )
    assert cli.main(["serve", "--model-size", "tiny", "--device", "cpu", "--tracing"]) == 2
    assert capsys.readouterr().err.startswith(
        "inferwatch serve: bad tracing configuration: OTEL_TRACES_SAMPLER / sampler: "
    )
    assert not tracing.enabled


async def test_workers_each_start_tracing_and_keep_no_exemplars() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    with grpc_receiver() as (endpoint, received):
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_BSP_SCHEDULE_DELAY="50",
        )
        async with (
            running_upstream() as upstream,
            aiohttp.ClientSession() as session,
            sidecar_process(
                upstream.url,
                *("--workers", "2", "--drain-quiet-period", "0"),
                env=env,  # tracing on by itself: OTEL_EXPORTER_OTLP_ENDPOINT is set
                ready_timeout=30,
            ) as sidecar,
        ):
            url = f"{sidecar.proxy_url}/v2/models/m/infer"
            for _ in range(4):  # new connections: the kernel spreads them over the workers
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.post(url, data=v2_body(1)) as response,
                ):
                    assert response.status == 200
            spans = await received.wait_for(lambda s: len(s) >= 4)
            admin = f"{sidecar.admin_url}/metrics"
            async with session.get(admin, headers={"Accept": OM_ACCEPT}) as response:
                text = await response.text()
    assert len(spans) == 4
    assert {s.name for s in spans} == {f"POST {V2_ROUTE}"}
    assert {s.service for s in spans} == {"inferwatch-sidecar"}
    assert all(s.attributes["http.response.status_code"] == 200 for s in spans)
    successes = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "model_inference_total"
        and s.labels.get("source") == "sidecar"
        and s.labels.get("status") == "success"
    ]
    assert successes == [4.0]
    assert exemplars(text, schema.INFERENCE_DURATION.name) == []
