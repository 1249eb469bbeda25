"""DynamicBatcher: when batches leave the queue, what fails together, cancellation, overload."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from support.batching import Gate
from support.polling import poll

from inferwatch import schema
from inferwatch.batching import BatcherClosed, DynamicBatcher, Overloaded

MODEL = "m"


def double(items: list[int]) -> list[int]:
    return [2 * item for item in items]


def sample(
    registry: CollectorRegistry, family: schema.Family, suffix: str = "", **labels: str
) -> float:
    base = {"source": schema.SOURCE_APP, "model_name": MODEL}
    name = family.name + suffix
    value = registry.get_sample_value(name, {**base, **labels})
    return 0.0 if value is None else value


def batcher(gate: Gate, registry: CollectorRegistry, **kwargs: object) -> DynamicBatcher[int, int]:
    settings: dict[str, object] = {"max_batch_size": 32, "max_queue_delay": 0.0}
    settings.update(kwargs)
    return DynamicBatcher(gate, model_name=MODEL, model_version="1", registry=registry, **settings)  # type: ignore[arg-type]


async def hold_first_batch(
    b: DynamicBatcher[int, int], gate: Gate, item: int = 0
) -> asyncio.Task[int]:
    """Start a request and wait until its batch is inside the (closed) gate."""
    gate.close()
    task = asyncio.create_task(b.submit(item))
    await poll(gate.entered.is_set)
    return task


async def test_full_batch_dispatches_at_once(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    # A one-minute delay: only reaching max_batch_size can dispatch this batch in time.
    async with batcher(gate, registry, max_batch_size=4, max_queue_delay=60.0) as b:
        results = await asyncio.wait_for(asyncio.gather(*(b.submit(i) for i in range(4))), 10)
    assert results == [0, 2, 4, 6]
    assert gate.calls == [[0, 1, 2, 3]]
    assert sample(registry, schema.BATCH_SIZE, "_count") == 1
    assert sample(registry, schema.BATCH_SIZE, "_sum") == 4
    assert sample(registry, schema.BATCH_SIZE, "_bucket", le="2.0") == 0
    assert sample(registry, schema.BATCH_SIZE, "_bucket", le="4.0") == 1


async def test_delay_window_dispatches_a_partial_batch(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    async with batcher(gate, registry, max_batch_size=32, max_queue_delay=0.02) as b:
        results = await asyncio.gather(*(b.submit(i) for i in range(3)))
    assert results == [0, 2, 4]
    assert gate.calls == [[0, 1, 2]]


async def test_next_batch_fills_while_current_runs(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    async with batcher(gate, registry) as b:
        first = await hold_first_batch(b, gate)
        rest = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
        await poll(lambda: b.queued == 5)
        assert sample(registry, schema.QUEUE_LENGTH) == 5
        assert sample(registry, schema.ACTIVE_REQUESTS) == 6
        gate.open()
        assert await first == 0
        assert await asyncio.gather(*rest) == [2, 4, 6, 8, 10]
    assert gate.calls == [[0], [1, 2, 3, 4, 5]]
    assert sample(registry, schema.QUEUE_LENGTH) == 0
    assert sample(registry, schema.ACTIVE_REQUESTS) == 0
    assert sample(registry, schema.INFERENCE_TOTAL, model_version="1", status="success") == 6
    assert sample(registry, schema.QUEUE_DURATION, "_count") == 6
    assert sample(registry, schema.INFERENCE_DURATION, "_count", model_version="1") == 6
    assert sample(registry, schema.BATCH_SIZE, "_sum") == 6
    assert sample(registry, schema.BATCH_SIZE, "_bucket", le="1.0") == 1
    assert sample(registry, schema.BATCH_SIZE, "_bucket", le="8.0") == 2


async def test_max_batch_size_splits_the_queue(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    async with batcher(gate, registry, max_batch_size=3) as b:
        first = await hold_first_batch(b, gate)
        rest = asyncio.create_task(b.submit_many(list(range(1, 8))))
        await poll(lambda: b.queued == 7)
        gate.open()
        await first
        assert await rest == [2, 4, 6, 8, 10, 12, 14]
    assert gate.calls == [[0], [1, 2, 3], [4, 5, 6], [7]]


async def test_preferred_batch_sizes(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    async with batcher(gate, registry, max_batch_size=8, preferred_batch_sizes=(2, 4)) as b:
        first = await hold_first_batch(b, gate)
        rest = asyncio.create_task(b.submit_many(list(range(1, 8))))
        await poll(lambda: b.queued == 7)
        gate.open()
        await first
        await rest
    # 7 waiting: the largest preferred size (4), then 2 of the 3 left, then the last one.
    assert gate.calls == [[0], [1, 2, 3, 4], [5, 6], [7]]


async def test_model_runs_on_a_worker_thread(registry: CollectorRegistry) -> None:
    threads: list[threading.Thread] = []

    def record(items: list[int]) -> list[int]:
        threads.append(threading.current_thread())
        return items

    async with DynamicBatcher(record, model_name=MODEL, registry=registry) as b:
        assert await b.submit(5) == 5
    assert threads and threads[0] is not threading.main_thread()


async def test_an_error_fails_only_its_batch(registry: CollectorRegistry) -> None:
    error = ValueError("bad item 13")

    def picky(items: list[int]) -> list[int]:
        if 13 in items:
            raise error
        return double(items)

    gate = Gate(picky)
    async with batcher(gate, registry) as b:
        first = await hold_first_batch(b, gate)
        doomed = [asyncio.create_task(b.submit(i)) for i in (12, 13)]
        await poll(lambda: b.queued == 2)
        gate.open()
        assert await first == 0
        outcomes = await asyncio.gather(*doomed, return_exceptions=True)
        after = await b.submit(3)
    assert outcomes == [error, error]
    assert outcomes[0] is error  # the model's own exception, not a wrapper
    assert after == 6
    assert gate.calls == [[0], [12, 13], [3]]
    assert sample(registry, schema.INFERENCE_TOTAL, model_version="1", status="error") == 2
    assert sample(registry, schema.INFERENCE_TOTAL, model_version="1", status="success") == 2
    assert sample(registry, schema.INFERENCE_FAILURES, model_version="1", reason="exception") == 2
    assert sample(registry, schema.ACTIVE_REQUESTS) == 0


async def test_wrong_number_of_results_fails_the_batch(registry: CollectorRegistry) -> None:
    async with DynamicBatcher(lambda items: [1], model_name=MODEL, registry=registry) as b:
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            await b.submit_many([1, 2])


async def test_cancelled_queued_item_never_reaches_the_model(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    async with batcher(gate, registry) as b:
        first = await hold_first_batch(b, gate)
        queued = asyncio.create_task(b.submit(99))
        kept = asyncio.create_task(b.submit(7))
        await poll(lambda: b.queued == 2)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert b.queued == 1
        assert sample(registry, schema.QUEUE_LENGTH) == 1
        gate.open()
        assert await first == 0
        assert await kept == 14
    assert gate.calls == [[0], [7]]
    assert sample(registry, schema.INFERENCE_FAILURES, model_version="1", reason="cancelled") == 1
    # It never ran: not in the latency histograms, which count the two items that did.
    assert sample(registry, schema.INFERENCE_DURATION, "_count", model_version="1") == 2
    assert sample(registry, schema.QUEUE_DURATION, "_count") == 2
    assert sample(registry, schema.ACTIVE_REQUESTS) == 0
    assert sample(registry, schema.QUEUE_LENGTH) == 0


async def test_cancelled_submit_many_drops_all_its_items(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    async with batcher(gate, registry) as b:
        first = await hold_first_batch(b, gate)
        many = asyncio.create_task(b.submit_many([1, 2, 3]))
        await poll(lambda: b.queued == 3)
        many.cancel()
        with pytest.raises(asyncio.CancelledError):
            await many
        assert b.queued == 0
        gate.open()
        await first
    assert gate.calls == [[0]]
    assert sample(registry, schema.INFERENCE_FAILURES, model_version="1", reason="cancelled") == 3


async def test_full_queue_rejects_with_overloaded(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    async with batcher(gate, registry, max_queue_size=2) as b:
        first = await hold_first_batch(b, gate)  # running, so not queued
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await poll(lambda: b.queued == 2)
        with pytest.raises(Overloaded, match="2 items queued, limit 2") as caught:
            await b.submit(3)
        assert caught.value.retry_after > 0
        with pytest.raises(Overloaded):  # all or none: no room for two more
            await b.submit_many([4, 5])
        gate.open()
        await first
        assert await asyncio.gather(*queued) == [2, 4]
        assert await b.submit(6) == 12  # room again
    assert sample(registry, schema.INFERENCE_FAILURES, model_version="1", reason="rejected") == 3
    assert sample(registry, schema.INFERENCE_TOTAL, model_version="1", status="success") == 4
    assert gate.calls == [[0], [1, 2], [6]]


async def test_close_finishes_queued_work_and_refuses_new(registry: CollectorRegistry) -> None:
    gate = Gate(double)
    b = batcher(gate, registry, max_batch_size=4, max_queue_delay=60.0)
    gate.close()
    first = asyncio.create_task(b.submit_many([0, 1, 2, 3]))  # a full batch: runs at once
    await poll(gate.entered.is_set)
    queued = [asyncio.create_task(b.submit(i)) for i in range(4, 10)]
    await poll(lambda: b.queued == 6)
    closing = asyncio.create_task(b.close())
    await poll(lambda: b.closed)
    with pytest.raises(BatcherClosed, match="'m' is shutting down"):
        await b.submit(100)
    gate.open()
    await asyncio.wait_for(closing, 10)  # the 60 s window does not hold up the drain
    assert await first == [0, 2, 4, 6]
    assert await asyncio.gather(*queued) == [8, 10, 12, 14, 16, 18]
    assert gate.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sample(registry, schema.INFERENCE_FAILURES, model_version="1", reason="rejected") == 1
    assert sample(registry, schema.INFERENCE_TOTAL, model_version="1", status="success") == 10


async def test_shared_executor_runs_two_models_on_one_thread(registry: CollectorRegistry) -> None:
    import concurrent.futures

    threads: dict[str, set[int]] = {"a": set(), "b": set()}

    def model(name: str) -> Callable[[list[int]], list[int]]:
        def run(items: list[int]) -> list[int]:
            threads[name].add(threading.get_ident())
            return items

        return run

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    a = DynamicBatcher(model("a"), model_name="a", executor=executor, registry=registry)
    b = DynamicBatcher(model("b"), model_name="b", executor=executor, registry=registry)
    results = await asyncio.gather(*(x.submit(i) for i in range(20) for x in (a, b)))
    await a.close()
    await b.close()
    assert sorted(results) == sorted(list(range(20)) * 2)
    assert len(threads["a"]) == 1
    assert threads["a"] == threads["b"]
    assert executor.submit(lambda: 1).result() == 1  # not shut down: the batchers don't own it
    executor.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_queue_delay": -1}, "max_queue_delay must be >= 0"),
        ({"max_queue_size": 0}, "max_queue_size must be >= 1"),
        (
            {"preferred_batch_sizes": (4, 64)},
            r"preferred_batch_sizes must lie in 1..max_batch_size \(32\): \[64\]",
        ),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(double, model_name=MODEL, registry=CollectorRegistry(), **kwargs)  # type: ignore[arg-type]


async def test_a_dispatcher_bug_fails_waiting_items_instead_of_hanging(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(double)
    b = batcher(gate, registry)
    take = b._take

    def broken() -> list[object]:
        raise KeyError("bug")

    monkeypatch.setattr(b, "_take", broken)
    with pytest.raises(RuntimeError, match="batcher stopped: KeyError"):
        await asyncio.wait_for(b.submit(1), 10)
    monkeypatch.setattr(b, "_take", take)
    assert await asyncio.wait_for(b.submit(2), 10) == 4  # a fresh dispatcher took over
    await b.close()
    assert gate.calls == [[2]]
    assert sample(registry, schema.INFERENCE_FAILURES, model_version="1", reason="exception") == 1
    assert sample(registry, schema.QUEUE_LENGTH) == 0
    assert sample(registry, schema.ACTIVE_REQUESTS) == 0
