"""The model server's queue signal: its own metrics normalised into ours as source="server".

Upstreams are real aiohttp servers on loopback writing each server's metric names and label
shapes as their documentation and source show them, with pending counts that change as
requests are held; TorchServe's management API is faked with its real JSON shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from support.http import serving
from support.polling import poll
from support.prometheus import promtool_status
from support.sidecar import own_registry, running_sidecar

from inferwatch import schema
from inferwatch.exposition.parse import parse_exposition
from inferwatch.metrics import InferenceMetrics
from inferwatch.sidecar import server_metrics
from inferwatch.sidecar.config import ConfigError, load_config
from inferwatch.sidecar.scrape import UpstreamScraper
from inferwatch.sidecar.server_metrics import ServerSignal, parse_mappings

TEXT_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"

# Each server's exposition: (waiting, running, kv) -> text, names and labels as they write them.
Render = Callable[[int, int, float], str]


def triton(w: int, r: int, kv: float) -> str:
    return (
        "# HELP nv_inference_request_success Number of successful inference requests, all "
        "batch sizes\n# TYPE nv_inference_request_success counter\n"
        'nv_inference_request_success{model="resnet50",version="1"} 42\n'
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests "
        "awaiting execution per-model.\n# TYPE nv_inference_pending_request_count gauge\n"
        f'nv_inference_pending_request_count{{model="resnet50",version="1"}} {w}\n'
        'nv_inference_pending_request_count{model="bert",version="2"} 1\n'
    )


def tensorrt_llm(w: int, r: int, kv: float) -> str:
    used = int(kv * 8000)
    ids = 'model="tensorrt_llm",version="1"'
    requests = (
        "".join(
            f'nv_trt_llm_request_metrics{{{ids},request_type="{kind}"}} {value}\n'
            for kind, value in (("waiting", w), ("context", 1), ("scheduled", r), ("max", 512))
        )
        + f'nv_trt_llm_request_metrics{{{ids},request_type="active"}} {w + r}\n'
    )
    blocks = "".join(
        f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="{kind}",{ids}}} {value}\n'
        for kind, value in (
            ("max", 8000),
            ("free", 8000 - used),
            ("used", used),
            ("tokens_per", 64),
        )
    )
    return (
        "# HELP nv_trt_llm_request_metrics TRT LLM request metrics\n"
        "# TYPE nv_trt_llm_request_metrics gauge\n"
        + requests
        + "# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics\n"
        "# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n"
        + blocks
        + "# HELP nv_inference_pending_request_count Instantaneous number of pending requests "
        "awaiting execution per-model.\n# TYPE nv_inference_pending_request_count gauge\n"
        'nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 0\n'
        'nv_inference_pending_request_count{model="preprocessing",version="1"} 2\n'
    )


def vllm(w: int, r: int, kv: float, kv_name: str = "vllm:kv_cache_usage_perc") -> str:
    labels = 'engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{labels}}} {r}.0\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{labels}}} {w}.0\n"
        "# HELP vllm:num_requests_waiting_by_reason Waiting requests by reason.\n"
        "# TYPE vllm:num_requests_waiting_by_reason gauge\n"
        f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}} {w}.0\n'
        f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.\n"
        f"# TYPE {kv_name} gauge\n{kv_name}{{{labels}}} {kv}\n"
    )


def vllm_old(w: int, r: int, kv: float) -> str:
    return vllm(w, r, kv, "vllm:gpu_cache_usage_perc")


def sglang(w: int, r: int, kv: float) -> str:
    labels = 'model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0",pp_rank="0"'
    return (
        "# HELP sglang:num_running_reqs The number of running requests.\n"
        f"# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{{{labels}}} {r}.0\n"
        "# HELP sglang:token_usage The token usage.\n"
        f"# TYPE sglang:token_usage gauge\nsglang:token_usage{{{labels}}} {kv}\n"
        "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n"
        f"# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{{{labels}}} {w}.0\n"
    )


def trtllm_serve(w: int, r: int, kv: float) -> str:
    labels = 'engine_type="trtllm",model_name="llama-8b"'
    return (
        "# HELP trtllm_num_requests_waiting Number of requests waiting.\n"
        f"# TYPE trtllm_num_requests_waiting gauge\ntrtllm_num_requests_waiting{{{labels}}} {w}\n"
        "# HELP trtllm_num_requests_running Number of requests running.\n"
        f"# TYPE trtllm_num_requests_running gauge\ntrtllm_num_requests_running{{{labels}}} {r}\n"
        "# HELP trtllm_kv_cache_utilization KV cache utilization.\n"
        f"# TYPE trtllm_kv_cache_utilization gauge\ntrtllm_kv_cache_utilization{{{labels}}} {kv}\n"
    )


def tgi(w: int, r: int, kv: float) -> str:
    return (
        "# HELP tgi_queue_size Current queue size\n# TYPE tgi_queue_size gauge\n"
        f"tgi_queue_size {w}\n"
        "# HELP tgi_batch_current_size Current batch size\n# TYPE tgi_batch_current_size gauge\n"
        f"tgi_batch_current_size {r}\n"
    )


def bentoml(w: int, r: int, kv: float) -> str:
    return (
        "# HELP bentoml_service_request_in_progress Multiprocess metric\n"
        "# TYPE bentoml_service_request_in_progress gauge\n"
        'bentoml_service_request_in_progress{endpoint="/classify",runner_name="iris",'
        f'service_name="iris_classifier",service_version="1"}} {r}.0\n'
    )


# name: (render, model as normalised, feeds queue, feeds active, feeds kv)
SERVERS: dict[str, tuple[Render, str, bool, bool, bool]] = {
    "triton": (triton, "resnet50", True, False, False),
    "tensorrt-llm": (tensorrt_llm, "tensorrt_llm", True, True, True),
    "vllm": (vllm, "meta-llama/Llama-3.1-8B-Instruct", True, True, True),
    "vllm-old": (vllm_old, "meta-llama/Llama-3.1-8B-Instruct", True, True, True),
    "sglang": (sglang, "meta-llama/Llama-3.1-8B-Instruct", True, True, True),
    "trtllm-serve": (trtllm_serve, "llama-8b", True, True, True),
    "tgi": (tgi, "default-model", True, True, False),
    "bentoml": (bentoml, "default-model", False, True, False),
}


class Live:
    """An upstream /metrics whose counts the test changes between scrapes."""

    def __init__(self, render: Render) -> None:
        self.render = render
        self.waiting, self.running, self.kv = 0, 0, 0.0

    def app(self) -> web.Application:
        app = web.Application()

        async def metrics(request: web.Request) -> web.Response:
            text = self.render(self.waiting, self.running, self.kv)
            return web.Response(text=text, content_type="text/plain")

        app.router.add_get("/metrics", metrics)
        return app


def series(text: str, om: bool = False) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in parse_exposition(text, om):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels)))] = s.value
    return out


def server_value(text: str, family: schema.Family, model: str) -> float | None:
    key = (family.name, (("model_name", model), ("source", schema.SOURCE_SERVER)))
    return series(text).get(key)


async def scrape(scraper: UpstreamScraper, registry: CollectorRegistry | None = None) -> str:
    body, _ = await scraper.exposition(registry or own_registry(), TEXT_ACCEPT, 5.0)
    return body.decode()


def signal(**kwargs: object) -> ServerSignal:
    kwargs.setdefault("default_model", "default-model")
    return ServerSignal(**kwargs)  # type: ignore[arg-type]


# --- each server ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVERS))
async def test_the_normalised_queue_follows_the_servers_own_counts(name: str) -> None:
    render, model, queue, active, kv = SERVERS[name]
    live = Live(render)
    async with (
        serving(live.app()) as url,
        aiohttp.ClientSession() as session,
    ):
        scraper = UpstreamScraper(session, url + "/metrics", signal())
        for waiting, running, usage in ((0, 0, 0.0), (3, 2, 0.25), (7, 4, 0.75), (1, 0, 0.5)):
            live.waiting, live.running, live.kv = waiting, running, usage
            text = await scrape(scraper)
            expected = name.removesuffix("-old")
            assert scraper.signal.server is not None
            assert scraper.signal.server.name == expected
            got_queue = server_value(text, schema.QUEUE_LENGTH, model)
            assert got_queue == (waiting if queue else None)
            got_active = server_value(text, schema.ACTIVE_REQUESTS, model)
            assert got_active == (running if active else None)
            got_kv = server_value(text, schema.KV_CACHE_USAGE, model)
            assert got_kv == (pytest.approx(usage) if kv else None)
            # the upstream's own series are still merged unchanged, ours too
            assert ("inferwatch_upstream_up", ()) in series(text)
        assert scraper.signal.errors == dict.fromkeys(schema.SIGNAL_ERROR_REASONS, 0)


async def test_triton_counts_each_model_and_tensorrt_llm_only_the_batch_manager() -> None:
    async with serving(Live(triton).app()) as url, aiohttp.ClientSession() as session:
        text = await scrape(UpstreamScraper(session, url + "/metrics", signal()))
    assert server_value(text, schema.QUEUE_LENGTH, "bert") == 1
    live = Live(tensorrt_llm)
    live.waiting = 5
    async with serving(live.app()) as url, aiohttp.ClientSession() as session:
        text = await scrape(UpstreamScraper(session, url + "/metrics", signal()))
    # one request passes through several models of an ensemble: only the engine's queue counts
    assert server_value(text, schema.QUEUE_LENGTH, "tensorrt_llm") == 5
    assert server_value(text, schema.QUEUE_LENGTH, "preprocessing") is None


async def test_model_names_are_bounded_like_the_sidecars() -> None:
    from inferwatch.metrics import BoundedLabel

    async with serving(Live(triton).app()) as url, aiohttp.ClientSession() as session:
        scraper = UpstreamScraper(session, url + "/metrics", signal(bound=BoundedLabel(1)))
        text = await scrape(scraper)
    # resnet50 (first seen) kept, bert folded into other
    assert server_value(text, schema.QUEUE_LENGTH, "resnet50") == 0
    assert server_value(text, schema.QUEUE_LENGTH, schema.OTHER) == 1


# --- detection, the kind flag, user mappings --------------------------------------------------


def test_detection_from_metric_names() -> None:
    for name, (render, *_rest) in SERVERS.items():
        names = {f.name for f in parse_exposition(render(1, 1, 0.5), False)}
        detected = server_metrics.detect(names)
        assert detected is not None and detected.name == name.removesuffix("-old")
    assert server_metrics.detect({"python_gc_objects_collected", "process_cpu_seconds"}) is None


async def test_a_set_kind_wins_over_detection_and_none_reads_nothing() -> None:
    async with serving(Live(vllm).app()) as url, aiohttp.ClientSession() as session:
        text = await scrape(UpstreamScraper(session, url + "/metrics", signal(kind="none")))
        assert not any(
            ("source", "server") in labels for _, labels in series(text)
        )  # nothing normalised, nothing counted missing either
        scraper = UpstreamScraper(session, url + "/metrics", signal(kind="sglang"))
        text = await scrape(scraper)
    assert not any(("source", "server") in labels for _, labels in series(text))
    assert scraper.signal.errors[schema.SIGNAL_MAPPING_MISSING] == 3  # sglang's names absent


async def test_user_mappings_feed_the_families_before_the_built_in_ones() -> None:
    body = (
        "# HELP my_server_waiting Waiting.\n# TYPE my_server_waiting gauge\n"
        'my_server_waiting{model_id="a",queue="default"} 4\n'
        'my_server_waiting{model_id="a",queue="priority"} 1\n'
        'my_server_waiting{model_id="b",queue="default"} 2\n'
        'my_server_waiting{model_id="b",queue="shadow"} 50\n'
    ) + tgi(9, 1, 0)
    mappings = parse_mappings(
        [
            {
                "metric": "my_server_waiting",
                "family": "queue_length",
                "model_label": "model_id",
                "match": {"queue": ["default", "priority"]},
            }
        ]
    )
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return await _text(body)

    app.router.add_get("/metrics", answer)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        text = await scrape(UpstreamScraper(session, url + "/metrics", signal(mappings=mappings)))
    assert server_value(text, schema.QUEUE_LENGTH, "a") == 5
    assert server_value(text, schema.QUEUE_LENGTH, "b") == 2
    # TGI detected: its queue is replaced by the user's, its batch still feeds active
    assert server_value(text, schema.QUEUE_LENGTH, "default-model") is None
    assert server_value(text, schema.ACTIVE_REQUESTS, "default-model") == 1


async def _text(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/plain")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"family": "queue_length"}, r"\[0\]\.metric: must be a metric name"),
        ({"metric": "x", "family": "queue"}, r"\[0\]\.family: must be one of queue_length"),
        ({"metric": "x", "family": "queue_length", "labels": {}}, r"\[0\]: unknown key 'labels'"),
        ({"metric": "x", "family": "queue_length", "match": "a"}, r"\[0\]\.match: must be a"),
        (
            {"metric": "x", "family": "queue_length", "divide_by": {"t": "max"}},
            r"\[0\]\.divide_by: only for family kv_cache_usage_ratio",
        ),
        ({"metric": "x", "family": "queue_length", "model_label": "a-b"}, r"\[0\]\.model_label"),
    ],
)
def test_bad_mappings_name_the_field(tmp_path: Path, item: dict[str, object], message: str) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(json.dumps({"upstream": "http://127.0.0.1:8000", "server_metrics": [item]}))
    with pytest.raises(ConfigError, match=r"^server_metrics \(config file .*\): " + message):
        load_config(env={}, path=str(path))


def test_config_fields_round_trip_and_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "upstream: http://127.0.0.1:8000\nupstream_kind: vllm\n"
        "upstream_management_url: http://127.0.0.1:8081/\n"
        "server_metrics:\n  - metric: kv\n    family: kv_cache_usage_ratio\n"
        "    match: {type: used}\n    divide_by: {type: max}\n"
    )
    config = load_config(env={}, path=str(path))
    assert config.upstream_kind == "vllm"
    assert config.upstream_management_url == "http://127.0.0.1:8081"
    (mapping,) = config.server_metrics
    assert mapping.divide_by == (("type", ("max",)),)
    from inferwatch.sidecar.config import from_dict

    assert from_dict(config.to_dict()) == config
    env = {"INFERWATCH_SIDECAR_UPSTREAM_KIND": "triton", "INFERWATCH_SIDECAR_UPSTREAM": "http://x"}
    assert load_config(env=env).upstream_kind == "triton"
    with pytest.raises(ConfigError, match=r"^upstream_kind \(command line, --upstream-kind\)"):
        load_config({"upstream": "http://x", "upstream_kind": "ollama"}, env={})
    with pytest.raises(ConfigError, match=r"^upstream_management_url: needed"):
        load_config({"upstream": "http://x", "upstream_kind": "torchserve"}, env={})
    with pytest.raises(ConfigError, match=r"^upstream_management_url \(environment, INFERWATCH_"):
        load_config(
            {"upstream": "http://x"}, env={"INFERWATCH_SIDECAR_UPSTREAM_MANAGEMENT_URL": "ftp://a"}
        )


# --- renamed and dropped metrics -------------------------------------------------------------


async def test_a_renamed_metric_is_counted_not_a_crash(promtool: str) -> None:
    state = {"text": vllm(3, 1, 0.5)}
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return await _text(state["text"])

    app.router.add_get("/metrics", answer)
    registry = own_registry()
    async with serving(app) as url, aiohttp.ClientSession() as session:
        scraper = UpstreamScraper(session, url + "/metrics", signal())
        text = await scrape(scraper, registry)
        model = "meta-llama/Llama-3.1-8B-Instruct"
        assert server_value(text, schema.QUEUE_LENGTH, model) == 3
        # an upgrade renames the waiting gauge and drops the KV gauge
        state["text"] = (
            vllm(3, 1, 0.5)
            .replace("vllm:num_requests_waiting ", "vllm:num_requests_queued ")
            .replace("vllm:num_requests_waiting{", "vllm:num_requests_queued{")
            .replace("vllm:kv_cache_usage_perc", "vllm:kv_usage")
        )
        text = await scrape(scraper, registry)
        text = await scrape(scraper, registry)
    assert server_value(text, schema.QUEUE_LENGTH, model) is None
    assert server_value(text, schema.KV_CACHE_USAGE, model) is None
    assert server_value(text, schema.ACTIVE_REQUESTS, model) == 1  # still there
    got = series(text)
    errors = schema.UPSTREAM_SIGNAL_ERRORS.name
    assert got[(errors, (("reason", "mapping_missing"),))] == 4  # two families, two scrapes
    assert got[(errors, (("reason", "management_failed"),))] == 0
    # the sidecar's own families and the upstream's renamed ones are all served
    assert generate_latest(registry).decode().splitlines()[0] in text
    assert ("vllm:num_requests_queued", (("engine", "0"), ("model_name", model))) in got
    status, complaints = promtool_status(promtool, text)
    assert status in (0, 3)  # parseable; lint complaints only about vLLM's own colon names
    assert all("vllm:" in line for line in complaints.splitlines() if line.strip())


async def test_merged_output_is_promtool_clean(promtool: str) -> None:
    live = Live(tgi)
    live.waiting, live.running = 2, 1
    async with serving(live.app()) as url, aiohttp.ClientSession() as session:
        scraper = UpstreamScraper(session, url + "/metrics", signal())
        text = await scrape(scraper)
        om_body, _ = await scraper.exposition(
            own_registry(), "application/openmetrics-text;version=1.0.0", 5.0
        )
    assert server_value(text, schema.QUEUE_LENGTH, "default-model") == 2
    assert promtool_status(promtool, text) == (0, "")
    assert text.count(f"# TYPE {schema.QUEUE_LENGTH.name} gauge") == 1
    assert f"# TYPE {schema.KV_CACHE_USAGE.name} gauge" in text
    om = series(om_body.decode(), om=True)
    key = (schema.QUEUE_LENGTH.name, (("model_name", "default-model"), ("source", "server")))
    assert om[key] == 2


# --- TorchServe's management API ---------------------------------------------------------------


def torchserve_management(state: dict[str, object]) -> web.Application:
    """TorchServe's management API as its docs show it: GET /models, GET /models/<name>."""
    app = web.Application()

    async def models(request: web.Request) -> web.Response:
        if state.get("fail"):
            return web.json_response({"code": 500, "type": "InternalServerException"}, status=500)
        names = list(state["pending"])  # type: ignore[call-overload]
        return web.json_response(
            {"models": [{"modelName": n, "modelUrl": f"{n}.mar"} for n in names]}
        )

    async def describe(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        pending = state["pending"][name]  # type: ignore[index]
        return web.json_response(
            [
                {
                    "modelName": name,
                    "modelVersion": "1.0",
                    "modelUrl": f"{name}.mar",
                    "runtime": "python",
                    "minWorkers": 1,
                    "maxWorkers": 1,
                    "batchSize": 1,
                    "maxBatchDelay": 100,
                    "loadedAtStartup": True,
                    "workers": [
                        {
                            "id": "9000",
                            "startTime": "2024-11-16T08:26:59.394Z",
                            "status": "READY",
                            "memoryUsage": 0,
                            "pid": 20395,
                            "gpu": False,
                            "gpuUsage": "N/A",
                        }
                    ],
                    "jobQueueStatus": {
                        "remainingCapacity": 100 - pending,
                        "pendingRequests": pending,
                    },
                }
            ]
        )

    app.router.add_get("/models", models)
    app.router.add_get("/models/{name}", describe)
    return app


async def test_torchserve_pending_requests_come_from_its_management_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_metrics, "MANAGEMENT_INTERVAL", 0.02)
    state: dict[str, object] = {"pending": {"mnist": 0, "densenet161": 2}}
    upstream = web.Application()

    async def empty(request: web.Request) -> web.Response:
        return await _text("")

    upstream.router.add_get("/metrics", empty)
    async with (
        serving(torchserve_management(state)) as management,
        serving(upstream) as url,
        running_sidecar(url, upstream_management_url=management) as sidecar,
        aiohttp.ClientSession() as session,
    ):
        admin = f"http://127.0.0.1:{sidecar.admin_port}/metrics"

        async def queue(model: str) -> float | None:
            async with session.get(admin) as response:
                return server_value(await response.text(), schema.QUEUE_LENGTH, model)

        await poll(lambda: _equals(queue("densenet161"), 2), "densenet161's queue")
        state["pending"] = {"mnist": 5, "densenet161": 0}
        await poll(lambda: _equals(queue("mnist"), 5), "mnist's queue to follow")
        state["fail"] = True
        await poll(lambda: _equals(queue("mnist"), None), "a failed poll to leave no value")
        async with session.get(admin) as response:
            got = series(await response.text())
        key = (schema.UPSTREAM_SIGNAL_ERRORS.name, (("reason", "management_failed"),))
        assert got[key] >= 1


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]


# --- no double counting ------------------------------------------------------------------------


class Holding:
    """A Triton-like server running an instrumented app: requests wait in the server's queue
    (pending gauge) for one of ``slots`` model instances, then in the app's batcher
    (model_inference_queue_length{source="app"}) for the one executing batch; held until
    released."""

    def __init__(self, slots: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.executing = asyncio.Semaphore(1)
        self.release = asyncio.Event()
        self.pending = 0
        self.registry = CollectorRegistry()
        self.app_model = InferenceMetrics(self.registry).model(schema.SOURCE_APP, "m")

    def app(self) -> web.Application:
        app = web.Application()

        async def infer(request: web.Request) -> web.Response:
            await request.read()
            self.pending += 1
            async with self.slots:
                self.pending -= 1
                self.app_model.queue_length.inc()
                async with self.executing:
                    self.app_model.queue_length.dec()
                    await self.release.wait()
            return web.json_response({"outputs": []})

        async def metrics(request: web.Request) -> web.Response:
            text = (
                "# HELP nv_inference_pending_request_count Instantaneous number of pending "
                "requests awaiting execution per-model.\n"
                "# TYPE nv_inference_pending_request_count gauge\n"
                f'nv_inference_pending_request_count{{model="m",version="1"}} {self.pending}\n'
            )
            return web.Response(
                text=text + generate_latest(self.registry).decode(), content_type="text/plain"
            )

        app.router.add_post("/v2/models/m/infer", infer)
        app.router.add_get("/metrics", metrics)
        return app


async def test_a_waiting_request_is_counted_in_exactly_one_queue() -> None:
    server = Holding(slots=3)
    requests = 8
    async with (
        serving(server.app()) as url,
        running_sidecar(url, max_concurrency=4, max_queue=10, upstream_ready_path="") as sidecar,
        aiohttp.ClientSession() as session,
    ):
        proxy = f"http://127.0.0.1:{sidecar.proxy_port}/v2/models/m/infer"
        admin = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}

        async def send() -> int:
            async with session.post(proxy, json=body) as response:
                await response.read()
                return response.status

        tasks = [asyncio.create_task(send()) for _ in range(requests)]

        async def queues() -> dict[str, float]:
            async with session.get(admin) as response:
                got = series(await response.text())
            return {
                labels[1][1]: value
                for (name, labels), value in got.items()
                if name == schema.QUEUE_LENGTH.name and labels[0] == ("model_name", "m")
            }

        expected = {"sidecar": 4.0, "server": 1.0, "app": 2.0}  # and one executing

        async def settled() -> bool:
            return await queues() == expected

        await poll(settled, lambda: f"the queues to settle at {expected}", timeout=15)
        got = await queues()
        # disjoint: the pod's queue (the sum over sources) is every request not executing
        assert sum(got.values()) == requests - 1
        assert server.pending == 1
        server.release.set()
        assert await asyncio.gather(*tasks) == [200] * requests
        await poll(lambda: _equals(queues(), {"sidecar": 0.0, "server": 0.0, "app": 0.0}))
