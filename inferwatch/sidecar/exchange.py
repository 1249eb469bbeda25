"""One measured exchange per inference, whatever the transport.

A transport (the HTTP/1.1 proxy today) classifies a request, opens an :class:`Exchange` for it
and reports what happens to it: queued, admitted, rejected, forwarded, first byte, first token,
output generated, finish reason, tokens, succeeded, failed with a reason. The exchange does
every metric update those transitions mean, so the transport's steps never touch a metric; a
request that is not an inference gets :data:`NO_EXCHANGE`, whose transitions do nothing, so
the steps never ask which one they hold.
Tracing adds a subclass (:mod:`inferwatch.sidecar.traced`), chosen once at start.
"""

from __future__ import annotations

from time import perf_counter

from inferwatch import schema
from inferwatch.metrics import BoundedLabel, InferenceMetrics, ModelInstruments


class Exchange:
    """An inference in flight, holding its model's label children and its start time."""

    __slots__ = ("_first_token_at", "_last_token_at", "_output_tokens", "_queued_at", "m", "start")

    def __init__(self, m: ModelInstruments, start: float) -> None:
        self.m = m
        self.start = start
        self._queued_at: float | None = None
        self._first_token_at: float | None = None
        self._last_token_at = 0.0
        self._output_tokens = 0

    # --- admission ---------------------------------------------------------------------------

    def queued(self) -> None:
        """No slot was free: it waits in the admission queue."""
        self.m.queue_length.inc()
        self._queued_at = perf_counter()

    def admitted(self) -> None:
        """A slot is its own (at once, or after waiting in the queue)."""
        queued_at = self._queued_at
        if queued_at is None:
            self.m.queue_duration.observe(0.0)
            return
        self._queued_at = None
        self.m.queue_length.dec()
        self.m.queue_duration.observe(perf_counter() - queued_at)

    def rejected(self, waited: bool) -> None:
        """Turned away by admission: the queue was full, or ``waited`` too long in it."""
        queued_at = self._queued_at
        if queued_at is not None:
            self._queued_at = None
            self.m.queue_length.dec()
            if waited:
                self.m.queue_duration.observe(perf_counter() - queued_at)
        self.failed(schema.REASON_REJECTED)

    # --- forwarding ----------------------------------------------------------------------------

    def forwarding(self) -> None:
        """Sent on to the upstream: in flight until :meth:`forwarded`."""
        self.m.active.inc()

    def forwarded(self) -> None:
        self.m.active.dec()

    def first_byte(self) -> None:
        """The first chunk of a streamed answer reached the client."""
        self.m.ttfb.observe(perf_counter() - self.start)

    def tokens(self, input_tokens: int, output_tokens: int) -> None:
        """Token usage the answer reported."""
        self.m.tokens_input.inc(input_tokens)
        self.m.tokens_output.inc(output_tokens)

    # --- a streamed generation (LLM) -------------------------------------------------------------

    def first_token(self, at: float | None = None) -> None:
        """The first chunk carrying generated output arrived from the upstream, at ``at``
        (``perf_counter()`` when it was read; now by default). Observes the time to first
        token from the exchange's start; only the first call counts."""
        if self._first_token_at is not None:
            return
        if at is None:
            at = perf_counter()
        self._first_token_at = at
        self.m.ttft.observe(at - self.start)

    def generated(self, output_tokens: int, last_token_at: float) -> None:
        """The streamed generation's output tokens (the usage the server reported, else its
        output chunks) and when its last output arrived. Kept for :meth:`succeeded`, which
        observes the time per output token: (last - first) / (output tokens - 1)."""
        self._output_tokens = output_tokens
        self._last_token_at = last_token_at

    def finished(self, reason: str | None) -> None:
        """A generation ended with this finish reason (one outside the schema's is ``other``)."""
        self.m.record_finish(reason)

    # --- outcome (exactly one per exchange) ------------------------------------------------------

    def succeeded(self) -> None:
        self.m.duration.observe(perf_counter() - self.start)
        self.m.success.inc()
        first = self._first_token_at
        if first is not None and self._output_tokens >= 2:
            self.m.tpot.observe((self._last_token_at - first) / (self._output_tokens - 1))

    def failed(self, reason: str) -> None:
        """Ended without a successful answer; ``reason`` is a failure reason of the schema."""
        queued_at = self._queued_at
        if queued_at is not None:  # it left the queue without being admitted
            self._queued_at = None
            self.m.queue_length.dec()
        self.m.duration.observe(perf_counter() - self.start)
        self.m.record_failure(reason)


class NullExchange(Exchange):
    """What a request that is not an inference (a probe, metadata) reports to: nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def queued(self) -> None:
        pass

    def admitted(self) -> None:
        pass

    def rejected(self, waited: bool) -> None:
        pass

    def forwarding(self) -> None:
        pass

    def forwarded(self) -> None:
        pass

    def first_byte(self) -> None:
        pass

    def tokens(self, input_tokens: int, output_tokens: int) -> None:
        pass

    def first_token(self, at: float | None = None) -> None:
        pass

    def generated(self, output_tokens: int, last_token_at: float) -> None:
        pass

    def finished(self, reason: str | None) -> None:
        pass

    def succeeded(self) -> None:
        pass

    def failed(self, reason: str) -> None:
        pass


NO_EXCHANGE = NullExchange()


class Exchanges:
    """Opens exchanges for one source, with model and version labels bounded.

    Label values come from requests, so they go through :class:`BoundedLabel`: the first
    ``max_models`` names (and every allowed one) are kept, the rest count as ``other``.
    A request that names no model counts as ``default_model``; one that names no version as
    ``default_version`` ("" by default: no version), which a version named by the request
    always overrides.
    """

    exchange_class: type[Exchange] = Exchange

    def __init__(
        self,
        metrics: InferenceMetrics,
        source: str,
        default_model: str,
        model_label: BoundedLabel,
        version_label: BoundedLabel,
        default_version: str = "",
    ) -> None:
        self.metrics = metrics
        self.source = source
        self.default_model = default_model
        self.default_version = default_version
        self._model_label = model_label
        self._version_label = version_label
        # By the names as requests give them. Only names the bounds kept are keys (a name
        # over the bound counts as ``other`` and is looked up each time), so the map holds
        # no more entries than the bounds allow series.
        self._by_request: dict[tuple[str | None, str | None], ModelInstruments] = {}

    def instruments(self, model_name: str | None, model_version: str | None) -> ModelInstruments:
        """The label children for a model as a request names it (bounded)."""
        key = (model_name, model_version)
        found = self._by_request.get(key)
        if found is not None:
            return found
        name = self._model_label(model_name or self.default_model)
        version = model_version or self.default_version
        if version:
            version = self._version_label(version)
        found = self.metrics.model(self.source, name, version)
        if name != schema.OTHER and version != schema.OTHER:
            self._by_request[key] = found
        return found

    def open(
        self,
        model_name: str | None,
        model_version: str | None,
        batch_size: int | None,
        start: float,
    ) -> Exchange:
        """The exchange of a request just classified as an inference; counts its batch size."""
        m = self.instruments(model_name, model_version)
        if batch_size is not None:
            m.batch_size.observe(batch_size)
        return self.exchange_class(m, start)
