"""The OpenAI-style text generation endpoints: request parsing, the decoding loop, chunks.

``/v1/chat/completions`` and ``/v1/completions`` over the tiny byte-level language model
(:class:`~inferwatch.server.models.LLMRunner`), streamed as server-sent events in OpenAI's
chunk format or answered as one JSON object. Nothing here touches HTTP; ``app`` does.

Batching is per decoding step (continuous batching): a :class:`StepScheduler` gathers the
next step of every generation in flight and runs them as one forward pass through the model's
:class:`~inferwatch.batching.DynamicBatcher`; a new request joins the running ones at the next
step, a finished one leaves. Concurrent streams therefore decode together, in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from inferwatch import schema
from inferwatch.batching import DynamicBatcher
from inferwatch.decorators import track_inference
from inferwatch.server.models import LM_BOS, LM_EOS, DecodeStep, LLMRunner
from inferwatch.server.protocol import RequestError

DEFAULT_MAX_TOKENS = 128
MAX_STOP_STRINGS = 4
FINISH_STOP = schema.FINISH_STOP
FINISH_LENGTH = schema.FINISH_LENGTH


@dataclass
class GenerationRequest:
    """What to generate: the prompt's tokens and how to decode."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    chat: bool = True


@dataclass
class Generation:
    """A generation's outcome, filled in as it runs."""

    request: GenerationRequest
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    id: str = field(default_factory=lambda: secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


# --- parsing ----------------------------------------------------------------------------------


def chat_prompt(messages: Any) -> bytes:
    """The prompt text for chat ``messages``: one ``<|role|>content`` line each, then the
    assistant's turn."""
    if not isinstance(messages, list) or not messages:
        raise RequestError('"messages" must be a non-empty list of {"role", "content"} objects')
    parts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f'messages[{i}] must be an object with a "role" string')
        content = message.get("content")
        if isinstance(content, list):  # content parts: the text ones
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(t, str) for t in texts):
                raise RequestError(f"messages[{i}].content parts must be text parts")
            content = "".join(texts)  # type: ignore[arg-type]
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string")
        parts.append(f"<|{message['role']}|>{content}\n")
    parts.append("<|assistant|>")
    return "".join(parts).encode("utf-8", errors="replace")


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f'"{key}" must be a number from {low:g} to {high:g}, got {value!r}')
    return float(value)


def parse_generation(body: Any, runner: LLMRunner, *, chat: bool) -> GenerationRequest:
    """A chat (``messages``) or completions (``prompt``) body, checked."""
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model != runner.name:
        raise RequestError(
            f"unknown model {model!r}; this server generates with {runner.name!r}",
            reason="unknown_model",
            status=404,
        )
    if chat:
        text = chat_prompt(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError('"prompt" must be a string (or a list of one string)')
        text = prompt.encode("utf-8", errors="replace")
    tokens = [LM_BOS, *text]
    context = runner.config.context
    if len(tokens) >= context:
        raise RequestError(
            f"the prompt is {len(tokens)} tokens; this model's context is {context} "
            "(prompt and output together)",
            reason="context_length_exceeded",
        )
    room = context - len(tokens)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, room)
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RequestError(f'"max_tokens" must be a positive integer, got {limit!r}')
    else:
        max_tokens = min(limit, room)  # the context ends it as max_tokens would: "length"
    n = body.get("n", 1)
    if n != 1:
        raise RequestError(f'"n" must be 1 here (one choice per request), got {n!r}')
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(f'"seed" must be an integer, got {seed!r}')
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif (
        isinstance(stop, list)
        and len(stop) <= MAX_STOP_STRINGS
        and all(isinstance(s, str) and s for s in stop)
    ):
        stops = tuple(stop)
    else:
        raise RequestError(
            f'"stop" must be a string or a list of up to {MAX_STOP_STRINGS} non-empty strings'
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f'"stream" must be true or false, got {stream!r}')
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict) or not isinstance(
            options.get("include_usage", False), bool
        ):
            raise RequestError('"stream_options" must be an object like {"include_usage": true}')
        if not stream:
            raise RequestError('"stream_options" is only allowed with "stream": true')
        include_usage = options.get("include_usage", False)
    return GenerationRequest(
        prompt=tokens,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        seed=seed,
        stop=stops,
        stream=stream,
        include_usage=include_usage,
        chat=chat,
    )


# --- decoding ---------------------------------------------------------------------------------


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


Step = Callable[[DecodeStep], Awaitable[int]]


async def decode(generation: Generation, step: Step) -> AsyncGenerator[str, None]:
    """Generate: yields once per output token with the text now safe to send (``""`` while
    it may be the start of a stop string); fills in ``generation`` as it goes.

    Ends at the end-of-sequence token or a stop string (``stop``; the stop string itself is
    not sent) or after ``max_tokens`` (``length``).
    """
    request = generation.request
    generator = None
    if request.temperature > 0:
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
    context = list(request.prompt)
    stops = request.stop
    longest_stop = max((len(s) for s in stops), default=0)
    text = ""
    sent = 0  # characters of text already yielded
    while True:
        if generation.completion_tokens >= request.max_tokens:
            generation.finish_reason = FINISH_LENGTH
            break
        token = await step(DecodeStep(context, request.temperature, generator))
        generation.completion_tokens += 1
        if token == LM_EOS:
            generation.finish_reason = FINISH_STOP
            yield ""  # a token was generated, though it shows no text
            break
        context = [*context, token]
        text += chr(token)  # output tokens are ASCII: one character each
        if stops:
            start = max(0, sent - longest_stop)
            found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
            if found:
                end = min(found)
                generation.finish_reason = FINISH_STOP
                generation.text = text[:end]
                yield text[sent:end]
                return
            safe = len(text) - _held_back(text, stops)
        else:
            safe = len(text)
        delta = text[sent:safe]
        sent = max(sent, safe)
        yield delta
    generation.text = text
    if sent < len(text):  # what was held back for a stop string that never came
        yield text[sent:]


class StepScheduler:
    """Runs decoding steps in rounds: each round takes every step waiting, submits them to the
    batcher together (one batch, up to its ``max_batch_size``) and waits for their tokens;
    steps submitted meanwhile wait for the next round.

    The batcher alone would not keep generations in step: with one batch in flight, streams
    that arrived while a batch ran would form a second group, and the two groups would take
    turns forever (batches of 1 and 3 instead of 4).
    """

    def __init__(self, batcher: DynamicBatcher[DecodeStep, int]) -> None:
        self.batcher = batcher
        self._waiting: list[tuple[DecodeStep, asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Steps waiting for the next round."""
        return len(self._waiting)

    async def step(self, item: DecodeStep) -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting.append((item, future))
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._rounds())
        return await future  # cancelled: the round skips it, or drops its token

    async def _rounds(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # The generations the last round answered resume before this task runs again;
            # one more pass of the loop lets any that awaited something else submit too.
            await asyncio.sleep(0)
            round_, self._waiting = self._waiting, []
            live = [(item, future) for item, future in round_ if not future.done()]
            if not live:
                continue
            try:
                tokens = await self.batcher.submit_many([item for item, _ in live])
            except Exception as exc:  # overloaded, closed, the model failed: every step of it
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), token in zip(live, tokens, strict=True):
                if not future.done():
                    future.set_result(token)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._waiting:
            future.cancel()


# --- instrumentation --------------------------------------------------------------------------


async def instrumented(
    generation: Generation,
    tokens: AsyncGenerator[str, None],
    runner: LLMRunner,
    registry: CollectorRegistry | None,
) -> AsyncGenerator[str, None]:
    """``tokens`` (see :func:`decode`), recorded with ``source="app"`` through the decorators'
    :class:`~inferwatch.decorators.track_inference`: the inference and its latency, TTFT (call
    to first generated token), TPOT ((last token - first token) / (output tokens - 1)), tokens
    in and out, the finish reason. The one place the server instruments generations."""
    counted = 0
    try:
        async with track_inference(runner.name, runner.version, registry=registry) as tracked:
            tracked.add_tokens(input=generation.prompt_tokens)
            async for delta in tokens:
                new = generation.completion_tokens - counted
                if new:  # the last item may be held-back text, no new token
                    counted += new
                    tracked.tokens(new)
                yield delta
            tracked.finish(generation.finish_reason)
    finally:
        await tokens.aclose()


# --- responses --------------------------------------------------------------------------------


def _head(generation: Generation, runner: LLMRunner, chunk: bool) -> dict[str, Any]:
    chat = generation.request.chat
    kind = "text_completion"
    if chat:
        kind = "chat.completion.chunk" if chunk else "chat.completion"
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + generation.id,
        "object": kind,
        "created": generation.created,
        "model": runner.name,
        "system_fingerprint": f"inferwatch-{runner.version}",
    }


def response(generation: Generation, runner: LLMRunner) -> dict[str, Any]:
    """The answer to a request without ``stream``."""
    choice: dict[str, Any] = {"index": 0}
    if generation.request.chat:
        choice["message"] = {"role": "assistant", "content": generation.text}
    else:
        choice["text"] = generation.text
    choice["logprobs"] = None
    choice["finish_reason"] = generation.finish_reason
    return {**_head(generation, runner, False), "choices": [choice], "usage": generation.usage()}


def chunk(
    generation: Generation,
    runner: LLMRunner,
    *,
    delta: str | None = None,
    role: bool = False,
    finish: bool = False,
) -> dict[str, Any]:
    """One streamed chunk: the role (chat's first), a text delta, or the finish reason."""
    choice: dict[str, Any] = {"index": 0}
    if generation.request.chat:
        content: dict[str, str] = {}
        if role:
            content["role"] = "assistant"
        if delta is not None:
            content["content"] = delta
        choice["delta"] = content
    else:
        choice["text"] = delta or ""
    choice["logprobs"] = None
    choice["finish_reason"] = generation.finish_reason if finish else None
    body = {**_head(generation, runner, True), "choices": [choice]}
    if generation.request.include_usage:
        body["usage"] = None
    return body


def usage_chunk(generation: Generation, runner: LLMRunner) -> dict[str, Any]:
    """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
    return {**_head(generation, runner, True), "choices": [], "usage": generation.usage()}


def models_list(runners: Sequence[LLMRunner]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": r.name, "object": "model", "created": 0, "owned_by": "inferwatch"}
            for r in runners
        ],
    }
