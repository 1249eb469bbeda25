"""Run a small instrumented model in-process, serve its /metrics and print a sample scrape.

This shows the decorators at work with nothing else installed; the full stack (model server,
sidecar, Prometheus, Alertmanager) comes with ``inferwatch demo`` once the stack lands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import urllib.request
from collections.abc import AsyncIterator, Callable

from inferwatch import monitor_inference, start_metrics_server, track_inference


def _models() -> tuple[Callable[[list[str]], list[str]], Callable[[str], AsyncIterator[str]]]:
    """The demo's models, decorated when the demo runs (not when the CLI is imported)."""

    class SentimentModel:
        """A stand-in model: class-based, as TorchServe-style handlers are."""

        @monitor_inference(model_name="sentiment", model_version="1")
        def predict(self, texts: list[str]) -> list[str]:
            time.sleep(0.002 * len(texts))
            if any(not t for t in texts):
                raise ValueError("empty text")
            return ["positive" if "good" in t else "negative" for t in texts]

    @monitor_inference(model_name="generator", model_version="1", batch_size=1)
    async def generate(prompt: str) -> AsyncIterator[str]:
        for word in prompt.split():
            await asyncio.sleep(0.001)
            yield word

    return SentimentModel().predict, generate


async def _drive(calls: int) -> None:
    predict, generate = _models()
    rng = random.Random(7)
    for i in range(calls):
        batch = ["good day"] * rng.randint(1, 8)
        if i % 10 == 9:
            batch.append("")  # an error now and then
        with contextlib.suppress(ValueError):
            predict(batch)
        async for _ in generate("stream these few words"):
            pass
        with track_inference("ranker", "2") as t:
            t.batch_size = rng.randint(1, 32)
            await asyncio.sleep(0.001)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=9464, help="metrics port (0: any free port)")
    parser.add_argument("--calls", type=int, default=50, help="inferences to run per model")
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="keep serving /metrics for this many seconds after the sample (default: exit)",
    )


def run(args: argparse.Namespace) -> int:
    server = start_metrics_server(args.port, addr="127.0.0.1")
    try:
        asyncio.run(_drive(args.calls))
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        lines = [
            line
            for line in text.splitlines()
            if line.startswith(("model_", "# HELP model_", "# TYPE model_"))
            and "_bucket{" not in line
        ]
        print("\n".join(lines))
        print(f"\nFull scrape (with histogram buckets): curl {url}")
        if args.duration > 0:
            print(f"Serving for {args.duration:.0f} s; Ctrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(args.duration)
    finally:
        server.close()
    return 0
