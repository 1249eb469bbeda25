"""Metric families as OpenMetrics models them, whichever format they were read from or will be
written in: one model for what :mod:`.parse` reads, :mod:`.render` writes, and a
prometheus_client collector holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.registry import Collector

Labels = tuple[tuple[str, str], ...]

# Sample name suffixes each OpenMetrics type may use ("" is the family name itself).
SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created", ""),  # "": a text format counter without _total
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


@dataclass(slots=True)
class Exemplar:
    labels: Labels
    value: float
    timestamp: float | None


@dataclass(slots=True)
class Sample:
    name: str
    labels: Labels
    value: float
    timestamp: float | None = None  # seconds
    exemplar: Exemplar | None = None


@dataclass(slots=True)
class Family:
    """A metric family in OpenMetrics terms: a counter ``x`` has samples ``x_total``."""

    name: str
    type: str
    help: str | None = None
    unit: str = ""
    samples: list[Sample] = field(default_factory=list)

    @property
    def legacy_counter(self) -> bool:
        """A text format counter whose samples carry no ``_total`` (Triton's)."""
        return self.type == "counter" and any(s.name == self.name for s in self.samples)

    def sample_names(self) -> set[str]:
        return {self.name + suffix for suffix in SUFFIXES[self.type]}


def families_of(collector: Collector) -> list[Family]:
    """The families a prometheus_client collector exposes, in our model."""
    out = []
    for metric in collector.collect():
        samples = []
        for s in metric.samples:
            exemplar = None
            if s.exemplar is not None:
                ts = s.exemplar.timestamp
                exemplar = Exemplar(
                    tuple(sorted(s.exemplar.labels.items())),
                    float(s.exemplar.value),
                    None if ts is None else float(ts),
                )
            ts = s.timestamp
            samples.append(
                Sample(
                    s.name,
                    tuple(sorted(s.labels.items())),
                    float(s.value),
                    None if ts is None else float(ts),
                    exemplar,
                )
            )
        out.append(Family(metric.name, metric.type, metric.documentation, metric.unit, samples))
    return out
