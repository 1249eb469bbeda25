"""The sidecar in front of a real OpenAI-compatible LLM server nobody here wrote: Hugging
Face's ``transformers serve`` on the CPU, serving a tiny Llama with random weights made by
the test (tests/support/openai_server.py). A plain aiohttp client streams chat completions
through the sidecar and measures them on its own clock; what the sidecar recorded must agree.

What "agree" means. The sidecar runs on the test's event loop, so both read the same
``perf_counter``, and causality orders the two: the client sends before the sidecar receives,
and the sidecar reads each chunk from the server before the client reads it from the
sidecar. So for each request ``0 <= client TTFT - sidecar TTFT``, and the gap is two loopback
hops through one event loop (the request in, the first content chunk out): about 0.5 ms here,
2.5 ms at most in 30 requests (TTFT 6-22 ms, TPOT 1.2-3.5 ms), though one request in a few
hundred meets a scheduler hiccup on a busy 2-core machine (5.6 ms once in CI). So causality is
asserted for every request, and the gap's *median* over :data:`REQUESTS` requests must stay
within :data:`RELAY` (5 ms): one stalled relay cannot fail the test, a sidecar that starts or
stops its clock at the wrong event (the response head, the role-only chunk, the stream's end)
does on every request. For the time per output token both ends of the span (first and last
content chunk) carry such a gap, which divides by ``tokens - 1``: the median
``|client TPOT - sidecar TPOT|`` is within ``RELAY / (tokens - 1)`` (161 us for 32 tokens;
7 us at most seen). No absolute timing is asserted.

How this server streams (transformers 5.23): a role-only chunk first, one chunk per decoded
token, then a last chunk holding ``finish_reason`` and ``usage`` (always sent; it refuses
``stream_options``), and no ``data: [DONE]``. ``logit_bias`` on the end-of-sequence token
makes the finish reason deterministic: -100 never ends (``length`` at ``max_tokens``), +100
ends at once (``stop``, one token generated, no content).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import aiohttp
import pytest
from support.openai_server import OpenAIServer, running_openai_server
from support.polling import poll
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar

from inferwatch import schema
from inferwatch.sidecar.process import Sidecar

RELAY = 0.005  # seconds: the most the relay through the sidecar may add (module docstring)
REQUESTS = 9  # the gaps' median over this many requests is checked against RELAY
MAX_TOKENS = 32
MESSAGES = [{"role": "user", "content": "hello model what is the first token time"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    with running_openai_server(tmp_path_factory.mktemp("openai-server")) as running:
        yield running


@dataclass
class Measured:
    """One chat completion as the client saw it, on its own clock."""

    status: int
    sent: float  # perf_counter() just before the request went out
    content_at: list[float] = field(default_factory=list)  # arrival of each content chunk
    text: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None
    events: int = 0

    @property
    def prompt_tokens(self) -> int:
        assert self.usage is not None, "the server reported no usage"
        return self.usage["prompt_tokens"]

    @property
    def output_tokens(self) -> int:
        """The usage the server reported, else the content chunks."""
        if self.usage is None:
            return len(self.content_at)
        return self.usage["completion_tokens"]

    @property
    def ttft(self) -> float:
        return self.content_at[0] - self.sent

    @property
    def tpot(self) -> float:
        return (self.content_at[-1] - self.content_at[0]) / (self.output_tokens - 1)


def _read_choice(measured: Measured, chunk: dict[str, Any], at: float) -> None:
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            measured.content_at.append(at)
            measured.text += content
        if choice.get("finish_reason"):
            measured.finish_reasons.append(choice["finish_reason"])
    if chunk.get("usage"):
        measured.usage = chunk["usage"]


async def stream_chat(session: aiohttp.ClientSession, url: str, **body: Any) -> Measured:
    """POST a streamed chat completion and time each SSE event as its line is read."""
    request = {"messages": MESSAGES, **body, "stream": True}
    sent = perf_counter()
    async with session.post(url + "/v1/chat/completions", json=request) as response:
        measured = Measured(response.status, sent)
        async for raw in response.content:  # one line at a time
            at = perf_counter()
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            measured.events += 1
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            _read_choice(measured, chunk, at)
    return measured


async def chat(session: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    """A non-streamed chat completion's JSON answer."""
    async with session.post(
        url + "/v1/chat/completions", json={"messages": MESSAGES, **body}
    ) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


def url(sidecar: Sidecar) -> str:
    return f"http://{LOOPBACK}:{sidecar.proxy_port}"


def model_metric(sidecar: Sidecar, name: str, model: str, **labels: str) -> float:
    return metric(sidecar, name, model_name=model, **labels)


def histogram(sidecar: Sidecar, family: schema.Family, model: str) -> tuple[float, float]:
    """(_count, _sum) of one of the sidecar's per-model histograms (no model version)."""
    labels = {"model_version": ""}
    count = model_metric(sidecar, family.count, model, **labels)
    total = model_metric(sidecar, family.name + "_sum", model, **labels)
    return count, total


def tokens(sidecar: Sidecar, model: str) -> tuple[float, float]:
    """(input, output) of model_inference_tokens_total."""
    name = schema.TOKENS.name
    return (
        model_metric(sidecar, name, model, type=schema.TOKEN_INPUT),
        model_metric(sidecar, name, model, type=schema.TOKEN_OUTPUT),
    )


def finishes(sidecar: Sidecar, model: str, reason: str) -> float:
    return model_metric(sidecar, schema.FINISH_REASONS_TOTAL.name, model, reason=reason)


def successes(sidecar: Sidecar, model: str) -> float:
    labels = {"model_version": "", "status": "success"}
    return model_metric(sidecar, schema.INFERENCE_TOTAL.name, model, **labels)


async def test_streamed_tokens_and_finish_reasons_match_the_servers_usage(
    server: OpenAIServer,
) -> None:
    model, never_end = server.model, {str(server.eos_token_id): -100.0}
    async with running_sidecar(server.url, upstream_ready_path="/health") as sidecar:
        async with aiohttp.ClientSession() as session:
            seen = [
                await stream_chat(
                    session, url(sidecar), model=model, max_tokens=MAX_TOKENS, logit_bias=never_end
                )
                for _ in range(3)
            ]
        for measured in seen:
            assert measured.status == 200
            assert measured.finish_reasons == ["length"]
            assert measured.output_tokens == MAX_TOKENS
            # Every token decodes to a word here: one content chunk each.
            assert len(measured.content_at) == MAX_TOKENS
            assert measured.prompt_tokens > 0
        await poll(lambda: successes(sidecar, model) == len(seen))
        prompt = sum(measured.prompt_tokens for measured in seen)
        assert tokens(sidecar, model) == (prompt, len(seen) * MAX_TOKENS)
        assert finishes(sidecar, model, schema.FINISH_LENGTH) == len(seen)
        assert finishes(sidecar, model, schema.FINISH_STOP) == 0


async def test_streamed_ttft_and_tpot_agree_with_the_clients_clock(server: OpenAIServer) -> None:
    model, never_end = server.model, {str(server.eos_token_id): -100.0}
    ttft_gaps: list[float] = []  # client TTFT - sidecar TTFT, per request
    tpot_gaps: list[float] = []  # |client TPOT - sidecar TPOT|, per request
    async with (
        running_sidecar(server.url, upstream_ready_path="/health") as sidecar,
        aiohttp.ClientSession() as session,
    ):
        ttft_before = tpot_before = 0.0
        for done in range(1, REQUESTS + 1):
            measured = await stream_chat(
                session, url(sidecar), model=model, max_tokens=MAX_TOKENS, logit_bias=never_end
            )
            assert measured.status == 200
            assert measured.output_tokens == MAX_TOKENS
            await poll(lambda: successes(sidecar, model) == done)  # noqa: B023
            ttft_count, ttft_sum = histogram(sidecar, schema.TIME_TO_FIRST_TOKEN, model)
            tpot_count, tpot_sum = histogram(sidecar, schema.TIME_PER_OUTPUT_TOKEN, model)
            assert (ttft_count, tpot_count) == (done, done)  # one observation per request
            # This request's observations: what the sums grew by.
            ttft, tpot = ttft_sum - ttft_before, tpot_sum - tpot_before
            ttft_before, tpot_before = ttft_sum, tpot_sum
            # Causality: the sidecar's span lies inside the client's.
            assert measured.ttft - ttft >= 0.0, (measured.ttft, ttft)
            ttft_gaps.append(measured.ttft - ttft)
            tpot_gaps.append(abs(measured.tpot - tpot))
    assert statistics.median(ttft_gaps) <= RELAY, ttft_gaps
    assert statistics.median(tpot_gaps) <= RELAY / (MAX_TOKENS - 1), tpot_gaps


async def test_stop_at_once_counts_one_token_and_no_first_token(server: OpenAIServer) -> None:
    """End-of-sequence first: finish ``stop``, one output token, no content chunk, so no time
    to first token and no time per output token."""
    model, end_now = server.model, {str(server.eos_token_id): 100.0}
    async with running_sidecar(server.url, upstream_ready_path="/health") as sidecar:
        async with aiohttp.ClientSession() as session:
            measured = await stream_chat(
                session, url(sidecar), model=model, max_tokens=MAX_TOKENS, logit_bias=end_now
            )
        assert measured.status == 200
        assert (measured.finish_reasons, measured.output_tokens) == (["stop"], 1)
        assert measured.content_at == []
        await poll(lambda: successes(sidecar, model) == 1)
        assert tokens(sidecar, model) == (measured.prompt_tokens, 1)
        assert finishes(sidecar, model, schema.FINISH_STOP) == 1
        assert histogram(sidecar, schema.TIME_TO_FIRST_TOKEN, model)[0] == 0
        assert histogram(sidecar, schema.TIME_PER_OUTPUT_TOKEN, model)[0] == 0


async def test_non_streamed_usage_is_counted_without_a_first_token(server: OpenAIServer) -> None:
    model, never_end = server.model, {str(server.eos_token_id): -100.0}
    async with running_sidecar(server.url, upstream_ready_path="/health") as sidecar:
        async with aiohttp.ClientSession() as session:
            answers = [
                await chat(session, url(sidecar), model=model, max_tokens=n, logit_bias=never_end)
                for n in (4, 9)
            ]
        assert [answer["usage"]["completion_tokens"] for answer in answers] == [4, 9]
        assert all(answer["choices"][0]["finish_reason"] == "length" for answer in answers)
        await poll(lambda: successes(sidecar, model) == len(answers))
        prompt = sum(answer["usage"]["prompt_tokens"] for answer in answers)
        assert tokens(sidecar, model) == (prompt, 4 + 9)
        assert finishes(sidecar, model, schema.FINISH_LENGTH) == len(answers)
        assert histogram(sidecar, schema.TIME_TO_FIRST_TOKEN, model)[0] == 0
        assert histogram(sidecar, schema.TIME_PER_OUTPUT_TOKEN, model)[0] == 0
