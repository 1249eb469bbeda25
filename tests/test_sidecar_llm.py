"""LLM serving through a real sidecar: time to first token, time per output token, finish
reasons and tokens, checked against what the client measures on its own clock.

The upstream streams chat completions, completions and Responses API events at controlled
intervals (a role-only chunk at once, the first output 150 ms later, then one every 20 ms).
The client takes the time before it sends the request and as each event arrives; the sidecar
measures from the request's arrival to the read of the chunk holding the first output. On
loopback the two intervals differ by the request's trip one way and the answer's trip back,
well under a millisecond (0.3-0.5 ms here): the recorded TTFT and TPOT must match the
client's within 1 ms. Client, sidecar and upstream share one event loop and one clock; the
garbage collector is paused during each test, so that a collection landing between the
sidecar's read and the client's cannot pass for the sidecar's error (a 4 ms gap was seen once
on a loaded 2-core machine before the pause).
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.http import serving
from support.polling import poll
from support.sidecar import metric, running_sidecar

from inferwatch.sidecar.process import Sidecar

# How far the sidecar's clock may be from the client's: the time a chunk takes between the
# sidecar and the client (0.1-0.5 ms on an idle machine; a loaded CI machine can hold the
# client's loop several ms). Well under FIRST_OUTPUT_AFTER, so a TTFT that counted the first
# byte instead of the first output still fails.
TOLERANCE = 0.015  # seconds
FIRST_OUTPUT_AFTER = 0.150
TOKEN_EVERY = 0.020
JSON = {"Content-Type": "application/json"}
# The differences between the sidecar's measurements and the client's, for the report.
AGREEMENT: dict[str, list[float]] = {"ttft": [], "tpot": []}


@pytest.fixture(autouse=True)
def _no_gc_pauses() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class Step:
    """One SSE event the upstream sends ``delay`` seconds after the previous one."""

    delay: float
    data: bytes
    output: bool = False  # it carries generated output
    abort: bool = False  # instead of sending, the upstream drops the connection


@dataclass
class Script:
    steps: list[Step]
    usage: tuple[int, int] | None = None  # what the stream reports, if anything
    json_body: dict[str, Any] | None = None  # a non-streamed answer instead


@dataclass
class Upstream:
    url: str = ""
    scripts: dict[str, Script] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


def sse(doc: object, event: str | None = None) -> bytes:
    data = doc if isinstance(doc, str) else json.dumps(doc)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def chat_chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    doc = {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], "usage": usage}
    return sse(doc)


def usage_doc(usage: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}


def chat_script(
    tokens: int = 8,
    finish: str = "stop",
    usage: tuple[int, int] | None = (12, 8),
    usage_on_finish: bool = False,
    done: bool = True,
) -> Script:
    """Role-only chunk at once, the first content after 150 ms, one more every 20 ms, the
    finish chunk, the usage (own chunk or on the finish chunk, or none), [DONE] or not."""
    steps = [Step(0.0, chat_chunk({"role": "assistant", "content": ""}))]
    for i in range(tokens):
        delay = FIRST_OUTPUT_AFTER if i == 0 else TOKEN_EVERY
        steps.append(Step(delay, chat_chunk({"content": f"t{i} "}), output=True))
    if usage is not None and usage_on_finish:
        steps.append(Step(0.0, chat_chunk({}, finish, usage_doc(usage))))
    else:
        steps.append(Step(0.0, chat_chunk({}, finish)))
        if usage is not None:
            doc = {"id": "c1", "object": "chat.completion.chunk", "choices": []}
            steps.append(Step(0.0, sse({**doc, "usage": usage_doc(usage)})))
    if done:
        steps.append(Step(0.0, sse("[DONE]")))
    return Script(steps, usage)


def completions_script(tokens: int = 6, finish: str = "length") -> Script:
    def chunk(text: str, reason: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return sse({"id": "cmpl-1", "object": "text_completion", "choices": [choice]})

    steps = [Step(0.0, chunk(""))]
    for i in range(tokens):
        delay = FIRST_OUTPUT_AFTER if i == 0 else TOKEN_EVERY
        steps.append(Step(delay, chunk(f"w{i}"), output=True))
    steps += [Step(0.0, chunk("", finish)), Step(0.0, sse("[DONE]"))]
    return Script(steps)


def responses_script(tokens: int = 7, end: str = "completed", reason: str = "") -> Script:
    def event(kind: str, **members: Any) -> bytes:
        return sse({"type": kind, **members}, kind)

    usage = (20, tokens + 3)  # e.g. reasoning tokens not streamed: usage still wins
    response: dict[str, Any] = {"id": "resp_1", "status": "in_progress"}
    steps = [
        Step(0.0, event("response.created", response=response)),
        Step(0.0, event("response.in_progress", response=response)),
        Step(0.0, event("response.output_item.added", item={"type": "message"})),
        Step(0.0, event("response.content_part.added", part={"type": "output_text"})),
    ]
    for i in range(tokens):
        delay = FIRST_OUTPUT_AFTER if i == 0 else TOKEN_EVERY
        steps.append(Step(delay, event("response.output_text.delta", delta=f"r{i}"), output=True))
    final = {
        **response,
        "status": end,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }
    if reason:
        final["incomplete_details"] = {"reason": reason}
    steps += [
        Step(0.0, event("response.output_text.done", text="...")),
        Step(0.0, event(f"response.{end}", response=final)),
    ]
    return Script(steps, usage)


def upstream_app(state: Upstream) -> web.Application:
    async def generate(request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        script = state.scripts[doc["model"]]
        if script.json_body is not None:
            return web.json_response(script.json_body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for step in script.steps:
                if step.delay:
                    await asyncio.sleep(step.delay)
                if step.abort:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                await resp.write(step.data)
            await resp.write_eof()
        finally:
            state.finished.set()
        return resp

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"):
        app.router.add_post(path, generate)
    app.router.add_get("/v2/health/ready", ready)
    return app


@asynccontextmanager
async def llm_upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    async with serving(upstream_app(state), shutdown_timeout=0.5, handler_cancellation=True) as url:
        state.url = url
        yield state


@asynccontextmanager
async def llm_sidecar() -> AsyncIterator[tuple[Upstream, Sidecar, aiohttp.ClientSession]]:
    async with (
        llm_upstream() as up,
        running_sidecar(up.url) as sc,
        aiohttp.ClientSession(f"http://{sc.config.listen.host}:{sc.proxy_port}") as session,
    ):
        async with session.get("/health") as warm:  # keep-alive: no connect in the timing
            await warm.read()
        yield up, sc, session


@dataclass
class Seen:
    """What the client saw, on its own clock."""

    sent_at: float
    arrivals: list[float]  # when each event had fully arrived
    events: list[bytes]
    error: BaseException | None = None


async def stream(
    session: aiohttp.ClientSession, path: str, model: str, stop_after_outputs: int = 0
) -> Seen:
    """Post a streamed request and read the answer event by event; with
    ``stop_after_outputs``, hang up right after that many events (the client went away)."""
    body = json.dumps({"model": model, "stream": True, "messages": []}).encode()
    sent_at = perf_counter()
    seen = Seen(sent_at, [], [])
    async with session.post(path, data=body, headers=JSON) as resp:
        assert resp.status == 200
        try:
            while True:
                event = await resp.content.readuntil(b"\n\n")
                if not event:
                    break
                seen.arrivals.append(perf_counter())
                seen.events.append(event)
                if stop_after_outputs and len(seen.events) == stop_after_outputs:
                    resp.close()
                    break
        except aiohttp.ClientPayloadError as exc:
            seen.error = exc
    return seen


def labels(model: str) -> dict[str, str]:
    return {"model_name": model, "model_version": ""}


def sidecar_ttft(sc: Sidecar, model: str) -> tuple[float, float]:
    """(count, sum) of the sidecar's time to first token."""
    name = "model_inference_time_to_first_token_seconds"
    return metric(sc, name + "_count", **labels(model)), metric(sc, name + "_sum", **labels(model))


def sidecar_tpot(sc: Sidecar, model: str) -> tuple[float, float]:
    name = "model_inference_time_per_output_token_seconds"
    return metric(sc, name + "_count", **labels(model)), metric(sc, name + "_sum", **labels(model))


def tokens(sc: Sidecar, model: str, kind: str) -> float:
    return metric(sc, "model_inference_tokens_total", model_name=model, type=kind)


def finishes(sc: Sidecar, model: str) -> dict[str, float]:
    name = "model_inference_finish_reasons_total"
    reasons = ("stop", "length", "tool_calls", "content_filter", "other")
    found = {r: metric(sc, name, model_name=model, reason=r) for r in reasons}
    return {r: n for r, n in found.items() if n}


def outcome(sc: Sidecar, model: str) -> tuple[float, float]:
    total = "model_inference_total"
    return (
        metric(sc, total, status="success", **labels(model)),
        metric(sc, total, status="error", **labels(model)),
    )


def client_ttft(seen: Seen, script: Script) -> float:
    first = next(i for i, step in enumerate(script.steps) if step.output)
    return seen.arrivals[first] - seen.sent_at


def client_tpot(seen: Seen, script: Script) -> float:
    outputs = [seen.arrivals[i] for i, step in enumerate(script.steps) if step.output]
    count = script.usage[1] if script.usage is not None else len(outputs)
    return (outputs[-1] - outputs[0]) / (count - 1)


def agree(kind: str, recorded: float, measured: float) -> None:
    AGREEMENT[kind].append(recorded - measured)
    print(f"{kind}: sidecar {recorded * 1000:.3f} ms, client {measured * 1000:.3f} ms")
    assert recorded == pytest.approx(measured, abs=TOLERANCE)
    if kind == "ttft":  # the sidecar's interval lies within the client's
        assert recorded <= measured + 0.0005


async def settled(sc: Sidecar, model: str) -> None:
    await poll(lambda: sum(outcome(sc, model)) == 1, f"{model}'s outcome recorded")


# --- streams that end well ---------------------------------------------------------------------

SHAPES = {
    "usage-own-chunk": ("/v1/chat/completions", chat_script()),
    "usage-on-finish-chunk": ("/v1/chat/completions", chat_script(usage_on_finish=True)),
    "usage-two-tokens-per-chunk": ("/v1/chat/completions", chat_script(usage=(12, 15))),
    "no-usage": ("/v1/chat/completions", chat_script(usage=None)),
    "no-done": ("/v1/chat/completions", chat_script(done=False)),
    "no-usage-no-done": ("/v1/chat/completions", chat_script(usage=None, done=False)),
    "completions": ("/v1/completions", completions_script()),
    "responses": ("/v1/responses", responses_script()),
}
FINISH = {
    "usage-own-chunk": "stop",
    "usage-on-finish-chunk": "stop",
    "usage-two-tokens-per-chunk": "stop",
    "no-usage": "stop",
    "no-done": "stop",
    "no-usage-no-done": "stop",
    "completions": "length",
    "responses": "stop",
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_ttft_and_tpot_match_the_clients_clock(shape: str) -> None:
    path, script = SHAPES[shape]
    model = f"llm-{shape}"
    async with llm_sidecar() as (up, sc, session):
        up.scripts[model] = script
        seen = await stream(session, path, model)
        await settled(sc, model)
    assert seen.error is None
    assert b"".join(seen.events) == b"".join(step.data for step in script.steps)

    count, ttft = sidecar_ttft(sc, model)
    assert count == 1
    assert ttft >= FIRST_OUTPUT_AFTER  # the role-only / empty first events did not count
    agree("ttft", ttft, client_ttft(seen, script))
    count, tpot = sidecar_tpot(sc, model)
    assert count == 1
    agree("tpot", tpot, client_tpot(seen, script))

    outputs = sum(step.output for step in script.steps)
    expected = script.usage or (0, outputs)  # no usage: the output chunks are the tokens
    assert (tokens(sc, model, "input"), tokens(sc, model, "output")) == expected
    assert finishes(sc, model) == {FINISH[shape]: 1}
    assert outcome(sc, model) == (1, 0)
    # The time to first byte is the role-only chunk's, as before.
    ttfb = "model_inference_time_to_first_byte_seconds"
    assert metric(sc, ttfb + "_count", **labels(model)) == 1
    assert metric(sc, ttfb + "_sum", **labels(model)) < FIRST_OUTPUT_AFTER


@pytest.mark.parametrize(
    ("path", "script", "reason"),
    [
        ("/v1/chat/completions", chat_script(2, "stop"), "stop"),
        ("/v1/chat/completions", chat_script(2, "length"), "length"),
        ("/v1/chat/completions", chat_script(2, "tool_calls"), "tool_calls"),
        ("/v1/chat/completions", chat_script(2, "content_filter"), "content_filter"),
        ("/v1/chat/completions", chat_script(2, "abort"), "other"),
        ("/v1/responses", responses_script(2, "incomplete", "max_output_tokens"), "length"),
        ("/v1/responses", responses_script(2, "incomplete", "content_filter"), "content_filter"),
    ],
)
async def test_finish_reasons_are_counted(path: str, script: Script, reason: str) -> None:
    async with llm_sidecar() as (up, sc, session):
        up.scripts["m"] = script
        await stream(session, path, "m")
        await settled(sc, "m")
    assert finishes(sc, "m") == {reason: 1}


async def test_a_streamed_tool_call_is_output() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    script = Script(
        [
            Step(0.0, chat_chunk({"role": "assistant", "content": None})),
            Step(FIRST_OUTPUT_AFTER, chat_chunk({"tool_calls": [call]}), output=True),
            Step(
                TOKEN_EVERY,
                chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
                output=True,
            ),
            Step(0.0, chat_chunk({}, "tool_calls")),
            Step(0.0, sse("[DONE]")),
        ]
    )
    async with llm_sidecar() as (up, sc, session):
        up.scripts["tools"] = script
        seen = await stream(session, "/v1/chat/completions", "tools")
        await settled(sc, "tools")
    agree("ttft", sidecar_ttft(sc, "tools")[1], client_ttft(seen, script))
    agree("tpot", sidecar_tpot(sc, "tools")[1], client_tpot(seen, script))
    assert finishes(sc, "tools") == {"tool_calls": 1}


# --- streams that end badly --------------------------------------------------------------------


async def test_a_client_that_hangs_up_mid_stream_is_cancelled_with_its_tokens_counted() -> None:
    script = chat_script(tokens=20, usage=None)
    async with llm_sidecar() as (up, sc, session):
        up.scripts["gone"] = script
        seen = await stream(session, "/v1/chat/completions", "gone", stop_after_outputs=4)
        await poll(lambda: outcome(sc, "gone") == (0, 1), "the hang-up recorded")
        await asyncio.wait_for(up.finished.wait(), 5)  # the upstream request was cancelled
        failures = metric(
            sc, "model_inference_failures_total", reason="cancelled", **labels("gone")
        )
    assert failures == 1
    count, ttft = sidecar_ttft(sc, "gone")
    assert count == 1
    agree("ttft", ttft, client_ttft(seen, script))
    assert sidecar_tpot(sc, "gone")[0] == 0  # not a finished generation
    assert tokens(sc, "gone", "output") == 3  # the content chunks it relayed (role-only: not)
    assert finishes(sc, "gone") == {}


async def test_a_hang_up_after_the_usage_counts_the_usage() -> None:
    script = chat_script(tokens=3, usage=(5, 3))
    script.steps.insert(-1, Step(1.0, sse({"choices": [], "note": "slow [DONE]"})))
    async with llm_sidecar() as (up, sc, session):
        up.scripts["late"] = script
        await stream(session, "/v1/chat/completions", "late", stop_after_outputs=6)
        await poll(lambda: outcome(sc, "late") == (0, 1), "the hang-up recorded")
    assert (tokens(sc, "late", "input"), tokens(sc, "late", "output")) == (5, 3)
    assert finishes(sc, "late") == {"stop": 1}


async def test_an_upstream_that_breaks_mid_stream_is_a_server_error() -> None:
    script = chat_script(tokens=10, usage=None)
    script.steps = [*script.steps[:5], Step(TOKEN_EVERY, b"", abort=True)]
    async with llm_sidecar() as (up, sc, session):
        up.scripts["broke"] = script
        seen = await stream(session, "/v1/chat/completions", "broke")
        await poll(lambda: outcome(sc, "broke") == (0, 1), "the failure recorded")
    assert seen.error is not None  # the client's connection was cut: no half answer as whole
    reason = metric(sc, "model_inference_failures_total", reason="server_error", **labels("broke"))
    assert reason == 1
    agree("ttft", sidecar_ttft(sc, "broke")[1], client_ttft(seen, script))
    assert sidecar_tpot(sc, "broke")[0] == 0
    assert tokens(sc, "broke", "output") == 4


# --- non-streamed answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "answer", "usage", "reasons"),
    [
        (
            "/v1/chat/completions",
            {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"content": "a"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25},
            },
            (9, 16),
            {"length": 1},
        ),
        (
            "/v1/completions",
            {
                "object": "text_completion",
                "choices": [
                    {"index": 0, "text": "a", "finish_reason": "stop"},
                    {"index": 1, "text": "b", "finish_reason": "stop"},
                ],
                "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
            },
            (4, 2),
            {"stop": 2},
        ),
        (
            "/v1/responses",
            {
                "object": "response",
                "status": "completed",
                "output": [{"type": "function_call", "name": "f", "arguments": "{}"}],
                "usage": {"input_tokens": 30, "output_tokens": 5},
            },
            (30, 5),
            {"tool_calls": 1},
        ),
        (
            "/v1/embeddings",
            {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}},
            (8, 0),
            {},
        ),
    ],
)
async def test_non_streamed_answers_count_usage_and_finish_reasons_but_no_ttft(
    path: str, answer: dict[str, Any], usage: tuple[int, int], reasons: dict[str, float]
) -> None:
    async with llm_sidecar() as (up, sc, session):
        up.scripts["plain"] = Script([], json_body=answer)
        body = json.dumps({"model": "plain", "messages": []}).encode()
        async with session.post(path, data=body, headers=JSON) as resp:
            assert await resp.json() == answer
        await settled(sc, "plain")
    assert (tokens(sc, "plain", "input"), tokens(sc, "plain", "output")) == usage
    assert finishes(sc, "plain") == reasons
    assert sidecar_ttft(sc, "plain")[0] == 0
    assert sidecar_tpot(sc, "plain")[0] == 0


def test_zz_report_agreement() -> None:
    """Prints the largest differences seen (run with -s); the assertions are above."""
    for kind, diffs in AGREEMENT.items():
        if diffs:
            worst = max(diffs, key=abs)
            print(f"{kind}: {len(diffs)} streams, worst sidecar - client {worst * 1e3:+.3f} ms")
