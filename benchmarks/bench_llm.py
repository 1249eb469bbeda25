"""What a streamed LLM answer costs the sidecar: CPU per SSE chunk and per streamed request.

An upstream in its own process (raw asyncio, no framework) streams OpenAI chat completion
chunks: a role-only chunk, ``--tokens`` content chunks ``--interval`` apart (each written on
its own, so each reaches the proxy as its own read, as an LLM's tokens do), the finish chunk,
the usage chunk and ``[DONE]``. ``--streams`` clients in this process post streamed requests
back to back for ``--seconds``, on three paths:

- direct: to the upstream;
- relay: through the sidecar on a path that is not an LLM route (``/generate``: counted under
  the default model, the answer relayed chunk by chunk, nothing parsed), the bare relay's cost;
- llm: through the sidecar on ``/v1/chat/completions`` with ``"stream": true``: every chunk
  also goes through the SSE scanner (output events, finish reason, usage), and TTFT, TPOT,
  finish reason and tokens are recorded.

Per path: streams and chunks per second, the client's mean time to first content and mean
stream duration, and the sidecar's CPU (its process, from /proc) per 1,000 chunks and per
streamed request. Needs nothing but this interpreter; about 20 s with the defaults.

    .venv/bin/python benchmarks/bench_llm.py [--seconds 5] [--streams 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sidecar import (
    LOOPBACK,
    REPO,
    RESPONSE,
    free_port,
    running,
    sidecar,
    tree_cpu_seconds,
    wait_listening,
)

CHUNK = {
    "id": "chatcmpl-0123456789abcdef",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "llama-3-8b",
}


def event(doc: object) -> bytes:
    data = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def stream_events(tokens: int) -> list[bytes]:
    def choice(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = [event({**CHUNK, "choices": [choice({"role": "assistant", "content": ""})]})]
    events += [
        event({**CHUNK, "choices": [choice({"content": f" tok{i}"})]}) for i in range(tokens)
    ]
    events.append(event({**CHUNK, "choices": [choice({}, "stop")]}))
    usage = {"prompt_tokens": 42, "completion_tokens": tokens, "total_tokens": 42 + tokens}
    events.append(event({**CHUNK, "choices": [], "usage": usage}))
    events.append(event("[DONE]"))
    return events


# --- the upstream (its own process) ------------------------------------------------------------


async def upstream_main(port: int, tokens: int, interval: float) -> None:
    frames = [b"%x\r\n%s\r\n" % (len(e), e) for e in stream_events(tokens)]
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
    )
    infer = RESPONSE.encode()
    infer_answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    infer_answer += b"Content-Length: %d\r\n\r\n%s" % (len(infer), infer)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in request_head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if b"/v2/models/" in request_head.split(b"\r\n", 1)[0]:
                    writer.write(infer_answer)
                    continue
                writer.write(head)
                for frame in frames:
                    writer.write(frame)
                    await writer.drain()
                    await asyncio.sleep(interval)
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the clients -------------------------------------------------------------------------------


@dataclass
class Result:
    streams: int = 0
    chunks: int = 0
    ttft: float = 0.0  # summed
    duration: float = 0.0  # summed


async def client(port: int, path: str, until: float, result: Result, chunks: int) -> None:
    body = json.dumps({"model": "llama-3-8b", "stream": True, "messages": []}).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        while time.perf_counter() < until:
            sent = time.perf_counter()
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            seen = b""
            first = 0.0
            while not seen.endswith(b"\r\n0\r\n\r\n"):
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed mid-stream")
                seen += data
                if not first and b'"content":" tok' in seen:
                    first = time.perf_counter()
            done = time.perf_counter()
            events = seen.count(b"\n\n")
            if events != chunks:
                raise RuntimeError(f"{path}: {events} events, not {chunks}")
            result.streams += 1
            result.chunks += chunks
            result.ttft += first - sent
            result.duration += done - sent
    finally:
        writer.close()


async def load(port: int, path: str, streams: int, seconds: float, chunks: int) -> Result:
    result = Result()
    until = time.perf_counter() + seconds
    await asyncio.gather(*(client(port, path, until, result, chunks) for _ in range(streams)))
    return result


def measure(
    label: str, port: int, path: str, pid: int | None, args: argparse.Namespace, chunks: int
) -> None:
    asyncio.run(load(port, path, args.streams, 1.0, chunks))  # warm up
    cpu0, wall0 = (tree_cpu_seconds(pid) if pid else 0.0), time.perf_counter()
    result = asyncio.run(load(port, path, args.streams, args.seconds, chunks))
    wall = time.perf_counter() - wall0
    cpu = tree_cpu_seconds(pid) - cpu0 if pid else 0.0
    n = max(result.streams, 1)
    cpu_text = (
        f"{cpu / result.chunks * 1e6:8.1f} µs/chunk {cpu / n * 1e3:7.3f} ms/stream"
        f" {cpu / wall:5.2f} cores"
        if pid
        else " " * 40
    )
    print(
        f"{label:6} {result.streams / wall:7.1f} streams/s {result.chunks / wall:8.0f} chunks/s"
        f"  TTFT {result.ttft / n * 1e3:6.2f} ms  stream {result.duration / n * 1e3:7.2f} ms"
        f"  sidecar CPU {cpu_text}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streamed requests")
    parser.add_argument("--tokens", type=int, default=64, help="content chunks per stream")
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between chunks")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # run as the upstream
    args = parser.parse_args()
    if args.upstream:
        asyncio.run(upstream_main(args.upstream, args.tokens, args.interval))
        return 0
    chunks = args.tokens + 4
    up_port, proxy_port = free_port(), free_port()
    upstream_cmd = [sys.executable, __file__, "--upstream", str(up_port)]
    upstream_cmd += ["--tokens", str(args.tokens), "--interval", str(args.interval)]
    print(
        f"{args.streams} concurrent streams of {chunks} SSE chunks ({args.tokens} tokens,"
        f" {args.interval * 1e3:g} ms apart), {args.seconds:g} s per path",
        flush=True,
    )
    with running(upstream_cmd) as up:
        wait_listening(up_port, up)
        measure("direct", up_port, "/v1/chat/completions", None, args, chunks)
        admin = free_port()
        with sidecar(up_port, proxy_port, REPO, admin=admin) as pid:
            measure("relay", proxy_port, "/generate", pid, args, chunks)
            measure("llm", proxy_port, "/v1/chat/completions", pid, args, chunks)
            print(recorded(admin))
    return 0


def recorded(admin: int) -> str:
    """The sidecar's TTFT and TPOT counts from its admin port: proof that it measured."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    wanted = ("model_inference_time_to_first_token_seconds_count",
              "model_inference_time_per_output_token_seconds_count")  # fmt: skip
    return "\n".join(line for line in text.splitlines() if line.startswith(wanted))


if __name__ == "__main__":
    sys.exit(main())
