"""The concurrency limit and its queue: FIFO hand-over, overflow, timeout, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from inferwatch.sidecar.admission import Admission, Rejected


async def test_slots_then_fifo_queue_then_overflow() -> None:
    gate = Admission(max_concurrency=2, max_queue=2, queue_timeout=60)
    assert gate.try_acquire() and gate.try_acquire()
    assert not gate.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await gate.acquire()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    with pytest.raises(Rejected) as err:
        await gate.acquire()
    assert err.value.queued is False
    gate.release()  # hands the slot to "first", not to whoever asks next
    assert not gate.try_acquire()
    await first
    gate.release()
    await second
    assert order == ["first", "second"]
    assert gate.in_flight == 2
    gate.release()
    gate.release()
    assert gate.in_flight == 0


async def test_queue_timeout_rejects_and_frees_the_place() -> None:
    gate = Admission(max_concurrency=1, max_queue=1, queue_timeout=0.01)
    assert gate.try_acquire()
    with pytest.raises(Rejected) as err:
        await gate.acquire()
    assert err.value.queued is True
    assert gate.waiting == 0
    gate.release()
    assert gate.in_flight == 0


async def test_cancelled_waiter_gives_no_slot_away_and_loses_none() -> None:
    gate = Admission(max_concurrency=1, max_queue=5, queue_timeout=60)
    assert gate.try_acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    assert gate.in_flight == 0

    # Cancelled in the same loop iteration as it was handed the slot: the slot moves on.
    assert gate.try_acquire()
    a = asyncio.create_task(gate.acquire())
    b = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # slot to a
    a.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await a
    await b  # so b gets it
    assert gate.in_flight == 1
    gate.release()
    assert gate.in_flight == 0


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        Admission(0, 1, 1.0)
    with pytest.raises(ValueError, match="max_queue"):
        Admission(1, -1, 1.0)
