"""Token streams: time to first token, time per output token, output tokens and finish reasons
from @monitor_inference(tokens=...) generators and track_inference's tokens()/finish().

Timing is never asserted against absolute numbers: each test brackets what the wrapper recorded
between what the consumer measured itself with the same clock (perf_counter) just before asking
for an item and just after receiving it, and checks it is at least the sleep the stream made.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as om_generate
from support.metrics import sample, value
from support.tracing import finished, hex_ids, in_memory_tracing

from inferwatch import monitor_inference, schema, tracing, track_inference

APP = {"source": "app"}
FIRST, GAP = 0.03, 0.01  # seconds the streams sleep before their first and each later token


class Boom(Exception):
    pass


def hist(reg: CollectorRegistry, family: schema.Family, suffix: str, model: str = "m") -> float:
    return value(reg, family.name + suffix, model_name=model, model_version="1", **APP)


def ttft(reg: CollectorRegistry, suffix: str = "_sum", model: str = "m") -> float:
    return hist(reg, schema.TIME_TO_FIRST_TOKEN, suffix, model)


def tpot(reg: CollectorRegistry, suffix: str = "_sum", model: str = "m") -> float:
    return hist(reg, schema.TIME_PER_OUTPUT_TOKEN, suffix, model)


def output_tokens(reg: CollectorRegistry, model: str = "m") -> float:
    return value(reg, schema.TOKENS.name, model_name=model, type="output", **APP)


def finishes(reg: CollectorRegistry, reason: str, model: str = "m") -> float:
    return value(reg, schema.FINISH_REASONS_TOTAL.name, model_name=model, reason=reason, **APP)


def total(reg: CollectorRegistry, status: str, model: str = "m") -> float:
    return value(
        reg, "model_inference_total", model_name=model, model_version="1", status=status, **APP
    )


def failures(reg: CollectorRegistry, reason: str, model: str = "m") -> float:
    return value(
        reg,
        "model_inference_failures_total",
        model_name=model,
        model_version="1",
        reason=reason,
        **APP,
    )


@dataclass
class Seen:
    """The consumer's own clock around each item: asked (before next()) and got (after)."""

    asked: list[float]
    got: list[float]
    items: list[Any]

    def check_ttft(self, recorded: float, token_item: int = 0) -> None:
        # The wrapper's clock starts after the consumer's first ask and stops before the
        # consumer holds the item carrying the first token.
        assert FIRST <= recorded <= self.got[token_item] - self.asked[0]

    def check_tpot(self, recorded: float, tokens: int, first: int = 0, last: int = -1) -> None:
        low = (self.asked[last] - self.got[first]) / (tokens - 1)
        high = (self.got[last] - self.asked[first]) / (tokens - 1)
        assert max(low, 0.0) <= recorded <= high
        gaps = (last % len(self.items)) - first  # sleeps of GAP between the two items
        assert recorded >= GAP * gaps / (tokens - 1) * 0.999


def consume(gen: Iterator[Any]) -> Seen:
    seen = Seen([], [], [])
    while True:
        seen.asked.append(perf_counter())
        try:
            item = next(gen)
        except StopIteration:
            seen.asked.pop()
            return seen
        seen.got.append(perf_counter())
        seen.items.append(item)


async def aconsume(gen: AsyncIterator[Any]) -> Seen:
    seen = Seen([], [], [])
    while True:
        seen.asked.append(perf_counter())
        try:
            item = await gen.__anext__()
        except StopAsyncIteration:
            seen.asked.pop()
            return seen
        seen.got.append(perf_counter())
        seen.items.append(item)


# --- generators -----------------------------------------------------------------------------------


def test_a_sync_token_stream_records_ttft_tpot_and_tokens(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry, tokens=True)
    def generate(prompt: str) -> Iterator[str]:
        time.sleep(FIRST)
        for word in prompt.split():
            yield word
            time.sleep(GAP)

    seen = consume(generate("one two three four five"))
    assert seen.items == ["one", "two", "three", "four", "five"]
    assert ttft(registry, "_count") == 1
    seen.check_ttft(ttft(registry))
    assert tpot(registry, "_count") == 1
    seen.check_tpot(tpot(registry), tokens=5)
    assert output_tokens(registry) == 5
    assert total(registry, "success") == 1
    assert hist(registry, schema.TIME_TO_FIRST_BYTE, "_count") == 1
    assert finishes(registry, "stop") == 0  # nothing reported, nothing guessed


async def test_an_async_token_stream_records_ttft_tpot_and_tokens(
    registry: CollectorRegistry,
) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry, tokens=True)
    async def generate(prompt: str) -> AsyncIterator[str]:
        await asyncio.sleep(FIRST)
        for word in prompt.split():
            yield word
            await asyncio.sleep(GAP)

    seen = await aconsume(generate("a b c d"))
    assert len(seen.items) == 4
    seen.check_ttft(ttft(registry))
    seen.check_tpot(tpot(registry), tokens=4)
    assert output_tokens(registry) == 4
    assert total(registry, "success") == 1


@dataclass
class Chunk:
    """An OpenAI-style streamed chunk: some token ids, perhaps a finish reason."""

    token_ids: list[int]
    finish_reason: str | None = None


def chunk_tokens(chunk: Chunk) -> int:
    return len(chunk.token_ids)


def chunk_finish(chunk: Chunk) -> str | None:
    return chunk.finish_reason


async def test_tokens_and_finish_reason_callables_read_each_item(
    registry: CollectorRegistry,
) -> None:
    class Engine:
        @monitor_inference(
            model_name="m",
            model_version="1",
            registry=registry,
            tokens=chunk_tokens,
            finish_reason=chunk_finish,
        )
        async def stream(self, prompt: str) -> AsyncIterator[Chunk]:
            yield Chunk([])  # the role chunk: no token, so not the first token
            await asyncio.sleep(FIRST)
            yield Chunk([1, 2])
            await asyncio.sleep(GAP)
            yield Chunk([3, 4, 5])
            await asyncio.sleep(GAP)
            yield Chunk([6], finish_reason="length")
            yield Chunk([])  # a trailing usage chunk: no tokens, decoding already ended

    seen = await aconsume(Engine().stream("hello"))
    assert len(seen.items) == 5
    seen.check_ttft(ttft(registry), token_item=1)
    # (third token-carrying item's arrival - first's) / (6 tokens - 1)
    seen.check_tpot(tpot(registry), tokens=6, first=1, last=3)
    assert output_tokens(registry) == 6
    assert finishes(registry, "length") == 1
    assert finishes(registry, "stop") == 0
    # The role chunk was still the first byte.
    assert hist(registry, schema.TIME_TO_FIRST_BYTE, "_sum") < ttft(registry)


def test_an_unknown_finish_reason_counts_as_other(registry: CollectorRegistry) -> None:
    @monitor_inference(
        model_name="m", registry=registry, tokens=chunk_tokens, finish_reason=chunk_finish
    )
    def stream() -> Iterator[Chunk]:
        yield Chunk([1], "eos_token")

    assert len(list(stream())) == 1
    assert value(registry, schema.FINISH_REASONS_TOTAL.name, model_name="m", reason="other", **APP)
    assert (
        value(
            registry,
            schema.TIME_PER_OUTPUT_TOKEN.name + "_count",
            model_name="m",
            model_version="",
            **APP,
        )
        == 0
    )  # one token: no time per token


def test_an_error_mid_stream_counts_the_failure_and_no_tpot(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry, tokens=True)
    def generate(prompt: str) -> Iterator[str]:
        yield "one"
        yield "two"
        raise Boom("lost the GPU")

    gen = generate("x")
    assert [next(gen), next(gen)] == ["one", "two"]
    with pytest.raises(Boom, match="lost the GPU"):
        next(gen)
    assert failures(registry, "exception") == 1
    assert ttft(registry, "_count") == 1  # the first token did arrive
    assert tpot(registry, "_count") == 0
    assert output_tokens(registry) == 2  # generated, if not delivered whole


async def test_an_async_error_mid_stream_counts_the_failure_and_no_tpot(
    registry: CollectorRegistry,
) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry, tokens=True)
    async def generate(prompt: str) -> AsyncIterator[str]:
        yield "one"
        yield "two"
        raise Boom("decode failed")

    with pytest.raises(Boom):
        async for _ in generate("x"):
            pass
    assert (failures(registry, "exception"), tpot(registry, "_count")) == (1, 0)
    assert output_tokens(registry) == 2


def test_a_consumer_that_closes_early_cancels_without_tpot(registry: CollectorRegistry) -> None:
    closed: list[bool] = []

    @monitor_inference(
        model_name="m",
        model_version="1",
        registry=registry,
        tokens=chunk_tokens,
        finish_reason=chunk_finish,
    )
    def generate(prompt: str) -> Iterator[Chunk]:
        try:
            yield Chunk([1])
            yield Chunk([2], "stop")
            yield Chunk([])  # a usage chunk the consumer never asks for
        finally:
            closed.append(True)

    gen = generate("x")
    next(gen)
    assert next(gen).finish_reason == "stop"
    gen.close()  # an OpenAI-style client stops reading at the finish reason
    assert closed == [True]
    assert failures(registry, "cancelled") == 1
    assert tpot(registry, "_count") == 0
    assert output_tokens(registry) == 2
    assert finishes(registry, "stop") == 1  # reported before the close: the model did finish


async def test_an_async_consumer_that_closes_early(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry, tokens=True)
    async def generate(prompt: str) -> AsyncIterator[int]:
        for i in range(100):
            yield i

    gen = generate("x")
    assert [await gen.__anext__(), await gen.__anext__(), await gen.__anext__()] == [0, 1, 2]
    await gen.aclose()
    assert failures(registry, "cancelled") == 1
    assert (ttft(registry, "_count"), tpot(registry, "_count")) == (1, 0)
    assert output_tokens(registry) == 3


async def test_a_cancelled_consumer_task(registry: CollectorRegistry) -> None:
    waiting = asyncio.Event()

    @monitor_inference(model_name="m", model_version="1", registry=registry, tokens=True)
    async def generate(prompt: str) -> AsyncIterator[str]:
        yield "token"
        waiting.set()
        await asyncio.Event().wait()
        yield "never"

    async def read() -> None:
        async for _ in generate("x"):
            pass

    task = asyncio.create_task(read())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures(registry, "cancelled") == 1
    assert tpot(registry, "_count") == 0


def test_send_throw_and_return_still_pass_through(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry, tokens=True)
    def accumulate(start: int) -> Iterator[int]:
        acc = start
        while acc < 10:
            try:
                got = yield acc
            except Boom:
                got = 100
            acc += got
        return acc

    gen = accumulate(1)
    assert next(gen) == 1
    assert gen.send(2) == 3
    with pytest.raises(StopIteration) as stop:
        gen.throw(Boom())
    assert stop.value.value == 103
    assert total(registry, "success") == 1
    assert output_tokens(registry) == 2
    assert tpot(registry, "_count") == 1


def test_a_broken_callable_never_breaks_the_stream(registry: CollectorRegistry) -> None:
    def bad_count(item: Any) -> int:
        raise RuntimeError("no tokenizer")

    def bad_reason(item: Any) -> str | None:
        raise RuntimeError("no reason")

    @monitor_inference(
        model_name="m",
        model_version="1",
        registry=registry,
        tokens=bad_count,
        finish_reason=bad_reason,
    )
    def generate() -> Iterator[int]:
        yield from range(3)

    assert list(generate()) == [0, 1, 2]
    assert total(registry, "success") == 1
    assert (ttft(registry, "_count"), output_tokens(registry)) == (0, 0)


def test_without_tokens_a_generator_keeps_todays_metrics(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def chunks() -> Iterator[bytes]:
        yield b"image part 1"
        yield b"image part 2"

    assert len(list(chunks())) == 2
    assert hist(registry, schema.TIME_TO_FIRST_BYTE, "_count") == 1
    assert (ttft(registry, "_count"), tpot(registry, "_count"), output_tokens(registry)) == (
        0,
        0,
        0,
    )


def test_token_options_need_a_generator(registry: CollectorRegistry) -> None:
    def predict(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="need a generator or an async generator"):
        monitor_inference(model_name="m", registry=registry, tokens=True)(predict)
    with pytest.raises(TypeError, match="need a generator or an async generator"):
        monitor_inference(model_name="m", registry=registry, finish_reason=chunk_finish)(predict)
    with pytest.raises(TypeError, match="tokens must be True, False, None or a callable"):
        monitor_inference(model_name="m", registry=registry, tokens=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="finish_reason must be a callable or None"):
        monitor_inference(model_name="m", registry=registry, finish_reason="stop")  # type: ignore[arg-type]


# --- track_inference ------------------------------------------------------------------------------


def test_track_inference_marks_tokens_as_they_arrive(registry: CollectorRegistry) -> None:
    before: list[float] = []
    after: list[float] = []
    entering = perf_counter()
    with track_inference("m", "1", registry=registry) as t:
        entered = perf_counter()
        for n in (1, 2, 2):
            time.sleep(GAP if before else FIRST)
            before.append(perf_counter())
            t.tokens(n)
            after.append(perf_counter())
        t.finish("length")
        t.add_tokens(input=12)
    assert FIRST <= before[0] - entered <= ttft(registry) <= after[0] - entering
    assert (before[-1] - after[0]) / 4 <= tpot(registry) <= (after[-1] - before[0]) / 4
    assert tpot(registry) >= 2 * GAP / 4
    assert output_tokens(registry) == 5
    assert value(registry, schema.TOKENS.name, model_name="m", type="input", **APP) == 12
    assert finishes(registry, "length") == 1
    assert total(registry, "success") == 1


def test_track_inference_first_token_then_a_usage_report(registry: CollectorRegistry) -> None:
    with track_inference("m", "1", registry=registry) as t:
        time.sleep(FIRST)
        marking = perf_counter()
        t.first_token()
        first = perf_counter()
        time.sleep(GAP * 3)
        t.add_tokens(output=4)  # the usage report: decoding ended with the block
        before_exit = perf_counter()
    after = perf_counter()
    assert ttft(registry) >= FIRST
    assert (before_exit - first) / 3 <= tpot(registry) <= (after - marking) / 3
    assert output_tokens(registry) == 4


async def test_track_inference_failure_counts_no_tpot(registry: CollectorRegistry) -> None:
    with pytest.raises(Boom):
        async with track_inference("m", "1", registry=registry) as t:
            t.tokens()
            t.tokens(3)
            raise Boom()
    assert (ttft(registry, "_count"), tpot(registry, "_count")) == (1, 0)
    assert output_tokens(registry) == 4
    assert failures(registry, "exception") == 1


def test_track_inference_zero_tokens_mark_nothing(registry: CollectorRegistry) -> None:
    with track_inference("m", "1", registry=registry) as t:
        t.tokens(0)
        t.tokens(1)
        t.first_token()  # already marked: observed once
    assert (ttft(registry, "_count"), tpot(registry, "_count")) == (1, 0)


# --- exemplars, multiprocess ----------------------------------------------------------------------


def _exemplar(text: str, family: str, model: str) -> dict[str, str] | None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == family + "_bucket" and s.labels.get("model_name") == model and s.exemplar:
                return dict(s.exemplar.labels)
    return None


async def test_traced_streams_put_their_span_on_ttft_and_tpot(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="agen", registry=registry, batch_size=False, tokens=True)
    async def agen(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0.001)
            yield i

    @monitor_inference(model_name="gen", registry=registry, batch_size=False, tokens=True)
    def gen(n: int) -> Iterator[int]:
        for i in range(n):
            time.sleep(0.001)
            yield i

    try:
        with in_memory_tracing() as exporter:
            assert [i async for i in agen(3)] == [0, 1, 2]
            assert list(gen(3)) == [0, 1, 2]
            with track_inference("block", registry=registry) as t:
                t.tokens()
                time.sleep(0.001)
                t.tokens()
            spans = {s.name: s for s in finished(exporter)}
    finally:
        tracing.shutdown_tracing()
    text = om_generate(registry).decode()
    for name in ("agen", "gen", "block"):
        trace_id, span_id = hex_ids(spans[f"inference {name}"])
        expected = {"trace_id": trace_id, "span_id": span_id}
        assert _exemplar(text, schema.TIME_TO_FIRST_TOKEN.name, name) == expected, name
        assert _exemplar(text, schema.TIME_PER_OUTPUT_TOKEN.name, name) == expected, name


WORKER = """
import sys
from inferwatch import monitor_inference

@monitor_inference(model_name="llm", model_version="1", tokens=True,
                   finish_reason=lambda item: "stop" if item == "." else None)
def generate(n):
    for i in range(n):
        yield "w"
    yield "."

for n in range(int(sys.argv[1])):
    list(generate(n + 1))
"""


def test_workers_aggregate_token_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for calls in (3, 4):
        subprocess.run([sys.executable, "-c", WORKER, str(calls)], env=env, check=True, timeout=60)
    aggregated = CollectorRegistry()
    MultiProcessCollector(aggregated, path=str(tmp_path))
    text = generate_latest(aggregated).decode()
    labels = {"model_name": "llm", "model_version": "1", **APP}
    generations = 3 + 4
    assert sample(text, schema.TIME_TO_FIRST_TOKEN.count, **labels) == generations
    assert sample(text, schema.TIME_PER_OUTPUT_TOKEN.count, **labels) == generations
    # n + 1 words and a period, n from 0: 2+3+4 and 2+3+4+5
    tokens = {"model_name": "llm", "type": "output", **APP}
    assert sample(text, schema.TOKENS.name, **tokens) == 9 + 14
    assert (
        sample(text, schema.FINISH_REASONS_TOTAL.name, model_name="llm", reason="stop", **APP)
        == generations
    )
