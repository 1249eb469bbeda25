"""The inference families created on a registry, and label children resolved once per model.

Resolving a labelled child costs about a microsecond in prometheus_client, more than the
increment itself, so the hot paths (the decorators' wrappers, the sidecar's request handler)
hold a :class:`ModelInstruments` whose children were looked up when the model was first seen.
Which children, under which attribute names, is the schema's (each family's ``per_model``), so
a new family needs only its schema entry and the code that records it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar as SampleExemplar
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

from inferwatch import schema
from inferwatch._version import __version__
from inferwatch.sidecar.fastmetrics import CounterValue, GaugeValue, HistogramValue

Exemplar = Callable[[], dict[str, str] | None]
FastChild = CounterValue | GaugeValue | HistogramValue

# Every child a model's instruments hold: (family, how it is held), in the schema's order.
_PER_MODEL: tuple[tuple[schema.Family, schema.PerModel], ...] = tuple(
    (family, held) for family in schema.INFERENCE_FAMILIES for held in family.per_model
)


class HistogramWithExemplars:
    """A histogram child whose observations carry what ``exemplar()`` returns (``None``:
    no exemplar), for the families whose observations link to traces."""

    __slots__ = ("_exemplar", "_observe")

    def __init__(self, child: Any, exemplar: Exemplar) -> None:
        self._observe = child.observe
        self._exemplar = exemplar

    def observe(self, amount: float) -> None:
        self._observe(amount, self._exemplar())


class ModelInstruments:
    """The label children of every inference family for one (source, model, version).

    Each is a plain slot (``m.duration``, ``m.success``, ...), named by the schema: reading
    one on a hot path costs what any attribute read costs.
    """

    __slots__ = (
        "_exemplar_copies",
        "_collector",
        "_fast",
        "model_name",
        "model_version",
        "source",
        *(held.attribute for _, held in _PER_MODEL),
    )

    if TYPE_CHECKING:  # for type checkers only: the schema names the children's attributes

        def __getattr__(self, name: str) -> Any: ...

    def __init__(
        self, metrics: InferenceMetrics, source: str, model_name: str, model_version: str
    ) -> None:
        self.source = source
        self.model_name = model_name
        self.model_version = model_version
        self._collector = collector = metrics.collector
        self._fast = fast = source in metrics.fast_sources
        own = (source, model_name, model_version)
        for family, held in _PER_MODEL:
            labels = own[: len(family.model_labels)]
            child: Any
            if held.by_value:
                preset = dict(held.preset).get(source, held.by_value)
                child = {value: collector.child(family, (*labels, value), fast) for value in preset}
            else:
                child = collector.child(family, (*labels, *held.values), fast)
            setattr(self, held.attribute, child)
        self._exemplar_copies: dict[Exemplar, ModelInstruments] = {}

    def record_failure(self, reason: str) -> None:
        """Count one failed inference (status=error plus its reason)."""
        self.error.inc()
        child = self.failures.get(reason)
        if child is None:
            if reason not in schema.FAILURE_REASONS:
                raise ValueError(f"unknown failure reason {reason!r}")
            own = (self.source, self.model_name, self.model_version, reason)
            child = self._collector.child(schema.INFERENCE_FAILURES, own, self._fast)
            self.failures[reason] = child
        child.inc()

    def record_finish(self, reason: str | None) -> None:
        """Count one generation's finish reason; one outside the schema's counts as ``other``."""
        value = reason if reason in schema.FINISH_REASONS else schema.FINISH_OTHER
        child = self.finish_reasons.get(value)
        if child is None:
            own = (self.source, self.model_name, value)
            child = self._collector.child(schema.FINISH_REASONS_TOTAL, own, self._fast)
            self.finish_reasons[value] = child
        child.inc()

    def with_exemplars(self, exemplar: Exemplar) -> ModelInstruments:
        """These children, except that the histograms of families with exemplars (the
        latencies) observe with ``exemplar()`` as their exemplar. Callers pass
        ``tracing.current_exemplar``: tracing never imports metrics. Cached per instance."""
        found = self._exemplar_copies.get(exemplar)
        if found is None:
            found = ModelInstruments.__new__(ModelInstruments)
            for name in ModelInstruments.__slots__:
                setattr(found, name, getattr(self, name))
            for family, held in _PER_MODEL:
                if family.exemplars:
                    child = getattr(self, held.attribute)
                    setattr(found, held.attribute, HistogramWithExemplars(child, exemplar))
            found._exemplar_copies = {exemplar: found}
            self._exemplar_copies[exemplar] = found
        return found


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps this process's values in its multiprocess files (the
    test prometheus_client itself makes)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


class InferenceMetrics:
    """Every inference family of the schema, created once on one registry.

    The sidecar's own children (source ``sidecar``) are :mod:`~inferwatch.sidecar.fastmetrics`
    values unless prometheus_client is in multiprocess mode (whose files only its own
    children write) or there is no registry to read them from; an
    :class:`InferenceCollector` exposes them with the families' prometheus_client children.
    Every other source's children are prometheus_client's: the decorators update them from
    many threads.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        # The metric objects by family name (their prometheus_client children come from them).
        self.families: dict[str, Any] = {
            family.name: family.create(None) for family in schema.INFERENCE_FAMILIES
        }
        # The sources whose children are fast values.
        self.fast_sources: frozenset[str] = (
            frozenset()
            if registry is None or multiprocess_mode()
            else frozenset({schema.SOURCE_SIDECAR})
        )
        self.collector = InferenceCollector(self.families)
        if registry is not None:
            registry.register(self.collector)
        build_info = schema.BUILD_INFO.create(registry)
        build_info.labels(__version__).set(1)  # type: ignore[union-attr]
        self._models: dict[tuple[str, str, str], ModelInstruments] = {}
        self._lock = threading.Lock()

    def model(self, source: str, model_name: str, model_version: str = "") -> ModelInstruments:
        """The children for one model; created on first use, then a dict lookup."""
        key = (source, model_name, model_version)
        found = self._models.get(key)
        if found is None:
            with self._lock:
                found = self._models.get(key)
                if found is None:
                    found = ModelInstruments(self, source, model_name, model_version)
                    self._models[key] = found
        return found


class InferenceCollector:
    """Exposes the inference families (a prometheus_client collector): each family's
    prometheus_client children and fast values as prometheus_client would expose its own,
    every child in the order it was created."""

    def __init__(self, families: dict[str, Any]) -> None:
        self._families = families
        # Every child by family name, then label values, in the order created (None: the
        # child is prometheus_client's, exposed by its metric object).
        self._children: dict[str, dict[tuple[str, ...], FastChild | None]] = {
            name: {} for name in families
        }
        self._lock = threading.Lock()

    def child(self, family: schema.Family, labelvalues: tuple[str, ...], fast: bool) -> Any:
        """The child of ``family`` labelled ``labelvalues``: a fast value if ``fast``, else
        prometheus_client's; created on first use (at zero), the same one after."""
        with self._lock:
            children = self._children[family.name]
            found = children.get(labelvalues)
            if found is None:
                if not fast:
                    children[labelvalues] = None
                    return self._families[family.name].labels(*labelvalues)
                found = children[labelvalues] = _fast_child(family)
            return found

    def describe(self) -> Iterable[Metric]:
        return [described for metric in self._families.values() for described in metric.describe()]

    def collect(self) -> Iterable[Metric]:
        created: bool | None = None
        for family in schema.INFERENCE_FAMILIES:
            (metric,) = self._families[family.name].collect()
            with self._lock:
                children = list(self._children[family.name].items())
            if all(child is None for _, child in children):
                yield metric
                continue
            if created is None:
                created = _exposes_created()
            # prometheus_client's children's samples, by child, to put each in its place.
            theirs: dict[tuple[str, ...], list[Sample]] = {}
            for sample in metric.samples:
                own = tuple(sample.labels[name] for name in family.labels)
                theirs.setdefault(own, []).append(sample)
            samples: list[Sample] = []
            for labelvalues, child in children:
                if child is None:
                    samples.extend(theirs.pop(labelvalues, ()))
                else:
                    labels = dict(zip(family.labels, labelvalues, strict=True))
                    samples.extend(_fast_samples(metric.name, labels, child, created))
            for rest in theirs.values():
                samples.extend(rest)
            metric.samples = samples
            yield metric


def _upper_bounds(family: schema.Family) -> list[float]:
    """A histogram family's bucket bounds as prometheus_client keeps them (floats, +Inf last)."""
    assert family.buckets is not None, family.name
    bounds = [float(bound) for bound in family.buckets]
    if bounds[-1] != INF:
        bounds.append(INF)
    return bounds


def _fast_child(family: schema.Family) -> FastChild:
    if family.kind == "counter":
        return CounterValue()
    if family.kind == "gauge":
        return GaugeValue()
    return HistogramValue(_upper_bounds(family))


def _fast_samples(
    name: str, labels: dict[str, str], child: FastChild, created: bool
) -> list[Sample]:
    """The samples prometheus_client gives for a child of its own with the same values."""
    if isinstance(child, GaugeValue):
        return [Sample(name, labels, child.value)]
    if isinstance(child, CounterValue):
        samples = [Sample(name + "_total", dict(labels), child.value)]
    else:
        counts, total, exemplars = child.snapshot()
        samples = []
        cumulative = 0.0
        for bound, count, exemplar in zip(child.upper_bounds, counts, exemplars, strict=True):
            cumulative += count
            shown = None if exemplar is None else SampleExemplar(*exemplar)
            bucket_labels = {**labels, "le": floatToGoString(bound)}
            samples.append(Sample(name + "_bucket", bucket_labels, cumulative, None, shown))
        samples.append(Sample(name + "_count", dict(labels), cumulative))
        if child.upper_bounds[0] >= 0:
            samples.append(Sample(name + "_sum", dict(labels), total))
    if created:
        samples.append(Sample(name + "_created", dict(labels), child.created))
    return samples


_created_probe: list[Counter] = []


def _exposes_created() -> bool:
    """Whether prometheus_client exposes ``_created`` samples now (not after
    ``disable_created_metrics()``), as an unregistered counter of its own shows.

    Made on first use: in multiprocess mode (no fast values, never asked) the counter would
    write a file of its own."""
    if not _created_probe:
        _created_probe.append(Counter("inferwatch_created_probe", "", registry=None))
    (metric,) = _created_probe[0].collect()
    return any(sample.name.endswith("_created") for sample in metric.samples)


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, InferenceMetrics] = (
    weakref.WeakKeyDictionary()
)
_by_registry_lock = threading.Lock()


def inference_metrics(registry: CollectorRegistry | None = None) -> InferenceMetrics:
    """The :class:`InferenceMetrics` of ``registry`` (default: prometheus_client's REGISTRY).

    A family can be registered once per registry, so every user of one registry shares one.
    """
    registry = REGISTRY if registry is None else registry
    with _by_registry_lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = InferenceMetrics(registry)
            _by_registry[registry] = metrics
        return metrics


class BoundedLabel:
    """Caps the distinct values of a label that comes from requests.

    Values in ``allow`` always pass; otherwise the first ``limit`` distinct values seen pass
    and every later one becomes ``other``, so a client cannot create unbounded series.
    """

    def __init__(self, limit: int = 100, allow: frozenset[str] | set[str] | None = None) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.allow = frozenset(allow or ())
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen or value in self.allow:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return schema.OTHER
