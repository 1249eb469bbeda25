"""The sidecar's fast label children: the numbers and the exposition prometheus_client's own
children would give for the same updates, and where each kind of child is used."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.samples import Sample
from support.ports import LOOPBACK
from support.sidecar import running_sidecar
from support.upstreams import running_upstream, v2_body

from inferwatch import _compiled, schema
from inferwatch.metrics import InferenceMetrics, ModelInstruments, _exposes_created
from inferwatch.sidecar import fastmetrics
from inferwatch.sidecar.exchange import Exchange
from inferwatch.sidecar.fastmetrics import CounterValue, GaugeValue, HistogramValue

SIDECAR = schema.SOURCE_SIDECAR
APP = schema.SOURCE_APP
HISTOGRAMS = [f for f in schema.INFERENCE_FAMILIES if f.kind == "histogram"]
TRACE = {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331"}


@pytest.fixture(autouse=True)
def _created_switch_restored() -> Iterator[None]:
    """Tests here turn prometheus_client's process-wide ``_created`` switch: it is put back."""
    was_on = _exposes_created()
    yield
    (enable_created_metrics if was_on else disable_created_metrics)()


def reference_metrics(registry: CollectorRegistry) -> InferenceMetrics:
    """Inference families whose children are all prometheus_client's."""
    metrics = InferenceMetrics(registry)
    metrics.fast_sources = frozenset()
    return metrics


def around(value: float) -> list[float]:
    """``value`` and the floats next to it."""
    return [math.nextafter(value, -math.inf), value, math.nextafter(value, math.inf)]


def observations(bounds: tuple[float, ...]) -> list[float]:
    """Every boundary exactly and either side of it, and the edge cases."""
    found: list[float] = [0.0, -0.0, -1.0, -math.inf, math.inf, 1e300, 3, 0]
    for bound in bounds:
        found.extend(around(float(bound)))
    return found


def without_timestamps(metrics: list[Any]) -> list[tuple[str, list[Sample]]]:
    """Each family's name and samples, exemplar timestamps left out (checked apart)."""
    return [
        (
            metric.name,
            [
                s._replace(
                    exemplar=None if s.exemplar is None else s.exemplar._replace(timestamp=0)
                )
                for s in metric.samples
            ],
        )
        for metric in metrics
    ]


def test_the_sidecars_own_children_are_fast_values(registry: CollectorRegistry) -> None:
    m = InferenceMetrics(registry).model(SIDECAR, "resnet", "1")
    assert isinstance(m.success, CounterValue)
    assert isinstance(m.tokens_input, CounterValue)
    assert isinstance(m.active, GaugeValue)
    assert isinstance(m.queue_length, GaugeValue)
    for name in ("duration", "queue_duration", "ttfb", "batch_size", "ttft", "tpot"):
        assert isinstance(getattr(m, name), HistogramValue), name
    assert sorted(m.failures) == sorted(schema.REASONS_BY_SOURCE[SIDECAR])
    assert all(isinstance(child, CounterValue) for child in m.failures.values())


def test_the_apps_children_stay_prometheus_clients(registry: CollectorRegistry) -> None:
    """The decorators update them from many threads: prometheus_client's children lock."""
    m = InferenceMetrics(registry).model(APP, "resnet", "1")
    assert isinstance(m.success, Counter)
    assert isinstance(m.active, Gauge)
    assert isinstance(m.duration, Histogram)


@pytest.mark.parametrize("variable", ["PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"])
def test_multiprocess_mode_keeps_prometheus_clients_children(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    variable: str,
) -> None:
    """Only prometheus_client's children write the multiprocess files the supervisor sums."""
    monkeypatch.setenv(variable, str(tmp_path))
    metrics = InferenceMetrics(registry)
    assert metrics.fast_sources == frozenset()
    m = metrics.model(SIDECAR, "resnet", "1")
    assert isinstance(m.success, Counter)
    assert isinstance(m.duration, Histogram)


def test_children_without_a_registry_are_prometheus_clients() -> None:
    m = InferenceMetrics(None).model(SIDECAR, "resnet")
    assert isinstance(m.success, Counter)


def test_the_fast_values_are_compiled_with_the_hot_path() -> None:
    assert "inferwatch.sidecar.fastmetrics" in _compiled.HOT_PATH
    assert _compiled.is_compiled(fastmetrics) == bool(_compiled.compiled_modules())


@pytest.mark.parametrize("family", HISTOGRAMS, ids=lambda f: f.name)
def test_histogram_buckets_sum_and_count_match_prometheus_client(family: schema.Family) -> None:
    """Exact boundaries go to their own bucket, the next float up to the next one; +Inf,
    negatives and ints as prometheus_client counts them."""
    disable_created_metrics()
    assert family.buckets is not None
    labels = ("sidecar", "resnet", "1")[: len(family.labels)]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = InferenceMetrics(ours).collector.child(family, labels, fast=True)
    reference = family.create(theirs).labels(*labels)  # type: ignore[union-attr]
    assert isinstance(fast, HistogramValue)
    for amount in observations(family.buckets):
        fast.observe(amount)
        reference.observe(amount)
    expected = generate_latest(theirs).decode()
    found = generate_latest(ours).decode()
    assert expected.strip() in found


def test_a_nan_goes_to_no_bucket_but_to_the_sum_as_in_prometheus_client() -> None:
    disable_created_metrics()
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    family = schema.BATCH_SIZE
    fast = InferenceMetrics(ours).collector.child(family, ("sidecar", "m"), fast=True)
    reference = family.create(theirs).labels("sidecar", "m")  # type: ignore[union-attr]
    for amount in (2.0, math.nan, 500.0):
        fast.observe(amount)
        reference.observe(amount)
    assert fast.counts[-1] == 1 and sum(fast.counts) == 2
    assert math.isnan(fast.sum)
    assert generate_latest(theirs).decode().strip() in generate_latest(ours).decode()


def test_counters_refuse_negative_increments_as_prometheus_client_does() -> None:
    with pytest.raises(ValueError):
        CounterValue().inc(-1)
    with pytest.raises(ValueError):
        Counter("c", "").inc(-1)


def test_gauges_inc_dec_and_set() -> None:
    gauge, reference = GaugeValue(), Gauge("g", "", registry=None)
    for child in (gauge, reference):
        child.inc()
        child.inc(2.5)
        child.dec()
        child.dec(0.1)
    assert gauge.value == reference.collect()[0].samples[0].value
    gauge.set(7)
    assert gauge.value == 7.0 and isinstance(gauge.value, float)


def drive(m: ModelInstruments, app: ModelInstruments, start: float) -> None:
    """One of each update the sidecar's exchanges make, with the app's children created in
    between (the exposition keeps every family's children in the order they were made)."""
    e = Exchange(m, start)
    m.batch_size.observe(4)
    e.queued()
    app.success.inc()
    e.admitted()
    e.forwarding()
    e.first_byte()
    e.first_token(start + 0.25)
    e.generated(5, start + 0.5)
    e.tokens(3, 5)
    e.finished("stop")
    e.finished("made-up")
    e.forwarded()
    e.succeeded()
    app.duration.observe(0.1)
    app.record_failure(schema.REASON_EXCEPTION)
    failed = Exchange(m, start)
    failed.queued()
    failed.rejected(waited=True)
    Exchange(m, start).failed(schema.REASON_TIMEOUT)


def both(
    with_exemplars: Callable[[], dict[str, str] | None] | None = None,
) -> tuple[CollectorRegistry, CollectorRegistry]:
    """Registries given the same updates: ours (fast sidecar children), theirs (all
    prometheus_client's); a second model and version shares the per-name children."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    start = time.perf_counter() - 1.0
    for registry, metrics in ((ours, InferenceMetrics(ours)), (theirs, reference_metrics(theirs))):
        for version in ("1", "2"):
            m = metrics.model(SIDECAR, "resnet", version)
            app = metrics.model(APP, "resnet", version)
            if with_exemplars is not None:
                m, app = m.with_exemplars(with_exemplars), app.with_exemplars(with_exemplars)
            drive(m, app, start)
        assert registry is metrics.registry
    return ours, theirs


def test_the_exposition_is_prometheus_clients_for_the_same_updates() -> None:
    """Text and OpenMetrics, every sample in prometheus_client's order and format; the
    durations differ between the two runs, so they are the same values in both."""
    disable_created_metrics()
    ours, theirs = both()
    # The latencies came from perf_counter: compare all but their values...
    assert without_values(ours) == without_values(theirs)
    # ...and everything with values fixed.
    fixed_ours, fixed_theirs = CollectorRegistry(), CollectorRegistry()
    for metrics in (InferenceMetrics(fixed_ours), reference_metrics(fixed_theirs)):
        m = metrics.model(SIDECAR, "resnet", "1")
        app = metrics.model(APP, "resnet", "1")
        m.batch_size.observe(4)
        m.duration.observe(0.1)
        m.ttft.observe(0.25)
        m.active.inc()
        m.active.dec()
        m.queue_length.inc()
        m.tokens_input.inc(3)
        app.success.inc()
        m.record_failure(schema.REASON_TIMEOUT)
        m.record_failure(schema.REASON_EXCEPTION)
        m.record_finish("length")
        app.record_finish("stop")
        m.success.inc()
    assert generate_latest(fixed_ours) == generate_latest(fixed_theirs)
    assert generate_openmetrics(fixed_ours) == generate_openmetrics(fixed_theirs)


def without_values(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, Any]]]]:
    return [
        (metric.name, [(s.name, s.labels) for s in metric.samples]) for metric in registry.collect()
    ]


def test_created_samples_as_prometheus_client_gives_them() -> None:
    """``_created`` for counters and histograms while prometheus_client exposes them, and
    none after ``disable_created_metrics()``, however late that is called."""
    enable_created_metrics()
    before = time.time()
    ours, theirs = both()
    assert without_values(ours) == without_values(theirs)
    created = [
        s.value
        for metric in ours.collect()
        for s in metric.samples
        if s.name.endswith("_created") and s.labels.get("source") == SIDECAR
    ]
    assert created and all(before <= value <= time.time() for value in created)
    disable_created_metrics()
    assert without_values(ours) == without_values(theirs)
    assert not any(s.name.endswith("_created") for m in ours.collect() for s in m.samples)


def test_exemplars_as_prometheus_client_records_them() -> None:
    disable_created_metrics()
    before = time.time()
    ours, theirs = both(lambda: dict(TRACE))
    assert without_values(ours) == without_values(theirs)
    found = [
        s.exemplar
        for metric in ours.collect()
        for s in metric.samples
        if s.exemplar is not None and s.labels["source"] == SIDECAR
    ]
    expected = [
        s.exemplar
        for metric in theirs.collect()
        for s in metric.samples
        if s.exemplar is not None and s.labels["source"] == SIDECAR
    ]
    assert len(found) == len(expected) > 0
    for exemplar in found:
        assert exemplar.labels == TRACE
        assert exemplar.timestamp is not None and before <= exemplar.timestamp <= time.time()
    assert f'trace_id="{TRACE["trace_id"]}"' in generate_openmetrics(ours).decode()


def test_exemplars_in_fixed_values_expose_alike() -> None:
    disable_created_metrics()
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    for metrics in (InferenceMetrics(ours), reference_metrics(theirs)):
        m = metrics.model(SIDECAR, "resnet", "1").with_exemplars(lambda: dict(TRACE))
        for amount in (0.003, 0.1, 0.1, 99.0):
            m.duration.observe(amount)
        m.queue_duration.observe(0.0)
    assert without_timestamps(list(ours.collect())) == without_timestamps(list(theirs.collect()))


def test_an_exemplar_prometheus_client_refuses_is_refused() -> None:
    too_long = {"trace_id": "x" * 130}
    with pytest.raises(ValueError):
        HistogramValue([1.0, math.inf]).observe(0.5, too_long)
    with pytest.raises(ValueError):
        Histogram("h", "", registry=None).observe(0.5, too_long)


def test_registry_readers_see_the_fast_values(registry: CollectorRegistry) -> None:
    """get_sample_value, a restricted scrape and a second registration of a family name."""
    m = InferenceMetrics(registry).model(SIDECAR, "resnet", "1")
    m.success.inc()
    m.duration.observe(0.2)
    labels = {"source": SIDECAR, "model_name": "resnet", "model_version": "1"}
    assert registry.get_sample_value("model_inference_total", {**labels, "status": "success"}) == 1
    assert registry.get_sample_value(schema.INFERENCE_DURATION.count, labels) == 1
    assert registry.get_sample_value(schema.INFERENCE_DURATION.sum, labels) == 0.2
    restricted = registry.restricted_registry(["model_inference_total"])
    assert b'status="success"} 1.0' in generate_latest(restricted)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Duplicated"):
        schema.INFERENCE_TOTAL.create(registry)


async def test_a_sidecar_counts_on_fast_values() -> None:
    async with (
        running_upstream() as up,
        running_sidecar(up.url) as sidecar,
        aiohttp.ClientSession() as session,
        session.post(
            f"http://{LOOPBACK}:{sidecar.proxy_port}/v2/models/resnet/infer", data=v2_body(2)
        ) as answer,
    ):
        assert answer.status == 200
        await answer.read()
    m = sidecar.metrics.model(SIDECAR, "resnet")
    assert isinstance(m.success, CounterValue)
    assert m.success.value == 1.0
    assert (
        sidecar.registry.get_sample_value(
            schema.BATCH_SIZE.sum, {"source": SIDECAR, "model_name": "resnet"}
        )
        == 2.0
    )
