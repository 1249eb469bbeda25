"""Counter, gauge and histogram values for the sidecar's own label children, compiled.

prometheus_client's children take a lock per update, check that they are observable and
(histograms) look for their bucket in a Python loop: about 33k instructions a proxied
request. These hold the same numbers, updated the same way, for ~1k. They are for a
single-process sidecar, whose event loop is their only writer; the scrape, on another
thread, reads them through :class:`~inferwatch.metrics.InferenceCollector`, which exposes
them exactly as prometheus_client exposes its own children. Compiled, an update holds the
GIL from start to end, so a reader never sees half of one.
"""

from __future__ import annotations

from time import time

# An exemplar as a histogram bucket keeps it: (labels, observed value, time.time()).
ExemplarRecord = tuple[dict[str, str], float, float]

# prometheus_client's limit on an exemplar's labels: names and values, in characters.
EXEMPLAR_MAX_RUNES = 128


class CounterValue:
    """A counter child: ``inc`` only, by a non-negative amount."""

    value: float
    created: float

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeValue:
    """A gauge child: ``inc``, ``dec`` and ``set``."""

    value: float

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramValue:
    """A histogram child: a count per bucket (not cumulative), the sum, and the last
    exemplar of each bucket.

    ``upper_bounds`` are prometheus_client's: sorted, ending with +Inf. An observation goes
    to the first bucket whose bound is >= it (a NaN to none: it only adds to the sum), as
    in prometheus_client, found by binary search instead of a scan.
    """

    upper_bounds: list[float]
    counts: list[int]
    exemplars: list[ExemplarRecord | None]
    sum: float
    created: float

    def __init__(self, upper_bounds: list[float]) -> None:
        self.upper_bounds = upper_bounds
        self.counts = [0] * len(upper_bounds)
        self.exemplars = [None] * len(upper_bounds)
        self.sum = 0.0
        self.created = time()

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self.sum += amount
        bounds = self.upper_bounds
        low = 0
        high = len(bounds)
        while low < high:
            middle = (low + high) // 2
            if amount <= bounds[middle]:
                high = middle
            else:
                low = middle + 1
        if low == len(bounds):  # NaN: no bound is >= it
            return
        self.counts[low] += 1
        if exemplar:
            check_exemplar(exemplar)
            self.exemplars[low] = (exemplar, amount, time())

    def snapshot(self) -> tuple[list[int], float, list[ExemplarRecord | None]]:
        """Counts, sum and exemplars read together (one compiled call: no update between)."""
        return list(self.counts), self.sum, list(self.exemplars)


def check_exemplar(labels: dict[str, str]) -> None:
    """Raise ValueError for an exemplar prometheus_client would refuse: more than 128
    characters of names and values, an empty name or a reserved one (``__`` prefix)."""
    runes = 0
    for name, value in labels.items():
        if not name or name.startswith("__"):
            raise ValueError("Invalid exemplar label name: " + name)
        runes += len(name) + len(value)
    if runes > EXEMPLAR_MAX_RUNES:
        raise ValueError(
            f"Exemplar labels have {runes} UTF-8 characters, exceeding the limit of 128"
        )
