"""The request head sent upstream: the client's fields in order, minus hop-by-hop ones and
those its Connection header names, plus X-Forwarded-*."""

from __future__ import annotations

from inferwatch.sidecar.upstream import request_head


def head(raw: list[tuple[bytes, bytes]], peer: str = "10.0.0.7", chunked: bool = False) -> bytes:
    return request_head("POST", "/v2/models/m/infer?x=1", raw, peer, "http", chunked, b"up:80")


def test_end_to_end_fields_pass_in_order_with_forwarded_ones_added() -> None:
    raw = [
        (b"Host", b"model:8080"),
        (b"User-Agent", b"hey/0.0.1"),  # as long as "connection", and not hop-by-hop
        (b"Content-Length", b"2"),
        (b"accept", b"*/*"),  # as long as "expect"
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Expect", b"100-continue"),
    ]
    assert head(raw) == (
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\n"
        b"Host: model:8080\r\nUser-Agent: hey/0.0.1\r\nContent-Length: 2\r\naccept: */*\r\n"
        b"X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: model:8080\r\n\r\n"
    )


def test_fields_named_in_connection_are_dropped_but_never_framing_or_host() -> None:
    raw = [
        (b"host", b"model"),
        (b"connection", b"keep-alive, X-Secret, content-length, Host"),
        (b"X-SECRET", b"1"),
        (b"X-Kept", b"2"),
        (b"Content-Length", b"0"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Connection", b"x-forwarded-proto"),
    ]
    assert head(raw) == (
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\n"
        b"host: model\r\nX-Kept: 2\r\nContent-Length: 0\r\n"
        b"X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Host: model\r\n\r\n"
    )


def test_a_proxy_in_front_is_kept_and_extended() -> None:
    raw = [
        (b"X-Forwarded-For", b"1.2.3.4"),
        (b"X-Forwarded-Host", b"public.example"),
        (b"X-Forwarded-Proto", b"https"),
    ]
    assert head(raw, chunked=True) == (
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\n"
        b"X-Forwarded-Host: public.example\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-For: 1.2.3.4, 10.0.0.7\r\nHost: up:80\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
