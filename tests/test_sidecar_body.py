"""BodyReader: a body read whole or in pieces, and the connection's reading paused while more
than BUFFER_HIGH bytes wait unread, resumed once they are read, however they are read."""

from __future__ import annotations

import asyncio

import pytest

from inferwatch.sidecar.body import BUFFER_HIGH, EMPTY_BODY, BodyReader, FlowControl


class Transport(asyncio.Transport):
    """Records what the flow control asks of the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False


def connection() -> tuple[FlowControl, Transport]:
    flow = FlowControl(asyncio.get_running_loop())
    transport = Transport()
    flow.connection_made(transport)
    return flow, transport


PIECE = b"x" * (64 * 1024)
PIECES = BUFFER_HIGH // len(PIECE) + 2  # enough to pass the high-water mark


async def test_reading_pauses_above_the_mark_and_resumes_when_the_whole_body_is_read() -> None:
    flow, transport = connection()
    body = BodyReader(flow)
    for _ in range(PIECES):
        body.feed(PIECE)
    assert not transport.reading
    body.feed_eof()
    assert await body.read() == PIECE * PIECES
    assert transport.reading
    assert await body.read() == b""


async def test_reading_resumes_when_a_body_in_one_piece_is_read_exactly() -> None:
    flow, transport = connection()
    body = BodyReader(flow)
    big = PIECE * PIECES
    body.feed(big)
    assert not transport.reading
    assert await body.readexactly(len(big)) == big
    assert transport.reading


async def test_pieces_arrive_while_the_reader_waits() -> None:
    flow, _ = connection()
    body = BodyReader(flow)
    loop = asyncio.get_running_loop()
    loop.call_soon(body.feed, b"ab")
    loop.call_soon(body.feed, b"cd")
    loop.call_soon(body.feed_eof)
    assert await body.readexactly(3) == b"abc"
    assert [chunk async for chunk in body.chunks()] == [b"d"]


async def test_a_body_cut_short_raises_for_its_reader() -> None:
    flow, _ = connection()
    body = BodyReader(flow)
    body.feed(b"ab")
    body.set_exception(ConnectionResetError("gone"))
    assert await body.read(2) == b"ab"  # what arrived is still read
    with pytest.raises(ConnectionResetError):
        await body.read(2)
    with pytest.raises(asyncio.IncompleteReadError):
        ended = BodyReader(flow)
        ended.feed(b"ab")
        ended.feed_eof()
        await ended.readexactly(3)


async def test_the_empty_body_is_complete_and_reads_nothing() -> None:
    assert EMPTY_BODY.complete
    assert await EMPTY_BODY.read() == b""
    assert await EMPTY_BODY.readexactly(0) == b""
