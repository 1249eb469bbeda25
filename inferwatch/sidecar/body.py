"""Message bodies as they arrive, and the flow control between a body and its connection.

Both sides of the proxy (client connections and upstream connections) parse with httptools
callbacks and hand a body's bytes to a :class:`BodyReader`, read by the one task that handles
the request. When more than :data:`BUFFER_HIGH` bytes wait unread, the connection stops
reading its socket until the reader catches up, so a fast sender cannot fill memory; writes
wait in :meth:`FlowControl.drain` while the peer is slow to read. A small body whose bytes all
came with its head is complete before the handler looks at it, and reading it costs no wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

BUFFER_HIGH: Final = 256 * 1024  # unread body bytes above this pause the connection's reading
BUFFER_LOW: Final = 64 * 1024  # ... and below this resume it


class FlowControl(asyncio.Protocol):
    """Reading paused and resumed by the body, writing by the transport's buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._wake_writer(exc or ConnectionResetError("the connection closed"))

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer(None)

    def _wake_writer(self, exc: BaseException | None) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def drain(self) -> None:
        """Wait until the peer has read enough of what was written."""
        if self.transport is None:
            raise ConnectionResetError("the connection closed")
        if not self._writing_paused:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await self._drained


class BodyReader:
    """The body of one message, read by one task; fed by the connection's parser."""

    __slots__ = ("_buffer", "_exc", "_flow", "_size", "_waiter", "complete")

    def __init__(self, flow: FlowControl) -> None:
        self._flow = flow
        self._buffer: deque[bytes] = deque()
        self._size = 0
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False  # every byte of the body has arrived

    # --- fed by the connection -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size > BUFFER_HIGH:
            self._flow.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self.complete = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        if not self.complete:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- read by the handler ---------------------------------------------------------------

    async def _wait(self) -> None:
        """Until bytes, the end or an error is there."""
        while not self._buffer and not self.complete:
            if self._exc is not None:
                raise self._exc
            self._waiter = self._flow._loop.create_future()
            await self._waiter

    def _take(self, limit: int) -> bytes:
        buffer = self._buffer
        if limit < 0 or limit >= self._size:
            data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
            buffer.clear()
        else:
            data = buffer.popleft()
            if len(data) > limit:
                buffer.appendleft(data[limit:])
                data = data[:limit]
        self._size -= len(data)
        if self._size < BUFFER_LOW:
            self._flow.resume_reading()
        return data

    def _take_all(self) -> bytes:
        buffer = self._buffer
        data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        if self._size > BUFFER_LOW:  # reading may have been paused for it
            self._flow.resume_reading()
        self._size = 0
        return data

    async def read(self, limit: int = -1) -> bytes:
        """Up to ``limit`` bytes as soon as some are there (``-1``: the whole rest of the
        body); ``b""`` at its end."""
        if limit < 0:
            if self.complete:  # all there: no wait
                return self._take_all()
            parts: list[bytes] = []
            while True:
                await self._wait()
                if not self._buffer:
                    return b"".join(parts)
                parts.append(self._take(-1))
        await self._wait()
        return self._take(limit) if self._buffer else b""

    async def readexactly(self, size: int) -> bytes:
        """``size`` bytes; raises :class:`asyncio.IncompleteReadError` if the body ends first."""
        if self._size == size and len(self._buffer) == 1:  # a body that came in one piece
            return self._take_all()
        parts: list[bytes] = []
        got = 0
        while got < size:
            await self._wait()
            if not self._buffer:
                partial = b"".join(parts)
                raise asyncio.IncompleteReadError(partial, size)
            part = self._take(size - got)
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def chunks(self, size: int = -1) -> Chunks:
        """The body piece by piece, as it arrives (pieces of at most ``size`` bytes)."""
        return Chunks(self, size)


class Chunks:
    """An async iterator over a body's pieces (a class, not an async generator: the
    compiled hot path has no async generators)."""

    __slots__ = ("_body", "_size")

    def __init__(self, body: BodyReader, size: int) -> None:
        self._body = body
        self._size = size

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        await body._wait()
        if not body._buffer:
            raise StopAsyncIteration
        return body._take(self._size)


class _EmptyBody(BodyReader):
    """A message without a body: complete from the start, and never fed."""

    __slots__ = ()

    def __init__(self) -> None:  # no connection to pause: nothing ever arrives
        self._buffer = deque()
        self._size = 0
        self._exc = None
        self._waiter = None
        self.complete = True

    def feed(self, data: bytes) -> None:  # pragma: no cover - a bodiless message gets none
        raise RuntimeError("a message without a body got body bytes")


EMPTY_BODY: Final[BodyReader] = _EmptyBody()
