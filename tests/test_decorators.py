"""@monitor_inference and track_inference: every kind of callable, every outcome."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.metrics import value

from inferwatch import monitor_inference, track_inference
from inferwatch.decorators import count_items

APP = {"source": "app"}


def total(reg: CollectorRegistry, status: str, model: str = "m", version: str = "1") -> float:
    return value(
        reg,
        "model_inference_total",
        model_name=model,
        model_version=version,
        status=status,
        **APP,
    )


def failures(reg: CollectorRegistry, reason: str, model: str = "m", version: str = "1") -> float:
    return value(
        reg,
        "model_inference_failures_total",
        model_name=model,
        model_version=version,
        reason=reason,
        **APP,
    )


def duration_count(reg: CollectorRegistry, model: str = "m", version: str = "1") -> float:
    return value(
        reg,
        "model_inference_duration_seconds_count",
        model_name=model,
        model_version=version,
        **APP,
    )


def active(reg: CollectorRegistry, model: str = "m") -> float:
    return value(reg, "model_active_requests", model_name=model, **APP)


def batch(reg: CollectorRegistry, suffix: str, model: str = "m", le: str | None = None) -> float:
    labels = {"model_name": model, **APP}
    if le is not None:
        labels["le"] = le
    return value(reg, "model_batch_size" + suffix, **labels)


class Boom(Exception):
    pass


# --- plain functions ------------------------------------------------------------------------------


def test_sync_success_records_every_family(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def predict(items: list[int]) -> list[int]:
        assert active(registry) == 1  # in flight while running
        return [i * 2 for i in items]

    assert predict([1, 2, 3]) == [2, 4, 6]
    assert predict([4]) == [8]
    assert total(registry, "success") == 2
    assert total(registry, "error") == 0
    assert duration_count(registry) == 2
    assert active(registry) == 0
    assert batch(registry, "_count") == 2
    assert batch(registry, "_sum") == 4
    assert batch(registry, "_bucket", le="2.0") == 1  # the batch of 1
    assert batch(registry, "_bucket", le="4.0") == 2  # and the batch of 3


def test_sync_exception_propagates_unchanged(registry: CollectorRegistry) -> None:
    error = Boom("model fell over")

    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def predict(items: list[int]) -> None:
        raise error

    with pytest.raises(Boom) as raised:
        predict([1])
    assert raised.value is error
    assert total(registry, "error") == 1
    assert total(registry, "success") == 0
    assert failures(registry, "exception") == 1
    assert failures(registry, "cancelled") == 0
    assert duration_count(registry) == 1
    assert active(registry) == 0


def test_bare_decorator_uses_function_name(registry: CollectorRegistry) -> None:
    # Bare form goes to the default registry: use a unique name and read deltas.
    from prometheus_client import REGISTRY

    before = value(
        REGISTRY,
        "model_inference_total",
        model_name="bare_decorated_model",
        model_version="",
        status="success",
        **APP,
    )

    @monitor_inference
    def bare_decorated_model(x: int) -> int:
        return x

    assert bare_decorated_model(3) == 3
    after = value(
        REGISTRY,
        "model_inference_total",
        model_name="bare_decorated_model",
        model_version="",
        status="success",
        **APP,
    )
    assert after - before == 1


def test_wraps_keeps_metadata_and_signature(registry: CollectorRegistry) -> None:
    def predict(inputs: list[float], *, temperature: float = 1.0) -> list[float]:
        """Scores."""
        return inputs

    wrapped = monitor_inference(model_name="m", registry=registry)(predict)
    assert wrapped.__name__ == "predict"
    assert wrapped.__doc__ == "Scores."
    assert wrapped.__wrapped__ is predict  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(predict)


# --- methods and batch sizes ----------------------------------------------------------------------


def test_method_batch_size_skips_self(registry: CollectorRegistry) -> None:
    class Handler:
        def __len__(self) -> int:  # a self with a length must not be taken for the batch
            return 999

        @monitor_inference(model_name="m", model_version="1", registry=registry)
        def predict(self, batch: list[str]) -> int:
            return len(batch)

        @classmethod
        @monitor_inference(model_name="m", model_version="1", registry=registry)
        def predict_cls(cls, batch: list[str]) -> int:
            return len(batch)

    assert Handler().predict(["a", "b", "c", "d", "e"]) == 5
    assert Handler.predict_cls(["a", "b"]) == 2
    assert batch(registry, "_sum") == 7
    assert batch(registry, "_count") == 2


def test_batch_size_from_keyword_argument(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def predict(inputs: list[int], scale: int = 1) -> int:
        return len(inputs) * scale

    predict(inputs=[1, 2, 3, 4], scale=2)
    assert batch(registry, "_sum") == 4


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ([1, 2, 3], 3),
        ((1, 2), 2),
        ("a sentence of text", 1),
        (b"raw bytes", 1),
        (np.zeros((6, 3, 224, 224), dtype=np.uint8), 6),
        ({"instances": [1, 2], "other": 3}, None),
        (42, None),
        (np.float32(1.0), None),
        (np.array(5.0), None),  # 0-d array has no len()
    ],
)
def test_count_items(argument: Any, expected: int | None) -> None:
    assert count_items(argument) == expected


def test_batch_size_int_callable_and_false(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="fixed", registry=registry, batch_size=8)
    def fixed(x: list[int]) -> None:
        pass

    @monitor_inference(model_name="computed", registry=registry, batch_size=lambda req: req["n"])
    def computed(req: dict[str, int]) -> None:
        pass

    @monitor_inference(model_name="off", registry=registry, batch_size=False)
    def off(x: list[int]) -> None:
        pass

    fixed([1])
    computed({"n": 17})
    off([1, 2, 3])
    assert batch(registry, "_sum", model="fixed") == 8
    assert batch(registry, "_sum", model="computed") == 17
    assert batch(registry, "_count", model="off") == 0
    assert total(registry, "success", model="off", version="") == 1


def test_broken_batch_extractor_does_not_break_the_call(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry, batch_size=lambda: 1)
    def predict(x: int) -> int:  # the extractor takes no argument: it raises TypeError
        return x + 1

    assert predict(1) == 2
    assert total(registry, "success") == 1
    assert batch(registry, "_count") == 0


def test_no_argument_records_no_batch(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def health() -> str:
        return "ok"

    assert health() == "ok"
    assert batch(registry, "_count") == 0
    assert total(registry, "success") == 1


def test_invalid_batch_size_is_a_clear_error(registry: CollectorRegistry) -> None:
    with pytest.raises(TypeError, match="batch_size"):
        monitor_inference(model_name="m", registry=registry, batch_size="8")(  # type: ignore[arg-type]
            lambda x: x
        )
    with pytest.raises(TypeError, match="batch_size"):
        monitor_inference(model_name="m", registry=registry, batch_size=True)(lambda x: x)


# --- coroutines -----------------------------------------------------------------------------------


async def test_async_success_and_in_flight(registry: CollectorRegistry) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def predict(items: list[int]) -> int:
        started.set()
        await release.wait()
        return sum(items)

    task = asyncio.create_task(predict([1, 2]))
    await started.wait()
    assert active(registry) == 1
    release.set()
    assert await task == 3
    assert active(registry) == 0
    assert total(registry, "success") == 1
    assert batch(registry, "_sum") == 2


async def test_async_exception(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def predict(items: list[int]) -> int:
        await asyncio.sleep(0)
        raise Boom("bad")

    with pytest.raises(Boom, match="bad"):
        await predict([1])
    assert failures(registry, "exception") == 1
    assert total(registry, "error") == 1
    assert active(registry) == 0


async def test_async_cancellation(registry: CollectorRegistry) -> None:
    started = asyncio.Event()

    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def predict(items: list[int]) -> int:
        started.set()
        await asyncio.Event().wait()  # never finishes on its own
        return 0

    task = asyncio.create_task(predict([1]))
    await started.wait()
    assert active(registry) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures(registry, "cancelled") == 1
    assert failures(registry, "exception") == 0
    assert total(registry, "error") == 1
    assert active(registry) == 0


# --- generators -----------------------------------------------------------------------------------


def test_generator_success_records_time_to_first_item(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def stream(prompt: str) -> Iterator[str]:
        assert active(registry) == 1
        yield from prompt.split()
        return None

    assert list(stream("three short words")) == ["three", "short", "words"]
    ttfb = value(
        registry,
        "model_inference_time_to_first_byte_seconds_count",
        model_name="m",
        model_version="1",
        **APP,
    )
    assert ttfb == 1
    assert total(registry, "success") == 1
    assert active(registry) == 0
    assert batch(registry, "_sum") == 1  # one prompt string is one item


def test_generator_is_lazy_and_forwards_send_and_return(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def accumulate(start: list[int]) -> Iterator[int]:
        acc = sum(start)
        while acc < 10:
            got = yield acc
            acc += got
        return acc

    gen = accumulate([1])
    assert active(registry) == 0  # nothing runs until the first next()
    assert next(gen) == 1
    assert gen.send(4) == 5
    with pytest.raises(StopIteration) as stop:
        gen.send(7)
    assert stop.value.value == 12
    assert total(registry, "success") == 1
    assert active(registry) == 0


def test_generator_exception_mid_stream(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def stream(prompt: str) -> Iterator[str]:
        yield "first"
        raise Boom("lost the GPU")

    gen = stream("x")
    assert next(gen) == "first"
    with pytest.raises(Boom, match="lost the GPU"):
        next(gen)
    assert failures(registry, "exception") == 1
    assert active(registry) == 0


def test_generator_throw_is_forwarded(registry: CollectorRegistry) -> None:
    seen: list[BaseException] = []

    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def stream(prompt: str) -> Iterator[str]:
        try:
            yield "a"
        except Boom as exc:
            seen.append(exc)
            yield "recovered"

    gen = stream("x")
    next(gen)
    assert gen.throw(Boom("from the consumer")) == "recovered"
    gen.close()
    assert len(seen) == 1
    assert failures(registry, "cancelled") == 1  # closed before its end


def test_generator_closed_early(registry: CollectorRegistry) -> None:
    closed: list[bool] = []

    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def stream(prompt: str) -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    gen = stream("x")
    assert [next(gen), next(gen)] == [0, 1]
    assert active(registry) == 1
    gen.close()
    assert closed == [True]  # the wrapped generator was closed too
    assert active(registry) == 0
    assert failures(registry, "cancelled") == 1
    assert total(registry, "success") == 0


def test_empty_generator_is_a_success_without_first_byte(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    def nothing(prompt: str) -> Iterator[int]:
        return
        yield  # pragma: no cover

    assert list(nothing("x")) == []
    assert total(registry, "success") == 1
    ttfb = value(
        registry,
        "model_inference_time_to_first_byte_seconds_count",
        model_name="m",
        model_version="1",
        **APP,
    )
    assert ttfb == 0


# --- async generators -----------------------------------------------------------------------------


async def test_async_generator_success(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def stream(prompts: list[str]) -> AsyncIterator[str]:
        for p in prompts:
            await asyncio.sleep(0)
            yield p.upper()

    assert [x async for x in stream(["a", "b"])] == ["A", "B"]
    assert total(registry, "success") == 1
    assert batch(registry, "_sum") == 2
    ttfb = value(
        registry,
        "model_inference_time_to_first_byte_seconds_count",
        model_name="m",
        model_version="1",
        **APP,
    )
    assert ttfb == 1
    assert active(registry) == 0


async def test_async_generator_exception(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def stream(prompt: str) -> AsyncIterator[str]:
        yield "one"
        raise Boom("decode failed")

    out: list[str] = []
    with pytest.raises(Boom, match="decode failed"):
        async for item in stream("x"):
            out.append(item)
    assert out == ["one"]
    assert failures(registry, "exception") == 1
    assert active(registry) == 0


async def test_async_generator_closed_early(registry: CollectorRegistry) -> None:
    closed: list[bool] = []

    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def stream(prompt: str) -> AsyncIterator[int]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.append(True)

    gen = stream("x")
    assert await gen.__anext__() == 0
    await gen.aclose()
    assert closed == [True]
    assert failures(registry, "cancelled") == 1
    assert active(registry) == 0


async def test_async_generator_cancelled_while_waiting(registry: CollectorRegistry) -> None:
    waiting = asyncio.Event()

    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def stream(prompt: str) -> AsyncIterator[str]:
        yield "token"
        waiting.set()
        await asyncio.Event().wait()
        yield "never"

    async def consume() -> None:
        async for _ in stream("x"):
            pass

    task = asyncio.create_task(consume())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures(registry, "cancelled") == 1
    assert active(registry) == 0


async def test_async_generator_asend(registry: CollectorRegistry) -> None:
    @monitor_inference(model_name="m", model_version="1", registry=registry)
    async def echo(prompt: str) -> AsyncIterator[str]:
        got = yield "ready"
        yield f"echo {got}"

    gen = echo("x")
    assert await gen.asend(None) == "ready"
    assert await gen.asend("hi") == "echo hi"
    with pytest.raises(StopAsyncIteration):
        await gen.asend(None)
    assert total(registry, "success") == 1


# --- track_inference ------------------------------------------------------------------------------


def test_track_inference_block(registry: CollectorRegistry) -> None:
    with track_inference("m", "1", registry=registry) as t:
        assert active(registry) == 1
        t.batch_size = 12
        t.first_byte()
        t.add_tokens(input=30, output=7)
    assert total(registry, "success") == 1
    assert batch(registry, "_sum") == 12
    assert active(registry) == 0
    tokens_in = value(registry, "model_inference_tokens_total", model_name="m", type="input", **APP)
    tokens_out = value(
        registry, "model_inference_tokens_total", model_name="m", type="output", **APP
    )
    assert (tokens_in, tokens_out) == (30, 7)


def test_track_inference_exception(registry: CollectorRegistry) -> None:
    with pytest.raises(Boom), track_inference("m", "1", registry=registry):
        raise Boom()
    assert failures(registry, "exception") == 1
    assert active(registry) == 0
    assert batch(registry, "_count") == 0  # never set


async def test_track_inference_async_cancelled(registry: CollectorRegistry) -> None:
    entered = asyncio.Event()

    async def work() -> None:
        async with track_inference("m", "1", registry=registry):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert failures(registry, "cancelled") == 1
    assert active(registry) == 0


def test_models_and_registries_are_separate() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()

    @monitor_inference(model_name="a", model_version="1", registry=first)
    def a(x: int) -> int:
        return x

    @monitor_inference(model_name="b", model_version="2", registry=first)
    def b(x: int) -> int:
        return x

    @monitor_inference(model_name="a", model_version="1", registry=second)
    def a_elsewhere(x: int) -> int:
        return x

    a(1)
    a(1)
    b(1)
    a_elsewhere(1)
    assert total(first, "success", model="a") == 2
    assert total(first, "success", model="b", version="2") == 1
    assert total(second, "success", model="a") == 1
    assert total(second, "success", model="b", version="2") == 0
