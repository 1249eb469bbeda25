"""In-process instrumentation: ``@monitor_inference`` and ``track_inference``.

Both record the schema's inference families with ``source="app"``. Label children are
resolved when the function is decorated, so a call costs a few increments and one observe.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar, overload

from prometheus_client import CollectorRegistry

from inferwatch import schema
from inferwatch import tracing as _tracing
from inferwatch.metrics import ModelInstruments, inference_metrics
from inferwatch.tracing.state import tracing_state

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
# int: a fixed size; callable: called with the call's arguments; None: the default rule
# (length of the first argument after self/cls); False: never record a batch size.
BatchSize = int | Callable[..., Any] | None
# True: each yielded item is one output token; callable: the tokens an item holds (item -> int);
# None/False: a plain stream (no token metrics).
Tokens = bool | Callable[[Any], int] | None
# The finish reason an item reports (item -> str | None); the last one reported counts.
FinishReason = Callable[[Any], str | None] | None

_CANCELLED = (asyncio.CancelledError, GeneratorExit)


def _reason(exc: BaseException) -> str:
    return schema.REASON_CANCELLED if isinstance(exc, _CANCELLED) else schema.REASON_EXCEPTION


def count_items(value: Any) -> int | None:
    """Items in one argument: its length (leading dimension for arrays and tensors).

    A string or bytes is one item, not its characters; a mapping has no batch dimension we
    can trust (its length counts keys), and neither has a scalar.
    """
    kind = type(value)
    if kind is list or kind is tuple:  # the common case first: no ABC isinstance checks
        return len(value)
    if isinstance(value, (str, bytes, bytearray)):
        return 1
    if isinstance(value, Mapping):
        return None
    try:
        return len(value)
    except TypeError:  # no __len__, or a 0-d array/tensor
        return None


def _first_data_parameter(func: Callable[..., Any]) -> tuple[int, str | None]:
    """Position and name of the first argument that is not ``self``/``cls``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return 0, None
    skip = 1 if params and params[0].name in ("self", "cls") else 0
    rest = params[skip:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if rest and rest[0].kind in positional:
        return skip, rest[0].name
    return skip, None


def _batch_extractor(
    func: Callable[..., Any], batch_size: BatchSize
) -> Callable[[tuple[Any, ...], dict[str, Any]], int | None] | None:
    if batch_size is False:
        return None
    if batch_size is True:
        raise TypeError("batch_size must be an int, a callable, None or False; got True")
    if isinstance(batch_size, int):
        fixed = batch_size
        return lambda args, kwargs: fixed
    if callable(batch_size):
        user = batch_size
        return lambda args, kwargs: user(*args, **kwargs)
    if batch_size is not None:
        raise TypeError(f"batch_size must be an int, a callable, None or False; got {batch_size!r}")
    position, name = _first_data_parameter(func)

    def default(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        if len(args) > position:
            return count_items(args[position])
        if name is not None and name in kwargs:
            return count_items(kwargs[name])
        return None

    return default


def _observe_batch(
    extract: Callable[[tuple[Any, ...], dict[str, Any]], int | None],
    observe_size: Callable[[float], None],
    m: ModelInstruments,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    # A broken extractor must never break the inference it measures.
    try:
        size = extract(args, kwargs)
    except Exception:
        log.debug("batch size extraction failed for %s", m.model_name, exc_info=True)
        return
    if size is not None:
        observe_size(size)


def _recorders(
    m: ModelInstruments, on_span: bool
) -> tuple[Callable[[float], None], Callable[[str], None]]:
    """Where a wrapper records batch sizes and failures: ``m``'s children and, inside a
    recorded span (``on_span``), that span too (``inference.batch_size``, ``error.type``)."""
    if on_span:
        return (
            _tracing.batch_sizes_on_span(m.batch_size.observe),
            _tracing.failures_on_span(m.record_failure),
        )
    return m.batch_size.observe, m.record_failure


@overload
def monitor_inference(func: F, /) -> F: ...


@overload
def monitor_inference(
    func: None = None,
    /,
    *,
    model_name: str | None = None,
    model_version: str = "",
    batch_size: BatchSize = None,
    registry: CollectorRegistry | None = None,
    tokens: Tokens = None,
    finish_reason: FinishReason = None,
) -> Callable[[F], F]: ...


def monitor_inference(
    func: Callable[..., Any] | None = None,
    /,
    *,
    model_name: str | None = None,
    model_version: str = "",
    batch_size: BatchSize = None,
    registry: CollectorRegistry | None = None,
    tokens: Tokens = None,
    finish_reason: FinishReason = None,
) -> Any:
    """Record every call of a function as one inference of ``model_name``.

    Works on functions and methods, ``async def``, generators and async generators (streamed
    answers: the first item is the time to first byte). Exceptions propagate unchanged.
    ``model_name`` defaults to the function's name; ``registry`` to prometheus_client's.

    Token streams (generators only): ``tokens=True`` counts each yielded item as one output
    token, ``tokens=callable`` says how many an item holds (``item -> int``). Then the first
    item holding a token observes the time to first token, each item's tokens are counted as
    ``type="output"`` as they arrive, and a stream that ends normally with two tokens or more
    observes the time per output token: (last token's arrival - first token's) / (tokens - 1).
    ``finish_reason=callable`` (``item -> str | None``) reads each item's finish reason; the
    last one reported is counted when the stream ends, however it ends.
    """
    count = _token_counter(tokens)
    if finish_reason is not None and not callable(finish_reason):
        raise TypeError(f"finish_reason must be a callable or None; got {finish_reason!r}")

    def decorate(fn: F) -> F:
        m = inference_metrics(registry).model(
            schema.SOURCE_APP, model_name or fn.__name__, model_version
        )
        extract = _batch_extractor(fn, batch_size)
        streamed = count is not None or finish_reason is not None
        if streamed and not (inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn)):
            raise TypeError(
                f"tokens= and finish_reason= need a generator or an async generator; "
                f"{fn.__qualname__} is neither (use track_inference's tokens() and finish())"
            )
        if streamed:
            stream = _wrap_async_generator if inspect.isasyncgenfunction(fn) else _wrap_generator
            make: Callable[..., Callable[..., Any]] = functools.partial(
                stream, count=count, reason=finish_reason
            )
        elif inspect.isasyncgenfunction(fn):
            make = _wrap_async_generator
        elif inspect.isgeneratorfunction(fn):
            make = _wrap_generator
        elif inspect.iscoroutinefunction(fn):
            make = _wrap_coroutine
        else:
            make = _wrap_function
        traced = _Traced(make, fn, m, extract)
        return functools.wraps(fn)(make(fn, m, extract, traced))  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate


# The wrappers bind children's methods to locals: attribute lookups are a measurable part of a
# call that otherwise costs about a microsecond. While tracing is off a call reads one flag,
# ``tracing_state.enabled``; when it is on, the call goes to the traced variant of the same
# wrapper (built on first use), which runs inside a span, attaches exemplars to latency and
# puts the batch size and any failure on the span.


def _span_error_type(exc: BaseException) -> str:
    return _reason(exc) if isinstance(exc, _CANCELLED) else type(exc).__qualname__


class _Traced:
    """The traced variant of a wrapper: a span around the wrapper built on exemplar children
    that also records the batch size and failures on the span."""

    __slots__ = ("_args", "_attributes", "_inner", "_make", "_name", "_plain")

    def __init__(self, make: Callable[..., Any], fn: Any, m: ModelInstruments, extract: Any):
        self._make = make
        self._args = (fn, m, extract)
        self._inner: Callable[..., Any] | None = None
        self._plain: Callable[..., Any] | None = None
        self._name = f"inference {m.model_name}"
        self._attributes = _tracing.model_attributes(m.source, m.model_name, m.model_version)

    def _wrapper(self, span: Any = None) -> Callable[..., Any]:
        """The wrapper to run inside ``span``: exemplars only when it is recorded."""
        if span is not None and not span.is_recording():
            plain = self._plain
            if plain is None:
                fn, m, extract = self._args
                plain = self._plain = self._make(fn, m, extract, None)
            return plain
        inner = self._inner
        if inner is None:
            fn, m, extract = self._args
            traced_m = m.with_exemplars(_tracing.current_exemplar)
            inner = self._inner = self._make(fn, traced_m, extract, None, on_span=True)
        return inner

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with _tracing.inference_span(self._name, self._attributes, _span_error_type) as span:
            return self._wrapper(span)(*args, **kwargs)

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with _tracing.inference_span(self._name, self._attributes, _span_error_type) as span:
            return await self._wrapper(span)(*args, **kwargs)

    def generator(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Generator[Any, Any, Any]:
        # The span is current only while the wrapped generator runs, never across a yield.
        span = _tracing.start_span(self._name, attributes=self._attributes)
        ctx = _tracing.context_of(span)
        attach, detach = _tracing.attach, _tracing.detach
        token = attach(ctx)
        try:
            gen = self._wrapper()(*args, **kwargs)
            item = next(gen)
        except StopIteration as stop:
            detach(token)
            _tracing.end_span(span, None)
            return stop.value
        except BaseException as exc:
            detach(token)
            _tracing.end_span(span, exc, _span_error_type(exc))
            raise
        detach(token)
        error: BaseException | None = None
        try:
            while True:
                thrown: BaseException | None = None
                try:
                    sent = yield item
                except GeneratorExit:
                    token = attach(ctx)
                    try:
                        gen.close()
                    finally:
                        detach(token)
                    raise
                except BaseException as exc:
                    thrown = exc
                    sent = None
                token = attach(ctx)
                try:
                    item = gen.throw(thrown) if thrown is not None else gen.send(sent)
                except StopIteration as stop:
                    return stop.value
                finally:
                    detach(token)
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            _tracing.end_span(span, error, None if error is None else _span_error_type(error))

    async def async_generator(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncGenerator[Any, Any]:
        span = _tracing.start_span(self._name, attributes=self._attributes)
        ctx = _tracing.context_of(span)
        attach, detach = _tracing.attach, _tracing.detach
        error: BaseException | None = None
        gen = None
        try:
            token = attach(ctx)
            try:
                gen = self._wrapper()(*args, **kwargs)
                item = await gen.__anext__()
            finally:
                detach(token)
            while True:
                thrown: BaseException | None = None
                try:
                    sent = yield item
                except GeneratorExit:
                    token = attach(ctx)
                    try:
                        await gen.aclose()
                    finally:
                        detach(token)
                    raise
                except BaseException as exc:
                    thrown = exc
                    sent = None
                token = attach(ctx)
                try:
                    if thrown is not None:
                        item = await gen.athrow(thrown)
                    else:
                        item = await gen.asend(sent)
                finally:
                    detach(token)
        except StopAsyncIteration:
            return
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            _tracing.end_span(span, error, None if error is None else _span_error_type(error))


def _wrap_function(
    fn: Callable[..., Any],
    m: ModelInstruments,
    extract: Any,
    traced: _Traced | None,
    on_span: bool = False,
) -> Callable[..., Any]:
    observe_size, record_failure = _recorders(m, on_span)
    active_inc, active_dec = m.active.inc, m.active.dec
    observe, success = m.duration.observe, m.success.inc

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if traced is not None and tracing_state.enabled:
            return traced.call(args, kwargs)
        if extract is not None:
            _observe_batch(extract, observe_size, m, args, kwargs)
        active_inc()
        start = perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            observe(perf_counter() - start)
            active_dec()
            record_failure(_reason(exc))
            raise
        observe(perf_counter() - start)
        active_dec()
        success()
        return result

    return wrapper


def _wrap_coroutine(
    fn: Callable[..., Any],
    m: ModelInstruments,
    extract: Any,
    traced: _Traced | None,
    on_span: bool = False,
) -> Callable[..., Any]:
    observe_size, record_failure = _recorders(m, on_span)
    active_inc, active_dec = m.active.inc, m.active.dec
    observe, success = m.duration.observe, m.success.inc

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if traced is not None and tracing_state.enabled:
            return await traced.call_async(args, kwargs)
        if extract is not None:
            _observe_batch(extract, observe_size, m, args, kwargs)
        active_inc()
        start = perf_counter()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            observe(perf_counter() - start)
            active_dec()
            record_failure(_reason(exc))
            raise
        observe(perf_counter() - start)
        active_dec()
        success()
        return result

    return wrapper


def _wrap_generator(
    fn: Callable[..., Any],
    m: ModelInstruments,
    extract: Any,
    traced: _Traced | None,
    on_span: bool = False,
    *,
    count: Callable[[Any], int] | None = None,
    reason: Callable[[Any], str | None] | None = None,
) -> Callable[..., Any]:
    """``count`` or ``reason`` given: the items are tokens, and TTFT, TPOT, output tokens and
    the finish reason are recorded too."""
    observe_size, record_failure = _recorders(m, on_span)
    tokens = count is not None or reason is not None

    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        if traced is not None and tracing_state.enabled:
            return (yield from traced.generator(args, kwargs))
        if extract is not None:
            _observe_batch(extract, observe_size, m, args, kwargs)
        m.active.inc()
        start = perf_counter()
        generation = _Generation(m, count, reason, start) if tokens else None
        failure: str | None = None
        try:
            gen = fn(*args, **kwargs)
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            now = perf_counter()
            m.ttfb.observe(now - start)
            if generation is not None:
                generation.item(item, now)
            # Forward send/throw/close by hand: `yield from` would hide the first item's timing.
            while True:
                try:
                    sent = yield item
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as exc:
                    try:
                        item = gen.throw(exc)
                    except StopIteration as stop:
                        return stop.value
                else:
                    try:
                        item = gen.send(sent)
                    except StopIteration as stop:
                        return stop.value
                if generation is not None:
                    generation.item(item, perf_counter())
        except BaseException as exc:
            failure = _reason(exc)
            raise
        finally:
            m.duration.observe(perf_counter() - start)
            m.active.dec()
            if generation is not None:
                generation.end(failure is None)
            if failure is None:
                m.success.inc()
            else:
                record_failure(failure)

    return wrapper


def _wrap_async_generator(
    fn: Callable[..., Any],
    m: ModelInstruments,
    extract: Any,
    traced: _Traced | None,
    on_span: bool = False,
    *,
    count: Callable[[Any], int] | None = None,
    reason: Callable[[Any], str | None] | None = None,
) -> Callable[..., Any]:
    """As ``_wrap_generator``, for async generators."""
    observe_size, record_failure = _recorders(m, on_span)
    tokens = count is not None or reason is not None

    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        if traced is not None and tracing_state.enabled:
            agen = traced.async_generator(args, kwargs)
            try:
                item = await agen.__anext__()
                while True:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        await agen.aclose()
                        raise
                    except BaseException as exc:
                        item = await agen.athrow(exc)
                    else:
                        item = await agen.asend(sent)
            except StopAsyncIteration:
                return
        if extract is not None:
            _observe_batch(extract, observe_size, m, args, kwargs)
        m.active.inc()
        start = perf_counter()
        generation = _Generation(m, count, reason, start) if tokens else None
        failure: str | None = None
        try:
            gen = fn(*args, **kwargs)
            try:
                item = await gen.__anext__()
            except StopAsyncIteration:
                return
            now = perf_counter()
            m.ttfb.observe(now - start)
            if generation is not None:
                generation.item(item, now)
            while True:
                try:
                    sent = yield item
                except GeneratorExit:
                    await gen.aclose()
                    raise
                except BaseException as exc:
                    try:
                        item = await gen.athrow(exc)
                    except StopAsyncIteration:
                        return
                else:
                    try:
                        item = await gen.asend(sent)
                    except StopAsyncIteration:
                        return
                if generation is not None:
                    generation.item(item, perf_counter())
        except BaseException as exc:
            failure = _reason(exc)
            raise
        finally:
            m.duration.observe(perf_counter() - start)
            m.active.dec()
            if generation is not None:
                generation.end(failure is None)
            if failure is None:
                m.success.inc()
            else:
                record_failure(failure)

    return wrapper


def _one(item: Any) -> int:
    return 1


def _token_counter(tokens: Tokens) -> Callable[[Any], int] | None:
    if tokens is None or tokens is False:
        return None
    if tokens is True:
        return _one
    if callable(tokens):
        return tokens
    raise TypeError(f"tokens must be True, False, None or a callable; got {tokens!r}")


class _Generation:
    """One token stream's timing: the first and last token's arrival, tokens, finish reason."""

    __slots__ = ("_count", "_m", "_reason", "finish", "first", "last", "start", "tokens")

    def __init__(
        self,
        m: ModelInstruments,
        count: Callable[[Any], int] | None,
        reason: Callable[[Any], str | None] | None,
        start: float,
    ) -> None:
        self._m = m
        self._count = count
        self._reason = reason
        self.start = start
        self.first = 0.0
        self.last = 0.0
        self.tokens = 0
        self.finish: str | None = None

    def item(self, item: Any, now: float) -> None:
        """An item arrived at ``now``. A broken callable never breaks the stream it measures."""
        if self._count is not None:
            try:
                n = self._count(item)
                if n > 0:
                    self.mark(n, now)
            except Exception:
                log.debug("token count failed for %s", self._m.model_name, exc_info=True)
        if self._reason is not None:
            try:
                finish = self._reason(item)
            except Exception:
                log.debug("finish reason failed for %s", self._m.model_name, exc_info=True)
            else:
                if finish is not None:
                    self.finish = finish

    def mark(self, n: int, now: float) -> None:
        """``n`` (>= 1) output tokens arrived at ``now``."""
        if not self.tokens:
            self.first = now
            self._m.ttft.observe(now - self.start)
        self.last = now
        self.tokens += n
        self._m.tokens_output.inc(n)

    def end(self, succeeded: bool) -> None:
        if succeeded and self.tokens >= 2 and self.last > self.first:
            self._m.tpot.observe((self.last - self.first) / (self.tokens - 1))
        if self.finish is not None:
            self._m.record_finish(self.finish)


class track_inference:
    """Record a block of code as one inference: ``with track_inference("m") as t: ...``.

    Set ``t.batch_size`` inside the block to record the items it handled; call
    ``t.first_byte()`` when a streamed answer sends its first chunk. Works with ``async with``.

    Token streams: call ``t.tokens(n)`` as each chunk of ``n`` generated tokens arrives (the
    first observes the time to first token; all count as output tokens) and ``t.finish(reason)``
    with the finish reason; a block that ends without an exception after two tokens or more
    observes the time per output token. ``t.first_token()`` marks the first token alone when
    the count comes later, as a usage report (``t.add_tokens(output=n)``).
    """

    __slots__ = ("_finish", "_first", "_last", "_m", "_output", "_span", "_start", "batch_size")

    def __init__(
        self,
        model_name: str,
        model_version: str = "",
        *,
        batch_size: int | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._m = inference_metrics(registry).model(schema.SOURCE_APP, model_name, model_version)
        self.batch_size = batch_size
        self._start = 0.0
        self._span: Any = None
        self._first: float | None = None
        self._last = 0.0
        self._output = 0
        self._finish: str | None = None

    def first_byte(self) -> None:
        """Mark the first chunk of a streamed answer (observes time to first byte)."""
        self._m.ttfb.observe(perf_counter() - self._start)

    def first_token(self) -> None:
        """Mark the first generated token (observes time to first token); later calls, and
        ``tokens()`` after this, do not observe it again."""
        if self._first is None:
            now = perf_counter()
            self._first = self._last = now
            self._m.ttft.observe(now - self._start)

    def tokens(self, n: int = 1) -> None:
        """``n`` generated tokens arrived now: counted as output tokens; the first call with
        ``n >= 1`` is the first token, the last one the end of decoding for time per token."""
        if n <= 0:
            return
        self.first_token()
        self._last = perf_counter()
        self._output += n
        self._m.tokens_output.inc(n)

    def finish(self, reason: str | None) -> None:
        """The generation's finish reason (``stop``, ``length``, ``tool_calls``,
        ``content_filter``; anything else counts as ``other``), counted when the block ends.
        ``None`` clears it."""
        self._finish = reason

    def add_tokens(self, input: int = 0, output: int = 0) -> None:
        """Count tokens read and generated (an LLM's usage report)."""
        if input:
            self._m.tokens_input.inc(input)
        if output:
            self._output += output
            self._m.tokens_output.inc(output)

    def __enter__(self) -> track_inference:
        self._first, self._last, self._output, self._finish = None, 0.0, 0, None
        if tracing_state.enabled:
            self._enter_span()
        self._m.active.inc()
        self._start = perf_counter()
        return self

    def _enter_span(self) -> None:
        m = self._m
        self._span = _tracing.inference_span(
            f"inference {m.model_name}",
            _tracing.model_attributes(m.source, m.model_name, m.model_version),
            _span_error_type,
        )
        self._span.__enter__()
        self._m = m.with_exemplars(_tracing.current_exemplar)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        m = self._m
        span = self._span
        end = perf_counter()
        m.duration.observe(end - self._start)
        m.active.dec()
        first = self._first
        if first is not None and exc is None and self._output >= 2:
            # Decoding ended at the last tokens() call, or at the block's end when the count
            # came as a usage report after first_token().
            last = self._last if self._last > first else end
            m.tpot.observe((last - first) / (self._output - 1))
        if self._finish is not None:
            m.record_finish(self._finish)
        if self.batch_size is not None:
            m.batch_size.observe(self.batch_size)
            if span is not None:
                _tracing.set_batch_size(self.batch_size)
        if exc is None:
            m.success.inc()
        else:
            reason = _reason(exc)
            m.record_failure(reason)
            if span is not None:
                _tracing.mark_failed(reason)
        if span is not None:
            self._span = None
            span.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> track_inference:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
