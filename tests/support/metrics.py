"""Reading exact metric values back from a registry or an exposition, for assertions; and
Prometheus' histogram_quantile for classic histograms, to study bucket layouts offline
(tests/test_schema.py checks it against a real promtool evaluation before relying on it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    """One sample of a text exposition; None when it is not there."""
    return samples(text).get((name, frozenset(labels.items())))


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Linear interpolation inside the bucket holding rank q, as Prometheus 2.x does.

    ``buckets`` are (upper bound, cumulative count), sorted, the last one +Inf.
    """
    if not buckets or buckets[-1][0] != math.inf:
        return math.nan
    observations = buckets[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(buckets) - 1) if buckets[i][1] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / count)


Z95 = 1.6448536269514722  # standard normal 95th percentile


def lognormal_buckets(
    bounds: Sequence[float], p95: float, sigma: float, n: float = 1e6
) -> list[tuple[float, float]]:
    """Expected cumulative bucket counts of n lognormal latencies whose true p95 is ``p95``."""
    mu = math.log(p95) - sigma * Z95

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2))))

    return [(le, n * cdf(le)) for le in bounds] + [(math.inf, n)]
