"""The aiohttp application: routes for each protocol, JSON errors, readiness, drain.

Every version of every model gets a :class:`~inferwatch.batching.DynamicBatcher` (versions:
:mod:`inferwatch.server.versions`); the models of one device share one worker thread. The
language model's batcher batches decoding steps, not requests (see
:mod:`inferwatch.server.openai`). Readiness turns true once every version of every model ran
each warm-up batch size and versions 2 and 3 were compared with version 1 (logged). On shutdown
(aiohttp's ``on_shutdown``, which runs after the listening socket closed and before in-flight
handlers are awaited) the batchers stop accepting and finish their queues.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry

from inferwatch import tracing
from inferwatch._version import __version__
from inferwatch.batching import BatcherClosed, DynamicBatcher, Overloaded
from inferwatch.exposition import metrics_handler
from inferwatch.server import openai, protocol
from inferwatch.server import versions as versioning
from inferwatch.server.models import (
    LLM_SIZES,
    MODEL_SIZES,
    DecodeStep,
    ImageRunner,
    LLMRunner,
    ModelRunner,
    TextRunner,
    resolve_device,
)
from inferwatch.server.protocol import RequestError

log = logging.getLogger(__name__)

TEXT_MODEL = "text-classifier"
IMAGE_MODEL = "image-classifier"
LLM_MODEL = "tiny-llm"
# The language model's batcher records its own families under this name: its unit is one
# decoding step of one generation (queue, batch sizes, step latency), not a request.
LLM_STEP_MODEL = f"{LLM_MODEL}-decode"
MODEL_VERSION = "1"


@dataclass
class ServerConfig:
    """What ``inferwatch serve`` configures; see its ``--help`` for each field."""

    device: str = "auto"
    model_size: str = "small"
    max_batch_size: int = 32
    max_queue_delay: float = 0.005
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    max_request_items: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    weights: dict[str, str] = field(default_factory=dict)  # model name -> state dict file
    gpu_metrics_interval: float = 5.0
    llm: bool = True  # serve the language model too (OpenAI-style /v1/... endpoints)
    versions: tuple[str, ...] = versioning.VERSIONS  # of each classifier (not the language model)
    default_version: str = versioning.EAGER  # what unversioned paths and /predict use
    onnx_cache_dir: str | None = None  # None: versions.default_cache_dir()

    def warm_up_sizes(self) -> list[int]:
        return sorted({1, self.max_batch_size, *self.preferred_batch_sizes})


def build_runners(config: ServerConfig) -> list[ModelRunner]:
    """The served models on the configured device (raises ValueError on a bad config)."""
    if config.model_size not in MODEL_SIZES:
        raise ValueError(
            f"model size must be one of {sorted(MODEL_SIZES)}, got {config.model_size!r}"
        )
    unknown = set(config.weights) - {TEXT_MODEL, IMAGE_MODEL, LLM_MODEL}
    if unknown:
        raise ValueError(
            f"--weights names unknown models {sorted(unknown)}; "
            f"the models are {TEXT_MODEL}, {IMAGE_MODEL} and {LLM_MODEL}"
        )
    if config.default_version not in config.versions:
        raise ValueError(
            f"--default-version {config.default_version} is not among the served versions "
            f"{','.join(config.versions)}"
        )
    device = resolve_device(config.device)
    text_config, image_config = MODEL_SIZES[config.model_size]
    models: list[ModelRunner] = [
        TextRunner(TEXT_MODEL, MODEL_VERSION, text_config, device, config.weights.get(TEXT_MODEL)),
        ImageRunner(
            IMAGE_MODEL, MODEL_VERSION, image_config, device, config.weights.get(IMAGE_MODEL)
        ),
    ]
    cache = Path(config.onnx_cache_dir) if config.onnx_cache_dir else None
    runners: list[ModelRunner] = []
    for model in models:
        built = versioning.build_versions(model, config.versions, cache)
        if config.default_version not in {runner.version for runner in built}:
            raise ValueError(
                f"model {model.name}: its default version {config.default_version} "
                f"({versioning.DESCRIPTIONS[config.default_version]}) cannot be built here "
                "(see the log); pick another --default-version"
            )
        runners.extend(built)
    return runners


def build_llm(config: ServerConfig) -> LLMRunner | None:
    """The language model on the configured device, or None when ``config.llm`` is off."""
    if not config.llm:
        return None
    device = resolve_device(config.device)
    return LLMRunner(
        LLM_MODEL,
        MODEL_VERSION,
        LLM_SIZES[config.model_size],
        device,
        config.weights.get(LLM_MODEL),
    )


class ModelServer:
    """The models, their batchers and the server's state (ready, draining)."""

    def __init__(
        self,
        config: ServerConfig,
        runners: Sequence[ModelRunner],
        registry: CollectorRegistry | None = None,
        llm: LLMRunner | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        # model name -> version -> runner
        self.runners: dict[str, dict[str, ModelRunner]] = {}
        for model in runners:
            self.runners.setdefault(model.name, {})[model.version] = model
        self.llm = llm
        # One worker thread per device: batches of models on one device take turns on it.
        self.executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        # (model name, version) -> its batcher
        self.batchers: dict[tuple[str, str], DynamicBatcher[Any, Any]] = {}
        every: list[ModelRunner | LLMRunner] = [*runners, *([llm] if llm is not None else [])]
        for runner in every:
            device = str(runner.device)
            if device not in self.executors:
                self.executors[device] = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"model-{device}"
                )
            step = isinstance(runner, LLMRunner)
            self.batchers[runner.name, runner.version] = DynamicBatcher(
                runner.predict_batch,
                model_name=LLM_STEP_MODEL if step else runner.name,
                model_version=runner.version,
                max_batch_size=config.max_batch_size,
                # Decoding steps come in rounds (openai.StepScheduler): a round is one batch,
                # and waiting for more steps would add to every token's latency.
                max_queue_delay=0.0 if step else config.max_queue_delay,
                preferred_batch_sizes=config.preferred_batch_sizes,
                max_queue_size=config.max_queue_size,
                executor=self.executors[device],
                registry=registry,
            )
        self.scheduler = (
            openai.StepScheduler(self.batchers[llm.name, llm.version]) if llm is not None else None
        )
        self.ready = False
        self.draining = False
        self.generations = 0  # in flight; the drain lets them finish
        self._no_generations = asyncio.Event()
        self._no_generations.set()
        self._warm_up: asyncio.Task[None] | None = None
        self._gpu_metrics: Any = None

    def runner(self, name: str, version: str | None = None) -> ModelRunner:
        """The model's runner for ``version`` (None: the default version); 404 if unknown."""
        served = self.runners.get(name)
        if served is None:
            raise RequestError(
                f"unknown model {name!r}; this server has {sorted(self.runners)}",
                reason="unknown_model",
                status=404,
            )
        if version is None:
            version = self.config.default_version
            if version not in served:  # runners given directly, without the default version
                version = next(iter(served))
        runner = served.get(version)
        if runner is None:
            raise RequestError(
                f"model {name!r} has no version {version!r}; it has "
                + ", ".join(repr(v) for v in served),
                reason="unknown_version",
                status=404,
            )
        return runner

    def versions_of(self, name: str) -> list[str]:
        """The versions served of model ``name``."""
        return list(self.runners.get(name, {}))

    async def start(self) -> None:
        self._warm_up = asyncio.get_running_loop().create_task(self._warm_up_models())

    async def _warm_up_models(self) -> None:
        loop = asyncio.get_running_loop()
        sizes = self.config.warm_up_sizes()
        runners: list[ModelRunner | LLMRunner] = [
            runner for served in self.runners.values() for runner in served.values()
        ]
        if self.llm is not None:
            runners.append(self.llm)
        for runner in runners:
            executor = self.executors[str(runner.device)]
            try:
                await loop.run_in_executor(executor, runner.warm_up, sizes)
            except Exception:
                # Stay unready: readiness probes keep traffic away from a model that cannot run.
                log.exception("model %s failed its warm-up; the server stays unready", runner.name)
                return
            log.info(
                "model %s version %s warmed up on %s with batch sizes %s",
                runner.name,
                runner.version,
                runner.device,
                sizes,
            )
        await self._log_agreement()
        if any(runner.cuda for runner in runners):
            self.start_gpu_metrics()
        self.ready = not self.draining

    async def _log_agreement(self) -> None:
        """Log how well each version agrees with version 1 on a fixed input set."""
        loop = asyncio.get_running_loop()
        for name, served in self.runners.items():
            reference = served.get(versioning.EAGER)
            if reference is None or len(served) < 2:
                continue
            items = reference.sample_items(versioning.AGREEMENT_ITEMS)
            for version, candidate in served.items():
                if version == versioning.EAGER:
                    continue
                try:
                    result = await loop.run_in_executor(
                        self.executors[str(candidate.device)],
                        versioning.agreement,
                        reference,
                        candidate,
                        items,
                        self.config.max_batch_size,
                    )
                except Exception:  # informative only: the version is warmed up and serves
                    log.exception("model %s version %s: agreement not measured", name, version)
                    continue
                log.info(versioning.agreement_line(name, version, result))

    def start_gpu_metrics(self) -> None:
        """Serve the GPU families on this server's registry (called once models are on CUDA)."""
        try:
            from inferwatch.gpu import start_gpu_metrics
        except ImportError as exc:  # nvidia-ml-py missing: serve without GPU stats
            log.warning("no GPU metrics on /metrics: %s", exc)
            return
        try:
            self._gpu_metrics = start_gpu_metrics(
                registry=self.registry, interval=self.config.gpu_metrics_interval
            )
        except Exception:
            log.exception("GPU metrics could not start; serving without them")

    def check_ready(self) -> None:
        if not self.ready:
            raise RequestError(
                "the server is shutting down" if self.draining else "models are warming up",
                reason="shutting_down" if self.draining else "not_ready",
                status=503,
            )

    def llm_runner(self) -> LLMRunner:
        if self.llm is None:
            raise RequestError("this server serves no language model", "unknown_model", 404)
        return self.llm

    async def decode_step(self, step: DecodeStep) -> int:
        """One decoding step of a generation in flight: batched with the others' steps."""
        assert self.llm is not None and self.scheduler is not None
        token: int = await self._submit(self.llm.name, self.scheduler.step(step))
        return token

    def generation_started(self) -> None:
        self.generations += 1
        self._no_generations.clear()

    def generation_ended(self) -> None:
        self.generations -= 1
        if not self.generations:
            self._no_generations.set()

    async def infer(self, runner: ModelRunner, items: list[Any]) -> list[list[float]]:
        self.check_ready()
        batcher = self.batchers[runner.name, runner.version]
        if len(items) == 1:  # the common case, without gathering
            return [await self._submit(runner.name, batcher.submit(items[0]))]
        rows: list[list[float]] = await self._submit(runner.name, batcher.submit_many(items))
        return rows

    async def _submit(self, name: str, submitted: Awaitable[Any]) -> Any:
        try:
            return await submitted
        except Overloaded as exc:
            raise RequestError(str(exc), reason="overloaded", status=503) from exc
        except BatcherClosed as exc:
            raise RequestError(str(exc), reason="shutting_down", status=503) from exc
        except Exception as exc:
            log.warning("model %s failed a batch: %r", name, exc)
            raise RequestError(
                f"model {name!r} failed: {type(exc).__name__}: {exc}",
                reason="model_error",
                status=500,
            ) from exc

    async def drain(self) -> None:
        """Stop accepting inferences and finish every queued one."""
        self.draining = True
        self.ready = False
        if self._warm_up is not None and not self._warm_up.done():
            await asyncio.shield(self._warm_up)
        await self._no_generations.wait()  # each submits steps until it ends
        if self.scheduler is not None:
            await self.scheduler.close()
        await asyncio.gather(*(batcher.close() for batcher in self.batchers.values()))

    def close(self) -> None:
        for executor in self.executors.values():
            executor.shutdown(wait=True)
        if self._gpu_metrics is not None:
            self._gpu_metrics.close()


SERVER_KEY = web.AppKey("model_server", ModelServer)


def _error(status: int, message: str, reason: str) -> web.Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response({"error": message, "reason": reason}, status=status, headers=headers)


_HTTP_REASONS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return _error(exc.status, exc.message, exc.reason)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no endpoint at {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        else:
            message = exc.text or exc.reason
        return _error(exc.status, message, _HTTP_REASONS.get(exc.status, "http_error"))


async def _json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except RequestPayloadError as exc:  # a Content-Encoding the bytes do not decode with
        raise RequestError(f"the body could not be read: {exc}", reason="invalid_body") from exc
    if not raw:
        raise RequestError("the request has no body; send a JSON object", reason="invalid_json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON: {exc}", reason="invalid_json") from exc
    except RecursionError as exc:
        raise RequestError("the body's JSON is nested too deeply", reason="invalid_json") from exc


def _server(request: web.Request) -> ModelServer:
    return request.app[SERVER_KEY]


# --- Open Inference Protocol v2 -------------------------------------------------------------


async def v2_server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "inferwatch", "version": __version__, "extensions": []})


async def v2_live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def v2_ready(request: web.Request) -> web.Response:
    ready = _server(request).ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def v2_model_metadata(request: web.Request) -> web.Response:
    server = _server(request)
    runner = server.runner(request.match_info["model"], request.match_info.get("version"))
    return web.json_response(protocol.v2_model_metadata(runner, server.versions_of(runner.name)))


async def v2_model_ready(request: web.Request) -> web.Response:
    server = _server(request)
    runner = server.runner(request.match_info["model"], request.match_info.get("version"))
    body = {"name": runner.name, "ready": server.ready}
    return web.json_response(body, status=200 if server.ready else 503)


async def v2_infer(request: web.Request) -> web.Response:
    server = _server(request)
    runner = server.runner(request.match_info["model"], request.match_info.get("version"))
    parsed = protocol.parse_v2(await _json_body(request), runner, server.config.max_request_items)
    rows = await server.infer(runner, parsed.items)
    return web.json_response(protocol.v2_response(runner, parsed, rows))


# --- KServe V1 / TF Serving -------------------------------------------------------------------


async def v1_model_ready(request: web.Request) -> web.Response:
    server = _server(request)
    runner = server.runner(request.match_info["model"], request.match_info.get("version"))
    body = {"name": runner.name, "ready": server.ready}
    return web.json_response(body, status=200 if server.ready else 503)


async def v1_predict(request: web.Request) -> web.Response:
    server = _server(request)
    runner = server.runner(request.match_info["model"], request.match_info.get("version"))
    items, top_k = protocol.parse_v1(
        await _json_body(request), runner, server.config.max_request_items
    )
    rows = await server.infer(runner, items)
    return web.json_response(
        {"predictions": [protocol.prediction(runner, row, top_k) for row in rows]}
    )


# --- the simple JSON API ---------------------------------------------------------------------


def _text_runner(server: ModelServer) -> TextRunner:
    runner = server.runner(TEXT_MODEL)
    assert isinstance(runner, TextRunner)
    return runner


async def predict(request: web.Request) -> web.Response:
    server = _server(request)
    runner = _text_runner(server)
    item, top_k = protocol.parse_predict(await _json_body(request), runner)
    rows = await server.infer(runner, [item])
    return web.json_response(protocol.prediction(runner, rows[0], top_k))


async def batch_predict(request: web.Request) -> web.Response:
    """The seed's JSON list of ``{"text", "max_length"?}`` objects, answered by a list of
    ``{"label", "score"}`` in order; or ``{"texts": [...]}``, answered by ``{"predictions"}``."""
    server = _server(request)
    runner = _text_runner(server)
    body = await _json_body(request)
    if isinstance(body, list):
        items = protocol.parse_batch_list(body, runner, server.config.max_request_items)
        rows = await server.infer(runner, items)
        return web.json_response([protocol.label_and_score(runner, row) for row in rows])
    items, top_k = protocol.parse_batch_predict(body, runner, server.config.max_request_items)
    rows = await server.infer(runner, items)
    return web.json_response(
        {"predictions": [protocol.prediction(runner, row, top_k) for row in rows]}
    )


# --- OpenAI-style text generation ------------------------------------------------------------


async def openai_models(request: web.Request) -> web.Response:
    llm = _server(request).llm
    return web.json_response(openai.models_list([llm] if llm is not None else []))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


def _sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    server = _server(request)
    llm = server.llm_runner()
    parsed = openai.parse_generation(await _json_body(request), llm, chat=chat)
    server.check_ready()
    generation = openai.Generation(parsed)
    tokens = openai.instrumented(
        generation, openai.decode(generation, server.decode_step), llm, server.registry
    )
    server.generation_started()
    try:
        if not parsed.stream:
            async for _ in tokens:
                pass
            return web.json_response(openai.response(generation, llm))
        # The first token before the headers: a request the model cannot take (overloaded,
        # shutting down, failing) still gets its HTTP status.
        delta: str | None = await anext(tokens)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        if chat:
            await response.write(_sse(openai.chunk(generation, llm, role=True)))
        try:
            while delta is not None:
                if delta:
                    await response.write(_sse(openai.chunk(generation, llm, delta=delta)))
                delta = await anext(tokens, None)
        except RequestError as exc:  # the headers are sent: the error goes in the stream
            error = {"message": exc.message, "type": exc.reason, "code": exc.status}
            await response.write(_sse({"error": error}))
            return response
        await response.write(_sse(openai.chunk(generation, llm, finish=True)))
        if parsed.include_usage:
            await response.write(_sse(openai.usage_chunk(generation, llm)))
        await response.write(_sse("[DONE]"))
        await response.write_eof()
        return response
    finally:
        await tokens.aclose()  # a client gone mid-stream: the generation counts as cancelled
        server.generation_ended()


def create_app(
    config: ServerConfig | None = None,
    registry: CollectorRegistry | None = None,
    runners: Sequence[ModelRunner] | None = None,
    llm: LLMRunner | None = None,
) -> web.Application:
    """The server's application; ``runners`` default to :func:`build_runners` of ``config``,
    ``llm`` to :func:`build_llm` of it."""
    config = config or ServerConfig()
    if llm is None:
        llm = build_llm(config)
    server = ModelServer(
        config, build_runners(config) if runners is None else runners, registry, llm
    )
    # The tracing middleware is outermost: its span sees the status _json_errors answers with.
    app = web.Application(
        middlewares=[tracing.aiohttp_middleware, _json_errors],
        client_max_size=config.max_body_bytes,
    )
    app[SERVER_KEY] = server

    async def on_startup(app: web.Application) -> None:
        await server.start()

    async def on_shutdown(app: web.Application) -> None:
        await server.drain()

    async def on_cleanup(app: web.Application) -> None:
        server.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)

    r = app.router
    r.add_get("/v2", v2_server_metadata)
    r.add_get("/v2/health/live", v2_live)
    r.add_get("/v2/health/ready", v2_ready)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, v2_model_metadata)
        r.add_get(prefix + "/ready", v2_model_ready)
        r.add_post(prefix + "/infer", v2_infer)
    # No ":" in a V1 model or version: "GET .../m:predict" is the wrong method, not a model.
    for prefix in (
        "/v1/models/{model:[^/:]+}",
        "/v1/models/{model:[^/:]+}/versions/{version:[^/:]+}",
    ):
        r.add_get(prefix, v1_model_ready)
        r.add_post(prefix + ":predict", v1_predict)
    r.add_post("/predict", predict)
    r.add_post("/batch_predict", batch_predict)
    r.add_get("/v1/models", openai_models)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_get("/metrics", metrics_handler(registry))
    return app
