"""The gRPC proxy: every RPC forwarded to the upstream's gRPC port, inference RPCs measured.

One grpcio generic handler takes every method of every service, known or not, as a
bidirectional stream of raw messages (no serializers: a message is never decoded or
re-encoded; gRPC's wire format is the same for unary and streaming calls). Request metadata
goes upstream; the upstream's initial metadata, messages, status, details and trailers come
back unchanged; the caller's deadline goes upstream with the call.

An inference RPC (:mod:`~inferwatch.sidecar.grpc_protocols` says which) is classified from
its first request message and reported to the same :class:`~inferwatch.sidecar.exchange.Exchange`
transitions as an HTTP request, through the same admission, drain and bounded labels.
Triton's ``ModelStreamInfer`` carries one inference per request message: each gets an
exchange of its own, answered by the upstream's responses in order (a decoupled model may
answer one request with several; ``triton_final_response`` marks the last).

The sidecar answers ``grpc.health.v1.Health`` itself: SERVING while the sidecar is ready
(the same :class:`~inferwatch.sidecar.health.Readiness` as ``/ready``), so Kubernetes' gRPC
probes work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import partial
from time import perf_counter

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inferwatch import schema
from inferwatch.sidecar.admission import Admission, Rejected, admit
from inferwatch.sidecar.config import Address, SidecarConfig
from inferwatch.sidecar.errors import reason_for_grpc_status
from inferwatch.sidecar.exchange import NO_EXCHANGE, Exchange, Exchanges
from inferwatch.sidecar.grpc_protocols import (
    GrpcRoute,
    classify_method,
    parse_request,
    stream_response_end,
)
from inferwatch.sidecar.health import Drainer, Readiness

log = logging.getLogger(__name__)

Upstream = aio.StreamStreamMultiCallable[bytes, bytes]
UnaryUpstream = aio.UnaryUnaryMultiCallable[bytes, bytes]
Metadata = tuple[tuple[str, str | bytes], ...]

# Methods that answer with a stream: their time to first response is measured.
STREAMED_RESPONSES = frozenset(
    (
        "/inference.GRPCInferenceService/ModelStreamInfer",
        "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions",
        "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2",
    )
)
# Set by gRPC itself on the upstream call.
_NOT_FORWARDED = frozenset(("user-agent",))
# Method handlers kept per method name; past this many distinct names (a client inventing
# methods) a handler is built per call instead of remembered.
MAX_CACHED_METHODS = 1024
HEALTH_SYNC_SECONDS = 0.2
RETRY_PUSHBACK = "grpc-retry-pushback-ms"
# Calls grpc core may hold for the application before it refuses more (its default: 1,000).
MAX_PENDING_CALLS = 100_000
# A caller's deadline passes on its side first (our copy starts when its headers arrive), and
# it cancels the call: a cancel this close to the deadline is the deadline.
DEADLINE_SLACK_SECONDS = 0.25


async def _first_message(requests: AsyncIterator[bytes]) -> bytes | None:
    """The first request message, or ``None`` when the caller sent none."""
    try:
        return await anext(requests)
    except StopAsyncIteration:
        return None


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is not None:
        yield first
        async for message in rest:
            yield message


async def _pass_metadata(
    context: aio.ServicerContext, initial: aio.Metadata | None, trailing: aio.Metadata | None
) -> None:
    """The upstream's initial and trailing metadata to the caller. Empty initial metadata
    goes out with the answer by itself: sending it apart costs grpc core an extra operation."""
    if initial:
        await context.send_initial_metadata(initial)
    if trailing:
        context.set_trailing_metadata(trailing)


def _deadline_or_cancel(context: aio.ServicerContext) -> str:
    return _broken_reason(asyncio.CancelledError(), context)


def _broken_reason(exc: BaseException, context: aio.ServicerContext) -> str:
    """Why a call ended without a status from the upstream: the caller's deadline passed, the
    caller went away (cancelled), or the relay itself failed."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS:
        return schema.REASON_TIMEOUT
    if isinstance(exc, asyncio.CancelledError) or context.cancelled():
        return schema.REASON_CANCELLED
    return schema.REASON_SERVER_ERROR


class GrpcProxy(grpc.GenericRpcHandler):
    """The handler of the gRPC port: one forwarding behaviour for every method."""

    def __init__(
        self,
        config: SidecarConfig,
        exchanges: Exchanges,
        admission: Admission | None,
        drainer: Drainer,
        channel: aio.Channel,
    ) -> None:
        self.config = config
        self.exchanges = exchanges
        self.admission = admission
        self.drainer = drainer
        self.channel = channel
        self._retry_pushback = ((RETRY_PUSHBACK, str(config.retry_after * 1000)),)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            route = classify_method(method)
            if route.unary:  # grpcio's unary path costs a fraction of its streaming one
                unary: UnaryUpstream = self.channel.unary_unary(method)  # raw bytes both ways
                handler = grpc.unary_unary_rpc_method_handler(
                    partial(self._call_unary, route, unary)
                )
            else:
                upstream: Upstream = self.channel.stream_stream(method)  # raw bytes both ways
                handler = grpc.stream_stream_rpc_method_handler(
                    partial(self._call, method, route, upstream)
                )
            if len(self._handlers) < MAX_CACHED_METHODS:
                self._handlers[method] = handler
        return handler

    # --- one unary call (a known method: one message each way) ----------------------------------

    async def _call_unary(
        self,
        route: GrpcRoute,
        upstream: UnaryUpstream,
        request: bytes,
        context: aio.ServicerContext,
    ) -> bytes | None:
        start = perf_counter()
        drainer = self.drainer
        drainer.started()
        try:
            exchange = self._open(route, request if route.is_inference else None, start)
            admission = self.admission
            if admission is not None:
                rejected = await admit(admission, exchange, partial(_deadline_or_cancel, context))
                if rejected is not None:
                    await self._answer_overloaded(context, rejected)
                    return None
            try:
                return await self._relay_unary(upstream, request, exchange, context)
            finally:
                if admission is not None:
                    admission.release()
        finally:
            drainer.finished()

    async def _relay_unary(
        self,
        upstream: UnaryUpstream,
        request: bytes,
        exchange: Exchange,
        context: aio.ServicerContext,
    ) -> bytes | None:
        """Forward one message, answer with the upstream's; its status decides the outcome."""
        metadata = self.upstream_metadata(context)
        exchange.forwarding()
        try:
            call = upstream(request, metadata=metadata, timeout=context.time_remaining())
            try:
                response = await call
            except aio.AioRpcError as err:  # the upstream's status, or its connection's
                await _pass_metadata(context, err.initial_metadata(), err.trailing_metadata())
                context.set_code(err.code())
                context.set_details(err.details() or "")
                reason = reason_for_grpc_status(err.code().name) or schema.REASON_SERVER_ERROR
                exchange.failed(reason)
                return None
            except BaseException:
                call.cancel()
                raise
            await _pass_metadata(
                context, await call.initial_metadata(), await call.trailing_metadata()
            )
        except BaseException as exc:
            exchange.failed(_broken_reason(exc, context))
            raise
        finally:
            exchange.forwarded()
        if response is None:  # OK without a (readable) message: grpcio would answer b""
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details("the upstream answered OK without a message")
            exchange.failed(schema.REASON_SERVER_ERROR)
            return None
        exchange.succeeded()
        return response

    # --- one call ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        route: GrpcRoute,
        upstream: Upstream,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext,
    ) -> None:
        start = perf_counter()
        drainer = self.drainer
        drainer.started()
        try:
            await self._proxy(method, route, upstream, requests, context, start)
        finally:
            drainer.finished()

    async def _proxy(
        self,
        method: str,
        route: GrpcRoute,
        upstream: Upstream,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext,
        start: float,
    ) -> None:
        """Classify from the first message, admit, forward and relay."""
        first = await _first_message(requests) if route.is_inference else None
        exchange = self._open(route, first, start)
        admission = self.admission
        if admission is not None:
            rejected = await admit(admission, exchange, partial(_deadline_or_cancel, context))
            if rejected is not None:
                await self._answer_overloaded(context, rejected)
                return
        try:
            if route.per_message:
                await self._relay_per_message(upstream, route, first, requests, exchange, context)
            else:
                upstream_requests = requests if first is None else _prepend(first, requests)
                await self._relay(method, upstream, upstream_requests, exchange, context)
        finally:
            if admission is not None:
                admission.release()

    def _open(self, route: GrpcRoute, message: bytes | None, start: float) -> Exchange:
        if message is None:
            return NO_EXCHANGE
        fields = parse_request(route, message)
        return self.exchanges.open(
            fields.model_name, fields.model_version, fields.batch_size, start
        )

    async def _answer_overloaded(self, context: aio.ServicerContext, rejected: Rejected) -> None:
        context.set_trailing_metadata(self._retry_pushback)
        await context.abort(grpc.StatusCode.UNAVAILABLE, rejected.why)

    async def _relay(
        self,
        method: str,
        upstream: Upstream,
        upstream_requests: AsyncIterator[bytes],
        exchange: Exchange,
        context: aio.ServicerContext,
    ) -> None:
        """A call that is one inference (or none): its status decides the outcome."""
        on_response: Callable[[bytes], None] | None = None
        if method in STREAMED_RESPONSES:
            on_response = _FirstResponse(exchange)
        exchange.forwarding()
        try:
            reason = await self._forward(upstream, upstream_requests, context, on_response)
        except BaseException as exc:
            exchange.failed(_broken_reason(exc, context))
            raise
        finally:
            exchange.forwarded()
        if reason is None:
            exchange.succeeded()
        else:
            exchange.failed(reason)

    async def _relay_per_message(
        self,
        upstream: Upstream,
        route: GrpcRoute,
        first: bytes | None,
        requests: AsyncIterator[bytes],
        first_exchange: Exchange,
        context: aio.ServicerContext,
    ) -> None:
        """A stream whose every request message is an inference of its own."""
        answers = _StreamAnswers()
        if first is not None:
            answers.sent(first_exchange)
        admitted = self.admission is not None

        async def upstream_requests() -> AsyncIterator[bytes]:
            if first is None:
                return
            yield first
            async for message in requests:
                exchange = self._open(route, message, perf_counter())
                if admitted:
                    exchange.admitted()  # the stream holds the slot
                answers.sent(exchange)
                yield message

        try:
            reason = await self._forward(upstream, upstream_requests(), context, answers.received)
        except BaseException as exc:
            answers.end_all(_broken_reason(exc, context))
            raise
        answers.end_all(reason)

    def upstream_metadata(self, context: aio.ServicerContext) -> Metadata:
        """The caller's metadata, as the upstream gets it."""
        return tuple(
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if key not in _NOT_FORWARDED
        )

    async def _forward(
        self,
        upstream: Upstream,
        upstream_requests: AsyncIterator[bytes],
        context: aio.ServicerContext,
        on_response: Callable[[bytes], None] | None,
    ) -> str | None:
        """Make the call upstream and relay its answer; the failure reason, None for OK."""
        metadata = self.upstream_metadata(context)
        call = upstream(upstream_requests, metadata=metadata, timeout=context.time_remaining())
        try:
            await context.send_initial_metadata(await call.initial_metadata() or ())
            async for response in call:
                if on_response is not None:
                    on_response(response)
                await context.write(response)
            context.set_trailing_metadata(await call.trailing_metadata() or ())
        except aio.AioRpcError as err:  # the upstream's status, or its connection's: as it is
            context.set_trailing_metadata(err.trailing_metadata() or ())
            context.set_code(err.code())
            context.set_details(err.details() or "")
            return reason_for_grpc_status(err.code().name)
        except BaseException:
            call.cancel()
            raise
        return None


class _FirstResponse:
    """Reports the first response of a streamed answer to its exchange."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self._exchange: Exchange | None = exchange

    def __call__(self, response: bytes) -> None:
        if self._exchange is not None:
            self._exchange.first_byte()
            self._exchange = None


class _StreamAnswers:
    """Matches a ModelStreamInfer stream's responses to its request messages, in order."""

    __slots__ = ("_head_answered", "_waiting")

    def __init__(self) -> None:
        self._waiting: deque[Exchange] = deque()
        self._head_answered = False

    def sent(self, exchange: Exchange) -> None:
        exchange.forwarding()
        self._waiting.append(exchange)

    def received(self, response: bytes) -> None:
        if not self._waiting:
            return
        head = self._waiting[0]
        if not self._head_answered:
            head.first_byte()
            self._head_answered = True
        final, error = stream_response_end(response)
        if final:
            self._waiting.popleft()
            self._head_answered = False
            head.forwarded()
            if error:
                head.failed(schema.REASON_SERVER_ERROR)
            else:
                head.succeeded()

    def end_all(self, reason: str | None) -> None:
        """The stream ended: the requests still waiting end with its outcome."""
        while self._waiting:
            exchange = self._waiting.popleft()
            exchange.forwarded()
            if reason is None:
                exchange.succeeded()
            else:
                exchange.failed(reason)


class GrpcServer:
    """The gRPC port: the sidecar's own health service, and the proxy for everything else."""

    def __init__(self, config: SidecarConfig, readiness: Readiness, reuse_port: bool) -> None:
        self.config = config
        self.readiness = readiness
        limit = config.grpc_max_message_bytes
        sizes = (
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        )
        self.channel = aio.insecure_channel(
            config.grpc_upstream, options=(*sizes, ("grpc.enable_retries", 0))
        )
        # grpcio sets SO_REUSEPORT by default: two sidecars would share a port unnoticed.
        # grpc core cancels calls that wait for the application past its pending limits (1,000
        # by default): a burst would end in CANCELLED the metrics never see. Admission is the
        # sidecar's limit (UNAVAILABLE with a pushback, counted), so core's is set past it.
        pending = (
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
        )
        self.server = aio.server(options=(*sizes, *pending, ("grpc.so_reuseport", int(reuse_port))))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._sync: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    def add_proxy(self, proxy: GrpcProxy) -> None:
        self.server.add_generic_rpc_handlers((proxy,))

    async def listen(self, address: Address) -> int:
        target = str(address) if address.host else f"[::]:{address.port}"
        try:
            bound = self.server.add_insecure_port(target)
        except RuntimeError as exc:  # grpcio's word for a port it could not bind
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        await self._set_health()
        await self.server.start()
        self._sync = asyncio.get_running_loop().create_task(self._sync_health())
        return bound

    async def _set_health(self) -> None:
        ready = self.readiness.why_not() is None
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    async def _sync_health(self) -> None:
        """Keep ``Check`` and ``Watch`` in step with readiness (draining, the upstream)."""
        while True:
            await asyncio.sleep(HEALTH_SYNC_SECONDS)
            await self._set_health()

    def goaway(self, grace: float) -> None:
        """Refuse new calls (GOAWAY: clients reconnect elsewhere) and give the calls still
        running ``grace`` seconds; the drain calls it once its quiet period is over."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.server.stop(grace))

    async def stop(self, grace: float) -> None:
        """GOAWAY if not sent yet, then up to ``grace`` seconds for calls still running."""
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        self.goaway(grace)
        assert self._stopping is not None
        await self._stopping
        await self.channel.close()
