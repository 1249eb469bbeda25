"""Dynamic batching for asyncio servers: many concurrent requests, one model call per batch.

A :class:`DynamicBatcher` queues the items that requests submit and hands them to a batch
function in groups. A batch leaves the queue when ``max_batch_size`` items wait, or when the
oldest item has waited ``max_queue_delay`` seconds, whichever comes first; nothing polls. The
batch function runs on an executor thread (one per device), so the event loop keeps accepting
requests and the next batch fills while the current one runs. Each batcher keeps one batch in
flight: under load the queue grows while the model computes, and the next batch takes up to
``max_batch_size`` of it at once.

What it records, with ``source="app"``, counting items (the batcher's unit of work):

- ``model_inference_queue_length``: items waiting for a batch;
- ``model_active_requests``: items submitted and not yet answered (waiting or computing);
- ``model_inference_queue_duration_seconds``: submit to the start of the item's batch;
- ``model_batch_size``: items in each executed batch;
- ``model_inference_duration_seconds``: submit to answer, for every item that reached the
  model (success or failure): the latency a caller of :meth:`DynamicBatcher.submit` sees, as
  for ``@monitor_inference``. The compute part is the difference of the two sums:
  ``rate(..._duration_seconds_sum) - rate(..._queue_duration_seconds_sum)`` per item;
- ``model_inference_total`` / ``model_inference_failures_total``: one per item; failures by
  reason ``exception`` (the batch function raised), ``cancelled`` (the caller went away) and
  ``rejected`` (queue full, or the batcher closed). Rejected and queue-cancelled items never
  reached the model and are not in the latency histograms.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import logging
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry

from inferwatch import schema
from inferwatch import tracing as _tracing
from inferwatch.metrics import inference_metrics
from inferwatch.tracing.state import tracing_state

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["BatcherClosed", "DynamicBatcher", "Overloaded"]


class Overloaded(Exception):
    """The batcher's queue is full: try again later (HTTP 503 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatcherClosed(Exception):
    """The batcher is shutting down and accepts no new items (HTTP 503)."""


class _Entry:
    __slots__ = ("enqueued", "future", "item", "queued", "span")

    def __init__(
        self, item: Any, future: asyncio.Future[Any], enqueued: float, span: Any = None
    ) -> None:
        self.item = item
        self.future = future
        self.enqueued = enqueued
        self.queued = True
        self.span = span  # the submitting request's span (tracing on), for links and exemplars


def _span_error_type(exc: BaseException) -> str:
    if isinstance(exc, (Overloaded, BatcherClosed)):
        return schema.REASON_REJECTED
    if isinstance(exc, asyncio.CancelledError):
        return schema.REASON_CANCELLED
    return type(exc).__qualname__


def _exemplar(entry: _Entry) -> dict[str, str] | None:
    return _tracing.exemplar_of(entry.span) if tracing_state.exemplars else None


class DynamicBatcher(Generic[T, R]):
    """Groups items submitted by concurrent coroutines into calls of ``batch_fn``.

    ``batch_fn(items)`` gets a list of up to ``max_batch_size`` items and returns one result
    per item, in order; it runs on ``executor`` (default: a thread of the batcher's own). Give
    the batchers of models that share a device one single-thread executor, so their batches
    take turns on that device instead of contending.

    ``preferred_batch_sizes``: when the delay window ends with ``n`` items waiting, the batch
    takes the largest preferred size that is at most ``n`` (the rest go in the next batch, at
    once), as Triton's dynamic batcher does; useful when the model was warmed up or compiled
    for those shapes. With none of them at most ``n``, the batch takes all ``n``.

    ``max_queue_size`` bounds the items waiting; past it :meth:`submit` raises
    :class:`Overloaded` at once rather than letting latency grow without bound.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        *,
        model_name: str,
        model_version: str = "",
        max_batch_size: int = 32,
        max_queue_delay: float = 0.005,
        preferred_batch_sizes: Iterable[int] = (),
        max_queue_size: int = 1024,
        executor: concurrent.futures.Executor | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay < 0:
            raise ValueError(f"max_queue_delay must be >= 0 seconds, got {max_queue_delay}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        preferred = sorted(set(preferred_batch_sizes))
        bad = [size for size in preferred if not 1 <= size <= max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes must lie in 1..max_batch_size ({max_batch_size}): {bad}"
            )
        self.batch_fn = batch_fn
        self.model_name = model_name
        self.model_version = model_version
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.preferred_batch_sizes: tuple[int, ...] = tuple(preferred)
        self.max_queue_size = max_queue_size
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{model_name}"
        )
        self._m = inference_metrics(registry).model(schema.SOURCE_APP, model_name, model_version)
        self._queue: collections.deque[_Entry] = collections.deque()
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: list[_Entry] = []  # the batch being computed
        self._closing = False

    # --- submitting ---------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closing

    async def submit(self, item: T) -> R:
        """Queue one item and return its result, or raise what its batch raised.

        Raises :class:`Overloaded` when the queue is full and :class:`BatcherClosed` after
        :meth:`close`. Cancelling the caller while the item waits removes it from the queue:
        the model never sees it.
        """
        if tracing_state.enabled:
            return (await self._submit_traced((item,)))[0]
        entry = self._admit((item,))[0]
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._forget((entry,))
            raise

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Queue several items at once (admitted all or none); results in order.

        They may run in different batches. The first failure among them is raised once all
        of them are done.
        """
        if not items:
            return []
        if tracing_state.enabled:
            return await self._submit_traced(items)
        return await self._results(self._admit(items))

    async def _submit_traced(self, items: Sequence[T]) -> list[R]:
        """submit/submit_many inside a span that covers the queue wait and the batch."""
        attributes = _tracing.model_attributes(
            schema.SOURCE_APP, self.model_name, self.model_version
        )
        attributes[_tracing.ATTR_BATCH_SIZE] = len(items)
        with _tracing.inference_span(
            f"inference {self.model_name}", attributes, _span_error_type
        ) as span:
            return await self._results(self._admit(items, span))

    async def _results(self, entries: list[_Entry]) -> list[R]:
        """Every entry's answer, in order; the first failure raised; on cancellation the
        entries still queued are dropped before they run."""
        try:
            outcomes = await asyncio.gather(*(e.future for e in entries), return_exceptions=True)
        except asyncio.CancelledError:
            self._forget(entries)
            raise
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def _admit(self, items: Sequence[T], span: Any = None) -> list[_Entry]:
        m = self._m
        count = len(items)
        if self._closing:
            for _ in range(count):
                m.record_failure(schema.REASON_REJECTED)
            raise BatcherClosed(f"model {self.model_name!r} is shutting down")
        queue = self._queue
        if len(queue) + count > self.max_queue_size:
            for _ in range(count):
                m.record_failure(schema.REASON_REJECTED)
            raise Overloaded(
                f"model {self.model_name!r} is overloaded: {len(queue)} items queued, "
                f"limit {self.max_queue_size}",
                retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        if self._dispatcher is None or self._dispatcher.done():
            # A fresh context: the dispatcher outlives the request that happened to start it.
            self._dispatcher = contextvars.Context().run(loop.create_task, self._dispatch_forever())
            self._dispatcher.add_done_callback(self._dispatcher_done)
        now = loop.time()
        was_empty = not queue
        entries = [_Entry(item, loop.create_future(), now, span) for item in items]
        queue.extend(entries)
        m.queue_length.inc(count)
        m.active.inc(count)
        if was_empty or len(queue) >= self.max_batch_size:
            self._wakeup.set()
        return entries

    def _forget(self, entries: Iterable[_Entry]) -> None:
        """Drop cancelled entries that are still queued (those in a batch are counted there)."""
        m = self._m
        for entry in entries:
            if not entry.queued:
                continue
            entry.queued = False
            if not entry.future.done():
                entry.future.cancel()
            try:
                self._queue.remove(entry)
            except ValueError:  # pragma: no cover - queued entries are in the queue
                continue
            m.queue_length.dec()
            m.active.dec()
            m.record_failure(schema.REASON_CANCELLED)

    # --- dispatching --------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        queue, wakeup = self._queue, self._wakeup
        while True:
            wakeup.clear()
            if not queue:
                if self._closing:
                    return
                await wakeup.wait()
                continue
            if len(queue) < self.max_batch_size and not self._closing:
                deadline = queue[0].enqueued + self.max_queue_delay
                if loop.time() < deadline:
                    timer = loop.call_at(deadline, wakeup.set)
                    try:
                        await wakeup.wait()
                    finally:
                        timer.cancel()
                    continue  # re-check: the oldest may have been cancelled meanwhile
            self._running = self._take()
            await self._run_batch(self._running)
            self._running = []

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        # Only a bug ends the dispatcher with an exception; fail what waits rather than hang it,
        # and let the next submit start a fresh dispatcher.
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("batcher of %s stopped", self.model_name, exc_info=error)
        self._dispatcher = None
        m = self._m
        stranded = [*self._running, *self._queue]
        m.queue_length.dec(len(self._queue))
        self._queue.clear()
        self._running = []
        for entry in stranded:
            entry.queued = False
            m.active.dec()
            m.record_failure(schema.REASON_EXCEPTION)
            if not entry.future.done():
                entry.future.set_exception(RuntimeError(f"batcher stopped: {error!r}"))

    def _take(self) -> list[_Entry]:
        available = min(len(self._queue), self.max_batch_size)
        size = available
        for preferred in reversed(self.preferred_batch_sizes):
            if preferred <= available:
                size = preferred
                break
        popleft = self._queue.popleft
        batch = [popleft() for _ in range(size)]
        for entry in batch:
            entry.queued = False
        return batch

    async def _run_batch(self, batch: list[_Entry]) -> None:
        m = self._m
        loop = asyncio.get_running_loop()
        size = len(batch)
        started = loop.time()
        m.queue_length.dec(size)
        m.batch_size.observe(size)
        observe_queue = m.queue_duration.observe
        traced = False
        for entry in batch:
            if entry.span is None:
                observe_queue(started - entry.enqueued)
            else:
                observe_queue(started - entry.enqueued, _exemplar(entry))
                traced = traced or entry.span.is_recording()
        batch_span = self._start_batch_span(batch) if traced else None
        error: BaseException | None = None
        results: Sequence[R] = ()
        try:
            results = await loop.run_in_executor(
                self._executor, self.batch_fn, [entry.item for entry in batch]
            )
            if len(results) != size:
                raise RuntimeError(
                    f"batch function of model {self.model_name!r} returned {len(results)} "
                    f"results for {size} items"
                )
        except Exception as exc:  # the batch's requests get the exception, nobody else
            error = exc
            log.debug("batch of %d for %s failed", size, self.model_name, exc_info=True)
        finished = loop.time()
        if batch_span is not None:
            _tracing.end_span(
                batch_span, error, None if error is None else type(error).__qualname__
            )
        observe = m.duration.observe
        succeeded = 0
        for index, entry in enumerate(batch):
            if entry.span is None:
                observe(finished - entry.enqueued)
            else:
                observe(finished - entry.enqueued, _exemplar(entry))
            future = entry.future
            if future.cancelled():
                m.record_failure(schema.REASON_CANCELLED)
            elif error is not None:
                future.set_exception(error)
                m.record_failure(schema.REASON_EXCEPTION)
            else:
                future.set_result(results[index])
                succeeded += 1
        if succeeded:
            m.success.inc(succeeded)
        m.active.dec(size)

    def _start_batch_span(self, batch: list[_Entry]) -> Any:
        """A root span for one executed batch, linked to the span of each request in it;
        recorded when any of those requests is (its links lead somewhere)."""
        requests: dict[int, Any] = {}
        for entry in batch:
            if entry.span is not None and entry.span.is_recording():
                requests.setdefault(id(entry.span), entry.span)
        attributes = _tracing.model_attributes(
            schema.SOURCE_APP, self.model_name, self.model_version
        )
        attributes[_tracing.ATTR_BATCH_SIZE] = len(batch)
        attributes[_tracing.ATTR_BATCH_REQUESTS] = len(requests)
        return _tracing.start_linked_root(f"batch {self.model_name}", requests.values(), attributes)

    # --- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop accepting items, run every queued one, then release the executor."""
        self._closing = True
        self._wakeup.set()
        if self._dispatcher is not None:
            await asyncio.shield(self._dispatcher)
        if self._own_executor:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> DynamicBatcher[T, R]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
