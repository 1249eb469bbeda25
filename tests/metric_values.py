"""Reading exact metric values back from a registry or an exposition, for assertions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample's value; 0.0 when the series does not exist (as PromQL would see no series)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, keyed by (name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))
