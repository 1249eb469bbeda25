"""The admin /metrics merge: the sidecar's families plus a real upstream's, one valid scrape.

Upstreams are real aiohttp servers on 127.0.0.1 answering expositions written the way Triton,
TorchServe, vLLM (prometheus_client, with content negotiation) and MLServer write theirs.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from support.http import serving
from support.prometheus import (
    promtool_check_metrics,
    promtool_status,
    running_prometheus,
    scrape_config,
)
from support.sidecar import own_registry

from inferwatch import schema
from inferwatch.exposition.families import families_of
from inferwatch.exposition.parse import InvalidExposition, parse_exposition
from inferwatch.exposition.render import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    render_openmetrics,
    render_text,
    wants_openmetrics,
)
from inferwatch.metrics import InferenceMetrics
from inferwatch.sidecar import scrape as scraping
from inferwatch.sidecar.scrape import UpstreamScraper

TEXT_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
# What Prometheus 2.x sends by default.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

TRITON = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="resnet50",version="1"} 42
nv_inference_request_success{model="bert",version="2"} 7
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="resnet50",reason="REJECTED",version="1"} 0
nv_inference_request_failure{model="resnet50",reason="BACKEND",version="1"} 1
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="resnet50",version="1"} 336
# HELP nv_inference_exec_count Number of model executions performed (does not include cached \
requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="resnet50",version="1"} 42
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds \
(includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="resnet50",version="1"} 1234567
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting \
execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="resnet50",version="1"} 3
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-8c5e7a3c-1f0b-4e59-9c8e-3d0c1f1e2a7b"} 0.37
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-8c5e7a3c-1f0b-4e59-9c8e-3d0c1f1e2a7b"} 1.2e+09
"""

TORCHSERVE = """\
# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{uuid="e8a5c1b6-3f5e",model_name="mnist",model_version="default",} 7.0
# HELP ts_inference_latency_microseconds Cumulative inference duration in microseconds
# TYPE ts_inference_latency_microseconds counter
ts_inference_latency_microseconds{uuid="e8a5c1b6-3f5e",model_name="mnist",\
model_version="default",} 12345.6
# HELP ts_queue_latency_microseconds Cumulative queue duration in microseconds
# TYPE ts_queue_latency_microseconds counter
ts_queue_latency_microseconds{uuid="e8a5c1b6-3f5e",model_name="mnist",\
model_version="default",} 321.0
# HELP Requests2XX Requests with response in 200-300 status code range
# TYPE Requests2XX counter
Requests2XX{Level="Host",Hostname="torchserve-0",} 9.0
"""

MLSERVER = """\
# HELP model_infer_request_success_total Model infer request success count
# TYPE model_infer_request_success_total counter
model_infer_request_success_total{model="iris",version="v1"} 12.0
# HELP model_infer_request_duration_seconds Model infer request duration
# TYPE model_infer_request_duration_seconds histogram
model_infer_request_duration_seconds_bucket{le="0.005",model="iris",version="v1"} 3.0
model_infer_request_duration_seconds_bucket{le="0.01",model="iris",version="v1"} 10.0
model_infer_request_duration_seconds_bucket{le="+Inf",model="iris",version="v1"} 12.0
model_infer_request_duration_seconds_count{model="iris",version="v1"} 12.0
model_infer_request_duration_seconds_sum{model="iris",version="v1"} 0.0831
# HELP rest_server_requests_in_progress Requests in progress by method and path
# TYPE rest_server_requests_in_progress gauge
rest_server_requests_in_progress{method="POST",path="/v2/models/{model_name}/infer"} 1.0
# a plain comment, and a family without metadata (untyped):
batch_request_queue 4
"""


ACCEPTS = web.AppKey("accepts", list)

# --- helpers ----------------------------------------------------------------------------------


def fixed(body: bytes, content_type: str = "text/plain; version=0.0.4", status: int = 200,
          headers: dict[str, str] | None = None) -> web.Application:  # fmt: skip
    """An upstream whose /metrics always answers the same; records the Accept it got."""
    app = web.Application()
    app[ACCEPTS] = []

    async def metrics(request: web.Request) -> web.Response:
        app[ACCEPTS].append(request.headers.get("Accept"))
        response = web.Response(body=body, status=status, headers=headers or {})
        response.headers["Content-Type"] = content_type
        return response

    app.router.add_get("/metrics", metrics)
    return app


def negotiating(registry: CollectorRegistry) -> web.Application:
    """An upstream served by prometheus_client itself (as vLLM and MLServer are)."""
    app = web.Application()

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(registry))
        response.headers["Content-Type"] = content_type
        return response

    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def upstream_scraper(url: str | None) -> AsyncIterator[UpstreamScraper]:
    async with aiohttp.ClientSession() as session:
        yield UpstreamScraper(session, url)


async def scrape(
    registry: CollectorRegistry,
    url: str | None,
    accept: str = TEXT_ACCEPT,
    timeout: float | None = 5.0,
) -> tuple[str, str]:
    """One scrape, by a scraper of its own."""
    async with upstream_scraper(url) as scraper:
        return await scrape_with(scraper, registry, accept, timeout)


async def scrape_with(
    scraper: UpstreamScraper,
    registry: CollectorRegistry,
    accept: str = TEXT_ACCEPT,
    timeout: float | None = 5.0,
) -> tuple[str, str]:
    body, content_type = await scraper.exposition(registry, accept, timeout)
    return body.decode(), content_type


def promtool_problems(promtool: str, text: str) -> tuple[int, set[str]]:
    """promtool's exit status and complaints: 0 clean, 3 lint only, 1 unparseable."""
    status, complaints = promtool_status(promtool, text)
    return status, {line.strip() for line in complaints.splitlines() if line.strip()}


def series(text: str, om: bool = False) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels), via our own parser."""
    out = {}
    for family in parse_exposition(text, om):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels)))] = s.value
    return out


def types(text: str, om: bool = False) -> dict[str, str]:
    """``# TYPE`` lines: family name -> type, as written."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in out, f"family {name} appears twice"
            out[name] = kind
    return out


# --- formats and fidelity ---------------------------------------------------------------------


async def test_without_upstream_the_output_is_client_pythons_own() -> None:
    registry = own_registry()
    text, content_type = await scrape(registry, None)
    assert (text.encode(), content_type) == (generate_latest(registry), CONTENT_TYPE_TEXT)
    text, content_type = await scrape(registry, None, PROMETHEUS_ACCEPT)
    assert text.encode() == om_exposition.generate_latest(registry)
    assert content_type == CONTENT_TYPE_OPENMETRICS


async def test_an_empty_upstream_adds_only_the_error_counter_to_client_pythons_output() -> None:
    registry = own_registry()
    async with serving(fixed(b"")) as url:
        text, _ = await scrape(registry, url + "/metrics")
    errors = "".join(
        f'inferwatch_upstream_scrape_errors_total{{reason="{reason}"}} 0.0\n'
        for reason in schema.SCRAPE_ERROR_REASONS
    )
    expected = (
        generate_latest(registry).decode()
        + f"# HELP inferwatch_upstream_scrape_errors_total {schema.UPSTREAM_SCRAPE_ERRORS.help}\n"
        + "# TYPE inferwatch_upstream_scrape_errors_total counter\n"
        + errors
    )
    assert text == expected


async def test_triton_text_keeps_types_help_and_values_and_passes_promtool(promtool: str) -> None:
    registry = own_registry()
    async with serving(fixed(TRITON.encode())) as url:
        text, content_type = await scrape(registry, url + "/metrics")
    assert content_type == CONTENT_TYPE_TEXT
    kinds = types(text)
    assert kinds["nv_inference_request_success"] == "counter"  # not renamed to _total
    assert kinds["nv_inference_pending_request_count"] == "gauge"
    assert kinds["model_inference_total"] == "counter"
    assert "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n" in text
    got = series(text)
    assert got[("nv_inference_request_success", (("model", "bert"), ("version", "2")))] == 7
    gpu = (("gpu_uuid", "GPU-8c5e7a3c-1f0b-4e59-9c8e-3d0c1f1e2a7b"),)
    assert got[("nv_gpu_memory_used_bytes", gpu)] == 1.2e9
    want = series(TRITON)
    assert {k: v for k, v in got.items() if k[0].startswith("nv_")} == want
    ours = (("model_name", "resnet50"), ("model_version", "1"), ("source", "sidecar"))
    assert got[("model_inference_total", (*ours, ("status", "success")))] == 1
    # promtool parses it; its only complaints are Triton's own names, none added by the merge
    status, problems = promtool_problems(promtool, text)
    assert status == 3
    assert problems == promtool_problems(promtool, TRITON)[1]
    assert all(p.startswith("nv_") for p in problems)


async def test_torchserve_trailing_commas_are_survived(promtool: str) -> None:
    async with serving(fixed(TORCHSERVE.encode())) as url:
        text, _ = await scrape(own_registry(), url + "/metrics")
    assert (
        'ts_inference_requests_total{uuid="e8a5c1b6-3f5e",model_name="mnist",'
        'model_version="default"} 7.0\n' in text
    )
    assert types(text)["ts_inference_requests_total"] == "counter"
    assert types(text)["Requests2XX"] == "counter"
    labels = (("model_name", "mnist"), ("model_version", "default"), ("uuid", "e8a5c1b6-3f5e"))
    assert series(text)[("ts_queue_latency_microseconds", labels)] == 321.0
    status, problems = promtool_problems(promtool, text)
    assert status == 3
    assert problems == promtool_problems(promtool, TORCHSERVE)[1]


def vllm_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = ["model_name"]
    name = "meta-llama/Llama-3.1-8B-Instruct"
    Gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", labels,
          registry=registry).labels(name).set(2)  # fmt: skip
    Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels,
          registry=registry).labels(name).set(5)  # fmt: skip
    Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels,
            registry=registry).labels(name).inc(1523)  # fmt: skip
    ttft = Histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        labels,
        registry=registry,
        buckets=(
            0.001,
            0.005,
            0.01,
            0.02,
            0.04,
            0.06,
            0.08,
            0.1,
            0.25,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
            20.0,
            40.0,
            80.0,
            160.0,
            640.0,
            2560.0,
        ),
    )
    ttft.labels(name).observe(0.031, {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    ttft.labels(name).observe(0.2)
    return registry


async def test_vllm_to_an_openmetrics_scraper_keeps_colon_names() -> None:
    async with serving(negotiating(vllm_registry())) as url:
        text, content_type = await scrape(own_registry(), url + "/metrics", PROMETHEUS_ACCEPT)
    assert content_type == CONTENT_TYPE_OPENMETRICS
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    families = {f.name: f for f in om_parse(text)}  # client_python's strict OpenMetrics parser
    assert families["vllm:num_requests_waiting"].type == "gauge"
    assert families["vllm:prompt_tokens"].type == "counter"
    assert families["model_inference"].type == "counter"
    ttft = families["vllm:time_to_first_token_seconds"]
    assert ttft.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in ttft.samples if s.name.endswith("_bucket")}
    assert (buckets["0.02"], buckets["0.04"], buckets["0.25"], buckets["+Inf"]) == (0, 1, 2, 2)
    assert {s.name for s in ttft.samples} == {
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_to_first_token_seconds_count",
        "vllm:time_to_first_token_seconds_sum",
        "vllm:time_to_first_token_seconds_created",
    }


async def test_an_openmetrics_upstream_keeps_units_and_exemplars() -> None:
    registry = CollectorRegistry()
    latency = Histogram(
        "app_latency_seconds", "Latency.", registry=registry, buckets=(0.1, 1.0), unit="seconds"
    )
    latency.observe(0.05, {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    body = om_exposition.generate_latest(registry)  # answered whatever was asked
    async with serving(fixed(body, CONTENT_TYPE_OPENMETRICS)) as url:
        text, _ = await scrape(own_registry(), url + "/metrics", PROMETHEUS_ACCEPT)
    families = {f.name: f for f in om_parse(text)}
    family = families["app_latency_seconds"]
    assert (family.type, family.unit) == ("histogram", "seconds")
    bucket = next(s for s in family.samples if s.labels.get("le") == "0.1")
    assert bucket.value == 1.0
    assert bucket.exemplar is not None
    assert bucket.exemplar.labels == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}
    assert bucket.exemplar.value == 0.05
    # and to a text scraper: the same series, no exemplar
    async with serving(fixed(body, CONTENT_TYPE_OPENMETRICS)) as url:
        text, _ = await scrape(own_registry(), url + "/metrics", TEXT_ACCEPT)
    assert 'app_latency_seconds_bucket{le="0.1"} 1.0\n' in text
    assert types(text)["app_latency_seconds"] == "histogram"


async def test_vllm_to_a_text_scraper(promtool: str) -> None:
    async with serving(negotiating(vllm_registry())) as url:
        text, content_type = await scrape(own_registry(), url + "/metrics", TEXT_ACCEPT)
    assert content_type == CONTENT_TYPE_TEXT
    kinds = types(text)
    assert kinds["vllm:prompt_tokens_total"] == "counter"
    assert kinds["vllm:prompt_tokens_created"] == "gauge"  # as client_python writes text
    assert kinds["vllm:time_to_first_token_seconds"] == "histogram"
    assert "# EOF" not in text and " # {" not in text  # no exemplars in the text format
    got = series(text)
    labels = (("model_name", "meta-llama/Llama-3.1-8B-Instruct"),)
    assert got[("vllm:prompt_tokens_total", labels)] == 1523
    assert got[("vllm:time_to_first_token_seconds_bucket", (("le", "0.25"), *labels))] == 2
    status, problems = promtool_problems(promtool, text)
    assert status == 3  # promtool's lint dislikes colons in vLLM's names; nothing else
    assert problems and all("should not contain ':'" in p for p in problems)


async def test_text_upstream_to_openmetrics_never_renames_a_series() -> None:
    async with serving(fixed((TRITON + MLSERVER).encode())) as url:
        text, _ = await scrape(own_registry(), url + "/metrics", PROMETHEUS_ACCEPT)
    families = {f.name: f for f in om_parse(text)}
    # Triton's counters have no _total: as OpenMetrics counters their series would be renamed
    success = families["nv_inference_request_success"]
    assert success.type == "unknown"
    assert {(s.name, s.labels["model"], s.value) for s in success.samples} == {
        ("nv_inference_request_success", "resnet50", 42.0),
        ("nv_inference_request_success", "bert", 7.0),
    }
    assert families["model_infer_request_success"].type == "counter"
    assert families["model_infer_request_success"].samples[0].name == (
        "model_infer_request_success_total"
    )
    assert families["model_infer_request_duration_seconds"].type == "histogram"
    assert families["batch_request_queue"].type == "unknown"


async def test_untyped_families_stay_untyped(promtool: str) -> None:
    body = b"# HELP jobs_total Jobs seen.\n# TYPE jobs_total untyped\njobs_total 5\nloose 1\n"
    async with serving(fixed(body)) as url:
        text, _ = await scrape(own_registry(), url + "/metrics")
    assert "# HELP jobs_total Jobs seen.\n# TYPE jobs_total untyped\njobs_total 5.0\n" in text
    assert "# TYPE loose untyped\nloose 1.0\n" in text
    # promtool's one complaint is the upstream's own: a family without HELP
    assert promtool_problems(promtool, text) == (3, {"loose no help text"})
    assert promtool_problems(promtool, body.decode()) == (3, {"loose no help text"})


# --- same families on both sides --------------------------------------------------------------


def app_registry() -> CollectorRegistry:
    """An application instrumented with inferwatch's decorators, behind the sidecar."""
    registry = CollectorRegistry()
    model = InferenceMetrics(registry).model(schema.SOURCE_APP, "resnet50", "1")
    model.success.inc(3)
    model.duration.observe(0.1)
    return registry


@pytest.mark.parametrize("accept", [TEXT_ACCEPT, PROMETHEUS_ACCEPT])
async def test_the_apps_inferwatch_families_join_the_sidecars(promtool: str, accept: str) -> None:
    async with serving(negotiating(app_registry())) as url:
        text, _ = await scrape(own_registry(), url + "/metrics", accept)
    om = accept == PROMETHEUS_ACCEPT
    total = "model_inference" if om else "model_inference_total"
    assert types(text)[total] == "counter"  # one family, both sources
    got = series(text, om)
    key = (("model_name", "resnet50"), ("model_version", "1"))
    assert got[("model_inference_total", (*key, ("source", "sidecar"), ("status", "success")))] == 1
    assert got[("model_inference_total", (*key, ("source", "app"), ("status", "success")))] == 3
    assert got[("model_inference_duration_seconds_count", (*key, ("source", "app")))] == 1
    build = [k for k in got if k[0] == "inferwatch_build_info"]
    assert len(build) == 1  # the same series on both sides: ours kept, theirs left out
    if om:
        om_parse(text)
    else:
        assert promtool_check_metrics(promtool, text) == ""


async def test_a_colliding_family_of_another_type_is_left_out_for_ours(promtool: str) -> None:
    body = (
        b"# HELP model_inference_total Not ours.\n# TYPE model_inference_total gauge\n"
        b'model_inference_total{model_name="x"} 9\n'
        b"# TYPE model_active_requests_total counter\nmodel_active_requests_total 1\n"
        b"# TYPE inferwatch_upstream_up untyped\ninferwatch_upstream_up 0\n"
        b"# HELP kept Kept.\n# TYPE kept gauge\nkept 2\n"
    )
    registry = own_registry()
    async with serving(fixed(body)) as url:
        text, _ = await scrape(registry, url + "/metrics")
    got = series(text)
    assert ("model_inference_total", (("model_name", "x"),)) not in got
    assert got[("inferwatch_upstream_up", ())] == 1  # ours
    assert got[("kept", ())] == 2
    # a counter model_active_requests would share our gauge's OpenMetrics family name
    assert ("model_active_requests_total", ()) not in got
    assert text.count("# TYPE model_inference_total ") == 1
    assert promtool_check_metrics(promtool, text) == ""


# --- a broken upstream never breaks our metrics ------------------------------------------------


async def expect_failure(app: web.Application | None, reason: str, timeout: float = 5.0) -> None:
    registry = own_registry()
    if app is None:  # nothing listens: bind a port, then close it
        async with serving(web.Application()) as url:
            pass
        async with upstream_scraper(url + "/metrics") as scraper:
            text, _ = await scrape_with(scraper, registry, timeout=timeout)
        counts = scraper.errors
    else:
        async with serving(app) as url, upstream_scraper(url + "/metrics") as scraper:
            text, _ = await scrape_with(scraper, registry, timeout=timeout)
            text2, _ = await scrape_with(scraper, registry, timeout=timeout)
            counts = scraper.errors
            assert counts[reason] == 2
            text = text2
    assert counts == {r: (counts[reason] if r == reason else 0) for r in counts}
    got = series(text)
    assert got[("inferwatch_upstream_scrape_errors_total", (("reason", reason),))] == counts[reason]
    assert got[("inferwatch_upstream_up", ())] == 1  # our own families are all still there
    assert generate_latest(registry).decode() in text


async def test_upstream_down() -> None:
    await expect_failure(None, schema.SCRAPE_UNREACHABLE)


async def test_upstream_404() -> None:
    await expect_failure(fixed(b"404: Not Found", "text/plain", status=404), "http_status")


async def test_upstream_answers_garbage() -> None:
    html = b"<html><body><h1>It works!</h1></body></html>\n"
    await expect_failure(fixed(html, "text/html"), schema.SCRAPE_INVALID)


async def test_upstream_openmetrics_cut_short_before_eof() -> None:
    body = b"# TYPE up gauge\nup 1\n"
    await expect_failure(fixed(body, CONTENT_TYPE_OPENMETRICS), schema.SCRAPE_INVALID)


async def test_upstream_slower_than_the_scrape_timeout() -> None:
    app = web.Application()
    never = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await never.wait()  # released when the server shuts down
        return web.Response(text="up 1\n")

    async def release(app: web.Application) -> None:
        never.set()

    app.router.add_get("/metrics", slow)
    app.on_shutdown.append(release)
    await expect_failure(app, schema.SCRAPE_TIMEOUT, timeout=0.4)


async def test_upstream_larger_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scraping, "MAX_UPSTREAM_BYTES", 1000)
    await expect_failure(fixed(b"x 1\n" * 300), schema.SCRAPE_TOO_LARGE)


async def test_gzip_bomb_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scraping, "MAX_UPSTREAM_BYTES", 10_000)
    bomb = gzip.compress(b"x 1\n" * 100_000)  # 400 kB from about 1 kB
    assert len(bomb) < 10_000
    await expect_failure(fixed(bomb, headers={"Content-Encoding": "gzip"}), "too_large")


async def test_gzip_from_the_upstream_is_decoded() -> None:
    app = fixed(gzip.compress(TRITON.encode()), headers={"Content-Encoding": "gzip"})
    async with serving(app) as url, upstream_scraper(url + "/metrics") as scraper:
        text, _ = await scrape_with(scraper, own_registry())
        assert scraper.errors[schema.SCRAPE_INVALID] == 0
    assert {k: v for k, v in series(text).items() if k[0].startswith("nv_")} == series(TRITON)


async def test_the_upstream_is_asked_for_the_text_format() -> None:
    app = fixed(TORCHSERVE.encode())
    async with serving(app) as url:
        await scrape(own_registry(), url + "/metrics", TEXT_ACCEPT)
    assert app[ACCEPTS] == ["text/plain;version=0.0.4;q=1.0,*/*;q=0.1"]


def test_the_upstream_gets_the_scrape_timeout_less_a_margin() -> None:
    assert scraping._fetch_timeout(10.0) == 9.5
    assert scraping._fetch_timeout(1.0) == 0.75
    assert scraping._fetch_timeout(None) == scraping.DEFAULT_SCRAPE_TIMEOUT - 0.5
    assert scraping._fetch_timeout(0) == scraping.DEFAULT_SCRAPE_TIMEOUT - 0.5


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS_ACCEPT, True),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("application/openmetrics-text;version=2.0.0", False),
        ("application/openmetrics-text;q=0", False),
        ("text/plain;version=0.0.4", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_accept_negotiation(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


# --- the parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'metric{a="b" 1\n',  # unterminated label set
        "metric{a=b} 1\n",  # unquoted value
        'metric{a="1",a="2"} 1\n',  # duplicate label
        "metric 1 2 3\n",  # too many tokens
        "metric one\n",  # not a number
        "metric 1_000\n",  # Python reads it; Prometheus does not
        "metric 1 12.5\n",  # text timestamps are integer milliseconds
        "# TYPE m counter\n# TYPE m gauge\nm 1\n",  # second TYPE
        "m 1\n# TYPE m gauge\n",  # TYPE after samples
        "# TYPE m histogrammish\nm 1\n",
        "9metric 1\n",
        "metric1\n",
    ],
)
def test_invalid_text_expositions_are_rejected(text: str) -> None:
    with pytest.raises(InvalidExposition):
        parse_exposition(text, False)


def test_text_parser_reads_escapes_timestamps_and_special_values() -> None:
    text = (
        "# HELP m A help with a \\\\ backslash\\nand a newline.\n# TYPE m gauge\n"
        'm{path="C:\\\\x",q="say \\"hi\\"",n="a\\nb"} +Inf 1700000000123\n'
        'm{path="y"} NaN\n'
    )
    (family,) = parse_exposition(text, False)
    assert family.help == "A help with a \\ backslash\nand a newline."
    first, second = family.samples
    assert first.labels == (("path", "C:\\x"), ("q", 'say "hi"'), ("n", "a\nb"))
    assert (first.value, first.timestamp) == (float("inf"), 1700000000.123)
    assert second.value != second.value  # NaN
    rendered = render_text([family]).decode()
    assert rendered == (
        "# HELP m A help with a \\\\ backslash\\nand a newline.\n# TYPE m gauge\n"
        'm{path="C:\\\\x",q="say \\"hi\\"",n="a\\nb"} +Inf 1700000000123\n'
        'm{path="y"} NaN\n'
    )


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('ab_:{}=",# \n\\01.+-eINTYPEHLPx'), max_size=200))
def test_parser_fuzz_raises_only_invalid_exposition(text: str) -> None:
    for openmetrics in (False, True):
        try:
            families = parse_exposition(text, openmetrics)
        except InvalidExposition:
            continue
        # what parses renders to something that parses to the same samples
        again = parse_exposition(render_text(families).decode(), False)
        assert sum(len(f.samples) for f in again) == sum(len(f.samples) for f in families)


def test_rendering_our_own_families_is_byte_identical_to_client_python() -> None:
    registry = own_registry()
    Info("engine", "Engine build.", registry=registry).info({"version": "1.2", "cuda": "12.4"})
    Enum("phase", "Serving phase.", states=["loading", "serving"], registry=registry).state(
        "serving"
    )
    Summary("payload_bytes", "Request sizes.", ["route"], registry=registry).labels("/x").observe(
        512
    )
    Counter("requests", "Requests.", registry=registry).inc(2, {"trace_id": "abc"})
    Histogram("wait_seconds", "Waits.", registry=registry, buckets=(0.5, 1)).observe(
        0.25, {"trace_id": "def"}
    )
    Gauge("odd", 'Help with \\ and \n and "quotes".', ["k"], registry=registry).labels(
        'v"\\\n'
    ).set(-3.5e-7)
    families = families_of(registry)
    assert render_text(families) == generate_latest(registry)
    assert render_openmetrics(families) == om_exposition.generate_latest(registry)
    # and what we render, we read back to the same samples
    text = render_text(families).decode()
    assert series(text) == series(generate_latest(registry).decode())


# --- a real Prometheus scrapes the merged endpoint ----------------------------------------------


async def test_prometheus_ingests_the_merged_openmetrics(tmp_path: Path, prometheus: str) -> None:
    upstream_text = TRITON + TORCHSERVE + MLSERVER + generate_latest(vllm_registry()).decode()
    registry = own_registry()
    accepts: list[str] = []

    async def admin_metrics(request: web.Request) -> web.Response:
        accepts.append(request.headers.get("Accept", ""))
        body, content_type = await scraper.exposition(
            registry,
            request.headers.get("Accept", ""),
            float(request.headers.get("X-Prometheus-Scrape-Timeout-Seconds", "5")),
        )
        return web.Response(body=body, headers={"Content-Type": content_type})

    admin = web.Application()
    admin.router.add_get("/metrics", admin_metrics)
    async with (
        aiohttp.ClientSession() as session,
        serving(fixed(upstream_text.encode())) as upstream,
        serving(admin) as admin_url,
    ):
        scraper = UpstreamScraper(session, upstream + "/metrics")
        config = scrape_config(admin_url.removeprefix("http://"))
        async with running_prometheus(prometheus, config, tmp_path) as prom:

            async def query(expr: str) -> dict[str, float]:
                """{metric labels as text: value} of an instant query; {} until ingested."""
                try:
                    async with session.get(prom.api + "/query", params={"query": expr}) as response:
                        if response.status != 200:
                            return {}
                        result = (await response.json())["data"]["result"]
                except aiohttp.ClientError:
                    return {}
                return {str(sorted(r["metric"].items())): float(r["value"][1]) for r in result}

            deadline = asyncio.get_running_loop().time() + 60
            while not await query('up{job="pod"} == 1'):
                prom.assert_running()
                assert asyncio.get_running_loop().time() < deadline, "no successful scrape"
                await asyncio.sleep(0.2)
            assert accepts[0].startswith("application/openmetrics-text")  # Prometheus asked OM
            values = {
                'nv_inference_request_success{model="bert"}': 7.0,
                'ts_inference_requests_total{model_name="mnist"}': 7.0,
                "Requests2XX": 9.0,
                "batch_request_queue": 4.0,
                'model_infer_request_duration_seconds_bucket{le="0.01"}': 10.0,
                "vllm:num_requests_waiting": 5.0,
                'vllm:time_to_first_token_seconds_bucket{le="0.04"}': 1.0,
                'model_inference_total{source="sidecar",status="success"}': 1.0,
                'inferwatch_upstream_scrape_errors_total{reason="invalid"}': 0.0,
            }
            for expr, value in values.items():
                assert list((await query(expr)).values()) == [value], expr
            merged, _ = await scrape_with(scraper, registry, PROMETHEUS_ACCEPT)
            samples = sum(len(f.samples) for f in om_parse(merged))
            scraped = await query('scrape_samples_scraped{job="pod"}')
            assert list(scraped.values()) == [float(samples)]
