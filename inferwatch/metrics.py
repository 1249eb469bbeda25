"""The inference families created on a registry, and label children resolved once per model.

Resolving a labelled child costs about a microsecond in prometheus_client, more than the
increment itself, so the hot paths (the decorators' wrappers, the sidecar's request handler)
hold a :class:`ModelInstruments` whose children were looked up when the model was first seen.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from inferwatch import schema
from inferwatch._version import __version__


class ModelInstruments:
    """The label children of every inference family for one (source, model, version)."""

    __slots__ = (
        "_failures_family",
        "active",
        "batch_size",
        "duration",
        "error",
        "failures",
        "model_name",
        "model_version",
        "queue_duration",
        "queue_length",
        "source",
        "success",
        "tokens_input",
        "tokens_output",
        "ttfb",
    )

    def __init__(
        self, metrics: InferenceMetrics, source: str, model_name: str, model_version: str
    ) -> None:
        self.source = source
        self.model_name = model_name
        self.model_version = model_version
        per_version = (source, model_name, model_version)
        per_model = (source, model_name)
        self.success = metrics.total.labels(*per_version, schema.STATUS_SUCCESS)
        self.error = metrics.total.labels(*per_version, schema.STATUS_ERROR)
        self._failures_family = metrics.failures
        self.failures = {
            reason: metrics.failures.labels(*per_version, reason)
            for reason in schema.REASONS_BY_SOURCE.get(source, schema.FAILURE_REASONS)
        }
        self.duration = metrics.duration.labels(*per_version)
        self.ttfb = metrics.ttfb.labels(*per_version)
        self.queue_duration = metrics.queue_duration.labels(*per_model)
        self.batch_size = metrics.batch_size.labels(*per_model)
        self.active = metrics.active.labels(*per_model)
        self.queue_length = metrics.queue_length.labels(*per_model)
        self.tokens_input = metrics.tokens.labels(source, model_name, schema.TOKEN_INPUT)
        self.tokens_output = metrics.tokens.labels(source, model_name, schema.TOKEN_OUTPUT)

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


class InferenceMetrics:
    """Every inference family of the schema, created once on one registry."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        created: dict[str, Any] = {f.name: f.create(registry) for f in schema.INFERENCE_FAMILIES}
        self.total = created[schema.INFERENCE_TOTAL.name]
        self.failures = created[schema.INFERENCE_FAILURES.name]
        self.duration = created[schema.INFERENCE_DURATION.name]
        self.queue_duration = created[schema.QUEUE_DURATION.name]
        self.ttfb = created[schema.TIME_TO_FIRST_BYTE.name]
        self.batch_size = created[schema.BATCH_SIZE.name]
        self.active = created[schema.ACTIVE_REQUESTS.name]
        self.queue_length = created[schema.QUEUE_LENGTH.name]
        self.tokens = created[schema.TOKENS.name]
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
