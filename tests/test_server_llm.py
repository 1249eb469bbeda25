"""The reference server's language model over real HTTP: OpenAI chat and completions,
streamed and not, usage, finish reasons, stop strings, per-step batching, app metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.model_server import LLM_MODEL, LLM_STEP_MODEL, Served, start_server
from support.polling import poll

from inferwatch import schema

MESSAGES = [{"role": "user", "content": "Tell me about observability."}]
# "<|user|>" + content + "\n" + "<|assistant|>", after the beginning-of-sequence token
CHAT_PROMPT_TOKENS = 1 + len("<|user|>Tell me about observability.\n<|assistant|>")


@pytest.fixture
async def served(registry: CollectorRegistry) -> AsyncIterator[Served]:
    s = await start_server(registry)
    yield s
    await s.stop()


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": LLM_MODEL, "messages": MESSAGES, "temperature": 0, **fields}


async def stream(served: Served, path: str, body: dict[str, Any]) -> list[Any]:
    """The decoded ``data:`` payloads of a streamed answer, ``"[DONE]"`` as the string."""
    async with served.session.post(served.url + path, json={**body, "stream": True}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    assert raw.endswith("\n\n")
    events = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_text(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "") if "delta" in e["choices"][0] else ""
        for e in events
        if isinstance(e, dict) and e["choices"]
    )


async def generate(served: Served, **fields: Any) -> dict[str, Any]:
    status, body, _ = await served.request("POST", "/v1/chat/completions", json=chat(**fields))
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def test_models_lists_the_language_model(served: Served) -> None:
    status, body, _ = await served.request("GET", "/v1/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == [LLM_MODEL]
    assert body["object"] == "list"


async def test_chat_not_streamed_has_usage_and_honours_max_tokens(served: Served) -> None:
    body = await generate(served, max_tokens=12)
    assert body["object"] == "chat.completion"
    assert body["model"] == LLM_MODEL
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert len(text) == 12  # a token is one printable character
    assert all(c == "\n" or " " <= c <= "~" for c in text)
    assert body["usage"] == {
        "prompt_tokens": CHAT_PROMPT_TOKENS,
        "completion_tokens": 12,
        "total_tokens": CHAT_PROMPT_TOKENS + 12,
    }
    # Greedy at temperature 0: the same answer every time.
    again = await generate(served, max_tokens=12)
    assert again["choices"][0]["message"]["content"] == text


async def test_chat_streamed_chunks_in_openai_format(served: Served) -> None:
    expected = (await generate(served, max_tokens=10))["choices"][0]["message"]["content"]
    events = await stream(
        served, "/v1/chat/completions", chat(max_tokens=10, stream_options={"include_usage": True})
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}  # role-only first chunk
    content = chunks[1:-2]
    assert content and all(set(c["choices"][0]["delta"]) == {"content"} for c in content)
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert streamed_text(events) == expected
    finish = chunks[-2]
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": CHAT_PROMPT_TOKENS,
        "completion_tokens": 10,
        "total_tokens": CHAT_PROMPT_TOKENS + 10,
    }
    assert all(c["usage"] is None for c in chunks[:-1])  # null until the usage chunk

    # Without include_usage: no usage anywhere, the finish chunk last.
    events = await stream(served, "/v1/chat/completions", chat(max_tokens=10))
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert streamed_text(events) == expected


async def test_completions_streamed_and_not(served: Served) -> None:
    body = {"model": LLM_MODEL, "prompt": "Once upon a time", "max_tokens": 7, "temperature": 0}
    status, answer, _ = await served.request("POST", "/v1/completions", json=body)
    assert status == 200, answer
    assert answer["object"] == "text_completion"
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "length"
    assert len(choice["text"]) == 7
    assert answer["usage"] == {"prompt_tokens": 17, "completion_tokens": 7, "total_tokens": 24}
    events = await stream(
        served, "/v1/completions", {**body, "stream_options": {"include_usage": True}}
    )
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["text"] for e in events[:-1] if e["choices"]]
    assert "".join(texts) == choice["text"]
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"] == answer["usage"]


async def test_stop_strings_end_the_generation(served: Served) -> None:
    full = (await generate(served, max_tokens=40))["choices"][0]["message"]["content"]
    stop = full[10:13]  # three characters: the stop string spans several tokens
    end = full.find(stop)
    body = await generate(served, max_tokens=40, stop=[stop, "never-generated"])
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full[:end]  # the stop string is not returned
    assert body["usage"]["completion_tokens"] == end + len(stop)
    # Streamed: no delta ever carries the stop string or a part of it.
    events = await stream(served, "/v1/chat/completions", chat(max_tokens=40, stop=stop))
    assert streamed_text(events) == full[:end]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    # A stop string that never comes: all of max_tokens, "length".
    body = await generate(served, max_tokens=40, stop="\x01")
    assert body["choices"][0]["message"]["content"] == full
    assert body["choices"][0]["finish_reason"] == "length"


async def test_temperature_and_seed(served: Served) -> None:
    def text(body: dict[str, Any]) -> str:
        content: str = body["choices"][0]["message"]["content"]
        return content

    first = text(await generate(served, max_tokens=16, temperature=1.0, seed=7))
    assert text(await generate(served, max_tokens=16, temperature=1.0, seed=7)) == first
    others = {text(await generate(served, max_tokens=16, temperature=1.0, seed=s)) for s in (8, 9)}
    assert others - {first}


async def test_concurrent_streams_decode_together(served: Served) -> None:
    prompts = [f"prompt number {i}" for i in range(4)]
    bodies = [{"model": LLM_MODEL, "prompt": p, "max_tokens": 6, "temperature": 0} for p in prompts]
    alone = []
    for body in bodies:
        status, answer, _ = await served.request("POST", "/v1/completions", json=body)
        assert status == 200
        alone.append(answer["choices"][0]["text"])
    before = served.metric(schema.BATCH_SIZE, "_count", model_name=LLM_STEP_MODEL)
    single = served.metric(schema.BATCH_SIZE, "_bucket", model_name=LLM_STEP_MODEL, le="1.0")
    gate = served.gates[LLM_MODEL]
    gate.calls.clear()
    gate.close()
    first = asyncio.create_task(stream(served, "/v1/completions", bodies[0]))
    await poll(gate.entered.is_set)  # its first step is in the model: the others queue
    rest = [asyncio.create_task(stream(served, "/v1/completions", b)) for b in bodies[1:]]
    scheduler = served.server.scheduler
    assert scheduler is not None
    await poll(lambda: scheduler.waiting == 3)  # for the next round
    gate.open()
    results = [await first, *[await task for task in rest]]
    texts = ["".join(e["choices"][0]["text"] for e in r[:-1] if e["choices"]) for r in results]
    assert texts == alone  # decoding in a batch gives each stream what it gets alone
    # The first stream's second step joins the others' first: from then on all four decode
    # as one batch each step, until the first stream is done.
    assert gate.batch_sizes == [1, 4, 4, 4, 4, 4, 3]
    count = served.metric(schema.BATCH_SIZE, "_count", model_name=LLM_STEP_MODEL) - before
    ones = served.metric(schema.BATCH_SIZE, "_bucket", model_name=LLM_STEP_MODEL, le="1.0")
    assert count == len(gate.batch_sizes) < 4 * 6  # fewer forward passes than tokens
    assert ones - single == gate.batch_sizes.count(1)
    steps = served.metric(schema.BATCH_SIZE, "_sum", model_name=LLM_STEP_MODEL)
    assert steps >= 4 * 6


async def test_app_metrics_recorded(served: Served) -> None:
    def value(family: schema.Family, suffix: str = "", **labels: str) -> float:
        return served.metric(family, suffix, model_name=LLM_MODEL, **labels)

    await stream(served, "/v1/chat/completions", chat(max_tokens=9))
    full = (await generate(served, max_tokens=30))["choices"][0]["message"]["content"]
    await generate(served, max_tokens=30, stop=full[20])
    stop_tokens = full.find(full[20]) + 1
    assert value(schema.INFERENCE_TOTAL, model_version="1", status="success") == 3
    assert value(schema.TIME_TO_FIRST_TOKEN, "_count", model_version="1") == 3
    assert value(schema.TIME_PER_OUTPUT_TOKEN, "_count", model_version="1") == 3
    assert value(schema.TIME_TO_FIRST_TOKEN, "_sum", model_version="1") > 0
    assert value(schema.TOKENS, type="input") == 3 * CHAT_PROMPT_TOKENS
    assert value(schema.TOKENS, type="output") == 9 + 30 + stop_tokens
    assert value(schema.FINISH_REASONS_TOTAL, reason="length") == 2
    assert value(schema.FINISH_REASONS_TOTAL, reason="stop") == 1
    assert value(schema.ACTIVE_REQUESTS) == 0
    async with served.session.get(served.url + "/metrics") as r:
        exposed = await r.text()
    assert 'model_inference_finish_reasons_total{model_name="tiny-llm",reason="length"' in exposed


async def test_a_client_gone_mid_stream_counts_as_cancelled(served: Served) -> None:
    gate = served.gates[LLM_MODEL]
    async with served.session.post(
        served.url + "/v1/chat/completions", json=chat(max_tokens=200, stream=True)
    ) as r:
        assert r.status == 200
        await r.content.readuntil(b"\n\n")  # the role chunk
        gate.close()
        await poll(gate.entered.is_set)
        r.close()  # hang up while a step is in the model
    gate.open()
    await poll(
        lambda: (
            served.metric(
                schema.INFERENCE_FAILURES,
                model_name=LLM_MODEL,
                model_version="1",
                reason="cancelled",
            )
            == 1
        )
    )
    await poll(lambda: served.server.generations == 0)


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/v1/chat/completions", {"model": "gpt-9", "messages": MESSAGES}, 404, "unknown_model"),
        ("/v1/chat/completions", {"model": LLM_MODEL}, 400, "invalid_request"),
        ("/v1/chat/completions", chat(max_tokens=0), 400, "invalid_request"),
        ("/v1/chat/completions", chat(temperature=3), 400, "invalid_request"),
        ("/v1/chat/completions", chat(stop=["a"] * 5), 400, "invalid_request"),
        ("/v1/chat/completions", chat(n=2), 400, "invalid_request"),
        (
            "/v1/chat/completions",
            chat(stream_options={"include_usage": True}),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            {"model": LLM_MODEL, "prompt": "x" * 300},
            400,
            "context_length_exceeded",
        ),
    ],
)
async def test_bad_requests(
    served: Served, path: str, body: dict[str, Any], status: int, reason: str
) -> None:
    got, answer, _ = await served.request("POST", path, json=body)
    assert (got, answer["reason"]) == (status, reason), answer


async def test_max_tokens_is_capped_by_the_context(served: Served) -> None:
    prompt = "y" * 250  # 251 tokens with BOS; the tiny model's context is 256
    body = {"model": LLM_MODEL, "prompt": prompt, "max_tokens": 100, "temperature": 0}
    status, answer, _ = await served.request("POST", "/v1/completions", json=body)
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] <= 5
    if answer["usage"]["completion_tokens"] == 5:
        assert answer["choices"][0]["finish_reason"] == "length"


async def test_a_stream_in_flight_finishes_during_shutdown(served: Served) -> None:
    task = asyncio.create_task(stream(served, "/v1/chat/completions", chat(max_tokens=30)))
    await poll(lambda: served.server.generations == 1)
    await served.server.drain()  # what on_shutdown runs
    events = await task
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    status, body, _ = await served.request("POST", "/v1/chat/completions", json=chat())
    assert (status, body["reason"]) == (503, "shutting_down")
