"""Running the reference model server in-process on 127.0.0.1, with gated models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from inferwatch import schema
from inferwatch.server.app import (
    IMAGE_MODEL,
    LLM_MODEL,
    LLM_STEP_MODEL,
    SERVER_KEY,
    TEXT_MODEL,
    ModelServer,
    ServerConfig,
    build_runners,
    create_app,
)
from inferwatch.server.models import ModelRunner
from support.batching import Gate
from support.polling import poll
from support.ports import LOOPBACK


def tiny_config(**overrides: Any) -> ServerConfig:
    """The tiny models on the CPU, version 1 only unless ``versions`` says otherwise."""
    settings: dict[str, Any] = {
        "device": "cpu",
        "model_size": "tiny",
        "max_queue_delay": 0.002,
        "versions": ("1",),
    }
    settings.update(overrides)
    return ServerConfig(**settings)


def gate_key(name: str, version: str, default_version: str = "1") -> str:
    """Gates and runners are keyed by model name for the default version, else
    ``name/vN``."""
    return name if version == default_version else f"{name}/v{version}"


@dataclass
class Served:
    """A running server: its URL, a client session, the models' gates and unwrapped functions."""

    url: str
    session: aiohttp.ClientSession
    runner: web.AppRunner
    server: ModelServer
    registry: CollectorRegistry
    gates: dict[str, Gate]
    runners: dict[str, ModelRunner]
    stopped: bool = field(default=False)

    async def request(
        self, method: str, path: str, json: Any = None, data: str | bytes | None = None
    ) -> tuple[int, Any, Any]:
        async with self.session.request(method, self.url + path, json=json, data=data) as r:
            body = await r.json(content_type=None) if r.content_length != 0 else None
            return r.status, body, r.headers

    def metric(self, family: schema.Family, suffix: str = "", **labels: str) -> float:
        value = self.registry.get_sample_value(
            family.name + suffix, {"source": schema.SOURCE_APP, **labels}
        )
        return 0.0 if value is None else value

    def unbatched(self, model: str, item: Any) -> list[float]:
        """The model's answer for one item run alone (the gate's wrapped function)."""
        rows = self.gates[model].fn([item])
        return list(rows[0])

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            for gate in self.gates.values():
                gate.open()
            await self.runner.cleanup()
            await self.session.close()


async def start_server(
    registry: CollectorRegistry,
    config: ServerConfig | None = None,
    *,
    wait_ready: bool = True,
    gates_open: bool = True,
) -> Served:
    config = config or tiny_config()
    runners = build_runners(config)
    gates: dict[str, Gate] = {}
    for model in runners:
        gate = Gate(model.predict_batch, open_=gates_open)
        model.predict_batch = gate  # type: ignore[method-assign]
        gates[gate_key(model.name, model.version, config.default_version)] = gate
    app = create_app(config, registry=registry, runners=runners)
    llm = app[SERVER_KEY].llm
    if llm is not None:  # the language model's steps go through a gate too
        batcher = app[SERVER_KEY].batchers[LLM_MODEL, llm.version]
        gate = Gate(batcher.batch_fn, open_=gates_open)
        batcher.batch_fn = gate
        gates[LLM_MODEL] = gate
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = runner.addresses[0][1]
    served = Served(
        url=f"http://{LOOPBACK}:{port}",
        session=aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)),
        runner=runner,
        server=app[SERVER_KEY],
        registry=registry,
        gates=gates,
        runners={gate_key(m.name, m.version, config.default_version): m for m in runners},
    )
    if wait_ready:
        await poll(lambda: served.server.ready, "the server to be ready")
        for gate in gates.values():
            gate.calls.clear()  # forget the warm-up batches
    return served


__all__ = [
    "IMAGE_MODEL",
    "LLM_MODEL",
    "LLM_STEP_MODEL",
    "TEXT_MODEL",
    "Served",
    "gate_key",
    "start_server",
    "tiny_config",
]
