"""Admission in front of the upstream: at most N requests in flight, a bounded wait queue.

Knative's containerConcurrency idea: a model server that handles N requests well gets at most
N; up to ``max_queue`` more wait (first come, first served) for at most ``queue_timeout``
seconds; the rest are rejected at once, so the caller can retry elsewhere instead of piling
latency onto a saturated model. A slot is handed directly from a finishing request to the
oldest waiter, so a newcomer cannot overtake the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from inferwatch import schema
from inferwatch.sidecar.exchange import Exchange


class Rejected(Exception):
    """No slot: the queue is full (``queued`` False) or the wait timed out (``queued`` True)."""

    def __init__(self, queued: bool) -> None:
        super().__init__("queue timeout" if queued else "queue full")
        self.queued = queued

    @property
    def why(self) -> str:
        """For the caller: what the sidecar's 503 / UNAVAILABLE answer says."""
        why = "timed out in the admission queue" if self.queued else "admission queue is full"
        return f"overloaded: {why}"


class Admission:
    """A concurrency limit with a bounded FIFO queue; single event loop, no locks."""

    def __init__(self, max_concurrency: int, max_queue: int, queue_timeout: float) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody is waiting (no await: the fast path)."""
        if self.in_flight < self.max_concurrency and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot; raises :class:`Rejected` when the queue is full or the wait too long."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_queue:
            raise Rejected(queued=False)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self.queue_timeout, _expire, waiter)
        try:
            await waiter
        except BaseException:
            # Given a slot in the same iteration we were cancelled or timed out: pass it on.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Give the slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter: in_flight unchanged
                return
        self.in_flight -= 1


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(Rejected(queued=True))


async def admit(
    admission: Admission,
    exchange: Exchange,
    cancelled_reason: Callable[[], str] | None = None,
) -> Rejected | None:
    """A slot for ``exchange``, at once or after queueing for one (each step reported to the
    exchange); the rejection when none came, for the transport to answer. The caller releases
    the slot. Cancelled while queued, the exchange fails with ``cancelled_reason()`` (gRPC:
    ``timeout`` when the caller's deadline passed), by default ``cancelled``."""
    if admission.try_acquire():
        exchange.admitted()
        return None
    exchange.queued()
    try:
        await admission.acquire()
    except Rejected as exc:
        exchange.rejected(exc.queued)
        return exc
    except asyncio.CancelledError:
        exchange.failed(schema.REASON_CANCELLED if cancelled_reason is None else cancelled_reason())
        raise
    exchange.admitted()
    return None
