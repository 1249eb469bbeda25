"""The measured exchange on its own: each transition's metric updates, with no transport."""

from __future__ import annotations

import inspect
from time import perf_counter

import pytest
from prometheus_client import CollectorRegistry
from support.metrics import value

from inferwatch import schema
from inferwatch.metrics import BoundedLabel, inference_metrics
from inferwatch.sidecar.exchange import NO_EXCHANGE, Exchange, Exchanges, NullExchange

SIDECAR = {"source": schema.SOURCE_SIDECAR}
MODEL = {**SIDECAR, "model_name": "resnet"}
VERSIONED = {**MODEL, "model_version": "2"}


@pytest.fixture
def exchanges(registry: CollectorRegistry) -> Exchanges:
    return Exchanges(
        inference_metrics(registry),
        schema.SOURCE_SIDECAR,
        "unknown",
        BoundedLabel(2),
        BoundedLabel(10),
    )


def count(registry: CollectorRegistry, family: schema.Family, **labels: str) -> float:
    return value(registry, family.count, **labels)


def test_an_answered_inference_records_every_family_once(
    registry: CollectorRegistry, exchanges: Exchanges
) -> None:
    exchange = exchanges.open("resnet", "2", 8, perf_counter())
    exchange.queued()
    assert value(registry, schema.QUEUE_LENGTH.name, **MODEL) == 1
    exchange.admitted()
    exchange.forwarding()
    assert value(registry, schema.ACTIVE_REQUESTS.name, **MODEL) == 1
    exchange.first_byte()
    exchange.tokens(3, 5)
    exchange.forwarded()
    exchange.succeeded()

    assert value(registry, schema.QUEUE_LENGTH.name, **MODEL) == 0
    assert value(registry, schema.ACTIVE_REQUESTS.name, **MODEL) == 0
    assert count(registry, schema.QUEUE_DURATION, **MODEL) == 1
    assert value(registry, schema.BATCH_SIZE.sum, **MODEL) == 8
    assert count(registry, schema.TIME_TO_FIRST_BYTE, **VERSIONED) == 1
    assert count(registry, schema.INFERENCE_DURATION, **VERSIONED) == 1
    assert value(registry, schema.TOKENS.name, **MODEL, type=schema.TOKEN_INPUT) == 3
    assert value(registry, schema.TOKENS.name, **MODEL, type=schema.TOKEN_OUTPUT) == 5
    assert value(registry, schema.INFERENCE_TOTAL.name, **VERSIONED, status="success") == 1
    assert value(registry, schema.INFERENCE_TOTAL.name, **VERSIONED, status="error") == 0


def test_admitted_at_once_waited_zero(registry: CollectorRegistry, exchanges: Exchanges) -> None:
    exchanges.open("resnet", None, None, perf_counter()).admitted()
    assert count(registry, schema.QUEUE_DURATION, **MODEL) == 1
    assert value(registry, schema.QUEUE_DURATION.sum, **MODEL) == 0
    assert value(registry, schema.QUEUE_LENGTH.name, **MODEL) == 0
    assert count(registry, schema.BATCH_SIZE, **MODEL) == 0  # no batch size: none observed


@pytest.mark.parametrize("waited", [True, False])
def test_rejected_leaves_the_queue_and_counts_rejected(
    registry: CollectorRegistry, exchanges: Exchanges, waited: bool
) -> None:
    exchange = exchanges.open("resnet", "2", 1, perf_counter())
    exchange.queued()
    exchange.rejected(waited)
    assert value(registry, schema.QUEUE_LENGTH.name, **MODEL) == 0
    # A full queue turned it away at once: no wait to measure.
    assert count(registry, schema.QUEUE_DURATION, **MODEL) == (1 if waited else 0)
    assert count(registry, schema.INFERENCE_DURATION, **VERSIONED) == 1
    failures = schema.INFERENCE_FAILURES.name
    assert value(registry, failures, **VERSIONED, reason=schema.REASON_REJECTED) == 1
    assert value(registry, schema.INFERENCE_TOTAL.name, **VERSIONED, status="error") == 1


def test_cancelled_in_the_queue_leaves_it(
    registry: CollectorRegistry, exchanges: Exchanges
) -> None:
    exchange = exchanges.open("resnet", "2", 1, perf_counter())
    exchange.queued()
    exchange.failed(schema.REASON_CANCELLED)
    assert value(registry, schema.QUEUE_LENGTH.name, **MODEL) == 0
    assert count(registry, schema.QUEUE_DURATION, **MODEL) == 0
    failures = schema.INFERENCE_FAILURES.name
    assert value(registry, failures, **VERSIONED, reason=schema.REASON_CANCELLED) == 1


def test_model_labels_are_bounded(registry: CollectorRegistry, exchanges: Exchanges) -> None:
    for name in ("a", "b", "c", "d"):
        exchanges.open(name, None, None, perf_counter()).succeeded()
    exchanges.open(None, None, None, perf_counter()).succeeded()  # no name: the default
    total = schema.INFERENCE_TOTAL.name
    seen = {
        name: value(registry, total, **SIDECAR, model_name=name, model_version="", status="success")
        for name in ("a", "b", "c", "d", schema.OTHER, "unknown")
    }
    assert seen == {"a": 1, "b": 1, "c": 0, "d": 0, schema.OTHER: 3, "unknown": 0}


def test_the_null_exchange_overrides_every_transition() -> None:
    transitions = {
        name
        for name, member in inspect.getmembers(Exchange, inspect.isfunction)
        if not name.startswith("_")
    }
    assert transitions >= {"queued", "admitted", "rejected", "succeeded", "failed"}
    assert transitions >= {"first_token", "generated", "finished", "tokens", "first_byte"}
    inherited = {name for name in transitions if name not in vars(NullExchange)}
    assert inherited == set()
    assert isinstance(NO_EXCHANGE, NullExchange)


def test_the_null_exchange_records_nothing(registry: CollectorRegistry) -> None:
    inference_metrics(registry)
    before = {s.name: s.value for f in registry.collect() for s in f.samples}
    NO_EXCHANGE.queued()
    NO_EXCHANGE.admitted()
    NO_EXCHANGE.forwarding()
    NO_EXCHANGE.first_byte()
    NO_EXCHANGE.tokens(1, 1)
    NO_EXCHANGE.forwarded()
    NO_EXCHANGE.rejected(True)
    NO_EXCHANGE.failed(schema.REASON_SERVER_ERROR)
    NO_EXCHANGE.succeeded()
    after = {s.name: s.value for f in registry.collect() for s in f.samples}
    assert after == before


# --- a streamed generation (LLM) ----------------------------------------------------------------


def test_first_token_observes_ttft_once_from_the_start(
    registry: CollectorRegistry, exchanges: Exchanges
) -> None:
    exchange = exchanges.open("resnet", "2", 1, 100.0)
    exchange.first_token(100.25)
    exchange.first_token(101.0)  # only the first counts
    assert count(registry, schema.TIME_TO_FIRST_TOKEN, **VERSIONED) == 1
    assert value(registry, schema.TIME_TO_FIRST_TOKEN.sum, **VERSIONED) == pytest.approx(0.25)


def test_first_token_defaults_to_now(registry: CollectorRegistry, exchanges: Exchanges) -> None:
    start = perf_counter()
    exchanges.open("resnet", "2", 1, start).first_token()
    observed = value(registry, schema.TIME_TO_FIRST_TOKEN.sum, **VERSIONED)
    assert 0 <= observed < perf_counter() - start + 1e-9


def test_tpot_is_observed_on_success_from_first_to_last_token(
    registry: CollectorRegistry, exchanges: Exchanges
) -> None:
    exchange = exchanges.open("resnet", "2", 1, 100.0)
    exchange.first_token(100.5)
    exchange.generated(11, 101.0)  # 10 gaps in 0.5 s
    assert count(registry, schema.TIME_PER_OUTPUT_TOKEN, **VERSIONED) == 0  # not before the end
    exchange.succeeded()
    assert count(registry, schema.TIME_PER_OUTPUT_TOKEN, **VERSIONED) == 1
    assert value(registry, schema.TIME_PER_OUTPUT_TOKEN.sum, **VERSIONED) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("first", "tokens", "ok"),
    [
        (True, 1, True),  # one token: no gap to divide by
        (True, 0, True),
        (False, 5, True),  # no first token seen (not streamed)
        (True, 5, False),  # failed or cancelled: no TPOT
    ],
)
def test_no_tpot_without_two_tokens_a_first_token_and_success(
    registry: CollectorRegistry, exchanges: Exchanges, first: bool, tokens: int, ok: bool
) -> None:
    exchange = exchanges.open("resnet", "2", 1, 100.0)
    if first:
        exchange.first_token(100.5)
    exchange.generated(tokens, 101.0)
    if ok:
        exchange.succeeded()
    else:
        exchange.failed(schema.REASON_CANCELLED)
    assert count(registry, schema.TIME_PER_OUTPUT_TOKEN, **VERSIONED) == 0
    assert count(registry, schema.TIME_TO_FIRST_TOKEN, **VERSIONED) == (1 if first else 0)


def test_finished_counts_finish_reasons_unknown_as_other(
    registry: CollectorRegistry, exchanges: Exchanges
) -> None:
    exchange = exchanges.open("resnet", "2", 1, perf_counter())
    for reason in ("stop", "length", "length", "tool_calls", "content_filter", "abort", None):
        exchange.finished(reason)
    family = schema.FINISH_REASONS_TOTAL.name
    seen = {
        reason: value(registry, family, **MODEL, reason=reason) for reason in schema.FINISH_REASONS
    }
    assert seen == {"stop": 1, "length": 2, "tool_calls": 1, "content_filter": 1, "other": 2}


def test_the_null_exchange_records_no_generation(registry: CollectorRegistry) -> None:
    inference_metrics(registry)
    before = {s.name: s.value for f in registry.collect() for s in f.samples}
    NO_EXCHANGE.first_token()
    NO_EXCHANGE.first_token(1.0)
    NO_EXCHANGE.generated(5, 2.0)
    NO_EXCHANGE.finished("stop")
    NO_EXCHANGE.succeeded()
    after = {s.name: s.value for f in registry.collect() for s in f.samples}
    assert after == before


def test_default_version_for_unversioned_requests(registry: CollectorRegistry) -> None:
    exchanges = Exchanges(
        inference_metrics(registry),
        schema.SOURCE_SIDECAR,
        "unknown",
        BoundedLabel(2),
        BoundedLabel(10),
        default_version="2",
    )
    exchanges.open("resnet", None, 1, perf_counter()).succeeded()
    exchanges.open("resnet", "", 1, perf_counter()).succeeded()
    exchanges.open("resnet", "7", 1, perf_counter()).succeeded()
    total = schema.INFERENCE_TOTAL.name
    assert value(registry, total, **VERSIONED, status="success") == 2
    assert value(registry, total, **MODEL, model_version="7", status="success") == 1
    assert value(registry, total, **MODEL, model_version="", status="success") == 0


def test_names_past_the_bounds_count_as_other_however_often_they_come(
    registry: CollectorRegistry, exchanges: Exchanges
) -> None:
    """The children are kept by the names requests give; names past the bounds are not
    kept (one per request would grow without end) and keep counting as ``other``."""
    for round_ in range(3):
        for i in range(50):
            exchanges.open(f"model-{i}", f"v{round_}-{i}", None, perf_counter()).succeeded()
        exchanges.open(None, None, None, perf_counter()).succeeded()
    kept = {(m.model_name, m.model_version) for m in exchanges._by_request.values()}
    assert kept == {("model-0", "v0-0"), ("model-1", "v0-1")}

    def successes(model: str, version: str) -> float:
        labels = {**SIDECAR, "model_name": model, "model_version": version}
        return value(registry, schema.INFERENCE_TOTAL.name, **labels, status="success")

    # Two model names and ten versions pass the bounds (first come); "unknown" is a third name.
    assert successes("model-0", "v0-0") == successes("model-1", "v0-1") == 1
    assert successes("model-0", "other") == successes("model-1", "other") == 2
    assert successes("other", "v0-2") == 1
    assert successes("other", "other") == 40 + 48 + 48
    assert successes("other", "") == 3
