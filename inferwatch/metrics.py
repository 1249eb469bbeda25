"""The inference families created on a registry, and label children resolved once per model.

Resolving a labelled child costs about a microsecond in prometheus_client, more than the
increment itself, so the hot paths (the decorators' wrappers, the sidecar's request handler)
hold a :class:`ModelInstruments` whose children were looked up when the model was first seen.
Which children, under which attribute names, is the schema's (each family's ``per_model``), so
a new family needs only its schema entry and the code that records it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry

from inferwatch import schema
from inferwatch._version import __version__

Exemplar = Callable[[], dict[str, str] | None]

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
        "_failures_family",
        "_finish_family",
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
        own = (source, model_name, model_version)
        for family, held in _PER_MODEL:
            metric = metrics.families[family.name]
            labels = own[: len(family.model_labels)]
            child: Any
            if held.by_value:
                preset = dict(held.preset).get(source, held.by_value)
                child = {value: metric.labels(*labels, value) for value in preset}
            else:
                child = metric.labels(*labels, *held.values)
            setattr(self, held.attribute, child)
        self._failures_family = metrics.families[schema.INFERENCE_FAILURES.name]
        self._finish_family = metrics.families[schema.FINISH_REASONS_TOTAL.name]
        self._exemplar_copies: dict[Exemplar, ModelInstruments] = {}

    def record_failure(self, reason: str) -> None:
        """Count one failed inference (status=error plus its reason)."""
        self.error.inc()
        child = self.failures.get(reason)
        if child is None:
            if reason not in schema.FAILURE_REASONS:
                raise ValueError(f"unknown failure reason {reason!r}")
            child = self._failures_family.labels(
                self.source, self.model_name, self.model_version, reason
            )
            self.failures[reason] = child
        child.inc()

    def record_finish(self, reason: str | None) -> None:
        """Count one generation's finish reason; one outside the schema's counts as ``other``."""
        value = reason if reason in schema.FINISH_REASONS else schema.FINISH_OTHER
        child = self.finish_reasons.get(value)
        if child is None:
            child = self._finish_family.labels(self.source, self.model_name, value)
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


class InferenceMetrics:
    """Every inference family of the schema, created once on one registry."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        # The metric objects by family name (the per-model children come from them).
        self.families: dict[str, Any] = {
            family.name: family.create(registry) for family in schema.INFERENCE_FAMILIES
        }
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
